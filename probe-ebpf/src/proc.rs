//! Process tree: forks of targets become targets (so new nginx workers after a reload are traced
//! without a restart), and exits flush the thread's open state.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use probe_common::{ProcExit, ProcFork, Target, kind, target_flag};

use crate::{CONFIG, TARGETS, current_ids, epoll, header, is_target, send};

/// `sched:sched_process_fork` runs in the parent.
#[tracepoint]
pub fn proc_fork(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let cfg = CONFIG.load();
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.off_fork_child as usize) }) else {
        return 0;
    };
    let child = child as u32;
    if cfg.follow_forks != 0 {
        // Threads land here too; their tid never matches a live tgid lookup, and exit removes it.
        let target = Target {
            parent: tgid,
            flags: target_flag::FROM_FORK,
        };
        let _ = TARGETS.insert(child, target, 0);
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

/// `sched:sched_process_exit` runs in the exiting thread.
#[tracepoint]
pub fn proc_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    epoll::flush_thread(tid);
    let record = ProcExit {
        hdr: header(kind::PROC_EXIT, tgid, tid),
        comm: ctx.command().unwrap_or_default(),
    };
    send(kind::PROC_EXIT, &record);
    // The thread's own entry (inserted at its creation), or the process's when the leader exits.
    let _ = TARGETS.remove(tid);
    0
}
