//! Reading kernel structs with offsets from BTF (there is no CO-RE for Rust eBPF programs).
//!
//! Every read goes through `bpf_probe_read_kernel`, and a field whose offset is `MISSING` on
//! this kernel reads as `None`, so one missing field degrades alone.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use probe_common::{MISSING, SockIdentity, unix::PATH_LEN};

use crate::KOFFSETS;

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// Reads a `T` at `base + off`, or `None` for a null base, a missing offset or a fault.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == MISSING {
        return None;
    }
    let src = (base + off as u64) as *const T;
    // SAFETY: bpf_probe_read_kernel copies fault-safely (a bad address is an Err, never a fault);
    // callers read only plain integers and pointers-as-u64, valid for any bytes.
    unsafe { bpf_probe_read_kernel(src) }.ok()
}

/// The current task's parent tgid (`real_parent->tgid`).
#[inline(always)]
pub fn current_parent_tgid() -> Option<u32> {
    let k = KOFFSETS.load();
    // SAFETY: an argument-less helper; the task pointer is only read through `read`.
    let task = unsafe { bpf_get_current_task() };
    let parent: u64 = read(task, k.task_real_parent)?;
    read::<i32>(parent, k.task_tgid).map(|t| t as u32)
}

/// The current task's `exit_code`.
#[inline(always)]
pub fn current_exit_code() -> Option<i32> {
    // SAFETY: an argument-less helper; the task pointer is only read through `read`.
    let task = unsafe { bpf_get_current_task() };
    read(task, KOFFSETS.load().task_exit_code)
}

/// The `struct sock *` behind the current process's `fd` and its address family, when the fd
/// is a socket.
#[inline(always)]
pub fn sock_of_fd(fd: i64) -> Option<(u64, u16)> {
    let k = KOFFSETS.load();
    // SAFETY: an argument-less helper; the task pointer is only read through `read`.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, k.task_files)?;
    let fdt: u64 = read(files, k.files_fdt)?;
    let max: u32 = read(fdt, k.fdtable_max_fds)?;
    if fd < 0 || fd >= max as i64 {
        return None;
    }
    let array: u64 = read(fdt, k.fdtable_fd)?;
    let file: u64 = read(array, (fd as u32) * 8)?;
    let inode: u64 = read(file, k.file_inode)?;
    let mode: u16 = read(inode, k.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file, k.file_private_data)?;
    let sk: u64 = read(socket, k.socket_sk)?;
    Some((sk, read::<u16>(sk, k.sock_family)?))
}

/// The `struct sock *` behind the current process's `fd`, when it is an AF_UNIX socket.
#[inline(always)]
pub fn unix_sock_of_fd(fd: i64) -> Option<u64> {
    sock_of_fd(fd).and_then(|(sk, family)| (family == AF_UNIX).then_some(sk))
}

/// The inode number of a `struct sock`'s socket.
#[inline(always)]
pub fn sock_inode(sk: u64) -> u64 {
    let k = KOFFSETS.load();
    if k.socket_to_inode == MISSING || k.inode_ino == MISSING {
        return 0;
    }
    let socket: u64 = read(sk, k.sock_socket).unwrap_or(0);
    read(socket, k.socket_to_inode + k.inode_ino).unwrap_or(0)
}

/// Identity of a unix socket, and the `unix_address *` its path is read from (its own, or its
/// peer's when it has none: a client socket is usually unbound).
#[inline(always)]
pub fn identity(sk: u64) -> (SockIdentity, u64) {
    let k = KOFFSETS.load();
    let mut id = SockIdentity { inode: sock_inode(sk), ..SockIdentity::default() };
    let peer: u64 = read(sk, k.unix_peer).unwrap_or(0);
    if peer != 0 {
        id.peer_inode = sock_inode(peer);
    }
    let pid: u64 = read(sk, k.sock_peer_pid).unwrap_or(0);
    id.peer_pid = read::<i32>(pid, k.pid_nr).unwrap_or(0) as u32;
    let mut addr: u64 = read(sk, k.unix_addr).unwrap_or(0);
    if addr == 0 {
        addr = read(peer, k.unix_addr).unwrap_or(0);
    }
    (id, addr)
}

/// Copies the path of a `unix_address` into `dst`; returns its length.
#[inline(always)]
pub fn read_path(addr: u64, dst: &mut [u8; PATH_LEN]) -> u32 {
    let k = KOFFSETS.load();
    let Some(len) = read::<i32>(addr, k.uaddr_len) else { return 0 };
    if k.uaddr_name == MISSING {
        return 0;
    }
    // `name` is a sockaddr_un: 2 bytes of family, then the path.
    let src = (addr + k.uaddr_name as u64 + 2) as *const u8;
    // SAFETY: bpf_probe_read_kernel_buf copies fault-safely, at most `dst.len()` bytes.
    if unsafe { bpf_probe_read_kernel_buf(src, dst) }.is_err() {
        return 0;
    }
    (len - 2).clamp(0, PATH_LEN as i32) as u32
}
