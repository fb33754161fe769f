//! reloadscope's eBPF programs.
//!
//! Every program first checks that the current process is a target (the `TARGETS` map, which
//! user space seeds and the fork program extends), and only then touches other maps. Hot paths
//! aggregate in maps; the `EVENTS` ring buffer carries rare, meaningful records, and every record
//! that does not fit is counted in `DROPS`.
#![no_std]
#![no_main]
// An atomic add for the connection filter: the BPF target has no atomic types with fetch_add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

#[macro_use]
mod globals;
mod epoll;
mod kread;
mod lua;
mod proc;
mod sample;
mod tcp;
mod thread;
mod unix;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    EventHeader, KernelOffsets, ProbeConfig, SYSCALL_ARGS_OFF, SYSCALL_RET_OFF, Target, drop_slot,
};

/// Records for user space: 8 MiB holds seconds of the reproduction's unix traffic.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// CPU samples (about 8 KiB each), apart so they never crowd out the rare records.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Records that did not fit in `EVENTS`, per CPU, indexed by record kind.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_slot::COUNT, 0);

/// Traced processes (and the threads they created), by tgid.
#[map]
static TARGETS: HashMap<u32, Target> = HashMap::with_max_entries(16384, 0);

/// Set by user space at load time; the defaults only keep the verifier's view concrete.
#[unsafe(no_mangle)]
static CONFIG: Global<ProbeConfig> = Global::new(ProbeConfig {
    bucket_ns: 100_000_000,
    off_fork_child: 20,
    follow_forks: 1,
    off_exec_filename: 8,
    off_signal: [8, 36, 16, 44],
    sample_stack_bytes: 8192,
    http: 1,
    floor: 0,
    flow_slots: 1,
    _pad: 0,
});

/// True when user space loaded the programs as the floor: each returns at once (the verifier
/// drops the rest, as CONFIG is read-only), so the kernel's count of their runs and time is
/// what the attach points cost with no work at all.
#[inline(always)]
fn floor() -> bool {
    config!(floor) != 0
}

/// Kernel struct offsets from BTF, set by user space at load time.
#[unsafe(no_mangle)]
static KOFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::ALL_MISSING);

/// The current task as (tgid, tid).
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// The n-th argument of a `syscalls:sys_enter_*` record (8-byte slots). `n` must be a constant
/// where this is inlined: the verifier takes record loads only at constant offsets.
#[inline(always)]
fn syscall_arg(ctx: &TracePointContext, n: u32) -> u64 {
    record_u64(ctx, SYSCALL_ARGS_OFF + 8 * n)
}

/// `ret` of a `syscalls:sys_exit_*` record.
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> i64 {
    record_u64(ctx, SYSCALL_RET_OFF) as i64
}

/// A syscall's first two arguments, read at its exit from the task's saved user registers
/// (`KOFFSETS.regs_arg*`); `None` where this kernel's BTF lacks them. A `sys_exit_*` record has
/// only the return value, and an entry program run just to keep them would cost a run on every
/// such syscall of every process.
#[inline(always)]
fn exit_args() -> Option<(u64, u64)> {
    let (off0, off1) = (koffset!(regs_arg0), koffset!(regs_arg1));
    if off0 == probe_common::MISSING || off1 == probe_common::MISSING {
        return None;
    }
    // SAFETY: argument-less helper and one taking the current task, a trusted BTF pointer; the
    // result is the task's `struct pt_regs *`, which the verifier knows by its BTF type.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    // SAFETY: loads from that pointer at offsets the verifier checks against `struct pt_regs`
    // (they are constants to it, from the read-only KOFFSETS) and makes fault-safe.
    let args = unsafe {
        (
            core::ptr::read_volatile(regs.add(off0 as usize).cast::<u64>()),
            core::ptr::read_volatile(regs.add(off1 as usize).cast::<u64>()),
        )
    };
    Some(args)
}

/// A direct load from the tracepoint record: no helper call, unlike `read_at`.
#[inline(always)]
fn record_u64(ctx: &TracePointContext, off: u32) -> u64 {
    // SAFETY: the record is the program's context, readable at constant, 8-byte aligned offsets
    // inside it (the kernel refuses to attach a program that reads past a record); user space
    // checked the slots against the syscall records it reads the formats of (offsets.rs), whose
    // layout every syscall record shares.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off as usize) as *const u64) }
}

/// True when `tgid` is being traced.
#[inline(always)]
fn is_target(tgid: u32) -> bool {
    TARGETS.get_ptr(tgid).is_some()
}

/// A header for a record of `kind` about the current task.
#[inline(always)]
fn header(kind: u32, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: an argument-less helper, callable from any program (aya marks every helper unsafe).
        cpu: unsafe { bpf_get_smp_processor_id() },
        // SAFETY: an argument-less helper, callable from any program.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid,
    }
}

/// `BPF_RB_NO_WAKEUP`: the record waits for the recorder's next poll (at most 100 ms) instead of
/// waking it. Records that come with every request or every bucket use it: a wakeup costs the
/// kernel an interrupt and the recorder a context switch, microseconds each on a VM.
pub const NO_WAKEUP: u64 = 1;

/// Sends a rare record and wakes the recorder, counting it as dropped when the ring buffer is full.
#[inline(always)]
fn send<T>(kind: u32, record: &T) {
    if EVENTS.output::<T>(record, 0).is_err() {
        count_drop(kind);
    }
}

/// Sends a periodic or per-request record without waking the recorder ([`NO_WAKEUP`]).
#[inline(always)]
fn send_quiet<T>(kind: u32, record: &T) {
    if EVENTS.output::<T>(record, NO_WAKEUP).is_err() {
        count_drop(kind);
    }
}

/// Counts one record of `kind` that could not be sent.
#[inline(always)]
fn count_drop(kind: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(kind) {
        // SAFETY: the map gave a valid pointer to this CPU's own slot: no other CPU writes it (a
        // sample in NMI could interleave on this CPU and lose one count, never corrupt memory).
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL is required for bpf_probe_read_user and friends.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
