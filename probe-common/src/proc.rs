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
    /// `task->exit_code`: exit status in bits 8-15, terminating signal in bits 0-6
    /// (-1 when the kernel's layout is unknown).
    pub exit_code: i32,
    /// Parent tgid at exit (1 or a subreaper: the process was orphaned); 0 when unknown.
    pub parent: u32,
}

const _: () = assert!(core::mem::size_of::<ProcFork>() == 48);
const _: () = assert!(core::mem::size_of::<ProcExit>() == 48);

/// Length of the exec filename kept.
pub const FILENAME_LEN: usize = 256;

/// A target process exec'ed a new program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcExec {
    /// `kind` is [`crate::kind::PROC_EXEC`].
    pub hdr: EventHeader,
    /// The new comm.
    pub comm: [u8; COMM_LEN],
    /// Parent tgid at exec.
    pub parent: u32,
    /// Length of `filename`.
    pub filename_len: u32,
    /// The program's path as given to exec.
    pub filename: [u8; FILENAME_LEN],
}

/// A signal generated for or by a target (`signal:signal_generate`); the header is the sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// `kind` is [`crate::kind::SIGNAL`]; tgid/tid/comm are the sender's.
    pub hdr: EventHeader,
    /// The sender's comm.
    pub comm: [u8; COMM_LEN],
    /// Signal number.
    pub sig: u32,
    /// Receiving thread id.
    pub target: u32,
    /// 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info (TRACE_SIGNAL_*).
    pub result: u32,
    /// `si_code`.
    pub code: i32,
}

/// Signals worth following across a reload, as a bit set by number.
pub const SIGNAL_MASK: u64 = (1 << 1) // HUP
    | (1 << 2) // INT
    | (1 << 3) // QUIT
    | (1 << 9) // KILL
    | (1 << 10) // USR1
    | (1 << 12) // USR2
    | (1 << 13) // PIPE
    | (1 << 15) // TERM
    | (1 << 17) // CHLD
    | (1 << 28); // WINCH

const _: () = assert!(core::mem::size_of::<ProcExec>() == 48 + FILENAME_LEN);
const _: () = assert!(core::mem::size_of::<Signal>() == 56);
