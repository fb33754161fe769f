//! The Lua stack of a sampled LuaJIT process (x86-64, GC64), walked at sample time.
//!
//! `global_State` comes from the interpreter's DISPATCH register (r14) or the last one a sample
//! confirmed; it counts only when its `cur_L` points back at it. No live Lua stack
//! (`cur_L->cframe` NULL: every coroutine suspended, e.g. nginx in `epoll_wait`) records nothing
//! Lua-shaped. Every read is fault-safe and the walk is bounded; user space names the frames.

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_user, macros::map, maps::HashMap};
use probe_common::lua::{
    LUA_MAX_FRAMES, LuaConfig, LuaFrame, LuaStack, POS_UNKNOWN, frame_kind, layout as lj, status,
};

/// Processes that run a LuaJIT VM, by tgid (user space adds them; forks inherit the entry).
#[map]
pub static LUAJIT: HashMap<u32, LuaConfig> = HashMap::with_max_entries(4096, 0);

/// Reads a `T` at user address `addr`, `None` for null or a fault.
#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user copies fault-safely (a bad address is an Err, never a fault);
    // only plain integers and byte arrays are read, valid for any bytes.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// A little-endian u64 at `off` of `bytes`.
#[inline(always)]
fn u64_at<const N: usize>(bytes: &[u8; N], off: usize) -> u64 {
    let mut v = [0u8; 8];
    if off + 8 <= N {
        v.copy_from_slice(&bytes[off..off + 8]);
    }
    u64::from_le_bytes(v)
}

/// `cur_L` when `g` is a `global_State` whose current thread points back at it.
#[inline(always)]
fn confirm(g: u64, cfg: &LuaConfig) -> Option<u64> {
    let l: u64 = user(g.checked_add(cfg.off_cur_l as u64)?)?;
    let glref: u64 = user(l.checked_add(lj::L_GLREF as u64)?)?;
    (glref == g).then_some(l)
}

/// Inherits a parent's VM description (a fork shares its address-space layout).
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    // SAFETY: a copy of the map value; the map stays valid for the program's run.
    if let Some(cfg) = unsafe { LUAJIT.get(parent) } {
        let mut cfg = *cfg;
        cfg.last_g = 0;
        let _ = LUAJIT.insert(child, cfg, 0);
    }
}

/// Forgets a process (exit, or exec: a new address space).
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = LUAJIT.remove(tgid);
}

/// Walks the live Lua stack of `tgid` into `out` (the reserved sample's field).
///
/// # Safety
///
/// `out` must be valid for writes of a `LuaStack` and ours alone.
#[inline(always)]
pub unsafe fn walk(tgid: u32, regs: &pt_regs, out: *mut LuaStack) {
    // SAFETY: the caller guarantees `out`; plain field stores.
    unsafe {
        (*out).g = 0;
        (*out).l = 0;
        (*out).vmstate = 0;
        (*out).nframes = 0;
        (*out).status = status::NONE;
    }
    let Some(cfg) = LUAJIT.get_ptr_mut(tgid) else { return };
    // SAFETY: the map gave a valid pointer; a copy is taken (a racing update is harmless).
    let c = unsafe { *cfg };
    let in_vm = regs.rip >= c.vm_start && regs.rip < c.vm_end;
    let from_r14 = regs.r14.wrapping_sub(c.g2dispatch);
    let (g, l) = match confirm(from_r14, &c) {
        Some(l) => {
            // SAFETY: as above; a single aligned store.
            unsafe { (*cfg).last_g = from_r14 };
            (from_r14, l)
        }
        None => match confirm(c.last_g, &c) {
            Some(l) => (c.last_g, l),
            None => {
                let st = if c.last_g == 0 && !in_vm { status::NO_G } else { status::L_MISMATCH };
                // SAFETY: the caller guarantees `out`.
                unsafe { (*out).status = st };
                return;
            }
        },
    };
    let vmstate: i32 = user(g + c.off_vmstate as u64).unwrap_or(0);
    // SAFETY: the caller guarantees `out`.
    unsafe {
        (*out).g = g;
        (*out).l = l;
        (*out).vmstate = vmstate;
    }
    let Some(state) = user::<[u8; lj::L_READ]>(l) else {
        // SAFETY: the caller guarantees `out`.
        unsafe { (*out).status = status::L_MISMATCH };
        return;
    };
    let cframe = u64_at(&state, lj::L_CFRAME) & !lj::CFRAME_FLAGS;
    if cframe == 0 {
        // SAFETY: the caller guarantees `out`.
        unsafe { (*out).status = status::NOT_LIVE };
        return;
    }
    let stack = u64_at(&state, lj::L_STACK);
    let saved_pc = || user::<u64>(cframe + lj::CFRAME_PC).filter(|&pc| pc != l).unwrap_or(0);
    // SAFETY: the caller guarantees `out`.
    unsafe { (*out).trace.kind = frame_kind::SKIPPED };
    let (base, mut pc) = if vmstate >= 1 {
        // On a trace: the frames as of trace entry, below the trace itself.
        if let Some(t) = trace_frame(g, &c, vmstate as u32) {
            // SAFETY: the caller guarantees `out`.
            unsafe { (*out).trace = t };
        }
        let jit_base: u64 = user(g + c.off_cur_l as u64 + 8).unwrap_or(0);
        (if jit_base != 0 { jit_base } else { u64_at(&state, lj::L_BASE) }, 0)
    } else if in_vm && vmstate == lj::VMST_INTERP && is_func(user(regs.rdx.wrapping_sub(16))) {
        (regs.rdx, regs.rbx)
    } else {
        (u64_at(&state, lj::L_BASE), if vmstate == lj::VMST_C { 0 } else { saved_pc() })
    };
    // One slot per step (skipped steps included), so the verifier sees one counter, not two.
    let mut f = base.wrapping_sub(8);
    let bottom = stack + 8;
    let mut st = status::TRUNCATED;
    let mut n = 0u32;
    for i in 0..LUA_MAX_FRAMES {
        if f <= bottom {
            st = status::OK;
            break;
        }
        let Some(step) = step(f, pc) else {
            st = status::BAD_FRAME;
            break;
        };
        // SAFETY: the caller guarantees `out`; `i` is below the array's length.
        unsafe { (*out).frames[i] = step.frame };
        n = i as u32 + 1;
        if step.entered_from_c {
            st = status::OK;
            break;
        }
        pc = step.caller_pc;
        f = step.caller;
    }
    // SAFETY: the caller guarantees `out`.
    unsafe {
        (*out).nframes = n;
        (*out).status = st;
    }
}

/// One step of the walk: the frame at `f` (its link slot), and where its caller is.
struct Step {
    frame: LuaFrame,
    /// The caller's link slot.
    caller: u64,
    /// The pc the caller is at (one past its call), 0 when unknown.
    caller_pc: u64,
    /// A C or protected-call link: where this VM activation was entered from C.
    entered_from_c: bool,
}

/// Reads the frame whose link slot is `f`, running at `pc`; `None` when it is not a frame.
#[inline(always)]
fn step(f: u64, pc: u64) -> Option<Step> {
    let [tv, link] = user::<[u64; 2]>(f - 8)?;
    let ty = link & lj::FRAME_TYPE;
    let is_lua_link = link & 3 == 0;
    let (caller, caller_pc) = if is_lua_link {
        // The caller's CALL instruction says how far below its frame is.
        let ins = user::<u32>(link.wrapping_sub(4))?;
        (f.wrapping_sub(8 * (2 + ((ins >> 8) & 0xff) as u64)), link)
    } else {
        let cont_pc = if ty == lj::FRAME_CONT { user::<u64>(f - 16).unwrap_or(0) } else { 0 };
        (f.wrapping_sub(link & !lj::FRAME_TYPE), cont_pc)
    };
    let entered_from_c = !is_lua_link && (ty == lj::FRAME_C || ty == lj::FRAME_CP);
    let skipped = LuaFrame { ptr: 0, pos: 0, kind: frame_kind::SKIPPED, link: ty as u8, _pad: 0 };
    // A vararg pseudo-frame repeats the function below it; dummy frames hold the thread.
    if (!is_lua_link && ty == lj::FRAME_VARG) || tv >> 47 == lj::ITYPE_THREAD {
        return Some(Step { frame: skipped, caller, caller_pc: pc, entered_from_c });
    }
    if tv >> 47 != lj::ITYPE_FUNC {
        return None;
    }
    let func = user::<[u8; lj::FUNC_READ]>(tv & lj::GCVMASK)?;
    if func[lj::OFF_GCT] != lj::GCT_FUNC {
        return None;
    }
    let frame = match func[lj::FUNC_FFID] {
        0 => {
            let bc = u64_at(&func, lj::FUNC_PC);
            LuaFrame {
                ptr: bc.wrapping_sub(lj::PROTO_SIZE),
                pos: bcpos(bc, pc),
                kind: frame_kind::LUA,
                link: ty as u8,
                _pad: 0,
            }
        }
        1 => LuaFrame {
            ptr: u64_at(&func, lj::FUNC_CF),
            pos: POS_UNKNOWN,
            kind: frame_kind::C,
            link: ty as u8,
            _pad: 0,
        },
        ffid => LuaFrame { ptr: 0, pos: ffid as u32, kind: frame_kind::FAST, link: ty as u8, _pad: 0 },
    };
    Some(Step { frame, caller, caller_pc, entered_from_c })
}

/// True when `tv` is a function value.
#[inline(always)]
fn is_func(tv: Option<u64>) -> bool {
    tv.is_some_and(|tv| tv >> 47 == lj::ITYPE_FUNC)
}

/// The position of `pc` (one past the current or calling instruction) in the bytecode at `bc`.
#[inline(always)]
fn bcpos(bc: u64, pc: u64) -> u32 {
    if pc <= bc || pc - bc > (1 << 28) { POS_UNKNOWN } else { ((pc - bc) / 4 - 1) as u32 }
}

/// The running trace `traceno` as a frame: the prototype and position it starts at.
#[inline(always)]
fn trace_frame(g: u64, c: &LuaConfig, traceno: u32) -> Option<LuaFrame> {
    if c.off_trace == 0 {
        return None;
    }
    let traces: u64 = user(g + c.off_trace as u64)?;
    let t: u64 = user(traces + 8 * traceno as u64)?;
    let [startpt, startpc] = user::<[u64; 2]>(t + lj::TRACE_STARTPT)?;
    let pt = startpt & lj::GCVMASK;
    let bc = pt + lj::PROTO_SIZE;
    let pos =
        if startpc >= bc && startpc - bc < (1 << 28) { ((startpc - bc) / 4) as u32 } else { POS_UNKNOWN };
    Some(LuaFrame { ptr: pt, pos, kind: frame_kind::TRACE, link: 0, _pad: 0 })
}
