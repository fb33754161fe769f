//! Event and map types shared by the eBPF programs (`probe-ebpf`) and user space (`probe-user`).
//!
//! Everything here is `#[repr(C)]` plain old data with explicit padding, so that both sides agree
//! on the byte layout without any serialisation. Each ring-buffer record starts with an
//! [`EventHeader`] whose `kind` says which struct follows.
#![no_std]

pub mod epoll;
pub mod proc;

pub use epoll::{EpollBucket, EpollCall, EpollEnter, EpollThread, Syscall};
pub use proc::{ProcExit, ProcFork};

/// Length of a task's `comm` as the kernel stores it.
pub const COMM_LEN: usize = 16;

/// Record kinds, the first field of every ring-buffer record.
pub mod kind {
    /// [`crate::EpollBucket`]: one thread's aggregated epoll activity over a bucket.
    pub const EPOLL_BUCKET: u32 = 1;
    /// [`crate::EpollCall`]: one epoll call worth reading on its own.
    pub const EPOLL_CALL: u32 = 2;
    /// [`crate::ProcFork`]: a target process forked or created a thread.
    pub const PROC_FORK: u32 = 3;
    /// [`crate::ProcExit`]: a target thread exited.
    pub const PROC_EXIT: u32 = 4;
}

/// Indices into the `DROPS` per-CPU array: one counter per record kind that could not be sent.
pub mod drop_slot {
    /// How many slots the `DROPS` array has (index = record kind).
    pub const COUNT: u32 = 8;
}

/// Names of the maps and globals, so both sides spell them the same way.
pub mod names {
    /// Ring buffer carrying every record to user space.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU drop counters, indexed by record kind.
    pub const DROPS: &str = "DROPS";
    /// Target processes: tgid -> [`crate::Target`].
    pub const TARGETS: &str = "TARGETS";
    /// epoll state per thread: tid -> [`crate::EpollThread`].
    pub const EPOLL_THREADS: &str = "EPOLL_THREADS";
    /// Global: the probe's runtime configuration, a [`crate::ProbeConfig`].
    pub const CONFIG: &str = "CONFIG";
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the record was produced on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was produced.
    pub ts_ns: u64,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
}

/// Value of the `TARGETS` map: why a process is traced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The tgid this one was inherited from (0 when user space added it).
    pub parent: u32,
    /// Bit flags, see [`target_flag`].
    pub flags: u32,
}

/// Flags of a [`Target`].
pub mod target_flag {
    /// Added by user space (the root of a tree, or a process it found in /proc).
    pub const FROM_USER: u32 = 1;
    /// Added by the kernel side when a target forked.
    pub const FROM_FORK: u32 = 2;
}

/// Runtime configuration handed to the eBPF programs as a global at load time.
///
/// Tracepoint field offsets come from tracefs `format` files of the running kernel: nothing
/// about kernel layouts is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Length of an epoll aggregation bucket in ns.
    pub bucket_ns: u64,
    /// Offset of `epfd` in `syscalls:sys_enter_epoll_*`.
    pub off_epfd: u32,
    /// Offset of `maxevents` in `syscalls:sys_enter_epoll_*`.
    pub off_maxevents: u32,
    /// Offset of `timeout` in `syscalls:sys_enter_epoll_*` (an int, or a timespec pointer for pwait2).
    pub off_timeout: u32,
    /// Offset of `ret` in `syscalls:sys_exit_*`.
    pub off_ret: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork`.
    pub off_fork_child: u32,
    /// 1: follow forks of target processes into new targets.
    pub follow_forks: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) with no padding holes that could leak uninitialised bytes
    // (checked by the size asserts below) and every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::Target {}
    unsafe impl aya::Pod for crate::ProbeConfig {}
    unsafe impl aya::Pod for crate::EpollBucket {}
    unsafe impl aya::Pod for crate::EpollEnter {}
    unsafe impl aya::Pod for crate::EpollThread {}
}

// Layout checks: a change of these sizes is a change of the wire format.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(core::mem::size_of::<Target>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 32);
