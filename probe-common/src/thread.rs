//! What the kernel keeps per thread, in task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`): one
//! helper call finds a thread's [`ThreadState`] (or creates it zeroed), says whether the thread
//! belongs to a target, and holds everything its programs pass between a syscall's entry and exit.
//!
//! The target verdict is cached per thread and taken again whenever user space changes the
//! targets: it bumps a generation number (the `TARGETS_GEN` array) after each change, and a
//! verdict taken at another generation is stale. The kernel's own changes are not bumped: a fork
//! adds a process whose threads are new, and so have fresh storage; when a leader exits, its
//! process leaves `TARGETS` but its remaining threads keep their verdict until they exit.

use crate::{ConnKey, EpollEnter, EpollThread};

/// [`ThreadState::verdict`] values.
pub mod verdict {
    /// Not looked up yet: the storage was just created.
    pub const UNKNOWN: u32 = 0;
    /// The thread's process is a target.
    pub const TARGET: u32 = 1;
    /// It is not.
    pub const OTHER: u32 = 2;
}

/// A read on a traced connection in progress: where its bytes will be. Armed at the read's
/// entry, disarmed at its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingRead {
    /// The connection.
    pub key: ConnKey,
    /// The buffer argument (a buffer, an iovec array or a msghdr, by `kind`).
    pub buf: u64,
    /// One of [`crate::tcp::buf_kind`].
    pub kind: u32,
    /// 1 from the read's entry to its exit.
    pub armed: u32,
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

/// Value of the `THREADS` task storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// One of [`verdict`].
    pub verdict: u32,
    /// `TARGETS_GEN` when the verdict was taken.
    pub generation: u32,
    /// The read in progress on a traced connection.
    pub read: PendingRead,
    /// The request read in the current turn, until its plugin socket is known.
    pub plugin: PluginTurn,
    /// epoll: the call in progress, the event-loop turn, the open bucket.
    /// `epoll.bucket.hdr.kind` is 0 until the thread's first epoll call.
    pub epoll: EpollThread,
}

// The fields most programs touch (verdict, read, plugin, the epoll call in progress) share the
// first cache line: a cold line costs tens of nanoseconds here, more than the program's work.
const _: () = assert!(core::mem::offset_of!(ThreadState, epoll) + core::mem::size_of::<EpollEnter>() <= 96);

impl ThreadState {
    /// True when the cached verdict was taken at `generation` and can be used as it is.
    #[inline(always)]
    pub fn verdict_is_current(&self, generation: u32) -> bool {
        self.verdict != verdict::UNKNOWN && self.generation == generation
    }
}

const _: () = assert!(core::mem::size_of::<PendingRead>() == 24);
const _: () = assert!(core::mem::size_of::<PluginTurn>() == 24);

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
}
