//! AF_UNIX sockets of targets: connect/bind (path and result), accept, close, and every send and
//! receive (`sock:sock_{send,recv}_length`), each with the socket's inode, peer inode, peer pid
//! and path. A socket's path goes out once, the first time it is seen; messages carry identity.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use probe_common::{
    FlowKey, MISSING, ThreadState, UnixFlow, UnixIo, UnixSock, kind,
    thread::THREAD_FLOWS,
    unix::{PATH_LEN, op},
};

use crate::kread::{AF_UNIX, identity, read, read_path, sock_of_fd, unix_sock_of_fd};
use crate::{
    EVENTS, count_drop, current_ids, header, is_target, send, send_quiet, syscall_arg as arg, syscall_ret,
};

/// A connect or bind in progress: the address asked for.
#[derive(Clone, Copy)]
#[repr(C)]
struct PendingAddr {
    fd: i64,
    op: u32,
    path_len: u32,
    path: [u8; PATH_LEN],
}

/// connect/bind arguments by tid, consumed at exit.
#[map]
static UNIX_PENDING: LruHashMap<u32, PendingAddr> = LruHashMap::with_max_entries(4096, 0);

/// Open flows: one thread's traffic on one socket, aggregated per bucket, for the sockets beyond
/// the thread's own slots (`ThreadState::flows`).
#[map]
static UNIX_FLOWS: LruHashMap<FlowKey, UnixFlow> = LruHashMap::with_max_entries(16384, 0);

/// Socket inodes whose path was already sent.
#[map]
static UNIX_SEEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
fn addr_enter(ctx: &TracePointContext, op: u32) {
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return;
    }
    let (fd, uaddr, len) = (arg(ctx, 0) as i64, arg(ctx, 1), arg(ctx, 2) as u32);
    // SAFETY: a user pointer, copied with bpf_probe_read_user, which fails rather than faults.
    let Ok(family) = (unsafe { bpf_probe_read_user(uaddr as *const u16) }) else { return };
    if family != AF_UNIX || len < 2 {
        return;
    }
    let mut p = PendingAddr { fd, op, path_len: 0, path: [0; PATH_LEN] };
    let n = ((len - 2) as usize).min(PATH_LEN);
    // SAFETY: as above; the helper writes at most the `n` bytes of the slice it is given.
    if n > 0 && unsafe { bpf_probe_read_user_buf((uaddr + 2) as *const u8, &mut p.path[..n]) }.is_ok() {
        p.path_len = n as u32;
    }
    let _ = UNIX_PENDING.insert(tid, p, 0);
}

#[tracepoint]
pub fn unix_connect_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    addr_enter(&ctx, op::CONNECT);
    0
}

#[tracepoint]
pub fn unix_bind_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    addr_enter(&ctx, op::BIND);
    0
}

/// Attached to the exits of connect and bind.
#[tracepoint]
pub fn unix_addr_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let Some(p) = UNIX_PENDING.get_ptr(tid) else { return 0 };
    // SAFETY: a live map value (valid for the whole run) keyed by this thread's tid: only this
    // thread's programs write it, one at a time.
    let p = unsafe { &*p };
    let ret = syscall_ret(&ctx);
    let Some(mut entry) = EVENTS.reserve::<UnixSock>(0) else {
        count_drop(kind::UNIX_SOCK);
        let _ = UNIX_PENDING.remove(tid);
        return 0;
    };
    let r = entry.as_mut_ptr();
    let hdr = header(kind::UNIX_SOCK, tgid, tid);
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // UnixSock), ours alone until submit; plain field stores.
    unsafe { (*r).hdr = hdr };
    let comm = ctx.command().unwrap_or_default();
    // SAFETY: as above.
    unsafe {
        (*r).comm = comm;
        (*r).op = p.op;
        (*r).fd = p.fd as i32;
        (*r).ret = ret;
        (*r).path = p.path;
        (*r)._pad = 0;
    }
    let sk = unix_sock_of_fd(p.fd).unwrap_or(0);
    let id = if sk != 0 { identity(sk).0 } else { Default::default() };
    // SAFETY: as above.
    unsafe {
        (*r).id = id;
        (*r).id.path_len = p.path_len;
    }
    entry.submit(0);
    let _ = UNIX_PENDING.remove(tid);
    0
}

/// Sends a lifecycle record for `sk` (path from the socket itself).
#[inline(always)]
fn send_sock<C: EbpfContext>(ctx: &C, op: u32, fd: i64, ret: i64, sk: u64, tgid: u32, tid: u32) {
    let Some(mut entry) = EVENTS.reserve::<UnixSock>(0) else {
        count_drop(kind::UNIX_SOCK);
        return;
    };
    let r = entry.as_mut_ptr();
    let hdr = header(kind::UNIX_SOCK, tgid, tid);
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // UnixSock), ours alone until submit; plain field stores.
    unsafe { (*r).hdr = hdr };
    let comm = ctx.command().unwrap_or_default();
    // SAFETY: as above.
    unsafe {
        (*r).comm = comm;
        (*r).op = op;
        (*r).fd = fd as i32;
        (*r).ret = ret;
        (*r)._pad = 0;
    }
    let (id, addr) = identity(sk);
    // SAFETY: as above.
    unsafe { (*r).id = id };
    // SAFETY: as above; any bytes are a valid [u8; N], so the path can be lent out as `&mut`.
    let path = unsafe { &mut (*r).path };
    let path_len = read_path(addr, path);
    // SAFETY: as above.
    unsafe { (*r).id.path_len = path_len };
    entry.submit(0);
}

/// Attached to the exits of accept and accept4: the new fd's socket.
#[tracepoint]
pub fn unix_accept_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let ret = syscall_ret(&ctx);
    match sock_of_fd(ret) {
        Some((sk, AF_UNIX)) => send_sock(&ctx, op::ACCEPT, ret, ret, sk, tgid, tid),
        Some((sk, family)) => crate::tcp::on_accept(&ctx, ret, sk, family, tgid, tid),
        None => {}
    }
    0
}

#[tracepoint]
pub fn unix_close_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0) as i64;
    if crate::tcp::on_close(&ctx, fd, tgid, tid) {
        return 0;
    }
    if let Some(sk) = unix_sock_of_fd(fd) {
        send_sock(&ctx, op::CLOSE, fd, 0, sk, tgid, tid);
        // Its last traffic goes out now rather than at the thread's exit or the recording's end.
        end_flow(sk, tid);
    }
    0
}

/// Ends the current thread's flow on socket `sk`, which it is closing: its traffic not yet sent
/// goes out, and its slot or hash entry is freed.
#[inline(always)]
fn end_flow(sk: u64, tid: u32) {
    // The cookie our sends and receives had the kernel give the socket; 0: it has no flow.
    let cookie: u64 = read(sk, koffset!(sock_cookie)).unwrap_or(0);
    if cookie == 0 {
        return;
    }
    let slot = crate::thread::current().and_then(|t| t.flows.find(cookie).map(|i| (t, i)));
    let (flow, key) = match slot {
        Some((thread, i)) if i < THREAD_FLOWS => {
            thread.flows.cookie[i] = 0;
            (&mut thread.flows.flow[i] as *mut UnixFlow, None)
        }
        _ => {
            let key = FlowKey { cookie, tid: tid as u64 };
            let Some(flow) = UNIX_FLOWS.get_ptr_mut(key) else { return };
            (flow, Some(key))
        }
    };
    // SAFETY: the thread's own state or a map value keyed by its tid: only this thread's programs
    // touch either, one at a time, so the `&mut` is unique.
    let flow = unsafe { &mut *flow };
    if flow.start_ns != 0 {
        // SAFETY: an argument-less helper.
        flow.hdr.ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        send(kind::UNIX_FLOW, flow);
        flow.reset();
    }
    if let Some(key) = key {
        let _ = UNIX_FLOWS.remove(key);
    }
}

/// One send or receive. BTF tracepoints (TP_PROTO: sk, ret, flags) skip building the trace
/// record, which matters at a message per call, and give `sk` as a pointer the verifier knows.
#[inline(always)]
fn io(ctx: &BtfTracePointContext, op: u32) {
    let sk_ptr: *const u8 = ctx.arg(0);
    let sk = sk_ptr as u64;
    // Most sends and receives are a gateway's TCP (clients, upstreams): the socket's family ends
    // them, before any lookup, id or clock helper. A BTF tracepoint's `sk` is a pointer the
    // verifier knows, so the family is a plain load (a helper copy costs about 65 ns here); the
    // offset, from the read-only KOFFSETS, is a constant to the verifier, which checks it
    // against struct sock.
    let off = koffset!(sock_family);
    if off == MISSING {
        return;
    }
    // SAFETY: `sk` is the tracepoint's `struct sock *`, valid for the call; the verifier turns
    // the load into a fault-safe one at an offset it checked to be `skc_family`.
    let family = unsafe { core::ptr::read_volatile(sk_ptr.add(off as usize).cast::<u16>()) };
    if family != AF_UNIX {
        return;
    }
    // Then the thread's state, which is also the target filter.
    let Some(thread) = crate::thread::lookup_target() else { return };
    let ret = ctx.arg::<u64>(1) as i32 as i64;
    let now = now_ns();
    // Hot path: an existing flow, in the thread's own slots (no lookup) or else in the hash, by
    // the socket's cookie: a plain load once the kernel made it (at our first sight of the socket,
    // or anyone's use before), as `family` above.
    let cookie_off = koffset!(sock_cookie);
    let cookie = match cookie_off {
        MISSING => 0,
        // SAFETY: as for `family`: a fault-safe load the verifier checked to be `skc_cookie`, an
        // aligned atomic64 whose counter is the cookie.
        off => unsafe { core::ptr::read_volatile(sk_ptr.add(off as usize).cast::<u64>()) },
    };
    let cookie = match cookie {
        // SAFETY: the helper takes the tracepoint's `struct sock *`, a pointer the verifier knows.
        0 => unsafe { bpf_get_socket_cookie(sk_ptr.cast_mut().cast()) },
        c => c,
    };
    let (tgid, tid) = current_ids();
    let key = FlowKey { cookie, tid: tid as u64 };
    let slot = if config!(flow_slots) != 0 { thread.flows.find(cookie) } else { None };
    let existing = match slot {
        Some(i) => thread.flows.flow.get_mut(i).map(|f| f as *mut UnixFlow),
        None => UNIX_FLOWS.get_ptr_mut(key),
    };
    if let Some(flow) = existing {
        // SAFETY: the thread's own state or a map value keyed by its tid: only this thread's
        // programs touch either, one at a time; the reference ends before `thread` is used again.
        let flow = unsafe { &mut *flow };
        if flow.add(op, ret, now) {
            let inode = flow.id.inode;
            if flow.is_due(now, config!(bucket_ns)) {
                flow.hdr.ts_ns = now;
                send_quiet(kind::UNIX_FLOW, flow);
                flow.reset();
            }
            crate::tcp::on_unix_io(thread, op, inode);
            return;
        }
    }
    let (id, _) = identity(sk);
    if id.inode != 0 && UNIX_SEEN.get_ptr(id.inode).is_none() {
        let _ = UNIX_SEEN.insert(id.inode, 1, 0);
        send_sock(ctx, op::SEEN, -1, 0, sk, tgid, tid);
    }
    let mut flow = UnixFlow { hdr: header(kind::UNIX_FLOW, tgid, tid), id, ..UnixFlow::default() };
    if flow.add(op, ret, now) {
        crate::tcp::on_unix_io(thread, op, id.inode);
        let free = if config!(flow_slots) != 0 { thread.flows.free() } else { None };
        match free {
            Some(i) if i < THREAD_FLOWS => {
                thread.flows.cookie[i] = cookie;
                thread.flows.flow[i] = flow;
            }
            _ => {
                let _ = UNIX_FLOWS.insert(key, flow, 0);
            }
        }
    } else {
        // A failure (EPIPE, ECONNRESET, ...) or a receive of 0 (the peer closed): worth reading alone.
        let record = UnixIo { hdr: header(kind::UNIX_IO, tgid, tid), op, _pad: 0, ret, id };
        send(kind::UNIX_IO, &record);
    }
}

/// Sends the flows in the current thread's slots that have traffic not yet sent: the thread is
/// exiting and its state goes with it.
#[inline(always)]
pub fn flush_thread(thread: &mut ThreadState) {
    // SAFETY: an argument-less helper.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    for i in 0..THREAD_FLOWS {
        let flow = &mut thread.flows.flow[i];
        if thread.flows.cookie[i] != 0 && flow.start_ns != 0 {
            flow.hdr.ts_ns = now;
            send(kind::UNIX_FLOW, flow);
            flow.reset();
        }
    }
}

/// CLOCK_MONOTONIC now.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: an argument-less helper.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn unix_send(ctx: BtfTracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    io(&ctx, op::SEND);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn unix_recv(ctx: BtfTracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    io(&ctx, op::RECV);
    0
}
