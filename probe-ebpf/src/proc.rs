//! Process tree: forks of targets become targets (so new nginx workers after a reload are traced
//! without a restart), execs, exits with their code and parent, and signals to or from targets.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint, programs::TracePointContext,
};
use probe_common::{
    ProcExec, ProcExit, ProcFork, Signal, Target, kind,
    proc::{FILENAME_LEN, SIGNAL_MASK},
    target_flag,
};

use crate::kread::{current_exit_code, current_parent_tgid};
use crate::{CONFIG, EVENTS, TARGETS, count_drop, current_ids, epoll, header, is_target, send, thread, unix};

/// `sched:sched_process_fork` runs in the parent.
#[tracepoint]
pub fn proc_fork(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let cfg = CONFIG.load();
    // SAFETY: read_at copies from the tracepoint record with bpf_probe_read_kernel, which fails
    // rather than faults on a bad offset; any bytes are a valid i32.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.off_fork_child as usize) }) else {
        return 0;
    };
    let child = child as u32;
    if cfg.follow_forks != 0 {
        // Threads land here too; their tid never matches a live tgid lookup, and exit removes it.
        let target = Target { parent: tgid, flags: target_flag::FROM_FORK };
        let _ = TARGETS.insert(child, target, 0);
        crate::lua::inherit(tgid, child);
    }
    let record = ProcFork {
        hdr: header(kind::PROC_FORK, tgid, tid),
        comm: ctx.command().unwrap_or_default(),
        child,
        _pad: 0,
    };
    send(kind::PROC_FORK, &record);
    0
}

/// `sched:sched_process_exec` runs in the process after the exec.
#[tracepoint]
pub fn proc_exec(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    crate::lua::forget(tgid);
    let Some(mut entry) = EVENTS.reserve::<ProcExec>(0) else {
        count_drop(kind::PROC_EXEC);
        return 0;
    };
    let r = entry.as_mut_ptr();
    // __data_loc: low 16 bits offset in the record, high 16 bits length.
    let off = CONFIG.load().off_exec_filename as usize;
    // SAFETY: read_at copies from the tracepoint record with bpf_probe_read_kernel, which fails
    // rather than faults on a bad offset; any bytes are a valid u32.
    let loc = unsafe { ctx.read_at::<u32>(off) }.unwrap_or(0);
    let hdr = header(kind::PROC_EXEC, tgid, tid);
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // ProcExec), ours alone until submit; plain field stores.
    unsafe { (*r).hdr = hdr };
    let comm = ctx.command().unwrap_or_default();
    // SAFETY: as above.
    unsafe { (*r).comm = comm };
    let parent = current_parent_tgid().unwrap_or(0);
    // SAFETY: as above.
    unsafe { (*r).parent = parent };
    // SAFETY: a __data_loc offset stays inside the tracepoint record `ctx` points to (and the
    // pointer is only read with bpf_probe_read_kernel_str_bytes, which fails rather than faults).
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    // SAFETY: `r` is our reserved ring-buffer record, ours alone until submit, and any bytes are a
    // valid [u8; N]; the helper copies fault-safely and at most `filename.len()` bytes.
    let filename_len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut (*r).filename) } {
        Ok(s) => s.len().min(FILENAME_LEN) as u32,
        Err(_) => 0,
    };
    // SAFETY: as above.
    unsafe { (*r).filename_len = filename_len };
    entry.submit(0);
    0
}

/// `sched:sched_process_exit` runs in the exiting thread.
#[tracepoint]
pub fn proc_exit(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    // First, whatever TARGETS or the thread's verdict says now (a thread that outlives its
    // leader, a recording that just ended): what it aggregated goes with its storage otherwise.
    // Only a target's thread ever aggregates anything.
    if let Some(thread) = thread::current() {
        epoll::flush_thread(thread);
        unix::flush_thread(thread);
    }
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let record = ProcExit {
        hdr: header(kind::PROC_EXIT, tgid, tid),
        comm: ctx.command().unwrap_or_default(),
        exit_code: current_exit_code().unwrap_or(-1),
        parent: current_parent_tgid().unwrap_or(0),
    };
    send(kind::PROC_EXIT, &record);
    // The thread's own entry (inserted at its creation), or the process's when the leader exits.
    let _ = TARGETS.remove(tid);
    crate::lua::forget(tid);
    0
}

/// `signal:signal_generate` runs in the sender.
#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let [off_sig, off_pid, off_code, off_result] = CONFIG.load().off_signal;
    // SAFETY: read_at copies from the tracepoint record with bpf_probe_read_kernel, which fails
    // rather than faults on a bad offset; any bytes are a valid i32 (as for every read_at below).
    let Ok(sig) = (unsafe { ctx.read_at::<i32>(off_sig as usize) }) else { return 0 };
    if !(0..64).contains(&sig) || SIGNAL_MASK & (1u64 << sig) == 0 {
        return 0;
    }
    let (tgid, tid) = current_ids();
    // SAFETY: as above.
    let target = unsafe { ctx.read_at::<i32>(off_pid as usize) }.unwrap_or(0) as u32;
    if !is_target(tgid) && !is_target(target) {
        return 0;
    }
    let record = Signal {
        hdr: header(kind::SIGNAL, tgid, tid),
        comm: ctx.command().unwrap_or_default(),
        sig: sig as u32,
        target,
        // SAFETY: as above.
        result: unsafe { ctx.read_at::<i32>(off_result as usize) }.unwrap_or(-1) as u32,
        // SAFETY: as above.
        code: unsafe { ctx.read_at::<i32>(off_code as usize) }.unwrap_or(0),
    };
    send(kind::SIGNAL, &record);
    0
}
