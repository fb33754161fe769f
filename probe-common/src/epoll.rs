//! epoll records: per-thread enter state, aggregated buckets and individual calls.

use crate::{COMM_LEN, EventHeader};

/// Which epoll wait syscall a record is about. In the trace it is written by its name.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Syscall {
    /// `epoll_wait(epfd, events, maxevents, int timeout_ms)`.
    EpollWait = 0,
    /// `epoll_pwait(epfd, events, maxevents, int timeout_ms, sigmask, sigsetsize)`.
    EpollPwait = 1,
    /// `epoll_pwait2(epfd, events, maxevents, const struct __kernel_timespec *timeout, ...)`.
    EpollPwait2 = 2,
}

impl Syscall {
    /// Decodes the numeric form; `None` for anything unknown.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::EpollWait),
            1 => Some(Self::EpollPwait),
            2 => Some(Self::EpollPwait2),
            _ => None,
        }
    }

    /// The syscall's name as strace prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EpollWait => "epoll_wait",
            Self::EpollPwait => "epoll_pwait",
            Self::EpollPwait2 => "epoll_pwait2",
        }
    }
}

/// Timeout value meaning "wait forever" (a negative ms timeout, or a NULL timespec).
pub const TIMEOUT_INFINITE: i64 = -1;

/// Per-thread state saved at syscall entry and consumed at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollEnter {
    /// Entry time.
    pub ts_ns: u64,
    /// Requested timeout in ns, or [`TIMEOUT_INFINITE`].
    pub timeout_ns: i64,
    /// The epoll fd.
    pub epfd: i32,
    /// `maxevents` argument.
    pub maxevents: i32,
    /// A [`Syscall`] as u32.
    pub syscall: u32,
    /// 1 when this is the first call seen on the thread.
    pub first: u32,
}

/// A thread's epoll state (part of its [`crate::ThreadState`]). The fields every call touches
/// come first, next to the thread's other hot fields; the bucket's counters follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollThread {
    /// The call in progress; `ts_ns == 0` when there is none.
    pub pending: EpollEnter,
    /// Calls returned so far: an event loop's turn is the stretch between two of them, which
    /// ties a request read to the plugin socket its handler writes in the same turn.
    pub turns: u64,
    /// The open bucket.
    pub bucket: EpollBucket,
}

/// One thread's epoll activity aggregated over one bucket of time.
///
/// A thread spinning a million times a second costs a counter update per call; the bucket goes
/// to user space once it is older than the configured bucket length, or when the thread exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollBucket {
    /// `kind` is [`crate::kind::EPOLL_BUCKET`]; `ts_ns` is when the bucket was sent.
    pub hdr: EventHeader,
    /// The thread's comm when the bucket was opened.
    pub comm: [u8; COMM_LEN],
    /// Entry time of the first call in the bucket.
    pub start_ns: u64,
    /// Exit time of the last call in the bucket.
    pub end_ns: u64,
    /// Completed calls.
    pub calls: u64,
    /// Calls with a zero timeout.
    pub zero_timeout: u64,
    /// Calls that returned zero events.
    pub zero_events: u64,
    /// Sum of events returned.
    pub events: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Sum of time spent inside the calls.
    pub blocked_ns: u64,
    /// epfd of the last call.
    pub last_epfd: i32,
    /// maxevents of the last call.
    pub last_maxevents: i32,
    /// Timeout of the last call in ns, or [`TIMEOUT_INFINITE`].
    pub last_timeout_ns: i64,
    /// Bit `1 << Syscall` for each syscall seen in the bucket.
    pub syscalls: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Why a single epoll call was sent on its own.
pub mod call_reason {
    /// First call seen on this thread since tracing began.
    pub const FIRST: u32 = 1;
    /// The call returned an error.
    pub const ERROR: u32 = 2;
    /// The thread switched to another epoll fd.
    pub const EPFD_CHANGED: u32 = 4;
}

/// One epoll call worth reading on its own (see [`call_reason`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollCall {
    /// `kind` is [`crate::kind::EPOLL_CALL`]; `ts_ns` is the exit time.
    pub hdr: EventHeader,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// Entry time.
    pub enter_ns: u64,
    /// Requested timeout in ns, or [`TIMEOUT_INFINITE`].
    pub timeout_ns: i64,
    /// Return value: events, or -errno.
    pub ret: i64,
    /// The epoll fd.
    pub epfd: i32,
    /// `maxevents` argument.
    pub maxevents: i32,
    /// A [`Syscall`] as u32.
    pub syscall: u32,
    /// Bits of [`call_reason`].
    pub reason: u32,
}

impl EpollBucket {
    /// Adds one completed call to the bucket.
    #[inline(always)]
    pub fn add_call(&mut self, enter: &EpollEnter, exit_ns: u64, ret: i64) {
        if self.calls == 0 {
            self.start_ns = enter.ts_ns;
        }
        self.calls += 1;
        if enter.timeout_ns == 0 {
            self.zero_timeout += 1;
        }
        if ret == 0 {
            self.zero_events += 1;
        } else if ret > 0 {
            self.events += ret as u64;
        } else {
            self.errors += 1;
        }
        self.blocked_ns += exit_ns.saturating_sub(enter.ts_ns);
        self.end_ns = exit_ns;
        self.last_epfd = enter.epfd;
        self.last_maxevents = enter.maxevents;
        self.last_timeout_ns = enter.timeout_ns;
        self.syscalls |= 1 << (enter.syscall & 7);
    }

    /// True when the bucket has aged past `bucket_ns` and should be sent.
    #[inline(always)]
    pub fn is_due(&self, now_ns: u64, bucket_ns: u64) -> bool {
        self.calls != 0 && now_ns.saturating_sub(self.start_ns) >= bucket_ns
    }

    /// Empties the counters, keeping the thread's identity and its last call's arguments.
    #[inline(always)]
    pub fn reset(&mut self) {
        *self = Self {
            hdr: self.hdr,
            comm: self.comm,
            last_epfd: self.last_epfd,
            last_maxevents: self.last_maxevents,
            last_timeout_ns: self.last_timeout_ns,
            ..Self::default()
        };
    }
}

/// Converts an epoll_wait/epoll_pwait millisecond timeout to ns.
#[inline(always)]
pub const fn timeout_ms_to_ns(ms: i32) -> i64 {
    if ms < 0 { TIMEOUT_INFINITE } else { ms as i64 * 1_000_000 }
}

/// Converts an epoll_pwait2 timespec to ns (a negative field means an invalid, unbounded wait).
#[inline(always)]
pub const fn timespec_to_ns(sec: i64, nsec: i64) -> i64 {
    // No i128 maths: BPF has no 128-bit multiply, so clamp before multiplying.
    const MAX_SEC: i64 = i64::MAX / 1_000_000_000 - 1;
    if sec < 0 || nsec < 0 {
        TIMEOUT_INFINITE
    } else if sec >= MAX_SEC || nsec >= 1_000_000_000 {
        i64::MAX
    } else {
        sec * 1_000_000_000 + nsec
    }
}

const _: () = assert!(core::mem::size_of::<EpollEnter>() == 32);
const _: () = assert!(core::mem::size_of::<EpollBucket>() == 128);
const _: () = assert!(core::mem::size_of::<EpollCall>() == 80);
const _: () = assert!(core::mem::size_of::<EpollThread>() == 168);

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(ts: u64, timeout_ns: i64) -> EpollEnter {
        EpollEnter { ts_ns: ts, timeout_ns, epfd: 7, maxevents: 512, syscall: 1, first: 0 }
    }

    #[test]
    fn bucket_counts_zero_timeouts_events_and_errors() {
        let mut b = EpollBucket::default();
        b.add_call(&enter(100, 0), 110, 0);
        b.add_call(&enter(200, 0), 205, 3);
        b.add_call(&enter(300, 5_000_000), 5_000_300, -4);
        assert_eq!(b.calls, 3);
        assert_eq!(b.zero_timeout, 2);
        assert_eq!(b.zero_events, 1);
        assert_eq!(b.events, 3);
        assert_eq!(b.errors, 1);
        assert_eq!(b.blocked_ns, 10 + 5 + 5_000_000);
        assert_eq!((b.start_ns, b.end_ns), (100, 5_000_300));
        assert_eq!(b.syscalls, 1 << 1);
    }

    #[test]
    fn bucket_is_due_only_after_its_length_and_reset_keeps_identity() {
        let mut b = EpollBucket::default();
        assert!(!b.is_due(u64::MAX, 1), "an empty bucket is never due");
        b.hdr.tid = 42;
        b.comm[0] = b'x';
        b.add_call(&enter(1_000, 0), 1_010, 0);
        assert!(!b.is_due(1_999, 1_000));
        assert!(b.is_due(2_000, 1_000));
        b.reset();
        assert_eq!((b.calls, b.hdr.tid, b.comm[0], b.last_epfd), (0, 42, b'x', 7));
    }

    #[test]
    fn timeouts_convert() {
        assert_eq!(timeout_ms_to_ns(-1), TIMEOUT_INFINITE);
        assert_eq!(timeout_ms_to_ns(0), 0);
        assert_eq!(timeout_ms_to_ns(1500), 1_500_000_000);
        assert_eq!(timespec_to_ns(0, 0), 0);
        assert_eq!(timespec_to_ns(1, 5), 1_000_000_005);
        assert_eq!(timespec_to_ns(-1, 0), TIMEOUT_INFINITE);
    }
}
