//! epoll_wait / epoll_pwait / epoll_pwait2: entry and exit paired per thread and aggregated per
//! thread in buckets; only first calls, errors and epfd changes go out one by one.
//!
//! The thread's [`ThreadState`] (task storage) holds both the call in progress and the open
//! bucket, so each syscall entry and exit costs one storage lookup, which is also the filter.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    EpollBucket, EpollCall, EpollEnter, Syscall, ThreadState,
    epoll::{TIMEOUT_INFINITE, call_reason, timeout_ms_to_ns, timespec_to_ns},
    epoll_arg, kind,
};

use crate::{current_ids, header, is_target, send, send_quiet, syscall_arg, syscall_ret, thread};

#[tracepoint]
pub fn epoll_wait_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    on_enter(&ctx, Syscall::EpollWait);
    0
}

#[tracepoint]
pub fn epoll_pwait_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    on_enter(&ctx, Syscall::EpollPwait);
    0
}

#[tracepoint]
pub fn epoll_pwait2_enter(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    on_enter(&ctx, Syscall::EpollPwait2);
    0
}

/// Attached to the exit tracepoint of all three syscalls.
#[tracepoint]
pub fn epoll_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, syscall: Syscall) {
    let Some(state) = thread::current_target() else { return };
    let epfd = syscall_arg(ctx, epoll_arg::EPFD) as i32;
    let maxevents = syscall_arg(ctx, epoll_arg::MAXEVENTS) as i32;
    let raw_timeout = syscall_arg(ctx, epoll_arg::TIMEOUT);
    let timeout_ns = match syscall {
        Syscall::EpollPwait2 if raw_timeout == 0 => TIMEOUT_INFINITE,
        // SAFETY: a user pointer, copied with bpf_probe_read_user, which fails rather than faults.
        Syscall::EpollPwait2 => match unsafe { bpf_probe_read_user(raw_timeout as *const [i64; 2]) } {
            Ok([sec, nsec]) => timespec_to_ns(sec, nsec),
            Err(_) => TIMEOUT_INFINITE,
        },
        _ => timeout_ms_to_ns(raw_timeout as i32),
    };
    let mut pending = EpollEnter {
        // SAFETY: an argument-less helper.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        timeout_ns,
        epfd,
        maxevents,
        syscall: syscall as u32,
        first: 0,
    };
    let epoll = &mut state.epoll;
    if epoll.bucket.hdr.kind == 0 {
        // The thread's first call: open its first bucket.
        let (tgid, tid) = current_ids();
        pending.first = 1;
        epoll.bucket = EpollBucket {
            hdr: header(kind::EPOLL_BUCKET, tgid, tid),
            comm: ctx.command().unwrap_or_default(),
            last_epfd: epfd,
            ..EpollBucket::default()
        };
    }
    epoll.pending = pending;
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    // The call in progress is the filter: only targets' entries set it.
    let Some(state) = thread::current() else {
        return; // not a thread any hot program saw
    };
    let state = &mut state.epoll;
    let enter = state.pending;
    if enter.ts_ns == 0 {
        return; // not a target, or entered before tracing began
    }
    state.pending.ts_ns = 0;
    let (tgid, tid) = current_ids();
    state.turns += 1;
    let ret = syscall_ret(ctx);
    // SAFETY: an argument-less helper.
    let now = unsafe { bpf_ktime_get_ns() };

    let bucket = &mut state.bucket;
    let mut reason = 0;
    if ret < 0 {
        reason |= call_reason::ERROR;
    }
    if enter.first != 0 {
        reason |= call_reason::FIRST;
    } else if bucket.last_epfd != enter.epfd {
        reason |= call_reason::EPFD_CHANGED;
    }
    bucket.add_call(&enter, now, ret);
    // The rare sends check that the process is still a target: once tracing stopped (or its
    // leader exited), a bucket stays for user space to read rather than going out after its
    // last drain, and no call record speaks for a process already gone.
    if (bucket.is_due(now, config!(bucket_ns)) || reason != 0) && !is_target(tgid) {
        return;
    }
    if bucket.is_due(now, config!(bucket_ns)) {
        bucket.hdr.ts_ns = now;
        send_quiet(kind::EPOLL_BUCKET, bucket);
        bucket.reset();
    }
    if reason != 0 {
        let call = EpollCall {
            hdr: header(kind::EPOLL_CALL, tgid, tid),
            comm: bucket.comm,
            enter_ns: enter.ts_ns,
            timeout_ns: enter.timeout_ns,
            ret,
            epfd: enter.epfd,
            maxevents: enter.maxevents,
            syscall: enter.syscall,
            reason,
        };
        send(kind::EPOLL_CALL, &call);
    }
}

/// The thread's event-loop turn: epoll calls it has returned from (0 before the first).
#[inline(always)]
pub fn turn(state: &ThreadState) -> u64 {
    state.epoll.turns
}

/// Sends the open bucket of the current thread, which is exiting (its storage goes with it).
#[inline(always)]
pub fn flush_thread(state: &mut ThreadState) {
    let bucket = &mut state.epoll.bucket;
    if bucket.calls != 0 {
        // SAFETY: an argument-less helper.
        bucket.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
        send(kind::EPOLL_BUCKET, bucket);
        bucket.reset();
    }
}
