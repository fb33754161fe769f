//! Lua frames: the LuaJIT 2.1 (x86-64, GC64) stack a CPU sample walks when the sampled process
//! runs a LuaJIT VM. User space finds the build's offsets in the library ([`LuaConfig`], per
//! process); the kernel walks the live `lua_State` at sample time and records, per frame, what
//! naming needs later ([`LuaFrame`]): the prototype and bytecode position of a Lua function, the
//! address of a C function, the id of a fast function. Prototypes are resolved at sample time,
//! because closures die quickly.

/// Frames walked per sample.
pub const LUA_MAX_FRAMES: usize = 32;

/// `bcpos` when the position is unknown.
pub const POS_UNKNOWN: u32 = u32::MAX;

/// Per process (`LUAJIT` map, by tgid): where its VM is and the build's `global_State` layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LuaConfig {
    /// The interpreter's code in this process: `[vm_start, vm_end)`.
    pub vm_start: u64,
    /// One past its end.
    pub vm_end: u64,
    /// `DISPATCH - G`: the interpreter keeps DISPATCH in r14.
    pub g2dispatch: u64,
    /// `global_State.vmstate` (an int32, complemented `LJ_VMST_*` or a trace number).
    pub off_vmstate: u32,
    /// `global_State.cur_L`; `jit_base` follows it.
    pub off_cur_l: u32,
    /// `global_State` offset of `jit_State.trace` (the trace array), 0 when not found.
    pub off_trace: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The last `global_State` a sample confirmed (the kernel updates it).
    pub last_g: u64,
}

/// Why a sample's Lua stack is what it is.
pub mod status {
    /// The process has no LuaJIT VM we know how to walk.
    pub const NONE: u8 = 0;
    /// No Lua stack is live (`cur_L->cframe` is NULL: every coroutine is suspended).
    pub const NOT_LIVE: u8 = 1;
    /// The walk reached the bottom of the stack, or a native transition.
    pub const OK: u8 = 2;
    /// No `global_State` is known yet (no sample in the interpreter so far).
    pub const NO_G: u8 = 3;
    /// `cur_L` did not point back at the `global_State`.
    pub const L_MISMATCH: u8 = 4;
    /// A frame did not look like one: the frames before it are kept.
    pub const BAD_FRAME: u8 = 5;
    /// More than [`super::LUA_MAX_FRAMES`] frames: the bottom ones are missing.
    pub const TRUNCATED: u8 = 6;
}

/// What a [`LuaFrame`] holds.
pub mod frame_kind {
    /// A slot the walk stepped through without a frame to show (a vararg pseudo-frame, a
    /// dummy frame): user space skips it.
    pub const SKIPPED: u8 = 0;
    /// `ptr` is a `GCproto`, `pos` its bytecode position.
    pub const LUA: u8 = 1;
    /// `ptr` is a C function (`lua_CFunction`).
    pub const C: u8 = 2;
    /// A builtin fast function: `pos` is its ffid.
    pub const FAST: u8 = 3;
    /// A JIT trace (only in [`super::LuaStack::trace`]): `ptr` is the prototype it starts in,
    /// `pos` the start position; the trace number is the stack's `vmstate`.
    pub const TRACE: u8 = 4;
}

/// One frame, leaf first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LuaFrame {
    /// A prototype or C function address, see [`frame_kind`].
    pub ptr: u64,
    /// Bytecode position, ffid, or [`POS_UNKNOWN`].
    pub pos: u32,
    /// One of [`frame_kind`].
    pub kind: u8,
    /// The low 3 bits of the frame's link (LuaJIT's frame type).
    pub link: u8,
    /// Explicit padding.
    pub _pad: u16,
}

/// The Lua part of a CPU sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuaStack {
    /// The `global_State` walked (0 when none).
    pub g: u64,
    /// The `lua_State` walked (0 when none).
    pub l: u64,
    /// `global_State.vmstate` at the sample.
    pub vmstate: i32,
    /// Frames filled in `frames`.
    pub nframes: u32,
    /// One of [`status`].
    pub status: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
    /// The running JIT trace, when `vmstate` is a trace number (kind [`frame_kind::TRACE`]).
    pub trace: LuaFrame,
    /// Leaf first; slots of kind [`frame_kind::SKIPPED`] hold nothing.
    pub frames: [LuaFrame; LUA_MAX_FRAMES],
}

impl LuaStack {
    /// Nothing walked.
    pub const EMPTY: Self = Self {
        g: 0,
        l: 0,
        vmstate: 0,
        nframes: 0,
        status: status::NONE,
        _pad: [0; 7],
        trace: LuaFrame { ptr: 0, pos: 0, kind: 0, link: 0, _pad: 0 },
        frames: [LuaFrame { ptr: 0, pos: 0, kind: 0, link: 0, _pad: 0 }; LUA_MAX_FRAMES],
    };
}

/// LuaJIT 2.1 GC64 layouts that do not move between the builds we know (the `global_State`
/// ones do, and come from [`LuaConfig`]).
pub mod layout {
    /// Bits of a GC64 TValue that hold a GC pointer.
    pub const GCVMASK: u64 = (1 << 47) - 1;
    /// `tv >> 47` of a function value (`LJ_TFUNC` = ~8).
    pub const ITYPE_FUNC: u64 = 0x1fff7;
    /// `tv >> 47` of a thread value (`LJ_TTHREAD` = ~6): the dummy frames' func slot.
    pub const ITYPE_THREAD: u64 = 0x1fff9;
    /// `GCobj.gct` of a function.
    pub const GCT_FUNC: u8 = 8;
    /// `GCobj.gct` of a prototype.
    pub const GCT_PROTO: u8 = 7;
    /// `GCobj.gct` of a string.
    pub const GCT_STR: u8 = 4;
    /// `GCobj.gct` of a thread.
    pub const GCT_THREAD: u8 = 6;
    /// Offset of `gct` in every GC object.
    pub const OFF_GCT: usize = 9;
    /// `GCfunc.ffid` (0: Lua, 1: C, more: fast function).
    pub const FUNC_FFID: usize = 10;
    /// `GCfuncL.pc` (the first bytecode).
    pub const FUNC_PC: usize = 0x20;
    /// `GCfuncC.f`.
    pub const FUNC_CF: usize = 0x28;
    /// Bytes of a `GCfunc` header read per frame.
    pub const FUNC_READ: usize = 0x30;
    /// `sizeof(GCproto)`: its bytecode follows it.
    pub const PROTO_SIZE: u64 = 0x68;
    /// `lua_State.glref`.
    pub const L_GLREF: usize = 0x10;
    /// `lua_State.base`.
    pub const L_BASE: usize = 0x20;
    /// `lua_State.stack`.
    pub const L_STACK: usize = 0x38;
    /// `lua_State.cframe`.
    pub const L_CFRAME: usize = 0x50;
    /// Bytes of `lua_State` read per sample (up to and with `cframe`).
    pub const L_READ: usize = 0x58;
    /// Bits of `cframe` that are flags, not address.
    pub const CFRAME_FLAGS: u64 = 3;
    /// The VM's C frame (`L->cframe`): its `SAVE_PC` slot.
    pub const CFRAME_PC: u64 = 24;
    /// `GCtrace.startpt`, then `startpc` at +8.
    pub const TRACE_STARTPT: u64 = 0x40;
    /// Frame link types (the low 3 bits; a Lua frame only needs its low 2 bits clear).
    pub const FRAME_TYPE: u64 = 7;
    /// `FRAME_C`: entered from C through `lua_call`.
    pub const FRAME_C: u64 = 1;
    /// `FRAME_CONT`: a metamethod continuation.
    pub const FRAME_CONT: u64 = 2;
    /// `FRAME_VARG`: a vararg pseudo-frame.
    pub const FRAME_VARG: u64 = 3;
    /// `FRAME_CP`: entered from C through a protected call or `lua_resume`.
    pub const FRAME_CP: u64 = 5;
    /// `vmstate` of the interpreter (`~LJ_VMST_INTERP`).
    pub const VMST_INTERP: i32 = -1;
    /// `vmstate` of a C function, or of a VM that left to C.
    pub const VMST_C: i32 = -2;
}

const _: () = assert!(core::mem::size_of::<LuaConfig>() == 48);
const _: () = assert!(core::mem::size_of::<LuaFrame>() == 16);
const _: () = assert!(core::mem::size_of::<LuaStack>() == 48 + 16 * LUA_MAX_FRAMES);
