//! Process-tree records: forks and exits of target processes and threads.

use crate::{COMM_LEN, EventHeader};

/// A target process forked a process or created a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcFork {
    /// `kind` is [`crate::kind::PROC_FORK`]; tgid/tid are the parent's.
    pub hdr: EventHeader,
    /// The parent's comm.
    pub comm: [u8; COMM_LEN],
    /// The child's pid (a tid when the child is a thread).
    pub child: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// A target thread exited (a process, when `tid == tgid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcExit {
    /// `kind` is [`crate::kind::PROC_EXIT`].
    pub hdr: EventHeader,
    /// The exiting thread's comm.
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcFork>() == 48);
const _: () = assert!(core::mem::size_of::<ProcExit>() == 40);
