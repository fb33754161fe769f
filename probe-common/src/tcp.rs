//! TCP connections a target accepts, and the start of each HTTP/1.x request read from them and
//! of each response written on them.
//!
//! The kernel keeps one [`ConnState`] per accepted connection (keyed by [`ConnKey`]) and copies
//! bytes only at the two moments that matter: the first reads of a request (at most
//! [`REQUEST_CHUNKS`] reads of [`HTTP_CHUNK_LEN`] bytes, until its response starts) and the first
//! write of its response (the status line). User space parses them at once and keeps only the
//! method, path, request id and status.
//!
//! A response's start costs no record of its own: it waits in the connection's state
//! ([`ConnState::response`]) and goes out with the connection's next record, the next request's
//! first [`HttpChunk`] or the close's [`TcpConn`]; user space reads the ones still waiting from
//! the map when the recording ends. A ring-buffer record costs about 200 ns here, more than the
//! rest of the write's program.

use crate::{COMM_LEN, EventHeader};

/// Most bytes copied from the start of a request.
pub const HTTP_CHUNK_LEN: usize = 1024;
/// Bytes copied from the start of a response: `HTTP/1.1 200` fits.
pub const STATUS_LEN: usize = 16;
/// Reads copied per request, at most: a client may write its header block in pieces.
pub const REQUEST_CHUNKS: u32 = 4;

/// What a [`TcpConn`] record says happened.
pub mod conn_op {
    /// The target accepted the connection.
    pub const ACCEPT: u32 = 1;
    /// The target closed it.
    pub const CLOSE: u32 = 2;
}

/// Where a connection is in its request/response cycle.
pub mod conn_phase {
    /// Waiting for a request's first bytes.
    pub const AWAIT_REQUEST: u32 = 0;
    /// A request was read; its response has not started.
    pub const AWAIT_RESPONSE: u32 = 1;
}

/// Which syscall family a pending read or write is (the buffer argument differs).
pub mod buf_kind {
    /// `read`/`write`/`recvfrom`/`sendto`: a plain buffer.
    pub const PLAIN: u32 = 0;
    /// `readv`/`writev`: an iovec array (the first element is used).
    pub const IOVEC: u32 = 1;
    /// `recvmsg`/`sendmsg`: a `user_msghdr` (its first iovec is used).
    pub const MSGHDR: u32 = 2;
}

/// Slots of the kernel's filter in front of `CONNS` (a power of two).
pub const CONN_FILTER_SLOTS: u32 = 1 << 16;

/// The filter slot of (process, fd): a counting filter of the keys in `CONNS`. The kernel adds 1
/// to a key's slot when it inserts the key and takes 1 off when it removes it, so a slot at 0
/// means that no key of it is in `CONNS`, and a read or write on a fd that is not a traced
/// connection costs one array load instead of a hash lookup. A process's fds lie in one run of
/// slots from an offset its tgid scatters: its own fds never share a slot (below
/// `CONN_FILTER_SLOTS`); another process's may, which costs only the lookup.
#[inline(always)]
pub const fn conn_filter_slot(tgid: u32, fd: u32) -> u32 {
    const GOLDEN: u32 = 0x9E37_79B9;
    tgid.wrapping_mul(GOLDEN).wrapping_add(fd) & (CONN_FILTER_SLOTS - 1)
}

/// Key of the `CONNS` map: a connection by its process and fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The process.
    pub tgid: u32,
    /// Its fd.
    pub fd: u32,
}

/// The start of a response, kept until a record carries it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseStart {
    /// When its first write began; 0 when no response is waiting.
    pub ts_ns: u64,
    /// [`ConnState::plugin_inode`] of the request it answers.
    pub plugin_inode: u64,
    /// The CPU it was written on.
    pub cpu: u32,
    /// The thread that wrote it.
    pub tid: u32,
    /// Bytes copied into `status`.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Its first bytes: the status line's start.
    pub status: [u8; STATUS_LEN],
}

/// Value of the `CONNS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// The socket's inode: the connection's identity across records.
    pub inode: u64,
    /// One of [`conn_phase`].
    pub phase: u32,
    /// Requests read on it so far.
    pub requests: u32,
    /// Reads copied of the current request (up to [`REQUEST_CHUNKS`]).
    pub chunks: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The unix socket (inode) the target wrote first in the event-loop turn that read the
    /// current request: the plugin server its handler called. 0 when none.
    pub plugin_inode: u64,
    /// The last response's start, until a record carries it out.
    pub response: ResponseStart,
}

/// A TCP connection accepted or closed by a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConn {
    /// `kind` is [`crate::kind::TCP_CONN`].
    pub hdr: EventHeader,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// One of [`conn_op`].
    pub op: u32,
    /// The fd in the target.
    pub fd: i32,
    /// The socket's inode.
    pub inode: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port (host order).
    pub local_port: u16,
    /// Peer port (host order).
    pub peer_port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Local address: 4 bytes for IPv4, 16 for IPv6 (network order).
    pub local_addr: [u8; 16],
    /// Peer address.
    pub peer_addr: [u8; 16],
    /// At close: the connection's [`conn_phase`] (a request read and not answered is
    /// [`conn_phase::AWAIT_RESPONSE`]).
    pub phase: u32,
    /// At close: requests read on it.
    pub requests: u32,
    /// At close: [`ConnState::plugin_inode`] of the request left unanswered.
    pub plugin_inode: u64,
    /// At close: the last response's start, when no record carried it out yet.
    pub response: ResponseStart,
}

/// The start of a request read on a traced connection, and the previous response's start when
/// it was still waiting in the connection's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpChunk {
    /// `kind` is [`crate::kind::HTTP_CHUNK`]; `ts_ns` is the read's exit.
    pub hdr: EventHeader,
    /// The fd in the target.
    pub fd: i32,
    /// Bytes copied into `data`.
    pub len: u32,
    /// The connection's socket inode.
    pub inode: u64,
    /// The previous response on the connection (`ts_ns` 0: none waited).
    pub response: ResponseStart,
    /// The first bytes.
    pub data: [u8; HTTP_CHUNK_LEN],
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn a_processs_fds_never_share_a_filter_slot() {
        for tgid in [1, 2, 4242, 65_536, 1 << 22] {
            let mut taken = [false; CONN_FILTER_SLOTS as usize];
            for fd in 0..4096 {
                let slot = conn_filter_slot(tgid, fd) as usize;
                assert!(!taken[slot], "tgid {tgid}: fd {fd} shares slot {slot}");
                taken[slot] = true;
            }
        }
    }

    #[test]
    fn neighbouring_processes_start_far_apart() {
        let (a, b) = (conn_filter_slot(1000, 0), conn_filter_slot(1001, 0));
        let gap = a.abs_diff(b).min(CONN_FILTER_SLOTS - a.abs_diff(b));
        assert!(gap > 1024, "the fds of pids 1000 and 1001 overlap: {a} and {b}");
    }
}
