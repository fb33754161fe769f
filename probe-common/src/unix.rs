//! AF_UNIX records: socket lifecycle (connect, bind, accept, close, first sight) with identity and
//! path, and the small per-message send/receive record.

use crate::{COMM_LEN, EventHeader};

/// `sizeof(sun_path)`.
pub const PATH_LEN: usize = 108;

/// What happened to a unix socket, the `op` of a [`UnixSock`] or [`UnixIo`].
pub mod op {
    /// `connect()` returned; `path` is the address asked for.
    pub const CONNECT: u32 = 1;
    /// `bind()` returned; `path` is the address asked for.
    pub const BIND: u32 = 2;
    /// `accept()`/`accept4()` returned a new socket.
    pub const ACCEPT: u32 = 3;
    /// `close()` of a unix socket fd.
    pub const CLOSE: u32 = 4;
    /// First send or receive seen on a socket: its identity, path and peer.
    pub const SEEN: u32 = 5;
    /// A send (`sock:sock_send_length`).
    pub const SEND: u32 = 6;
    /// A receive (`sock:sock_recv_length`).
    pub const RECV: u32 = 7;
}

/// Identity of a unix socket as the kernel sees it. Zero fields are unknown (see `missing`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockIdentity {
    /// The socket's inode (what /proc/PID/fd shows as `socket:[N]`).
    pub inode: u64,
    /// The peer socket's inode.
    pub peer_inode: u64,
    /// The peer's pid from the peer credentials (`sk_peer_pid`), the process that connected or
    /// the one that listened.
    pub peer_pid: u32,
    /// Length of `path` (0: unbound and no bound peer; abstract names start with NUL).
    pub path_len: u32,
}

/// A unix socket's lifecycle event, with its path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixSock {
    /// `kind` is [`crate::kind::UNIX_SOCK`]; `ts_ns` is the syscall's exit (entry for close).
    pub hdr: EventHeader,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// One of [`op`].
    pub op: u32,
    /// The socket's fd in the calling process (-1 when not known).
    pub fd: i32,
    /// Syscall result: 0 / a new fd, or -errno.
    pub ret: i64,
    /// Identity after the call.
    pub id: SockIdentity,
    /// For connect and bind, the path asked for; otherwise the socket's own bound path, or its
    /// peer's when it has none.
    pub path: [u8; PATH_LEN],
    /// Explicit padding.
    pub _pad: u32,
}

/// One send or receive on a unix socket; the path comes from the socket's [`UnixSock`] records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixIo {
    /// `kind` is [`crate::kind::UNIX_IO`].
    pub hdr: EventHeader,
    /// [`op::SEND`] or [`op::RECV`].
    pub op: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Bytes, or -errno (0 on receive: the peer closed).
    pub ret: i64,
    /// Identity of the socket.
    pub id: SockIdentity,
}

/// Trims a path buffer to its length.
pub fn path_bytes(path: &[u8; PATH_LEN], len: u32) -> &[u8] {
    &path[..(len as usize).min(PATH_LEN)]
}

const _: () = assert!(core::mem::size_of::<SockIdentity>() == 24);
const _: () = assert!(core::mem::size_of::<UnixSock>() == 24 + 16 + 16 + 24 + 112);
const _: () = assert!(core::mem::size_of::<UnixIo>() == 64);
