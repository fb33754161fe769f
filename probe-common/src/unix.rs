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

/// Key of a unix flow: one thread's traffic on one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// The socket's cookie (`bpf_get_socket_cookie`): never reused, unlike the socket's address,
    /// so a flow whose close was not seen never takes a later socket's traffic.
    pub cookie: u64,
    /// Thread id (u64 so the key has no padding).
    pub tid: u64,
}

/// One thread's successful sends and receives on one unix socket, aggregated over a bucket;
/// failures other than EAGAIN go out one by one as [`UnixIo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixFlow {
    /// `kind` is [`crate::kind::UNIX_FLOW`]; `ts_ns` is when the flow was sent.
    pub hdr: EventHeader,
    /// Identity of the socket (path from its [`UnixSock`] records).
    pub id: SockIdentity,
    /// First message in the bucket.
    pub start_ns: u64,
    /// Last message in the bucket.
    pub end_ns: u64,
    /// Successful sends.
    pub sends: u64,
    /// Bytes sent.
    pub send_bytes: u64,
    /// Successful receives (more than 0 bytes).
    pub recvs: u64,
    /// Bytes received.
    pub recv_bytes: u64,
    /// Calls that returned EAGAIN (non-blocking sockets with nothing to do).
    pub eagain: u64,
}

impl UnixFlow {
    /// Adds one successful or EAGAIN call; returns false for anything that must go out alone.
    #[inline(always)]
    pub fn add(&mut self, op: u32, ret: i64, now: u64) -> bool {
        const EAGAIN: i64 = 11;
        if ret == -EAGAIN {
            self.eagain += 1;
        } else if ret > 0 && op == op::SEND {
            self.sends += 1;
            self.send_bytes += ret as u64;
        } else if ret > 0 && op == op::RECV {
            self.recvs += 1;
            self.recv_bytes += ret as u64;
        } else {
            return false;
        }
        if self.start_ns == 0 {
            self.start_ns = now;
        }
        self.end_ns = now;
        true
    }

    /// True when the flow has aged past `bucket_ns` and should be sent.
    #[inline(always)]
    pub fn is_due(&self, now: u64, bucket_ns: u64) -> bool {
        self.start_ns != 0 && now.saturating_sub(self.start_ns) >= bucket_ns
    }

    /// Empties the counters, keeping the identity.
    #[inline(always)]
    pub fn reset(&mut self) {
        *self = Self { hdr: self.hdr, id: self.id, ..Self::default() };
    }
}

/// Trims a path buffer to its length.
pub fn path_bytes(path: &[u8; PATH_LEN], len: u32) -> &[u8] {
    &path[..(len as usize).min(PATH_LEN)]
}

const _: () = assert!(core::mem::size_of::<SockIdentity>() == 24);
const _: () = assert!(core::mem::size_of::<UnixSock>() == 24 + 16 + 16 + 24 + 112);
const _: () = assert!(core::mem::size_of::<UnixIo>() == 64);
const _: () = assert!(core::mem::size_of::<UnixFlow>() == 24 + 24 + 7 * 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_count_successes_and_eagain_but_not_failures() {
        let mut f = UnixFlow::default();
        assert!(f.add(op::SEND, 64, 10));
        assert!(f.add(op::RECV, 32, 20));
        assert!(f.add(op::RECV, -11, 30));
        assert!(!f.add(op::SEND, -32, 40), "EPIPE goes out alone");
        assert!(!f.add(op::RECV, 0, 50), "peer closed goes out alone");
        assert_eq!((f.sends, f.send_bytes, f.recvs, f.recv_bytes, f.eagain), (1, 64, 1, 32, 1));
        assert_eq!((f.start_ns, f.end_ns), (10, 30));
        assert!(!f.is_due(109, 100) && f.is_due(110, 100));
        f.id.inode = 5;
        f.reset();
        assert_eq!((f.sends, f.start_ns, f.id.inode), (0, 0, 5));
    }
}
