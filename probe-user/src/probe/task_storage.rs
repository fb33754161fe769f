//! Reading one thread's [`ThreadState`] from the `THREADS` task storage. The kernel keys task
//! storage by a pidfd and cannot iterate it, so the caller names the threads it wants.
//!
//! Before Linux 6.9 a pidfd names only a process's first thread: another thread's state cannot
//! be read, so its last, partial epoll bucket at the end of a recording is not reported (the
//! buckets before it went out as they filled). Its unix flows are not at stake: where thread
//! pidfds are missing ([`thread_pidfds`]), the probe keeps every flow in a hash map instead.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use probe_common::ThreadState;

/// `pidfd_open` flag for a pidfd of a thread rather than a process (Linux 6.9 and later).
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
/// `BPF_MAP_LOOKUP_ELEM`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The `bpf_attr` of a map element command.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A pidfd of thread `tid`: a thread pidfd where the kernel has them, else a process pidfd,
/// which names the same task when `tid` leads its process.
fn pidfd(tid: u32) -> Option<OwnedFd> {
    pidfd_with(tid, PIDFD_THREAD).or_else(|| pidfd_with(tid, 0))
}

/// True when this kernel gives pidfds of any thread (`PIDFD_THREAD`, Linux 6.9), so that every
/// thread's state can be read.
pub fn thread_pidfds() -> bool {
    // SAFETY: gettid takes nothing and cannot fail.
    let tid = unsafe { libc::gettid() } as u32;
    pidfd_with(tid, PIDFD_THREAD).is_some()
}

/// A pidfd of `tid` opened with `flags`, if the kernel gives one.
fn pidfd_with(tid: u32, flags: libc::c_uint) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, flags) };
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Thread `tid`'s state in the task storage `map`, or `None` when the thread is gone or has none.
pub fn thread_state(map: BorrowedFd<'_>, tid: u32) -> Option<ThreadState> {
    let pidfd = pidfd(tid)?;
    let key: i32 = pidfd.as_raw_fd();
    let mut value = ThreadState::default();
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: the attr points at a key of the map's key size (an int) and a value buffer of the
    // map's value size (ThreadState, the same type the programs store), both alive for the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr as *const ElemAttr, size_of::<ElemAttr>())
    };
    (rc == 0).then_some(value)
}
