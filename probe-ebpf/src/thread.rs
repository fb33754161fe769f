//! Per-thread state in task-local storage (see `probe_common::thread`): the hot syscall programs
//! find a thread's state and learn whether it is a target with one helper call, instead of a hash
//! lookup of the tgid in `TARGETS` followed by one of the tid in a per-thread map.
//!
//! In front of it, each CPU remembers the verdict of the last thread that ran a hot program on it
//! ([`LastThread`]): a thread makes several syscalls in a row, so the programs that need only the
//! verdict before work of their own (an epoll call's entry, a write's on a traced connection)
//! mostly learn it from a per-CPU slot the verifier inlines, without the helper call. The programs
//! that need the state anyway (a syscall's exit, a unix send or receive) go to the storage at once:
//! measured in one A/B each, checking the memory first cost them 10 to 20 ns a run more than it
//! saved, and refreshing it at the exits moved as much cost onto them as it took off the entries.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::map,
    maps::{Array, PerCpuArray},
};
use probe_common::{ThreadState, thread::verdict};

use crate::{current_ids, is_target};

/// A BTF-defined task storage map: aya-ebpf has no type for it. The kernel reads the map's type,
/// key, value and flags from the BTF of these fields, which are never dereferenced.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads as BTF; nothing reads or writes them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current task's value (null when it has none); created zeroed first when `create` is
    /// set.
    #[inline(always)]
    fn current(&self, create: bool) -> *mut T {
        let flags = if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 };
        // SAFETY: the map is this static (the verifier resolves its address to the map), the
        // task is the current one from bpf_get_current_task_btf, a trusted BTF pointer; the
        // helper returns null or a pointer to the task's value of this map's value size.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}

/// The current thread's state from a storage lookup.
#[inline(always)]
fn state(value: *mut ThreadState) -> Option<&'static mut ThreadState> {
    // SAFETY: a live storage value owned by the current task (or null): only this task's
    // programs touch it, one at a time (a program does not run nested in another on its task),
    // so the `&mut` is unique while it is used.
    (!value.is_null()).then(|| unsafe { &mut *value })
}

/// Every thread's state, created on its first traced syscall.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "THREADS")]
static THREADS: TaskStorage<ThreadState> = TaskStorage::new();

/// Slot 0: bumped by user space after every change of `TARGETS`.
#[map]
static TARGETS_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// The verdict of the thread that last ran a hot program on a CPU, at a generation.
#[derive(Clone, Copy)]
#[repr(C)]
struct LastThread {
    tid: u32,
    verdict: u32,
    generation: u32,
    _pad: u32,
}

/// Per CPU, slot 0: the last thread's verdict. Only programs of the thread running on that CPU
/// touch it, one at a time (the sampler in NMI does not).
#[map]
static LAST_THREAD: PerCpuArray<LastThread> = PerCpuArray::with_max_entries(1, 0);

/// The current generation of `TARGETS`.
#[inline(always)]
fn generation() -> u32 {
    // SAFETY: slot 0 of a one-slot array: a valid u32 for the whole run.
    TARGETS_GEN.get_ptr(0).map_or(0, |g| unsafe { *g })
}

/// The current thread's verdict as this CPU remembers it, when it is the last thread seen here
/// and the targets have not changed since.
#[inline(always)]
fn remembered(tid: u32, generation: u32) -> Option<u32> {
    let last = LAST_THREAD.get_ptr(0)?;
    // SAFETY: this CPU's slot, valid for the whole run; plain u32 reads.
    let last = unsafe { &*last };
    (last.tid == tid && last.generation == generation).then_some(last.verdict)
}

/// Makes this CPU remember the current thread's verdict.
#[inline(always)]
fn remember(tid: u32, verdict: u32, generation: u32) {
    if let Some(last) = LAST_THREAD.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for the whole run, written only by programs running on
        // this CPU, one at a time; a plain store.
        unsafe { *last = LastThread { tid, verdict, generation, _pad: 0 } };
    }
}

/// True when the current thread's process is a target, from this CPU's memory when it can.
#[inline(always)]
pub fn is_current_target() -> bool {
    let (tid, generation) = (current_ids().1, generation());
    match remembered(tid, generation) {
        Some(v) => v == verdict::TARGET,
        None => remembered_state(tid, generation).is_some(),
    }
}

/// The current thread's state when its process is a target, through this CPU's memory of the
/// last thread's verdict. Creates the state of a thread seen for the first time and takes the
/// verdict again when user space changed the targets since.
#[inline(always)]
pub fn current_target() -> Option<&'static mut ThreadState> {
    let (tid, generation) = (current_ids().1, generation());
    if remembered(tid, generation) == Some(verdict::OTHER) {
        return None;
    }
    remembered_state(tid, generation)
}

/// The state of thread `tid` (the current one) with its verdict at `generation`, which this CPU
/// then remembers; `None` unless it is a target's.
#[inline(always)]
fn remembered_state(tid: u32, generation: u32) -> Option<&'static mut ThreadState> {
    let state = state_with_verdict(generation)?;
    remember(tid, state.verdict, generation);
    (state.verdict == verdict::TARGET).then_some(state)
}

/// [`current_target`] without this CPU's memory: for the unix sends and receives, which need the
/// state anyway and come mostly from targets, so the memory would only add its own cost
/// (measured: about 15 ns a run more with it), and for reads, which ask only after the connection
/// filter passed.
#[inline(always)]
pub fn lookup_target() -> Option<&'static mut ThreadState> {
    state_with_verdict(generation()).filter(|s| s.verdict == verdict::TARGET)
}

/// The current thread's state (created if need be) with a verdict taken at `generation`.
#[inline(always)]
fn state_with_verdict(generation: u32) -> Option<&'static mut ThreadState> {
    let state = state(THREADS.current(true))?;
    if !state.verdict_is_current(generation) {
        state.verdict = if is_target(current_ids().0) { verdict::TARGET } else { verdict::OTHER };
        state.generation = generation;
    }
    Some(state)
}

/// The current thread's state, if it has one (any thread a hot program saw), without creating it.
#[inline(always)]
pub fn current() -> Option<&'static mut ThreadState> {
    state(THREADS.current(false))
}
