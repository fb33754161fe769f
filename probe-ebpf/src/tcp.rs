//! TCP connections targets accept, and where each HTTP/1.x request and response starts on them.
//!
//! A connection is known from its accept on: `CONNS` keys it by (tgid, fd). A counting filter in
//! front of it (`CONN_FILTER`) tells most reads and writes on other fds, of targets or not, that
//! they are none with one array load; the others pay one lookup. Bytes are copied
//! only at the first read after a response (a request's start, at most `HTTP_CHUNK_LEN`) and
//! the first write after a request (the status line, kept in the connection's state until the
//! next request's record or the close's carries it out: see `probe_common::tcp`).
//!
//! The plugin socket of a request: an event loop such as nginx's runs a request's handler in the
//! turn that read it, up to its first wait, so the first unix socket the thread writes in that
//! same turn (no epoll call and no unix receive between) is the one its handler called. The
//! thread's state ([`ThreadState::plugin`]) holds the request read in its current turn until
//! that write.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use probe_common::{
    COMM_LEN, ConnKey, ConnState, HttpChunk, TcpConn, ThreadState, kind,
    tcp::{
        CONN_FILTER_SLOTS, HTTP_CHUNK_LEN, REQUEST_CHUNKS, ResponseStart, STATUS_LEN, buf_kind,
        conn_filter_slot, conn_op, conn_phase,
    },
    thread::PluginTurn,
};

use crate::kread::{AF_INET, AF_INET6, read, sock_inode};
use crate::{
    EVENTS, KOFFSETS, NO_WAKEUP, count_drop, current_ids, header, syscall_arg as arg, syscall_ret, thread,
};

/// Connections targets accepted, by (tgid, fd).
#[map]
static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// A counting filter in front of `CONNS` (see `probe_common::tcp::conn_filter_slot`): a read or
/// write on a fd whose slot is 0 is not a traced connection, known from one inlined array load.
#[map]
static CONN_FILTER: Array<u64> = Array::with_max_entries(CONN_FILTER_SLOTS, 0);

/// Adds `delta` (1 or -1 as u64) to the filter slot of (tgid, fd); other CPUs may update it too.
#[inline(always)]
fn filter_add(tgid: u32, fd: u32, delta: u64) {
    if let Some(slot) = CONN_FILTER.get_ptr_mut(conn_filter_slot(tgid, fd)) {
        // SAFETY: a slot of an array map, valid and 8-aligned for the whole run; every change
        // from any CPU is this atomic add (the BPF target has no `AtomicU64::fetch_add`, only the
        // intrinsic, which becomes the instruction), and loads are aligned 8-byte ones.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// False when `fd` of process `tgid` is certainly not a traced connection.
#[inline(always)]
fn maybe_conn(tgid: u32, fd: u64) -> bool {
    // SAFETY: a slot of an array map, valid and 8-aligned for the whole run, which other CPUs
    // change with atomic adds. A volatile aligned 8-byte load is single-copy atomic wherever BPF
    // runs (the BPF target has no atomic load instruction before cpu v4, which LLVM rejects); a
    // value a moment old only costs or saves one lookup in CONNS during the accept or close that
    // changes it.
    CONN_FILTER.get_ptr(conn_filter_slot(tgid, fd as u32)).is_some_and(|n| unsafe { n.read_volatile() } != 0)
}

/// The offset of `msg_iov` in `struct user_msghdr`: user-space ABI, fixed.
const MSGHDR_IOV_OFF: u64 = 16;

/// A user pointer's target, or 0.
#[inline(always)]
fn user_u64(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_user copies fault-safely; any bytes are a valid u64.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// A user `struct iovec` (base, length), in one read; zeros when unreadable.
#[inline(always)]
fn user_iovec(addr: u64) -> (u64, u64) {
    // SAFETY: bpf_probe_read_user copies fault-safely; any bytes are valid u64s.
    unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.map_or((0, 0), |[base, len]| (base, len))
}

/// Where the bytes of a read or write start, and at most how many there are.
#[inline(always)]
fn first_buffer(kind: u32, arg: u64, count: u64) -> (u64, u64) {
    match kind {
        buf_kind::IOVEC => user_iovec(arg),
        buf_kind::MSGHDR => user_iovec(user_u64(arg + MSGHDR_IOV_OFF)),
        _ => (arg, count),
    }
}

/// The traced connection `fd` of the current target, if it is one.
#[inline(always)]
fn conn(tgid: u32, fd: u64) -> Option<(ConnKey, *mut ConnState)> {
    let key = ConnKey { tgid, fd: fd as u32 };
    CONNS.get_ptr_mut(key).map(|c| (key, c))
}

/// Called at the exit of accept/accept4 for a socket that is not AF_UNIX: a TCP connection to
/// trace from now on.
#[inline(always)]
pub fn on_accept(ctx: &TracePointContext, fd: i64, sk: u64, family: u16, tgid: u32, tid: u32) {
    if config!(http) == 0 || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let inode = sock_inode(sk);
    let state = ConnState {
        inode,
        phase: conn_phase::AWAIT_REQUEST,
        requests: 0,
        chunks: 0,
        _pad: 0,
        plugin_inode: 0,
        response: ResponseStart::default(),
    };
    if CONNS.insert(ConnKey { tgid, fd: fd as u32 }, state, 0).is_ok() {
        filter_add(tgid, fd as u32, 1);
    }
    let Some(mut entry) = EVENTS.reserve::<TcpConn>(0) else {
        count_drop(kind::TCP_CONN);
        return;
    };
    let r = entry.as_mut_ptr();
    let hdr = header(kind::TCP_CONN, tgid, tid);
    let comm = aya_ebpf::EbpfContext::command(ctx).unwrap_or([0; COMM_LEN]);
    let k = KOFFSETS.load();
    let (local_port, peer_port) =
        (read::<u16>(sk, k.sock_num).unwrap_or(0), u16::from_be(read::<u16>(sk, k.sock_dport).unwrap_or(0)));
    let mut local_addr = [0u8; 16];
    let mut peer_addr = [0u8; 16];
    if family == AF_INET {
        local_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, k.sock_rcv_saddr).unwrap_or([0; 4]));
        peer_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, k.sock_daddr).unwrap_or([0; 4]));
    } else {
        local_addr = read::<[u8; 16]>(sk, k.sock_v6_rcv_saddr).unwrap_or([0; 16]);
        peer_addr = read::<[u8; 16]>(sk, k.sock_v6_daddr).unwrap_or([0; 16]);
    }
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // TcpConn), ours alone until submit; plain field stores.
    unsafe {
        (*r).hdr = hdr;
        (*r).comm = comm;
        (*r).op = conn_op::ACCEPT;
        (*r).fd = fd as i32;
        (*r).inode = inode;
        (*r).family = family;
        (*r).local_port = local_port;
        (*r).peer_port = peer_port;
        (*r)._pad = 0;
        (*r).local_addr = local_addr;
        (*r).peer_addr = peer_addr;
        (*r).phase = conn_phase::AWAIT_REQUEST;
        (*r).requests = 0;
        (*r).plugin_inode = 0;
        (*r).response = ResponseStart::default();
    }
    entry.submit(NO_WAKEUP);
}

/// Called at the entry of close: true when `fd` was a traced TCP connection (now forgotten).
#[inline(always)]
pub fn on_close(ctx: &TracePointContext, fd: i64, tgid: u32, tid: u32) -> bool {
    if !maybe_conn(tgid, fd as u64) {
        return false;
    }
    let Some((key, state)) = conn(tgid, fd as u64) else { return false };
    // SAFETY: a live map value keyed by this process's fd; copied out before the remove below.
    let state = unsafe { *state };
    // The fd is going: its entry goes whatever happens to the record (a dropped close, counted,
    // loses the response still waiting in it).
    if CONNS.remove(key).is_ok() {
        filter_add(tgid, key.fd, 1u64.wrapping_neg());
    }
    let Some(mut entry) = EVENTS.reserve::<TcpConn>(0) else {
        count_drop(kind::TCP_CONN);
        return true;
    };
    let r = entry.as_mut_ptr();
    let hdr = header(kind::TCP_CONN, tgid, tid);
    let comm = aya_ebpf::EbpfContext::command(ctx).unwrap_or([0; COMM_LEN]);
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // TcpConn), ours alone until submit; plain field stores.
    unsafe {
        (*r).hdr = hdr;
        (*r).comm = comm;
        (*r).op = conn_op::CLOSE;
        (*r).fd = fd as i32;
        (*r).inode = state.inode;
        (*r).family = 0;
        (*r).local_port = 0;
        (*r).peer_port = 0;
        (*r)._pad = 0;
        (*r).local_addr = [0; 16];
        (*r).peer_addr = [0; 16];
        (*r).phase = state.phase;
        (*r).requests = state.requests;
        (*r).plugin_inode = state.plugin_inode;
        (*r).response = state.response;
    }
    entry.submit(NO_WAKEUP);
    true
}

/// The exit of a read of `kind` by a target: when it read from a traced connection that awaits
/// a request, or whose request's header block may still be coming (no response yet, fewer than
/// REQUEST_CHUNKS reads), its first bytes go out. The fd and buffer come from the task's saved
/// registers, so no entry program runs on every read of every process.
#[inline(always)]
fn read_exit(ctx: &TracePointContext, kind: u32) {
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return; // EAGAIN, an error or end of file: no bytes
    }
    let Some((fd, buf)) = crate::exit_args() else { return };
    let (tgid, tid) = current_ids();
    // The filter first: it also ends most reads of other processes (only targets' connections
    // are in it), and the verdict then keeps a process that is no longer a target out.
    if !maybe_conn(tgid, fd) {
        return;
    }
    let Some(thread) = thread::lookup_target() else { return };
    let Some((key, state)) = conn(tgid, fd) else { return };
    // SAFETY: a live map value; u32 reads.
    let (phase, chunks) = unsafe { ((*state).phase, (*state).chunks) };
    if phase != conn_phase::AWAIT_REQUEST && chunks >= REQUEST_CHUNKS {
        return;
    }
    // Reserve first: when the ring is full the connection's state stays as it was, so the
    // response waiting in it is neither lost with this record nor carried later by a request it
    // does not answer (this request is then not seen at all, nor is its response).
    let Some(mut entry) = EVENTS.reserve::<HttpChunk>(0) else {
        count_drop(kind::HTTP_CHUNK);
        return;
    };
    let r = entry.as_mut_ptr();
    let (buf, room) = first_buffer(kind, buf, ret as u64);
    let n = (ret as u64).min(room) as usize;
    // SAFETY: `state` is a live map value keyed by this process's fd, touched by its threads one
    // syscall at a time: plain field copies and stores. `r` is our reserved ring-buffer record
    // (non-null, sized and aligned for an HttpChunk), ours alone until submit.
    let (inode, new) = unsafe {
        let new = (*state).phase == conn_phase::AWAIT_REQUEST;
        (*r).response = ResponseStart::default();
        if new {
            (*state).phase = conn_phase::AWAIT_RESPONSE;
            (*state).requests += 1;
            (*state).chunks = 0;
            (*state).plugin_inode = 0;
            // The previous response goes out with this request's first chunk.
            (*r).response = (*state).response;
            (*state).response.ts_ns = 0;
        }
        (*state).chunks += 1;
        ((*state).inode, new)
    };
    if new {
        thread.plugin = PluginTurn { key, turn: crate::epoll::turn(thread), armed: 1, _pad: 0 };
    }
    fill_chunk(r, key.fd, inode, buf, n.min(HTTP_CHUNK_LEN), tgid, tid);
    entry.submit(NO_WAKEUP);
}

/// Attached to the exits of read and recvfrom: a request's first bytes.
#[tracepoint]
pub fn http_read_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    read_exit(&ctx, buf_kind::PLAIN);
    0
}

#[tracepoint]
pub fn http_readv_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    read_exit(&ctx, buf_kind::IOVEC);
    0
}

#[tracepoint]
pub fn http_recvmsg_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    read_exit(&ctx, buf_kind::MSGHDR);
    0
}

/// Entry of a write on a connection that awaits a response: its status line, kept in the
/// connection's state until the connection's next record carries it out.
#[inline(always)]
fn write_enter(ctx: &TracePointContext, kind: u32) {
    let (tgid, tid) = current_ids();
    let fd = arg(ctx, 0);
    if !maybe_conn(tgid, fd) || !thread::is_current_target() {
        return;
    }
    let Some((_, state)) = conn(tgid, fd) else { return };
    // SAFETY: a live map value keyed by this process's fd, touched by its threads one syscall at
    // a time, valid for the whole run: plain field reads and stores, and `status` lent to the
    // copy helper below (any bytes are a valid [u8; N]).
    let response = unsafe {
        if (*state).phase != conn_phase::AWAIT_RESPONSE {
            return;
        }
        (*state).phase = conn_phase::AWAIT_REQUEST;
        &mut (*state).response
    };
    let (buf, room) = first_buffer(kind, arg(ctx, 1), arg(ctx, 2));
    // SAFETY: state and plugin_inode as above; argument-less helpers.
    unsafe {
        response.plugin_inode = (*state).plugin_inode;
        response.ts_ns = bpf_ktime_get_ns();
        response.cpu = bpf_get_smp_processor_id();
    }
    response.tid = tid;
    // The verifier needs the length bounded by the buffer it writes into.
    let n = (room as usize).min(STATUS_LEN) & (STATUS_LEN * 2 - 1);
    let n = if n > STATUS_LEN { STATUS_LEN } else { n };
    // SAFETY: bpf_probe_read_user_buf copies fault-safely, at most `n` ≤ status.len() bytes.
    let copied =
        n > 0 && unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut response.status[..n]) }.is_ok();
    response.len = if copied { n as u32 } else { 0 };
}

#[tracepoint]
pub fn http_write_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    write_enter(&ctx, buf_kind::PLAIN);
    0
}

#[tracepoint]
pub fn http_writev_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    write_enter(&ctx, buf_kind::IOVEC);
    0
}

#[tracepoint]
pub fn http_sendmsg_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    write_enter(&ctx, buf_kind::MSGHDR);
    0
}

/// Called for each unix send or receive of a target's thread (successful or EAGAIN). The first
/// send in the turn that read a request names that request's plugin socket; a receive first
/// means another request's handler resumed on its reply, so the turn names nothing. Costs a
/// field read when no request is waiting.
#[inline(always)]
pub fn on_unix_io(thread: &mut ThreadState, op: u32, unix_inode: u64) {
    let t = thread.plugin;
    if t.armed == 0 {
        return;
    }
    thread.plugin.armed = 0;
    if op != probe_common::unix::op::SEND || t.turn != crate::epoll::turn(thread) {
        return; // the handler waited first: this write is another request's
    }
    let Some(state) = CONNS.get_ptr_mut(t.key) else { return };
    // SAFETY: a live map value keyed by this process's fd, touched by its threads one syscall at
    // a time; plain field reads and a store.
    unsafe {
        if (*state).phase == conn_phase::AWAIT_RESPONSE && (*state).plugin_inode == 0 {
            (*state).plugin_inode = unix_inode;
        }
    }
}

/// Fills the reserved record `r` with a request's first `n` bytes at user address `buf`
/// (n ≤ HTTP_CHUNK_LEN); its `response` is the caller's.
#[inline(always)]
fn fill_chunk(r: *mut HttpChunk, fd: u32, inode: u64, buf: u64, n: usize, tgid: u32, tid: u32) {
    let hdr = header(kind::HTTP_CHUNK, tgid, tid);
    // SAFETY: `r` is a reserved ring-buffer record (non-null, sized and aligned for an
    // HttpChunk), the caller's alone until it submits; plain field stores.
    unsafe {
        (*r).hdr = hdr;
        (*r).fd = fd as i32;
        (*r).inode = inode;
    }
    // The verifier needs the length bounded by the buffer it writes into.
    let n = n & (HTTP_CHUNK_LEN * 2 - 1);
    let n = if n > HTTP_CHUNK_LEN { HTTP_CHUNK_LEN } else { n };
    // SAFETY: as above; any bytes are a valid [u8; N], so the buffer can be lent out as `&mut`.
    let data = unsafe { &mut (*r).data };
    // SAFETY: bpf_probe_read_user_buf copies fault-safely, at most `n` ≤ data.len() bytes.
    let copied = n > 0 && unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut data[..n]) }.is_ok();
    // SAFETY: as above.
    unsafe { (*r).len = if copied { n as u32 } else { 0 } };
}
