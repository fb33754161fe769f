//! A LuaJIT library's build-specific offsets, read from its code: no debug info needed.
//!
//! - The interpreter is the FDE with a personality routine (LuaJIT emits it for its VM blob).
//! - `lua_close` (exported) loads `L->glref` (at 0x10 only in GC64 builds), then zeroes
//!   `G->cur_L` and loads `G->mainthref`.
//! - Inside the interpreter, `vmstate` is stored as `~state` through DISPATCH (r14) many times,
//!   and `cur_L` as rbp. So `G = DISPATCH - g2dispatch`, with `g2dispatch = cur_L - disp`.
//! - `BC_JLOOP` loads the trace array through DISPATCH, then `trace[n]->mcode` at +0x58.
//!
//! Each value is checked before use; a library that fails gets no Lua frames and a reason.

use std::ops::Range;

use iced_x86::{Decoder, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::flame::elf::ElfFile;

/// `lua_State.glref` in GC64 builds (0x8 without GC64).
const GLREF_GC64: u64 = 0x10;
/// `GCtrace.mcode`: the load that follows the trace-array load in `BC_JLOOP`.
const TRACE_MCODE: u64 = 0x58;
/// Stores of one displacement needed before it counts as `vmstate` or `cur_L`.
const MIN_VOTES: usize = 3;
/// `global_State` is well under this size in every build we know.
const MAX_G_OFFSET: u64 = 0x2000;
/// Bytes of `lua_close` decoded at most.
const LUA_CLOSE_MAX: usize = 512;

/// What the probe needs to know about one LuaJIT build (addresses are the file's, svma).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LuaJitBuild {
    /// The interpreter's code.
    pub vm: Range<u64>,
    /// `DISPATCH - G`.
    pub g2dispatch: u64,
    /// `global_State.vmstate`.
    pub vmstate: u64,
    /// `global_State.cur_L`.
    pub cur_l: u64,
    /// `global_State.mainthref`.
    pub mainthref: u64,
    /// `global_State` offset of the trace array, when found.
    pub trace: Option<u64>,
}

/// Why a library gets no Lua frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// No FDE with a personality routine: no interpreter found.
    NoInterpreter,
    /// `lua_close` is not exported.
    NoLuaClose,
    /// `lua_close` does not load `L->glref` at 0x10: not a GC64 build.
    NotGc64(u64),
    /// A pattern the offsets come from was not found.
    Pattern(&'static str),
    /// The offsets found disagree with each other.
    Inconsistent(String),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::NoInterpreter => {
                write!(f, "no interpreter FDE (a personality-routine FDE) in .eh_frame")
            }
            Unsupported::NoLuaClose => write!(f, "lua_close is not exported"),
            Unsupported::NotGc64(off) => {
                write!(f, "lua_close reads L->glref at {off:#x}, not 0x10: not a GC64 build (unsupported)")
            }
            Unsupported::Pattern(what) => write!(f, "{what} not found in the code"),
            Unsupported::Inconsistent(why) => write!(f, "offsets disagree: {why}"),
        }
    }
}

impl LuaJitBuild {
    /// Reads the offsets from `elf`'s code.
    pub fn analyze(elf: &ElfFile) -> Result<Self, Unsupported> {
        let vm = crate::flame::stripped::luajit_vm(elf).ok_or(Unsupported::NoInterpreter)?;
        let obj = elf.object().ok_or(Unsupported::NoLuaClose)?;
        let code = |range: Range<u64>| -> Option<Vec<u8>> {
            let s =
                obj.sections().find(|s| s.address() <= range.start && range.end <= s.address() + s.size())?;
            let data = s.data().ok()?;
            let lo = (range.start - s.address()) as usize;
            Some(data.get(lo..lo + (range.end - range.start) as usize)?.to_vec())
        };
        let close = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("lua_close") && s.address() != 0)
            .ok_or(Unsupported::NoLuaClose)?;
        let close_len =
            if close.size() == 0 { LUA_CLOSE_MAX as u64 } else { close.size().min(LUA_CLOSE_MAX as u64) };
        let close_code = code(close.address()..close.address() + close_len).ok_or(Unsupported::NoLuaClose)?;
        let (cur_l, mainthref) = read_lua_close(&decode(&close_code, close.address()))?;
        let vm_code = code(vm.clone()).ok_or(Unsupported::NoInterpreter)?;
        let build = from_vm(&decode(&vm_code, vm.start), vm, cur_l, mainthref)?;
        Ok(build)
    }
}

fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    Decoder::with_ip(64, code, ip, DecoderOptions::NONE).into_iter().collect()
}

/// A `mov` whose destination is memory based on `base` with no index.
fn stores_through(i: &Instruction, base: Register) -> bool {
    i.mnemonic() == Mnemonic::Mov
        && i.op0_kind() == OpKind::Memory
        && i.memory_base() == base
        && i.memory_index() == Register::None
}

/// A `mov reg, [base + disp]` of 8 bytes: (destination, displacement).
fn load_through(i: &Instruction, bases: &[Register]) -> Option<(Register, u64)> {
    (i.mnemonic() == Mnemonic::Mov
        && i.op0_kind() == OpKind::Register
        && i.op1_kind() == OpKind::Memory
        && i.memory_size() == MemorySize::UInt64
        && bases.contains(&i.memory_base())
        && i.memory_index() == Register::None)
        .then(|| (i.op0_register(), i.memory_displacement64()))
}

/// `lua_close`: `(cur_L, mainthref)` from `L->glref`'s load, the first zero store through G and
/// the first load through G (`mainthref`, read before or after the store depending on the build).
fn read_lua_close(code: &[Instruction]) -> Result<(u64, u64), Unsupported> {
    // Registers holding L (the first argument, possibly copied) and G.
    let mut l_regs = vec![Register::RDI];
    let mut g_regs: Vec<Register> = Vec::new();
    let (mut cur_l, mut mainthref) = (None, None);
    for i in code {
        if g_regs.is_empty() {
            if let Some((dst, disp)) = load_through(i, &l_regs) {
                if disp != GLREF_GC64 {
                    return Err(Unsupported::NotGc64(disp));
                }
                g_regs.push(dst);
            } else if i.mnemonic() == Mnemonic::Mov
                && i.op0_kind() == OpKind::Register
                && i.op1_kind() == OpKind::Register
                && l_regs.contains(&i.op1_register())
            {
                l_regs.push(i.op0_register());
            }
            continue;
        }
        let zero_store = g_regs.iter().any(|&g| stores_through(i, g))
            && i.memory_size() == MemorySize::UInt64
            && matches!(i.op1_kind(), OpKind::Immediate32to64 | OpKind::Immediate32)
            && i.immediate32() == 0;
        if zero_store && cur_l.is_none() {
            cur_l = Some(i.memory_displacement64());
        } else if let Some((_, disp)) = load_through(i, &g_regs)
            && mainthref.is_none()
        {
            mainthref = Some(disp);
        }
        if let (Some(c), Some(m)) = (cur_l, mainthref) {
            return Ok((c, m));
        }
    }
    Err(Unsupported::Pattern(if g_regs.is_empty() {
        "lua_close's load of L->glref"
    } else if cur_l.is_none() {
        "lua_close's store of G->cur_L = NULL"
    } else {
        "lua_close's load of G->mainthref"
    }))
}

/// The displacement stored through most often, with its count.
fn most_common(disps: impl Iterator<Item = u64>) -> Option<(u64, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for d in disps {
        *counts.entry(d).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|&(d, n)| (n, std::cmp::Reverse(d)))
}

/// The interpreter: `g2dispatch`, `vmstate` and the trace array from its stores through DISPATCH.
fn from_vm(
    code: &[Instruction],
    vm: Range<u64>,
    cur_l: u64,
    mainthref: u64,
) -> Result<LuaJitBuild, Unsupported> {
    // ~LJ_VMST_INTERP, ~LJ_VMST_C, ~LJ_VMST_EXIT as 32-bit immediates.
    const VMSTATES: [u32; 3] = [0xffff_ffff, 0xffff_fffe, 0xffff_fffc];
    let vmstate_stores = code.iter().filter(|i| {
        stores_through(i, Register::R14)
            && i.memory_size() == MemorySize::UInt32
            && i.op1_kind() == OpKind::Immediate32
            && VMSTATES.contains(&i.immediate32())
    });
    let (vmstate_d, votes) = most_common(vmstate_stores.map(Instruction::memory_displacement64))
        .ok_or(Unsupported::Pattern("vmstate stores"))?;
    if votes < MIN_VOTES {
        return Err(Unsupported::Pattern("vmstate stores"));
    }
    let cur_l_stores = code.iter().filter(|i| {
        stores_through(i, Register::R14)
            && i.memory_size() == MemorySize::UInt64
            && i.op1_kind() == OpKind::Register
            && i.op1_register() == Register::RBP
    });
    let (cur_l_d, votes) = most_common(cur_l_stores.map(Instruction::memory_displacement64))
        .ok_or(Unsupported::Pattern("cur_L stores"))?;
    if votes < MIN_VOTES {
        return Err(Unsupported::Pattern("cur_L stores"));
    }
    // disp = field - g2dispatch, as a wrapped negative number.
    let g2dispatch = cur_l.wrapping_sub(cur_l_d);
    let vmstate = vmstate_d.wrapping_add(g2dispatch);
    if g2dispatch == 0 || g2dispatch > MAX_G_OFFSET || vmstate >= g2dispatch || cur_l >= g2dispatch {
        return Err(Unsupported::Inconsistent(format!(
            "g2dispatch {g2dispatch:#x}, vmstate {vmstate:#x}, cur_L {cur_l:#x}"
        )));
    }
    if mainthref >= g2dispatch || mainthref == cur_l {
        return Err(Unsupported::Inconsistent(format!("mainthref {mainthref:#x}")));
    }
    let trace = code.windows(3).find_map(|w| {
        let (arr, disp) = load_through(&w[0], &[Register::R14])?;
        let indexed = w[1].mnemonic() == Mnemonic::Mov
            && w[1].op1_kind() == OpKind::Memory
            && w[1].memory_base() == arr
            && w[1].memory_index_scale() == 8;
        let (_, mcode) = load_through(&w[2], &[w[1].op0_register()])?;
        (indexed && mcode == TRACE_MCODE).then(|| disp.wrapping_add(g2dispatch))
    });
    Ok(LuaJitBuild { vm, g2dispatch, vmstate, cur_l, mainthref, trace: trace.filter(|&t| t < g2dispatch) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's libluajit2 (2.1-20230119), which setup installs with the Lua module.
    const DEBIAN_LIB: &str = "/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2.1.0";

    /// The values found by hand with objdump and confirmed live with gdb
    /// (`../shared/notes/luajit-frames.md` §2.1, §2.4, §8).
    #[test]
    fn debian_library_offsets_match_the_hand_checked_ones() {
        let elf = ElfFile::load(std::path::Path::new(DEBIAN_LIB))
            .unwrap_or_else(|e| panic!("{DEBIAN_LIB}: {e} (run `cargo xtask setup`)"));
        let build = LuaJitBuild::analyze(&elf).unwrap();
        assert_eq!(
            build,
            LuaJitBuild {
                vm: 0x9e40..0xde92,
                g2dispatch: 0xfa8,
                vmstate: 0xb8,
                cur_l: 0x170,
                mainthref: 0xc0,
                trace: Some(0x460),
            }
        );
    }

    #[test]
    fn a_non_gc64_lua_close_is_refused() {
        // mov rax, [rdi+0x8]; mov qword [rax+0x170], 0; ret
        let code = [0x48, 0x8b, 0x47, 0x08, 0x48, 0xc7, 0x80, 0x70, 0x01, 0, 0, 0, 0, 0, 0, 0xc3];
        assert_eq!(read_lua_close(&decode(&code, 0)), Err(Unsupported::NotGc64(8)));
    }

    #[test]
    fn lua_close_through_a_copied_register() {
        // mov rbx, rdi; mov rbp, [rbx+0x10]; mov qword [rbp+0x170], 0; mov rdi, [rbp+0xc0]; ret
        let code = [
            0x48, 0x89, 0xfb, 0x48, 0x8b, 0x6b, 0x10, 0x48, 0xc7, 0x85, 0x70, 0x01, 0, 0, 0, 0, 0, 0, 0x48,
            0x8b, 0xbd, 0xc0, 0, 0, 0, 0xc3,
        ];
        assert_eq!(read_lua_close(&decode(&code, 0)), Ok((0x170, 0xc0)));
    }

    #[test]
    fn too_few_vmstate_stores_are_not_trusted() {
        // mov dword [r14-0xef0], -1 (once) ; mov [r14-0xe38], rbp (x3)
        let mut code = vec![0x41, 0xc7, 0x86, 0x10, 0xf1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        for _ in 0..3 {
            code.extend([0x49, 0x89, 0xae, 0xc8, 0xf1, 0xff, 0xff]);
        }
        let r = from_vm(&decode(&code, 0), 0..code.len() as u64, 0x170, 0xc0);
        assert_eq!(r, Err(Unsupported::Pattern("vmstate stores")));
    }
}
