//! The typed event stream: ring-buffer records decoded into serde-friendly events.
//!
//! The JSON-lines form of [`Event`] is the trace directory's `events.jsonl` schema: one object
//! per line, tagged by `type`.

use probe_common::{
    COMM_LEN, EpollBucket, EpollCall, EventHeader, ProcExit, ProcFork, Syscall, epoll::call_reason,
    kind,
};
use serde::{Deserialize, Serialize};

/// Who and when: the fields every event has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// CLOCK_MONOTONIC ns when the kernel produced the record.
    pub ts_ns: u64,
    /// CPU it was produced on.
    pub cpu: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The thread's comm.
    pub comm: String,
}

/// One thread's epoll activity over one bucket (see [`probe_common::EpollBucket`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollBucketEvent {
    /// Who and when (`ts_ns` is when the bucket was sent).
    #[serde(flatten)]
    pub task: Task,
    /// Entry of the first call.
    pub start_ns: u64,
    /// Exit of the last call.
    pub end_ns: u64,
    /// Completed calls.
    pub calls: u64,
    /// Calls with a zero timeout.
    pub zero_timeout: u64,
    /// Calls that returned no event.
    pub zero_events: u64,
    /// Events returned in all.
    pub events: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time spent inside the calls.
    pub blocked_ns: u64,
    /// epfd of the last call.
    pub epfd: i32,
    /// maxevents of the last call.
    pub maxevents: i32,
    /// Timeout of the last call in ns; -1 is infinite.
    pub timeout_ns: i64,
    /// The syscalls seen.
    pub syscalls: Vec<String>,
}

/// One epoll call sent on its own: the first of a thread, an error, or an epfd change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollCallEvent {
    /// Who and when (`ts_ns` is the exit time).
    #[serde(flatten)]
    pub task: Task,
    /// Which syscall.
    pub syscall: String,
    /// Entry time.
    pub enter_ns: u64,
    /// epoll fd.
    pub epfd: i32,
    /// maxevents argument.
    pub maxevents: i32,
    /// Timeout in ns; -1 is infinite.
    pub timeout_ns: i64,
    /// Events returned, or -errno.
    pub ret: i64,
    /// Why it was sent: `first`, `error`, `epfd_changed`.
    pub reasons: Vec<String>,
}

/// A target forked a process or created a thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcForkEvent {
    /// The parent, and when.
    #[serde(flatten)]
    pub task: Task,
    /// The child's pid or tid.
    pub child: u32,
}

/// A target thread exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcExitEvent {
    /// The exiting thread, and when.
    #[serde(flatten)]
    pub task: Task,
}

/// Any event of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// See [`EpollBucketEvent`].
    EpollBucket(EpollBucketEvent),
    /// See [`EpollCallEvent`].
    EpollCall(EpollCallEvent),
    /// See [`ProcForkEvent`].
    ProcFork(ProcForkEvent),
    /// See [`ProcExitEvent`].
    ProcExit(ProcExitEvent),
}

impl Event {
    /// Who and when.
    pub fn task(&self) -> &Task {
        match self {
            Event::EpollBucket(e) => &e.task,
            Event::EpollCall(e) => &e.task,
            Event::ProcFork(e) => &e.task,
            Event::ProcExit(e) => &e.task,
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind's struct.
    Truncated {
        /// The record kind.
        kind: u32,
        /// Bytes received.
        len: usize,
    },
    /// A kind this build does not know.
    UnknownKind(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { kind, len } => {
                write!(f, "record of kind {kind} truncated to {len} bytes")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads a `T` from the front of `bytes` if it is long enough.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Truncated {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: length checked; T is a repr(C) POD type from probe-common, valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(bytes, 0)?;
    Ok(match hdr.kind {
        kind::EPOLL_BUCKET => Event::EpollBucket(bucket_event(&read(bytes, hdr.kind)?)),
        kind::EPOLL_CALL => {
            let c: EpollCall = read(bytes, hdr.kind)?;
            Event::EpollCall(EpollCallEvent {
                task: task(&c.hdr, &c.comm),
                syscall: syscall_name(c.syscall),
                enter_ns: c.enter_ns,
                epfd: c.epfd,
                maxevents: c.maxevents,
                timeout_ns: c.timeout_ns,
                ret: c.ret,
                reasons: reasons(c.reason),
            })
        }
        kind::PROC_FORK => {
            let r: ProcFork = read(bytes, hdr.kind)?;
            Event::ProcFork(ProcForkEvent {
                task: task(&r.hdr, &r.comm),
                child: r.child,
            })
        }
        kind::PROC_EXIT => {
            let r: ProcExit = read(bytes, hdr.kind)?;
            Event::ProcExit(ProcExitEvent {
                task: task(&r.hdr, &r.comm),
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// Converts a bucket (from the ring buffer, or read from the map at the end) into an event.
pub fn bucket_event(b: &EpollBucket) -> EpollBucketEvent {
    EpollBucketEvent {
        task: task(&b.hdr, &b.comm),
        start_ns: b.start_ns,
        end_ns: b.end_ns,
        calls: b.calls,
        zero_timeout: b.zero_timeout,
        zero_events: b.zero_events,
        events: b.events,
        errors: b.errors,
        blocked_ns: b.blocked_ns,
        epfd: b.last_epfd,
        maxevents: b.last_maxevents,
        timeout_ns: b.last_timeout_ns,
        syscalls: (0..3)
            .filter(|i| b.syscalls & (1 << i) != 0)
            .map(syscall_name)
            .collect(),
    }
}

fn task(hdr: &EventHeader, comm: &[u8; COMM_LEN]) -> Task {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
    Task {
        ts_ns: hdr.ts_ns,
        cpu: hdr.cpu,
        tgid: hdr.tgid,
        tid: hdr.tid,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
    }
}

fn syscall_name(v: u32) -> String {
    Syscall::from_u32(v).map_or_else(|| format!("syscall#{v}"), |s| s.name().to_string())
}

fn reasons(bits: u32) -> Vec<String> {
    [
        (call_reason::FIRST, "first"),
        (call_reason::ERROR, "error"),
        (call_reason::EPFD_CHANGED, "epfd_changed"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn hdr(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            cpu: 1,
            ts_ns: 5_000,
            tgid: 10,
            tid: 11,
        }
    }

    #[test]
    fn decodes_a_bucket() {
        let b = EpollBucket {
            hdr: hdr(kind::EPOLL_BUCKET),
            comm: comm("nginx"),
            start_ns: 1,
            end_ns: 2,
            calls: 1000,
            zero_timeout: 999,
            zero_events: 998,
            events: 2,
            errors: 0,
            blocked_ns: 77,
            last_epfd: 7,
            last_maxevents: 512,
            last_timeout_ns: 0,
            syscalls: 0b10,
            _pad: 0,
        };
        let Event::EpollBucket(e) = decode(&bytes(&b)).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(
            e.task,
            Task {
                ts_ns: 5_000,
                cpu: 1,
                tgid: 10,
                tid: 11,
                comm: "nginx".into()
            }
        );
        assert_eq!(
            (e.calls, e.zero_timeout, e.zero_events, e.blocked_ns),
            (1000, 999, 998, 77)
        );
        assert_eq!((e.epfd, e.maxevents, e.timeout_ns), (7, 512, 0));
        assert_eq!(e.syscalls, vec!["epoll_pwait".to_string()]);
    }

    #[test]
    fn decodes_a_call_with_reasons() {
        let c = EpollCall {
            hdr: hdr(kind::EPOLL_CALL),
            comm: comm("a-sixteen-bytes!"),
            enter_ns: 4_000,
            timeout_ns: -1,
            ret: -4,
            epfd: 3,
            maxevents: 1,
            syscall: 2,
            reason: call_reason::FIRST | call_reason::ERROR,
        };
        let Event::EpollCall(e) = decode(&bytes(&c)).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(e.task.comm, "a-sixteen-bytes!");
        assert_eq!(
            (e.syscall.as_str(), e.ret, e.timeout_ns),
            ("epoll_pwait2", -4, -1)
        );
        assert_eq!(e.reasons, vec!["first", "error"]);
    }

    #[test]
    fn decodes_fork_and_exit() {
        let f = ProcFork {
            hdr: hdr(kind::PROC_FORK),
            comm: comm("sh"),
            child: 99,
            _pad: 0,
        };
        assert!(matches!(
            decode(&bytes(&f)),
            Ok(Event::ProcFork(ProcForkEvent { child: 99, .. }))
        ));
        let x = ProcExit {
            hdr: hdr(kind::PROC_EXIT),
            comm: comm("sh"),
        };
        assert!(matches!(decode(&bytes(&x)), Ok(Event::ProcExit(_))));
    }

    #[test]
    fn refuses_truncated_and_unknown_records() {
        assert_eq!(
            decode(&[1, 0, 0]),
            Err(DecodeError::Truncated { kind: 0, len: 3 })
        );
        let short = bytes(&hdr(kind::EPOLL_BUCKET));
        assert_eq!(
            decode(&short),
            Err(DecodeError::Truncated { kind: 1, len: 24 })
        );
        assert_eq!(decode(&bytes(&hdr(77))), Err(DecodeError::UnknownKind(77)));
    }

    #[test]
    fn json_lines_round_trip() {
        let f = ProcFork {
            hdr: hdr(kind::PROC_FORK),
            comm: comm("sh"),
            child: 99,
            _pad: 0,
        };
        let ev = decode(&bytes(&f)).unwrap();
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.starts_with(r#"{"type":"proc_fork","#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
    }
}
