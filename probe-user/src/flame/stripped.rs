//! Names for code that a stripped binary's symbol tables leave unnamed (Debian's nginx keeps only
//! `.dynsym`, so its static functions, and LuaJIT's hidden VM, have no symbol).
//!
//! In order of preference, an address gets:
//! - the slot it fills in an nginx module table: `ngx_epoll_module.process_events` names the
//!   static `ngx_epoll_process_events`. Every nginx module exports its `ngx_module_t`, whose
//!   context and command tables point at the module's static hooks; the pointers are read from
//!   the file's dynamic relocations (PIE, shared objects) or its data (non-PIE), and a table counts
//!   when its signature string and version look like nginx's.
//! - `lj_vm(interpreter)` inside LuaJIT's assembler VM, the one FDE of a LuaJIT library
//!   whose CIE names a personality routine (LuaJIT's error unwinder);
//! - `fn@0x…`, the start of its `.eh_frame` FDE, so samples of one unnamed function fold into one
//!   frame instead of one per instruction.

use std::{collections::BTreeMap, path::Path, rc::Rc};

use object::{
    Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationFlags, RelocationTarget, SymbolKind,
    elf,
};

use super::elf::{ElfFile, Elfs};

/// The name of the LuaJIT interpreter frame.
pub const LUAJIT_VM: &str = "lj_vm(interpreter)";

/// Fallback names for one ELF file, addressed by virtual offset (svma).
#[derive(Debug, Default)]
pub struct Fallback {
    /// The file, whose FDEs are the functions; `None` when it cannot be read.
    elf: Option<Rc<ElfFile>>,
    tables: BTreeMap<u64, Vec<String>>,
}

/// Most table slots named in one frame (generic handlers fill hundreds of command slots).
const MAX_SLOTS: usize = 3;

impl Fallback {
    /// Reads the file's `.eh_frame` and nginx module tables; empty when it cannot be read.
    pub fn load(path: &Path) -> Self {
        Elfs::default().get(path).map_or_else(Self::default, Self::new)
    }

    /// The fallback names of `elf`: its `.eh_frame` and nginx module tables.
    pub fn new(elf: Rc<ElfFile>) -> Self {
        let tables = elf.object().map(|obj| nginx_tables(&obj)).unwrap_or_default();
        Fallback { elf: Some(elf), tables }
    }

    /// A name for `svma`, or `None` when no FDE covers it.
    pub fn name(&self, svma: u64) -> Option<String> {
        let elf = self.elf.as_ref()?;
        let fde = elf.fde_at(svma)?;
        if let Some(slots) = self.tables.get(&fde.start) {
            let mut name = slots[..slots.len().min(MAX_SLOTS)].join("/");
            if slots.len() > MAX_SLOTS {
                name.push_str(&format!("/+{}", slots.len() - MAX_SLOTS));
            }
            return Some(name);
        }
        if is_luajit(&elf.path) && fde.personality {
            return Some(LUAJIT_VM.to_owned());
        }
        Some(format!("fn@{:#x}", fde.start))
    }

    /// The nginx table slots found (`module.slot`), by function address.
    pub fn tables(&self) -> &BTreeMap<u64, Vec<String>> {
        &self.tables
    }

    /// The start of the function (FDE) covering `svma`.
    pub fn function_start(&self, svma: u64) -> Option<u64> {
        self.elf.as_ref()?.fde_at(svma).map(|f| f.start)
    }
}

/// Whether a file is a LuaJIT library (or binary), by its name.
pub fn is_luajit(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().contains("luajit"))
}

/// The svma range of LuaJIT's interpreter when `elf` is a LuaJIT library.
pub fn luajit_vm(elf: &ElfFile) -> Option<std::ops::Range<u64>> {
    if !is_luajit(&elf.path) {
        return None;
    }
    elf.first_fde_with_personality().map(|f| f.start..f.end)
}

/// Size of `ngx_module_t` on 64-bit targets (NGX_MODULE_V1 ABI).
const MODULE_SIZE: u64 = 200;
/// `ngx_module_t` field offsets.
const SIGNATURE: u64 = 0x30;
const VERSION: u64 = 0x28;
const CTX: u64 = 0x38;
const COMMANDS: u64 = 0x40;
const TYPE: u64 = 0x48;
const HOOKS: u64 = 0x50;
const HOOK_NAMES: [&str; 7] = [
    "init_master",
    "init_module",
    "init_process",
    "init_thread",
    "exit_thread",
    "exit_process",
    "exit_master",
];
/// Size of `ngx_command_t` and the offset of its `set` handler.
const COMMAND_SIZE: u64 = 56;
const COMMAND_SET: u64 = 24;

/// `ngx_http_module_t`'s hooks.
const HTTP_CTX: [&str; 8] = [
    "preconfiguration",
    "postconfiguration",
    "create_main_conf",
    "init_main_conf",
    "create_srv_conf",
    "merge_srv_conf",
    "create_loc_conf",
    "merge_loc_conf",
];

/// The context slots of each module type: (offset of the first function pointer, names).
fn ctx_slots(module_type: u64) -> Option<(u64, &'static [&'static str])> {
    Some(match &(module_type as u32).to_le_bytes() {
        // ngx_core_module_t: ngx_str_t name, then the hooks.
        b"CORE" => (16, &["create_conf", "init_conf"]),
        // ngx_event_module_t: ngx_str_t *name, two hooks, then ngx_event_actions_t.
        b"EVNT" => (
            8,
            &[
                "create_conf",
                "init_conf",
                "add",
                "del",
                "enable",
                "disable",
                "add_conn",
                "del_conn",
                "notify",
                "process_events",
                "init",
                "done",
            ],
        ),
        b"HTTP" => (0, &HTTP_CTX),
        // ngx_stream_module_t: the http layout without the location hooks.
        b"STRM" => (0, &HTTP_CTX[..6]),
        b"MAIL" => (8, &["create_main_conf", "init_main_conf", "create_srv_conf", "merge_srv_conf"]),
        _ => return None,
    })
}

/// The file's data as a loaded image would hold it before the loader runs, plus its dynamic
/// relocations: enough to follow pointers in static tables.
struct Image<'a> {
    obj: &'a object::File<'a>,
    /// Relocated pointer values by the address that holds them.
    pointers: BTreeMap<u64, u64>,
}

impl<'a> Image<'a> {
    fn new(obj: &'a object::File<'a>) -> Self {
        let mut pointers = BTreeMap::new();
        let symbols = obj.dynamic_symbol_table();
        if let Some(relocs) = obj.dynamic_relocations() {
            for (at, r) in relocs {
                let RelocationFlags::Elf { r_type } = r.flags() else { continue };
                let target = match (r_type, r.target()) {
                    // The pointer is the addend.
                    (elf::R_X86_64_RELATIVE | elf::R_AARCH64_RELATIVE, _) => Some(r.addend() as u64),
                    // R_X86_64_64, R_AARCH64_ABS64 against a symbol this file defines (exported
                    // functions in a shared object); imported ones are named in their own file.
                    (elf::R_X86_64_64 | elf::R_AARCH64_ABS64, RelocationTarget::Symbol(i)) => symbols
                        .as_ref()
                        .and_then(|t| t.symbol_by_index(i).ok())
                        .filter(|s| !s.is_undefined() && s.address() != 0)
                        .map(|s| s.address().wrapping_add(r.addend() as u64)),
                    _ => None,
                };
                if let Some(t) = target {
                    pointers.insert(at, t);
                }
            }
        }
        Image { obj, pointers }
    }

    fn bytes(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        let s = self.obj.sections().find(|s| s.address() <= addr && addr + len <= s.address() + s.size())?;
        let data = s.data().ok()?;
        let off = (addr - s.address()) as usize;
        data.get(off..off + len as usize)
    }

    fn word(&self, addr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().ok()?))
    }

    /// The pointer stored at `addr`, `None` when it is null.
    fn ptr(&self, addr: u64) -> Option<u64> {
        self.pointers.get(&addr).copied().or_else(|| self.word(addr)).filter(|&p| p != 0)
    }

    fn cstr(&self, addr: u64, max: u64) -> Option<&'a [u8]> {
        let s = self.obj.sections().find(|s| s.address() <= addr && addr < s.address() + s.size())?;
        let data = s.data().ok()?.get((addr - s.address()) as usize..)?;
        let data = &data[..data.len().min(max as usize)];
        Some(&data[..data.iter().position(|&b| b == 0)?])
    }
}

/// Function address → `module.slot` for every exported nginx module table in the file.
fn nginx_tables(obj: &object::File<'_>) -> BTreeMap<u64, Vec<String>> {
    let mut names: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    if !obj.is_64() || !obj.is_little_endian() {
        return BTreeMap::new();
    }
    let image = Image::new(obj);
    let mut add = |addr: Option<u64>, name: String| {
        if let Some(a) = addr {
            let v = names.entry(a).or_default();
            if !v.contains(&name) {
                v.push(name);
            }
        }
    };
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        let Ok(module) = sym.name() else { continue };
        if sym.kind() != SymbolKind::Data || sym.size() != MODULE_SIZE || !module.ends_with("_module") {
            continue;
        }
        let m = sym.address();
        let signed =
            image.ptr(m + SIGNATURE).and_then(|p| image.cstr(p, 256)).is_some_and(|s| s.starts_with(b"8,"));
        let version = image.word(m + VERSION).unwrap_or(0);
        if !signed || !(1_000_000..2_000_000).contains(&version) {
            continue;
        }
        for (i, hook) in HOOK_NAMES.iter().enumerate() {
            add(image.ptr(m + HOOKS + 8 * i as u64), format!("{module}.{hook}"));
        }
        if let (Some(ctx), Some((first, slots))) =
            (image.ptr(m + CTX), image.word(m + TYPE).and_then(ctx_slots))
        {
            for (i, slot) in slots.iter().enumerate() {
                add(image.ptr(ctx + first + 8 * i as u64), format!("{module}.{slot}"));
            }
        }
        if let Some(cmds) = image.ptr(m + COMMANDS) {
            for i in 0..512 {
                let c = cmds + COMMAND_SIZE * i;
                let len = image.word(c).unwrap_or(0);
                if len == 0 || len > 128 {
                    break;
                }
                let Some(directive) = image.ptr(c + 8).and_then(|p| image.bytes(p, len)) else { break };
                let directive = String::from_utf8_lossy(directive);
                add(image.ptr(c + COMMAND_SET), format!("{module}.directive.{directive}"));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::flame::elf::Fde;

    fn with(fdes: &[(u64, u64, bool)], tables: &[(u64, &str)], luajit: bool) -> Fallback {
        let fdes = fdes.iter().map(|&(start, end, personality)| Fde { start, end, personality }).collect();
        let path = if luajit { "/lib/libluajit-5.1.so.2" } else { "/lib/libc.so.6" };
        Fallback {
            elf: Some(Rc::new(ElfFile::with_fdes(path, fdes))),
            tables: tables.iter().map(|&(a, n)| (a, n.split('/').map(str::to_owned).collect())).collect(),
        }
    }

    #[test]
    fn names_by_table_then_vm_then_function_start() {
        let f = with(
            &[(0x100, 0x200, false), (0x200, 0x300, true), (0x400, 0x480, false), (0x500, 0x600, false)],
            &[(0x100, "m.x"), (0x500, "m.a/m.b/m.c/m.d/m.e")],
            true,
        );
        assert_eq!(f.name(0x100).as_deref(), Some("m.x"));
        assert_eq!(f.name(0x510).as_deref(), Some("m.a/m.b/m.c/+2"), "long slot lists are cut");
        assert_eq!(f.function_start(0x47f), Some(0x400));
        assert_eq!(f.name(0x1ff).as_deref(), Some("m.x"));
        assert_eq!(f.name(0x250).as_deref(), Some(LUAJIT_VM));
        assert_eq!(f.name(0x47f).as_deref(), Some("fn@0x400"));
        // Gaps between FDEs and addresses before the first have no name.
        assert_eq!(f.name(0x300), None);
        assert_eq!(f.name(0x50), None);
        // Outside a LuaJIT library a personality routine is only a personality routine.
        assert_eq!(with(&[(0x200, 0x300, true)], &[], false).name(0x250).as_deref(), Some("fn@0x200"));
    }

    #[test]
    fn ctx_layouts_by_module_type() {
        let code = |s: &[u8; 4]| u32::from_le_bytes(*s) as u64;
        assert_eq!(ctx_slots(code(b"EVNT")).map(|(o, s)| (o, s[9])), Some((8, "process_events")));
        assert_eq!(ctx_slots(code(b"HTTP")).map(|(o, s)| (o, s.len())), Some((0, 8)));
        assert_eq!(ctx_slots(code(b"CORE")).map(|(o, _)| o), Some(16));
        assert_eq!(ctx_slots(0x1234), None);
    }

    #[test]
    fn unreadable_file_names_nothing() {
        let f = Fallback::load(Path::new("/nonexistent/reloadscope"));
        assert_eq!(f.name(0x1000), None);
        assert!(f.tables().is_empty());
    }
}
