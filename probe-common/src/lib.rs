//! Event and map types shared by the eBPF programs (`probe-ebpf`) and user space (`probe-user`).
//!
//! Everything here is `#[repr(C)]` plain old data with explicit padding, so that both sides agree
//! on the byte layout without any serialisation. Each ring-buffer record starts with an
//! [`EventHeader`] whose `kind` says which struct follows.
#![no_std]

pub mod epoll;
pub mod lua;
pub mod proc;
pub mod sample;
pub mod tcp;
pub mod thread;
pub mod unix;

pub use epoll::{EpollBucket, EpollCall, EpollEnter, EpollThread, Syscall};
pub use proc::{ProcExec, ProcExit, ProcFork, Signal};
pub use sample::CpuSample;
pub use tcp::{ConnKey, ConnState, HttpChunk, TcpConn};
pub use thread::ThreadState;
pub use unix::{FlowKey, SockIdentity, UnixFlow, UnixIo, UnixSock};

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
    /// [`crate::ProcExec`]: a target exec'ed.
    pub const PROC_EXEC: u32 = 5;
    /// [`crate::Signal`]: a signal to or from a target.
    pub const SIGNAL: u32 = 6;
    /// [`crate::UnixSock`]: a unix socket's lifecycle event.
    pub const UNIX_SOCK: u32 = 7;
    /// [`crate::UnixIo`]: a send or receive on a unix socket.
    pub const UNIX_IO: u32 = 8;
    /// [`crate::CpuSample`]: a CPU sample (in the `SAMPLES` ring buffer).
    pub const CPU_SAMPLE: u32 = 9;
    /// [`crate::UnixFlow`]: one thread's unix traffic on one socket over a bucket.
    pub const UNIX_FLOW: u32 = 10;
    /// [`crate::TcpConn`]: a TCP connection accepted or closed by a target.
    pub const TCP_CONN: u32 = 11;
    /// [`crate::HttpChunk`]: the start of an HTTP request read (with the previous response's).
    pub const HTTP_CHUNK: u32 = 12;
}

/// Indices into the `DROPS` per-CPU array: one counter per record kind that could not be sent.
pub mod drop_slot {
    /// How many slots the `DROPS` array has (index = record kind).
    pub const COUNT: u32 = 16;
}

/// Names of the maps and globals, so both sides spell them the same way.
pub mod names {
    /// Ring buffer carrying every record to user space.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU drop counters, indexed by record kind.
    pub const DROPS: &str = "DROPS";
    /// Target processes: tgid -> [`crate::Target`].
    pub const TARGETS: &str = "TARGETS";
    /// Per-thread state in task-local storage: a [`crate::ThreadState`] per task.
    pub const THREADS: &str = "THREADS";
    /// One u32: bumped by user space after every change of `TARGETS` (see [`crate::thread`]).
    pub const TARGETS_GEN: &str = "TARGETS_GEN";
    /// Global: the probe's runtime configuration, a [`crate::ProbeConfig`].
    pub const CONFIG: &str = "CONFIG";
    /// Global: kernel struct offsets from BTF, a [`crate::KernelOffsets`].
    pub const KOFFSETS: &str = "KOFFSETS";
    /// Ring buffer for CPU samples, apart so bulky samples never crowd out rare events.
    pub const SAMPLES: &str = "SAMPLES";
    /// Stack traces referenced by CPU samples.
    pub const STACKS: &str = "STACKS";
    /// Open unix flows: [`crate::FlowKey`] -> [`crate::UnixFlow`].
    pub const UNIX_FLOWS: &str = "UNIX_FLOWS";
    /// Connections targets accepted: [`crate::ConnKey`] -> [`crate::ConnState`].
    pub const CONNS: &str = "CONNS";
    /// Processes running a LuaJIT VM: tgid -> [`crate::lua::LuaConfig`].
    pub const LUAJIT: &str = "LUAJIT";
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

/// Where `syscalls:sys_enter_*` records keep their arguments: 8-byte slots after the common
/// header and the syscall number. The probe reads them, and an exit's `ret`, with direct loads
/// from the record, which the verifier takes only at constant offsets; user space checks the
/// running kernel's `format` files against these before it loads anything.
pub const SYSCALL_ARGS_OFF: u32 = 16;
/// Where `syscalls:sys_exit_*` records keep `ret`.
pub const SYSCALL_RET_OFF: u32 = 16;
/// The epoll_wait family's argument slots (epoll_wait, epoll_pwait, epoll_pwait2 agree).
pub mod epoll_arg {
    pub const EPFD: u32 = 0;
    pub const MAXEVENTS: u32 = 2;
    /// An int of ms, or for epoll_pwait2 a timespec pointer.
    pub const TIMEOUT: u32 = 3;
}

/// Runtime configuration handed to the eBPF programs as a global at load time.
///
/// Tracepoint field offsets come from tracefs `format` files of the running kernel, but for the
/// syscall slots ([`SYSCALL_ARGS_OFF`]), which are checked against them instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Length of an epoll aggregation bucket in ns.
    pub bucket_ns: u64,
    /// Offset of `child_pid` in `sched:sched_process_fork`.
    pub off_fork_child: u32,
    /// 1: follow forks of target processes into new targets.
    pub follow_forks: u32,
    /// Offset of the `filename` data_loc in `sched:sched_process_exec`.
    pub off_exec_filename: u32,
    /// Offsets of `sig`, `pid`, `code` and `result` in `signal:signal_generate`.
    pub off_signal: [u32; 4],
    /// Bytes of user stack to copy per CPU sample (at most [`sample::USER_STACK_LEN`]).
    pub sample_stack_bytes: u32,
    /// 1: trace the TCP connections targets accept and the HTTP requests on them.
    pub http: u32,
    /// 1: every program returns at once, for measuring what the attach points alone cost.
    pub floor: u32,
    /// 1: a thread keeps its first unix flows in its own state (`ThreadState::flows`). Only where
    /// user space can read any thread's state at the end (thread pidfds, Linux 6.9); else every
    /// flow goes to the hash, which it reads whole.
    pub flow_slots: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Offset value meaning "this field does not exist on this kernel": the probe leaves it zero.
pub const MISSING: u32 = u32::MAX;

/// Kernel struct member offsets, read from the running kernel's BTF at load time.
///
/// A field the kernel lacks is [`MISSING`]; the probe then degrades that field alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`.
    pub fdtable_fd: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `socket_alloc.vfs_inode` minus `socket_alloc.socket`: from a socket to its inode.
    pub socket_to_inode: u32,
    /// `sock.__sk_common.skc_family`.
    pub sock_family: u32,
    /// `sock.sk_socket`.
    pub sock_socket: u32,
    /// `sock.sk_peer_pid`.
    pub sock_peer_pid: u32,
    /// `sock.__sk_common.skc_cookie`: the socket's cookie, never reused, set at its first use.
    pub sock_cookie: u32,
    /// `unix_sock.addr`.
    pub unix_addr: u32,
    /// `unix_sock.peer`.
    pub unix_peer: u32,
    /// `unix_address.len`.
    pub uaddr_len: u32,
    /// `unix_address.name` (a `sockaddr_un`; the path follows its 2-byte family).
    pub uaddr_name: u32,
    /// `pid.numbers` plus `upid.nr`: the pid number in the initial namespace.
    pub pid_nr: u32,
    /// `sock.__sk_common.skc_daddr`: the IPv4 peer address.
    pub sock_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`: the IPv4 local address.
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport`: the peer port (network order).
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_num`: the local port (host order).
    pub sock_num: u32,
    /// `sock.__sk_common.skc_v6_daddr`: the IPv6 peer address.
    pub sock_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`: the IPv6 local address.
    pub sock_v6_rcv_saddr: u32,
    /// Where a syscall's first argument stays in `struct pt_regs` until the syscall returns
    /// (x86_64: `di`; arm64: `orig_x0`, as `x0` takes the return value).
    pub regs_arg0: u32,
    /// Where its second argument is (x86_64: `si`; arm64: `regs[1]`).
    pub regs_arg1: u32,
}

impl KernelOffsets {
    /// Every offset unknown.
    pub const ALL_MISSING: Self = Self {
        task_files: MISSING,
        task_real_parent: MISSING,
        task_tgid: MISSING,
        task_exit_code: MISSING,
        files_fdt: MISSING,
        fdtable_max_fds: MISSING,
        fdtable_fd: MISSING,
        file_private_data: MISSING,
        file_inode: MISSING,
        inode_mode: MISSING,
        inode_ino: MISSING,
        socket_sk: MISSING,
        socket_to_inode: MISSING,
        sock_family: MISSING,
        sock_socket: MISSING,
        sock_peer_pid: MISSING,
        sock_cookie: MISSING,
        unix_addr: MISSING,
        unix_peer: MISSING,
        uaddr_len: MISSING,
        uaddr_name: MISSING,
        pid_nr: MISSING,
        sock_daddr: MISSING,
        sock_rcv_saddr: MISSING,
        sock_dport: MISSING,
        sock_num: MISSING,
        sock_v6_daddr: MISSING,
        sock_v6_rcv_saddr: MISSING,
        regs_arg0: MISSING,
        regs_arg1: MISSING,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) with no padding holes that could leak uninitialised bytes
    // (checked by the size asserts below) and every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::Target {}
    unsafe impl aya::Pod for crate::ProbeConfig {}
    unsafe impl aya::Pod for crate::KernelOffsets {}
    unsafe impl aya::Pod for crate::EpollBucket {}
    unsafe impl aya::Pod for crate::ConnKey {}
    unsafe impl aya::Pod for crate::ConnState {}
    unsafe impl aya::Pod for crate::FlowKey {}
    unsafe impl aya::Pod for crate::UnixFlow {}
    unsafe impl aya::Pod for crate::lua::LuaConfig {}
}

// Layout checks: a change of these sizes is a change of the wire format.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(core::mem::size_of::<Target>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 56);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 120);
const _: () = assert!(core::mem::size_of::<TcpConn>() == 112 + 48);
const _: () = assert!(core::mem::size_of::<HttpChunk>() == 24 + 16 + 48 + 1024);
const _: () = assert!(core::mem::size_of::<ConnState>() == 32 + 48);
