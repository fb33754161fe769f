//! CPU samples of targets (software CPU clock): kernel stack id, the frame-pointer user stack id,
//! the user registers, and a copy of the top of the user stack for unwinding in user space.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::{map, perf_event},
    maps::StackTrace,
    programs::{PerfEventContext, tracing::StackIdContext},
};
use probe_common::{CpuSample, kind, sample::USER_STACK_LEN};

use crate::{CONFIG, SAMPLES, count_drop, current_ids, header, is_target};

/// Stacks referenced by samples.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid == 0 || !is_target(tgid) {
        return 0;
    }
    let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else {
        count_drop(kind::CPU_SAMPLE);
        return 0;
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).hdr = header(kind::CPU_SAMPLE, tgid, tid);
        (*r).comm = ctx.command().unwrap_or_default();
        (*r).kstack_id = ctx.get_stackid(&STACKS, 0).unwrap_or(-1);
        (*r).ustack_id = ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64).unwrap_or(-1);
        // The interrupted registers: user mode when the low bits of cs say ring 3.
        let cs = (*ctx.ctx).regs.cs;
        (*r).user_mode = (cs & 3 == 3) as u32;
        // The user registers saved at kernel entry, valid whether the sample hit user or kernel.
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let user: pt_regs = bpf_probe_read_kernel(regs).unwrap_or(core::mem::zeroed());
        (*r).ip = user.rip;
        (*r).sp = user.rsp;
        (*r).bp = user.rbp;
        (*r).stack_len = 0;
        // A read that crosses the top of the stack mapping fails whole: try smaller sizes.
        let cap = CONFIG.load().sample_stack_bytes;
        let dst = (*r).stack.as_mut_ptr() as *mut core::ffi::c_void;
        for size in [USER_STACK_LEN as u32, 4096, 2048, 1024, 512, 256] {
            if size <= cap && user.rsp != 0 && bpf_probe_read_user_raw(dst, size, user.rsp) {
                (*r).stack_len = size;
                break;
            }
        }
    }
    entry.submit(0);
    0
}

/// The raw helper: the typed one cannot take a size chosen at run time.
#[inline(always)]
unsafe fn bpf_probe_read_user_raw(dst: *mut core::ffi::c_void, size: u32, src: u64) -> bool {
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(dst, size, src as *const core::ffi::c_void) == 0
    }
}
