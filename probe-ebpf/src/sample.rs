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

use crate::{CONFIG, NO_WAKEUP, SAMPLES, count_drop, current_ids, header, is_target};

/// Page size on x86-64.
const PAGE: u64 = 4096;

/// Stacks referenced by samples.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    if crate::floor() {
        return 0;
    }
    let (tgid, tid) = current_ids();
    if tgid == 0 || !is_target(tgid) {
        return 0;
    }
    let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else {
        count_drop(kind::CPU_SAMPLE);
        return 0;
    };
    let r = entry.as_mut_ptr();
    let hdr = header(kind::CPU_SAMPLE, tgid, tid);
    // SAFETY: `r` is our reserved ring-buffer record (non-null, sized and aligned for a
    // CpuSample), ours alone until submit; plain field stores.
    unsafe { (*r).hdr = hdr };
    let comm = ctx.command().unwrap_or_default();
    // SAFETY: as above.
    unsafe { (*r).comm = comm };
    let kstack_id = ctx.get_stackid(&STACKS, 0).unwrap_or(-1);
    // SAFETY: as above.
    unsafe { (*r).kstack_id = kstack_id };
    let ustack_id = ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64).unwrap_or(-1);
    // SAFETY: as above.
    unsafe { (*r).ustack_id = ustack_id };
    // The interrupted registers: user mode when the low bits of cs say ring 3.
    // SAFETY: `ctx.ctx` is the bpf_perf_event_data the kernel passed in, valid for the whole run.
    let cs = unsafe { (*ctx.ctx).regs.cs };
    let user_mode = (cs & 3 == 3) as u32;
    // SAFETY: `r` is our reserved record, ours alone until submit.
    unsafe { (*r).user_mode = user_mode };
    // The user registers saved at kernel entry, valid whether the sample hit user or kernel.
    // SAFETY: bpf_task_pt_regs gets the current task's own BTF pointer, and the regs are copied
    // with bpf_probe_read_kernel, which fails rather than faults; all-zero is a valid pt_regs.
    let user: pt_regs = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(regs).unwrap_or(core::mem::zeroed())
    };
    // SAFETY: `r` is our reserved record, ours alone until submit, and `lua` is one of its fields.
    unsafe { crate::lua::walk(tgid, &user, &raw mut (*r).lua) };
    // SAFETY: `r` is our reserved record, ours alone until submit.
    unsafe {
        (*r).ip = user.rip;
        (*r).sp = user.rsp;
        (*r).bp = user.rbp;
        (*r).stack_len = 0;
    }
    // A read that crosses the top of the stack mapping fails whole. The mapping ends on a page
    // boundary, so after the full size only two sizes can be the longest readable one: up to the
    // end of the page after rsp's, and up to the end of rsp's own page.
    let cap = (CONFIG.load().sample_stack_bytes as u64).min(USER_STACK_LEN as u64);
    // SAFETY: only the address of a field of our reserved record; no reference is made.
    let dst = unsafe { &raw mut (*r).stack } as *mut core::ffi::c_void;
    let page_end = (user.rsp | (PAGE - 1)).wrapping_add(1);
    let to_page_end = page_end.wrapping_sub(user.rsp);
    for size in [cap, to_page_end + PAGE, to_page_end] {
        let size = size.min(cap);
        // SAFETY: `dst` has room for USER_STACK_LEN bytes and `size` is at most that; the source
        // is any user address, read fault-safely.
        if size > 0 && user.rsp != 0 && unsafe { bpf_probe_read_user_raw(dst, size as u32, user.rsp) } {
            // SAFETY: `r` is our reserved record, ours alone until submit.
            unsafe { (*r).stack_len = size as u32 };
            break;
        }
    }
    // Samples come at a steady rate: the recorder reads them at its next poll.
    entry.submit(NO_WAKEUP);
    0
}

/// The raw helper: the typed one cannot take a size chosen at run time.
///
/// # Safety
///
/// `dst` must be valid for writes of `size` bytes. `src` may be any address: the helper fails
/// rather than faults.
#[inline(always)]
unsafe fn bpf_probe_read_user_raw(dst: *mut core::ffi::c_void, size: u32, src: u64) -> bool {
    let src = src as *const core::ffi::c_void;
    // SAFETY: the caller guarantees `dst`; the helper reads user memory fault-safely.
    let ret = unsafe { aya_ebpf::helpers::generated::bpf_probe_read_user(dst, size, src) };
    ret == 0
}
