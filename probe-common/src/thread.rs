//! What the kernel keeps per thread, in task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`): one
//! helper call finds a thread's [`ThreadState`] (or creates it zeroed), says whether the thread
//! belongs to a target, and holds what its programs pass on (an epoll call's entry to its exit, a
//! request read to the plugin socket its handler writes next) and what they aggregate (its open
//! epoll bucket, the unix flows of its first sockets). User space reads what is still open at the
//! end through a pidfd of each thread; a thread that exits first sends it out.
//!
//! The target verdict is cached per thread and taken again whenever user space changes the
//! targets: it bumps a generation number (the `TARGETS_GEN` array) after each change, and a
//! verdict taken at another generation is stale. The kernel's own changes are not bumped: a fork
//! adds a process whose threads are new, and so have fresh storage; when a leader exits, its
//! process leaves `TARGETS` but its remaining threads keep their verdict until they exit.

use crate::{ConnKey, EpollEnter, EpollThread, UnixFlow};

/// [`ThreadState::verdict`] values.
pub mod verdict {
    /// Not looked up yet: the storage was just created.
    pub const UNKNOWN: u32 = 0;
    /// The thread's process is a target.
    pub const TARGET: u32 = 1;
    /// It is not.
    pub const OTHER: u32 = 2;
}

/// The request a thread read, and in which of its event-loop turns, until the turn's first unix
/// send or receive names (or fails to name) the request's plugin socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginTurn {
    /// The connection the request came on.
    pub key: ConnKey,
    /// [`EpollThread::turns`] when it was read.
    pub turn: u64,
    /// 1 until the turn's first unix send or receive.
    pub armed: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// How many unix flows a thread keeps in its own state: an nginx worker talks to a few plugin
/// servers, and six keep the state in the kernel's 1 KiB allocation class (eight would double
/// it, for every thread that makes an epoll call or a unix send while a recording runs). A
/// thread's further sockets go to the `UNIX_FLOWS` hash, as every flow did before.
pub const THREAD_FLOWS: usize = 6;

/// A thread's unix flows on its first [`THREAD_FLOWS`] sockets: its traffic on each, aggregated
/// per bucket, without the hash lookup of a (socket, thread) key on every message. A slot is
/// taken by a socket's first message and freed when the thread closes it. Keys are socket
/// cookies, never reused: a socket closed by another thread or another process leaves its slot
/// taken (its traffic still goes out when due, at the thread's exit or at the end), never
/// counting a later socket's traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadFlows {
    /// Each slot's socket cookie; 0 for a free slot.
    pub cookie: [u64; THREAD_FLOWS],
    /// Each slot's flow.
    pub flow: [UnixFlow; THREAD_FLOWS],
}

impl ThreadFlows {
    /// The slot of the socket with `cookie` (not 0), if it has one.
    #[inline(always)]
    pub fn find(&self, cookie: u64) -> Option<usize> {
        (0..THREAD_FLOWS).find(|&i| self.cookie[i] == cookie)
    }

    /// A free slot, if any.
    #[inline(always)]
    pub fn free(&self) -> Option<usize> {
        self.find(0)
    }

    /// The flows with traffic not yet sent.
    pub fn open(&self) -> impl Iterator<Item = &UnixFlow> {
        (0..THREAD_FLOWS)
            .filter(|&i| self.cookie[i] != 0 && self.flow[i].start_ns != 0)
            .map(|i| &self.flow[i])
    }
}

/// Value of the `THREADS` task storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// One of [`verdict`].
    pub verdict: u32,
    /// `TARGETS_GEN` when the verdict was taken.
    pub generation: u32,
    /// The request read in the current turn, until its plugin socket is known.
    pub plugin: PluginTurn,
    /// epoll: the call in progress, the event-loop turn, the open bucket.
    /// `epoll.bucket.hdr.kind` is 0 until the thread's first epoll call.
    pub epoll: EpollThread,
    /// The unix flows of the thread's first sockets.
    pub flows: ThreadFlows,
}

// The fields most programs touch (verdict, plugin, the epoll call in progress) share the
// first cache line: a cold line costs tens of nanoseconds here, more than the program's work.
const _: () = assert!(core::mem::offset_of!(ThreadState, epoll) + core::mem::size_of::<EpollEnter>() <= 96);

impl ThreadState {
    /// True when the cached verdict was taken at `generation` and can be used as it is.
    #[inline(always)]
    pub fn verdict_is_current(&self, generation: u32) -> bool {
        self.verdict != verdict::UNKNOWN && self.generation == generation
    }
}

const _: () = assert!(core::mem::size_of::<PluginTurn>() == 24);
// With the kernel's element header (72 bytes on 6.x) a thread's state fits a 1 KiB allocation.
const _: () = assert!(core::mem::size_of::<ThreadState>() <= 896);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_holds_only_at_its_generation() {
        let mut s = ThreadState::default();
        assert!(!s.verdict_is_current(0), "fresh storage has no verdict");
        s.verdict = verdict::OTHER;
        assert!(s.verdict_is_current(0));
        assert!(!s.verdict_is_current(1), "user space changed the targets since");
    }

    #[test]
    fn a_socket_finds_its_slot_and_a_closed_one_frees_it() {
        let mut f = ThreadFlows::default();
        assert_eq!(f.find(0x1000), None);
        for i in 0..THREAD_FLOWS {
            let slot = f.free().expect("a free slot");
            assert_eq!(slot, i, "slots fill in order");
            f.cookie[slot] = 0x1000 + i as u64;
        }
        assert_eq!(f.free(), None, "one more socket goes to the hash");
        assert_eq!(f.find(0x1003), Some(3));
        f.cookie[3] = 0;
        assert_eq!(f.free(), Some(3));
    }

    #[test]
    fn only_slots_with_unsent_traffic_are_open() {
        let mut f = ThreadFlows::default();
        f.cookie[0] = 0x1000;
        f.cookie[1] = 0x2000;
        f.flow[1].start_ns = 5;
        f.flow[2].start_ns = 7; // a freed slot's leftovers are not a flow
        let mut open = f.open().map(|flow| flow.start_ns);
        assert_eq!((open.next(), open.next()), (Some(5), None));
    }
}
