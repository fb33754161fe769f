//! The typed event stream: ring-buffer records decoded into serde-friendly events.
//!
//! The JSON-lines form of [`Event`] is the trace directory's `events.jsonl` schema: one object
//! per line, tagged by `type`.

use probe_common::{
    COMM_LEN, CpuSample, EpollBucket, EpollCall, EventHeader, HttpChunk, ProcExec, ProcExit, ProcFork,
    Signal, Syscall, TcpConn, UnixFlow, UnixIo, UnixSock,
    epoll::call_reason,
    kind,
    tcp::{ResponseStart, STATUS_LEN},
    unix::{self, PATH_LEN},
};
use serde::{Deserialize, Serialize};

/// The kinds of ring-buffer records, named as `events.jsonl`'s `type` tags and `meta.json`'s
/// drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// [`EpollBucketEvent`].
    EpollBucket,
    /// [`EpollCallEvent`].
    EpollCall,
    /// [`ProcForkEvent`].
    ProcFork,
    /// [`ProcExitEvent`].
    ProcExit,
    /// [`ProcExecEvent`].
    ProcExec,
    /// [`SignalEvent`].
    Signal,
    /// [`UnixSockEvent`].
    UnixSock,
    /// [`UnixIoEvent`].
    UnixIo,
    /// [`CpuSampleEvent`].
    CpuSample,
    /// [`UnixFlowEvent`].
    UnixFlow,
    /// [`TcpConnEvent`].
    TcpConn,
    /// The start of an HTTP request or response: parsed by the recorder at once, never stored.
    HttpChunk,
    /// [`HttpRequestEvent`]: made by the recorder from the chunks of one request.
    HttpRequest,
}

impl RecordKind {
    /// The kind of a record's header, `None` for one this build does not know.
    pub fn from_raw(k: u32) -> Option<Self> {
        Some(match k {
            kind::EPOLL_BUCKET => Self::EpollBucket,
            kind::EPOLL_CALL => Self::EpollCall,
            kind::PROC_FORK => Self::ProcFork,
            kind::PROC_EXIT => Self::ProcExit,
            kind::PROC_EXEC => Self::ProcExec,
            kind::SIGNAL => Self::Signal,
            kind::UNIX_SOCK => Self::UnixSock,
            kind::UNIX_IO => Self::UnixIo,
            kind::CPU_SAMPLE => Self::CpuSample,
            kind::UNIX_FLOW => Self::UnixFlow,
            kind::TCP_CONN => Self::TcpConn,
            kind::HTTP_CHUNK => Self::HttpChunk,
            _ => return None,
        })
    }

    /// Its name in the trace (the serde name).
    pub fn name(self) -> String {
        serde_name(&self)
    }
}

/// The serde name of a unit enum variant.
fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A unix socket operation the probe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixOp {
    /// `connect()` returned.
    Connect,
    /// `bind()` returned.
    Bind,
    /// `accept()`/`accept4()` returned.
    Accept,
    /// `close()` of a unix socket.
    Close,
    /// First send or receive seen on a socket.
    Seen,
    /// A send.
    Send,
    /// A receive.
    Recv,
}

impl UnixOp {
    fn from_raw(v: u32) -> Option<Self> {
        use probe_common::unix::op;
        Some(match v {
            op::CONNECT => Self::Connect,
            op::BIND => Self::Bind,
            op::ACCEPT => Self::Accept,
            op::CLOSE => Self::Close,
            op::SEEN => Self::Seen,
            op::SEND => Self::Send,
            op::RECV => Self::Recv,
            _ => return None,
        })
    }
}

impl std::fmt::Display for UnixOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// Why an epoll call was sent on its own (see [`call_reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallReason {
    /// The thread's first call since tracing began.
    First,
    /// The call failed.
    Error,
    /// The thread waited on another epoll fd than before.
    EpfdChanged,
}

/// Signal numbers the analysis asks about (`libc`'s, as u32 like the records).
pub mod sig {
    /// nginx: reload the configuration.
    pub const HUP: u32 = libc::SIGHUP as u32;
    /// Cannot be caught.
    pub const KILL: u32 = libc::SIGKILL as u32;
}

/// A syscall's `-errno` return for `libc`'s `errno`.
pub const fn neg_errno(errno: i32) -> i64 {
    -(errno as i64)
}

/// Who and when: the fields every event has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// CLOCK_MONOTONIC ns when the kernel produced the record.
    pub ts_ns: u64,
    /// CPU it was produced on.
    pub cpu: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The thread's comm.
    pub comm: String,
}

/// One thread's epoll activity over one bucket (see [`probe_common::EpollBucket`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollBucketEvent {
    /// Who and when (`ts_ns` is when the bucket was sent).
    #[serde(flatten)]
    pub task: Task,
    /// Entry of the first call.
    pub start_ns: u64,
    /// Exit of the last call.
    pub end_ns: u64,
    /// Completed calls.
    pub calls: u64,
    /// Calls with a zero timeout.
    pub zero_timeout: u64,
    /// Calls that returned no event.
    pub zero_events: u64,
    /// Events returned in all.
    pub events: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time spent inside the calls.
    pub blocked_ns: u64,
    /// epfd of the last call.
    pub epfd: i32,
    /// maxevents of the last call.
    pub maxevents: i32,
    /// Timeout of the last call in ns; -1 is infinite.
    pub timeout_ns: i64,
    /// The syscalls seen.
    pub syscalls: Vec<Syscall>,
}

/// One epoll call sent on its own: the first of a thread, an error, or an epfd change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollCallEvent {
    /// Who and when (`ts_ns` is the exit time).
    #[serde(flatten)]
    pub task: Task,
    /// Which syscall.
    pub syscall: Syscall,
    /// Entry time.
    pub enter_ns: u64,
    /// epoll fd.
    pub epfd: i32,
    /// maxevents argument.
    pub maxevents: i32,
    /// Timeout in ns; -1 is infinite.
    pub timeout_ns: i64,
    /// Events returned, or -errno.
    pub ret: i64,
    /// Why it was sent.
    pub reasons: Vec<CallReason>,
}

/// A target forked a process or created a thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcForkEvent {
    /// The parent, and when.
    #[serde(flatten)]
    pub task: Task,
    /// The child's pid or tid.
    pub child: u32,
}

/// A target thread exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcExitEvent {
    /// The exiting thread, and when.
    #[serde(flatten)]
    pub task: Task,
    /// `task->exit_code` (status in bits 8-15, signal in bits 0-6); -1 when unknown.
    pub exit_code: i32,
    /// Parent tgid at exit; 0 when unknown.
    pub parent: u32,
}

impl ProcExitEvent {
    /// The signal that ended it, if one did.
    pub fn signal(&self) -> Option<u32> {
        (self.exit_code >= 0 && self.exit_code & 0x7f != 0).then_some((self.exit_code & 0x7f) as u32)
    }

    /// The exit status, when it exited normally.
    pub fn status(&self) -> Option<i32> {
        (self.exit_code >= 0 && self.exit_code & 0x7f == 0).then_some((self.exit_code >> 8) & 0xff)
    }
}

/// A target exec'ed a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcExecEvent {
    /// The process after the exec, and when.
    #[serde(flatten)]
    pub task: Task,
    /// Parent tgid at exec.
    pub parent: u32,
    /// The program's path as given to exec.
    pub filename: String,
}

/// A signal sent to or by a target; `task` is the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalEvent {
    /// The sender, and when.
    #[serde(flatten)]
    pub task: Task,
    /// Signal number.
    pub sig: u32,
    /// Its name, e.g. SIGKILL.
    pub name: String,
    /// Receiving thread id.
    pub target: u32,
    /// 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info.
    pub result: u32,
    /// `si_code` (0 user kill, 128 kernel, ...).
    pub code: i32,
}

/// A unix socket's identity as the kernel saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockId {
    /// Socket inode (`socket:[N]`); 0 when unknown.
    pub inode: u64,
    /// Peer socket inode; 0 when none or unknown.
    pub peer_inode: u64,
    /// Peer pid from the peer credentials; 0 when unknown.
    pub peer_pid: u32,
}

/// A unix socket's lifecycle event: connect, bind, accept, close, or first sight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSockEvent {
    /// Who and when.
    #[serde(flatten)]
    pub task: Task,
    /// `connect`, `bind`, `accept`, `close` or `seen`.
    pub op: UnixOp,
    /// The fd in the calling process; -1 when not known.
    pub fd: i32,
    /// Result: 0 or a new fd, or -errno.
    pub ret: i64,
    /// Identity.
    #[serde(flatten)]
    pub id: SockId,
    /// Filesystem path, `@name` for an abstract one, empty when none.
    pub path: String,
}

/// One send or receive on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixIoEvent {
    /// Who and when.
    #[serde(flatten)]
    pub task: Task,
    /// `send` or `recv`.
    pub op: UnixOp,
    /// Bytes, or -errno; 0 on receive means the peer closed.
    pub ret: i64,
    /// Identity.
    #[serde(flatten)]
    pub id: SockId,
}

/// One thread's successful traffic on one unix socket over a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixFlowEvent {
    /// Who, and when the flow was sent.
    #[serde(flatten)]
    pub task: Task,
    /// Identity.
    #[serde(flatten)]
    pub id: SockId,
    /// First message in the bucket.
    pub start_ns: u64,
    /// Last message in the bucket.
    pub end_ns: u64,
    /// Successful sends.
    pub sends: u64,
    /// Bytes sent.
    pub send_bytes: u64,
    /// Successful receives.
    pub recvs: u64,
    /// Bytes received.
    pub recv_bytes: u64,
    /// Calls that returned EAGAIN.
    pub eagain: u64,
}

/// A CPU sample; its user-stack copy lives in `samples.bin.gz` at `stack_offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSampleEvent {
    /// The sampled thread, and when.
    #[serde(flatten)]
    pub task: Task,
    /// Kernel stack id in `stacks.json`; negative when the sample hit user mode.
    pub kstack_id: i64,
    /// Frame-pointer user stack id in `stacks.json`; negative when none.
    pub ustack_id: i64,
    /// User instruction pointer.
    pub ip: u64,
    /// User stack pointer (the address of the first copied byte).
    pub sp: u64,
    /// User rbp.
    pub bp: u64,
    /// True when the sample interrupted user mode.
    pub user_mode: bool,
    /// Bytes of user stack copied.
    pub stack_len: u32,
    /// Where the copy starts in the (gunzipped) `samples.bin.gz`.
    pub stack_offset: u64,
    /// The Lua stack, for a process running a LuaJIT VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lua: Option<crate::luajit::sample::LuaSample>,
}

/// Whether a TCP connection was accepted or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnOp {
    /// A target accepted it.
    Accept,
    /// A target closed it.
    Close,
}

/// A TCP connection a target accepted or closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnEvent {
    /// Who and when.
    #[serde(flatten)]
    pub task: Task,
    /// Accept or close.
    pub op: ConnOp,
    /// The fd in the target.
    pub fd: i32,
    /// The socket's inode: the connection's identity.
    pub conn: u64,
    /// `ip:port` of the target's end (accept only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local: String,
    /// `ip:port` of the client (accept only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    /// At close: requests read on it.
    #[serde(default)]
    pub requests: u32,
    /// At close: a request had been read and not answered.
    #[serde(default)]
    pub unanswered: bool,
    /// At close: the unix socket (inode) the unanswered request's handler wrote first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_inode: Option<u64>,
}

/// One HTTP request a target read, with its response when one was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestEvent {
    /// The thread that read it, and when (the read's return).
    #[serde(flatten)]
    pub task: Task,
    /// The fd in the target.
    pub fd: i32,
    /// The connection's socket inode.
    pub conn: u64,
    /// The request line's method.
    pub method: String,
    /// The request line's path (cut to a bounded length).
    pub path: String,
    /// The request-id header's value, when the request carried one.
    #[serde(default)]
    pub request_id: Option<String>,
    /// When its response started (the first write after it).
    #[serde(default)]
    pub response_ns: Option<u64>,
    /// The status the target wrote.
    #[serde(default)]
    pub status: Option<u16>,
    /// When the target closed the connection with this request unanswered.
    #[serde(default)]
    pub closed_ns: Option<u64>,
    /// The unix socket (inode) the thread wrote first in the event-loop turn that read this
    /// request: the plugin server its handler called, when it called one at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_inode: Option<u64>,
}

/// The bytes of a request's or response's start, borrowed from the ring buffer (or, for a
/// response still waiting when the recording ends, from the probe's map): the recorder parses
/// them at once; they never reach the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpChunkView<'a> {
    /// Who read or wrote, and when.
    pub hdr: EventHeader,
    /// True for a request read, false for a response written.
    pub request: bool,
    /// The fd in the target.
    pub fd: i32,
    /// The connection's socket inode.
    pub conn: u64,
    /// For a response: the plugin socket of the request it answers (0: none).
    pub plugin_inode: u64,
    /// The first bytes.
    pub data: &'a [u8],
}

/// The request chunk a record holds, when it is one.
pub fn http_chunk(bytes: &[u8]) -> Option<HttpChunkView<'_>> {
    use std::mem::offset_of;
    let k = kind::HTTP_CHUNK;
    let hdr = read::<EventHeader>(bytes, k).ok().filter(|h| h.kind == k)?;
    let len = read_at::<u32>(bytes, offset_of!(HttpChunk, len), k).ok()? as usize;
    let start = offset_of!(HttpChunk, data);
    let end = start + len.min(probe_common::tcp::HTTP_CHUNK_LEN);
    Some(HttpChunkView {
        hdr,
        request: true,
        fd: read_at(bytes, offset_of!(HttpChunk, fd), k).ok()?,
        conn: read_at(bytes, offset_of!(HttpChunk, inode), k).ok()?,
        plugin_inode: 0,
        data: bytes.get(start..end.min(bytes.len()))?,
    })
}

/// The response start a record carries out of its connection's state (a request's first chunk
/// carries the previous response, a close the last one), when one waited there.
pub fn carried_response(bytes: &[u8]) -> Option<HttpChunkView<'_>> {
    use std::mem::offset_of;
    let hdr = read::<EventHeader>(bytes, 0).ok()?;
    let (k, at, fd, conn) = match hdr.kind {
        kind::HTTP_CHUNK => (
            hdr.kind,
            offset_of!(HttpChunk, response),
            offset_of!(HttpChunk, fd),
            offset_of!(HttpChunk, inode),
        ),
        kind::TCP_CONN => {
            (hdr.kind, offset_of!(TcpConn, response), offset_of!(TcpConn, fd), offset_of!(TcpConn, inode))
        }
        _ => return None,
    };
    let r: ResponseStart = read_at(bytes, at, k).ok()?;
    let status = at + offset_of!(ResponseStart, status);
    let status = bytes.get(status..status + (r.len as usize).min(STATUS_LEN))?;
    response_view(hdr.tgid, read_at(bytes, fd, k).ok()?, read_at(bytes, conn, k).ok()?, &r, status)
}

/// A response's start kept in a connection's state, as the view of a response chunk on
/// connection `conn` (fd `fd` of process `tgid`); `None` when none waited (`ts_ns` 0).
pub fn response_view<'a>(
    tgid: u32,
    fd: i32,
    conn: u64,
    r: &ResponseStart,
    status: &'a [u8],
) -> Option<HttpChunkView<'a>> {
    (r.ts_ns != 0).then_some(HttpChunkView {
        hdr: EventHeader { kind: kind::HTTP_CHUNK, cpu: r.cpu, ts_ns: r.ts_ns, tgid, tid: r.tid },
        request: false,
        fd,
        conn,
        plugin_inode: r.plugin_inode,
        data: status,
    })
}

/// `ip:port` of an address the kernel gave (4 bytes used for IPv4, 16 for IPv6).
fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> String {
    const AF_INET: u16 = libc::AF_INET as u16;
    if family == AF_INET {
        let ip = std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
        std::net::SocketAddr::from((ip, port)).to_string()
    } else {
        std::net::SocketAddr::from((std::net::Ipv6Addr::from(*addr), port)).to_string()
    }
}

/// Any event of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// See [`EpollBucketEvent`].
    EpollBucket(EpollBucketEvent),
    /// See [`EpollCallEvent`].
    EpollCall(EpollCallEvent),
    /// See [`ProcForkEvent`].
    ProcFork(ProcForkEvent),
    /// See [`ProcExitEvent`].
    ProcExit(ProcExitEvent),
    /// See [`ProcExecEvent`].
    ProcExec(ProcExecEvent),
    /// See [`SignalEvent`].
    Signal(SignalEvent),
    /// See [`UnixSockEvent`].
    UnixSock(UnixSockEvent),
    /// See [`UnixIoEvent`].
    UnixIo(UnixIoEvent),
    /// See [`CpuSampleEvent`].
    CpuSample(CpuSampleEvent),
    /// See [`UnixFlowEvent`].
    UnixFlow(UnixFlowEvent),
    /// See [`TcpConnEvent`].
    TcpConn(TcpConnEvent),
    /// See [`HttpRequestEvent`].
    HttpRequest(HttpRequestEvent),
}

impl Event {
    /// Its record kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Event::EpollBucket(_) => RecordKind::EpollBucket,
            Event::EpollCall(_) => RecordKind::EpollCall,
            Event::ProcFork(_) => RecordKind::ProcFork,
            Event::ProcExit(_) => RecordKind::ProcExit,
            Event::ProcExec(_) => RecordKind::ProcExec,
            Event::Signal(_) => RecordKind::Signal,
            Event::UnixSock(_) => RecordKind::UnixSock,
            Event::UnixIo(_) => RecordKind::UnixIo,
            Event::CpuSample(_) => RecordKind::CpuSample,
            Event::UnixFlow(_) => RecordKind::UnixFlow,
            Event::TcpConn(_) => RecordKind::TcpConn,
            Event::HttpRequest(_) => RecordKind::HttpRequest,
        }
    }

    /// Who and when.
    pub fn task(&self) -> &Task {
        match self {
            Event::EpollBucket(e) => &e.task,
            Event::EpollCall(e) => &e.task,
            Event::ProcFork(e) => &e.task,
            Event::ProcExit(e) => &e.task,
            Event::ProcExec(e) => &e.task,
            Event::Signal(e) => &e.task,
            Event::UnixSock(e) => &e.task,
            Event::UnixIo(e) => &e.task,
            Event::CpuSample(e) => &e.task,
            Event::UnixFlow(e) => &e.task,
            Event::TcpConn(e) => &e.task,
            Event::HttpRequest(e) => &e.task,
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A field holds a value this build does not know.
    UnknownValue {
        /// The record kind.
        kind: u32,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// Shorter than its kind's struct.
    Truncated {
        /// The record kind.
        kind: u32,
        /// Bytes received.
        len: usize,
    },
    /// A kind this build does not know.
    UnknownKind(u32),
    /// HTTP bytes, which are no event: see [`http_chunk`].
    Payload,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { kind, len } => {
                write!(f, "record of kind {kind} truncated to {len} bytes")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            DecodeError::Payload => f.write_str("HTTP bytes are parsed, not decoded as an event"),
            DecodeError::UnknownValue { kind, field, value } => {
                write!(f, "record of kind {kind}: unknown {field} {value}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads a `T` from the front of `bytes` if it is long enough.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    read_at(bytes, 0, kind)
}

/// Reads a `T` at `offset` of `bytes` if it is long enough: one field of a large record, so
/// the record itself is never copied.
fn read_at<T: Copy>(bytes: &[u8], offset: usize, kind: u32) -> Result<T, DecodeError> {
    let Some(src) = bytes.get(offset..offset + size_of::<T>()) else {
        return Err(DecodeError::Truncated { kind, len: bytes.len() });
    };
    // SAFETY: `src` holds size_of::<T>() bytes; T is a repr(C) POD type from probe-common (or a
    // field of one), valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(bytes, 0)?;
    Ok(match hdr.kind {
        kind::EPOLL_BUCKET => Event::EpollBucket(bucket_event(&read(bytes, hdr.kind)?)),
        kind::EPOLL_CALL => {
            let c: EpollCall = read(bytes, hdr.kind)?;
            Event::EpollCall(EpollCallEvent {
                task: task(&c.hdr, &c.comm),
                syscall: Syscall::from_u32(c.syscall).ok_or(DecodeError::UnknownValue {
                    kind: hdr.kind,
                    field: "syscall",
                    value: c.syscall,
                })?,
                enter_ns: c.enter_ns,
                epfd: c.epfd,
                maxevents: c.maxevents,
                timeout_ns: c.timeout_ns,
                ret: c.ret,
                reasons: reasons(c.reason),
            })
        }
        kind::PROC_FORK => {
            let r: ProcFork = read(bytes, hdr.kind)?;
            Event::ProcFork(ProcForkEvent { task: task(&r.hdr, &r.comm), child: r.child })
        }
        kind::PROC_EXIT => {
            let r: ProcExit = read(bytes, hdr.kind)?;
            Event::ProcExit(ProcExitEvent {
                task: task(&r.hdr, &r.comm),
                exit_code: r.exit_code,
                parent: r.parent,
            })
        }
        kind::PROC_EXEC => {
            let r: ProcExec = read(bytes, hdr.kind)?;
            let name = &r.filename[..(r.filename_len as usize).min(r.filename.len())];
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            Event::ProcExec(ProcExecEvent {
                task: task(&r.hdr, &r.comm),
                parent: r.parent,
                filename: String::from_utf8_lossy(name).into_owned(),
            })
        }
        kind::SIGNAL => {
            let r: Signal = read(bytes, hdr.kind)?;
            Event::Signal(SignalEvent {
                task: task(&r.hdr, &r.comm),
                sig: r.sig,
                name: signal_name(r.sig),
                target: r.target,
                result: r.result,
                code: r.code,
            })
        }
        kind::UNIX_SOCK => {
            let r: UnixSock = read(bytes, hdr.kind)?;
            Event::UnixSock(UnixSockEvent {
                task: task(&r.hdr, &r.comm),
                op: unix_op(r.op, hdr.kind)?,
                fd: r.fd,
                ret: r.ret,
                id: SockId { inode: r.id.inode, peer_inode: r.id.peer_inode, peer_pid: r.id.peer_pid },
                path: path_text(&r.path, r.id.path_len),
            })
        }
        kind::UNIX_IO => {
            let r: UnixIo = read(bytes, hdr.kind)?;
            Event::UnixIo(UnixIoEvent {
                task: task(&r.hdr, &[0; COMM_LEN]),
                op: unix_op(r.op, hdr.kind)?,
                ret: r.ret,
                id: SockId { inode: r.id.inode, peer_inode: r.id.peer_inode, peer_pid: r.id.peer_pid },
            })
        }
        kind::UNIX_FLOW => Event::UnixFlow(flow_event(&read(bytes, hdr.kind)?)),
        kind::TCP_CONN => {
            let r: TcpConn = read(bytes, hdr.kind)?;
            let accept = r.op == probe_common::tcp::conn_op::ACCEPT;
            Event::TcpConn(TcpConnEvent {
                task: task(&r.hdr, &r.comm),
                op: if accept { ConnOp::Accept } else { ConnOp::Close },
                fd: r.fd,
                conn: r.inode,
                local: if accept {
                    socket_addr(r.family, &r.local_addr, r.local_port)
                } else {
                    String::new()
                },
                peer: if accept { socket_addr(r.family, &r.peer_addr, r.peer_port) } else { String::new() },
                requests: r.requests,
                unanswered: !accept && r.phase == probe_common::tcp::conn_phase::AWAIT_RESPONSE,
                plugin_inode: Some(r.plugin_inode)
                    .filter(|&i| i != 0 && r.phase == probe_common::tcp::conn_phase::AWAIT_RESPONSE),
            })
        }
        kind::HTTP_CHUNK => return Err(DecodeError::Payload),
        kind::CPU_SAMPLE => {
            // 8 KiB of stack copy follow the fields: read the fields alone.
            use std::mem::offset_of;
            let k = hdr.kind;
            let comm: [u8; COMM_LEN] = read_at(bytes, offset_of!(CpuSample, comm), k)?;
            Event::CpuSample(CpuSampleEvent {
                task: task(&hdr, &comm),
                kstack_id: read_at(bytes, offset_of!(CpuSample, kstack_id), k)?,
                ustack_id: read_at(bytes, offset_of!(CpuSample, ustack_id), k)?,
                ip: read_at(bytes, offset_of!(CpuSample, ip), k)?,
                sp: read_at(bytes, offset_of!(CpuSample, sp), k)?,
                bp: read_at(bytes, offset_of!(CpuSample, bp), k)?,
                user_mode: read_at::<u32>(bytes, offset_of!(CpuSample, user_mode), k)? != 0,
                stack_len: sample_stack(bytes).len() as u32,
                stack_offset: 0,
                lua: read_at::<probe_common::lua::LuaStack>(bytes, offset_of!(CpuSample, lua), k)
                    .ok()
                    .and_then(|raw| crate::luajit::sample::LuaSample::from_raw(&raw)),
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// Converts a bucket (from the ring buffer, or read from the map at the end) into an event.
pub fn bucket_event(b: &EpollBucket) -> EpollBucketEvent {
    EpollBucketEvent {
        task: task(&b.hdr, &b.comm),
        start_ns: b.start_ns,
        end_ns: b.end_ns,
        calls: b.calls,
        zero_timeout: b.zero_timeout,
        zero_events: b.zero_events,
        events: b.events,
        errors: b.errors,
        blocked_ns: b.blocked_ns,
        epfd: b.last_epfd,
        maxevents: b.last_maxevents,
        timeout_ns: b.last_timeout_ns,
        syscalls: (0..u32::BITS)
            .filter(|i| b.syscalls & (1 << i) != 0)
            .filter_map(Syscall::from_u32)
            .collect(),
    }
}

fn task(hdr: &EventHeader, comm: &[u8; COMM_LEN]) -> Task {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
    Task {
        ts_ns: hdr.ts_ns,
        cpu: hdr.cpu,
        tgid: hdr.tgid,
        tid: hdr.tid,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
    }
}

/// Converts a flow (from the ring buffer, or read from the map at the end) into an event.
pub fn flow_event(f: &UnixFlow) -> UnixFlowEvent {
    UnixFlowEvent {
        task: task(&f.hdr, &[0; COMM_LEN]),
        id: SockId { inode: f.id.inode, peer_inode: f.id.peer_inode, peer_pid: f.id.peer_pid },
        start_ns: f.start_ns,
        end_ns: f.end_ns,
        sends: f.sends,
        send_bytes: f.send_bytes,
        recvs: f.recvs,
        recv_bytes: f.recv_bytes,
        eagain: f.eagain,
    }
}

/// The copied user stack of a CPU-sample record, borrowed from it (empty for any other record).
pub fn sample_stack(bytes: &[u8]) -> &[u8] {
    use std::mem::offset_of;
    let k = kind::CPU_SAMPLE;
    let is_sample = read::<EventHeader>(bytes, k).is_ok_and(|h| h.kind == k);
    let Ok(len) = read_at::<u32>(bytes, offset_of!(CpuSample, stack_len), k) else { return &[] };
    let start = offset_of!(CpuSample, stack);
    let end = start + (len as usize).min(probe_common::sample::USER_STACK_LEN);
    if is_sample { bytes.get(start..end.min(bytes.len())).unwrap_or(&[]) } else { &[] }
}

/// A sun_path as text: `@name` for an abstract address, trailing NULs dropped.
pub fn path_text(path: &[u8; PATH_LEN], len: u32) -> String {
    let p = unix::path_bytes(path, len);
    match p.split_first() {
        Some((0, rest)) => {
            format!("@{}", String::from_utf8_lossy(rest.split(|&b| b == 0).next().unwrap_or_default()))
        }
        _ => String::from_utf8_lossy(p.split(|&b| b == 0).next().unwrap_or_default()).into_owned(),
    }
}

fn unix_op(op: u32, kind: u32) -> Result<UnixOp, DecodeError> {
    UnixOp::from_raw(op).ok_or(DecodeError::UnknownValue { kind, field: "op", value: op })
}

/// The name of a signal number, e.g. 9 -> SIGKILL.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(sig as usize).map_or_else(|| format!("SIG{sig}"), |n| n.to_string())
}

fn reasons(bits: u32) -> Vec<CallReason> {
    [
        (call_reason::FIRST, CallReason::First),
        (call_reason::ERROR, CallReason::Error),
        (call_reason::EPFD_CHANGED, CallReason::EpfdChanged),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, r)| r)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn hdr(kind: u32) -> EventHeader {
        EventHeader { kind, cpu: 1, ts_ns: 5_000, tgid: 10, tid: 11 }
    }

    #[test]
    fn decodes_a_bucket() {
        let b = EpollBucket {
            hdr: hdr(kind::EPOLL_BUCKET),
            comm: comm("nginx"),
            start_ns: 1,
            end_ns: 2,
            calls: 1000,
            zero_timeout: 999,
            zero_events: 998,
            events: 2,
            errors: 0,
            blocked_ns: 77,
            last_epfd: 7,
            last_maxevents: 512,
            last_timeout_ns: 0,
            syscalls: 0b10,
            _pad: 0,
        };
        let Event::EpollBucket(e) = decode(&bytes(&b)).unwrap() else { panic!("wrong kind") };
        assert_eq!(e.task, Task { ts_ns: 5_000, cpu: 1, tgid: 10, tid: 11, comm: "nginx".into() });
        assert_eq!((e.calls, e.zero_timeout, e.zero_events, e.blocked_ns), (1000, 999, 998, 77));
        assert_eq!((e.epfd, e.maxevents, e.timeout_ns), (7, 512, 0));
        assert_eq!(e.syscalls, vec![Syscall::EpollPwait]);
    }

    #[test]
    fn decodes_a_call_with_reasons() {
        let c = EpollCall {
            hdr: hdr(kind::EPOLL_CALL),
            comm: comm("a-sixteen-bytes!"),
            enter_ns: 4_000,
            timeout_ns: -1,
            ret: -4,
            epfd: 3,
            maxevents: 1,
            syscall: 2,
            reason: call_reason::FIRST | call_reason::ERROR,
        };
        let Event::EpollCall(e) = decode(&bytes(&c)).unwrap() else { panic!("wrong kind") };
        assert_eq!(e.task.comm, "a-sixteen-bytes!");
        assert_eq!((e.syscall, e.ret, e.timeout_ns), (Syscall::EpollPwait2, -4, -1));
        assert_eq!(e.reasons, vec![CallReason::First, CallReason::Error]);
        let line = serde_json::to_string(&Event::EpollCall(e)).unwrap();
        assert!(
            line.contains(r#""syscall":"epoll_pwait2""#) && line.contains(r#""reasons":["first","error"]"#)
        );
    }

    #[test]
    fn decodes_fork_and_exit() {
        let f = ProcFork { hdr: hdr(kind::PROC_FORK), comm: comm("sh"), child: 99, _pad: 0 };
        assert!(matches!(decode(&bytes(&f)), Ok(Event::ProcFork(ProcForkEvent { child: 99, .. }))));
        let x = ProcExit { hdr: hdr(kind::PROC_EXIT), comm: comm("sh"), exit_code: 9, parent: 1 };
        let Ok(Event::ProcExit(e)) = decode(&bytes(&x)) else { panic!("wrong kind") };
        assert_eq!((e.signal(), e.status(), e.parent), (Some(9), None, 1));
        let x = ProcExit { exit_code: 3 << 8, ..x };
        let Ok(Event::ProcExit(e)) = decode(&bytes(&x)) else { panic!("wrong kind") };
        assert_eq!((e.signal(), e.status()), (None, Some(3)));
    }

    #[test]
    fn decodes_unix_records_with_paths() {
        let mut path = [0u8; PATH_LEN];
        path[..13].copy_from_slice(b"/tmp/js.sock\0");
        let id = probe_common::SockIdentity { inode: 77, peer_inode: 78, peer_pid: 4711, path_len: 13 };
        let r = UnixSock {
            hdr: hdr(kind::UNIX_SOCK),
            comm: comm("nginx"),
            op: probe_common::unix::op::CONNECT,
            fd: 12,
            ret: -111,
            id,
            path,
            _pad: 0,
        };
        let Ok(Event::UnixSock(e)) = decode(&bytes(&r)) else { panic!("wrong kind") };
        assert_eq!((e.op, e.fd, e.ret, e.path.as_str()), (UnixOp::Connect, 12, -111, "/tmp/js.sock"));
        assert_eq!(e.id, SockId { inode: 77, peer_inode: 78, peer_pid: 4711 });
        let mut abstract_path = [0u8; PATH_LEN];
        abstract_path[1..4].copy_from_slice(b"abc");
        assert_eq!(path_text(&abstract_path, 4), "@abc");
        let io = UnixIo { hdr: hdr(kind::UNIX_IO), op: probe_common::unix::op::SEND, _pad: 0, ret: -32, id };
        let Ok(Event::UnixIo(e)) = decode(&bytes(&io)) else { panic!("wrong kind") };
        assert_eq!((e.op, e.ret, e.id.peer_pid), (UnixOp::Send, -32, 4711));
        let bad = UnixIo { op: 99, ..io };
        assert_eq!(
            decode(&bytes(&bad)),
            Err(DecodeError::UnknownValue { kind: kind::UNIX_IO, field: "op", value: 99 })
        );
    }

    #[test]
    fn decodes_signals_and_samples() {
        let s = Signal { hdr: hdr(kind::SIGNAL), comm: comm("kill"), sig: 9, target: 55, result: 0, code: 0 };
        let Ok(Event::Signal(e)) = decode(&bytes(&s)) else { panic!("wrong kind") };
        assert_eq!((e.name.as_str(), e.target, e.task.tgid), ("SIGKILL", 55, 10));
        let mut c = CpuSample {
            hdr: hdr(kind::CPU_SAMPLE),
            comm: comm("nginx"),
            kstack_id: -14,
            ustack_id: 3,
            ip: 1,
            sp: 2,
            bp: 3,
            stack_len: 4,
            user_mode: 1,
            lua: probe_common::lua::LuaStack::EMPTY,
            stack: [0; probe_common::sample::USER_STACK_LEN],
        };
        c.stack[..4].copy_from_slice(&[9, 8, 7, 6]);
        let raw = bytes(&c);
        assert_eq!(sample_stack(&raw), &[9, 8, 7, 6]);
        let Ok(Event::CpuSample(e)) = decode(&raw) else { panic!("wrong kind") };
        assert_eq!((e.kstack_id, e.ustack_id, e.user_mode, e.stack_len), (-14, 3, true, 4));
        // A record cut right after the bytes the stack copy holds still decodes whole.
        let cut = &raw[..std::mem::offset_of!(CpuSample, stack) + 4];
        assert_eq!(decode(cut), decode(&raw));
        assert_eq!(sample_stack(cut), &[9, 8, 7, 6]);
    }

    #[test]
    fn refuses_truncated_and_unknown_records() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Truncated { kind: 0, len: 3 }));
        let short = bytes(&hdr(kind::EPOLL_BUCKET));
        assert_eq!(decode(&short), Err(DecodeError::Truncated { kind: 1, len: 24 }));
        assert_eq!(decode(&bytes(&hdr(77))), Err(DecodeError::UnknownKind(77)));
    }

    #[test]
    fn names_in_the_trace_are_the_ones_the_tools_print() {
        for s in [Syscall::EpollWait, Syscall::EpollPwait, Syscall::EpollPwait2] {
            assert_eq!(serde_name(&s), s.name());
        }
        assert_eq!(UnixOp::Connect.to_string(), "connect");
        assert_eq!(
            RecordKind::from_raw(kind::CPU_SAMPLE).map(RecordKind::name).as_deref(),
            Some("cpu_sample")
        );
    }

    #[test]
    fn every_record_kind_is_named_as_its_event_tag() {
        for k in 0..=probe_common::drop_slot::COUNT {
            let Some(rk) = RecordKind::from_raw(k) else { continue };
            // A zeroed record of each kind, long enough for any struct.
            let mut raw = vec![0u8; size_of::<CpuSample>()];
            raw[..4].copy_from_slice(&k.to_ne_bytes());
            if k == kind::UNIX_SOCK || k == kind::UNIX_IO {
                let off = if k == kind::UNIX_SOCK {
                    std::mem::offset_of!(UnixSock, op)
                } else {
                    std::mem::offset_of!(UnixIo, op)
                };
                raw[off..off + 4].copy_from_slice(&probe_common::unix::op::BIND.to_ne_bytes());
            }
            if k == kind::HTTP_CHUNK {
                // Payload, never an event: only the chunk reader takes it.
                assert_eq!(decode(&raw), Err(DecodeError::Payload));
                assert!(http_chunk(&raw).is_some_and(|c| c.data.is_empty()));
                continue;
            }
            let ev = decode(&raw).unwrap_or_else(|e| panic!("{rk:?}: {e}"));
            assert_eq!(ev.kind(), rk);
            let line = serde_json::to_string(&ev).unwrap();
            assert!(line.starts_with(&format!(r#"{{"type":"{}""#, rk.name())), "{line}");
        }
    }

    #[test]
    fn decodes_tcp_connections_and_reads_http_chunks() {
        let mut c = TcpConn {
            hdr: hdr(kind::TCP_CONN),
            comm: comm("nginx"),
            op: probe_common::tcp::conn_op::ACCEPT,
            fd: 12,
            inode: 900,
            family: libc::AF_INET as u16,
            local_port: 8000,
            peer_port: 41000,
            _pad: 0,
            local_addr: [0; 16],
            peer_addr: [0; 16],
            phase: 0,
            requests: 0,
            plugin_inode: 0,
            response: ResponseStart::default(),
        };
        c.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        c.peer_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let Ok(Event::TcpConn(e)) = decode(&bytes(&c)) else { panic!("wrong kind") };
        assert_eq!(
            (e.op, e.conn, e.local.as_str(), e.peer.as_str()),
            (ConnOp::Accept, 900, "127.0.0.1:8000", "10.1.2.3:41000")
        );
        c.family = libc::AF_INET6 as u16;
        c.peer_addr = std::net::Ipv6Addr::LOCALHOST.octets();
        let Ok(Event::TcpConn(e)) = decode(&bytes(&c)) else { panic!("wrong kind") };
        assert_eq!(e.peer, "[::1]:41000");
        assert_eq!(e.plugin_inode, None);
        let c =
            TcpConn { op: probe_common::tcp::conn_op::CLOSE, phase: 1, requests: 3, plugin_inode: 4242, ..c };
        let Ok(Event::TcpConn(e)) = decode(&bytes(&c)) else { panic!("wrong kind") };
        assert!(e.op == ConnOp::Close && e.unanswered && e.requests == 3 && e.peer.is_empty());
        assert_eq!(e.plugin_inode, Some(4242));

        assert!(carried_response(&bytes(&c)).is_none(), "no response waited at this close");

        let mut h = HttpChunk {
            hdr: hdr(kind::HTTP_CHUNK),
            fd: 12,
            len: 5,
            inode: 900,
            response: ResponseStart::default(),
            data: [0; probe_common::tcp::HTTP_CHUNK_LEN],
        };
        h.data[..5].copy_from_slice(b"GET /");
        let raw = bytes(&h);
        let v = http_chunk(&raw).unwrap();
        assert_eq!((v.request, v.fd, v.conn, v.plugin_inode, v.data), (true, 12, 900, 0, &b"GET /"[..]));
        assert!(carried_response(&raw).is_none(), "the first request on a connection carries none");
        // A length beyond the buffer is cut to it.
        let h = HttpChunk { len: u32::MAX, ..h };
        assert_eq!(http_chunk(&bytes(&h)).unwrap().data.len(), probe_common::tcp::HTTP_CHUNK_LEN);

        // The next request carries the previous response out of the connection's state, and so
        // does a close: each as the response chunk it stands for, in the writer's name.
        let mut response = ResponseStart {
            ts_ns: 77,
            plugin_inode: 4242,
            cpu: 1,
            tid: 102,
            len: 12,
            _pad: 0,
            status: [0; 16],
        };
        response.status[..12].copy_from_slice(b"HTTP/1.1 502");
        let raw = bytes(&HttpChunk { response, ..h });
        let r = carried_response(&raw).unwrap();
        assert_eq!(
            (r.request, r.hdr.ts_ns, r.hdr.tid, r.hdr.cpu, r.fd, r.conn, r.plugin_inode, r.data),
            (false, 77, 102, 1, 12, 900, 4242, &b"HTTP/1.1 502"[..])
        );
        let raw = bytes(&TcpConn { response, ..c });
        assert_eq!(carried_response(&raw).unwrap().data, b"HTTP/1.1 502");
        assert!(http_chunk(&bytes(&c)).is_none(), "a TCP record is no chunk");
    }

    #[test]
    fn json_lines_round_trip() {
        let f = ProcFork { hdr: hdr(kind::PROC_FORK), comm: comm("sh"), child: 99, _pad: 0 };
        let ev = decode(&bytes(&f)).unwrap();
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.starts_with(r#"{"type":"proc_fork","#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
    }
}
