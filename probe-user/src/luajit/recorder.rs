//! The recorder's side: finds the LuaJIT VM of each traced process (for the kernel's walk), and
//! resolves what the walks point at while the process still lives, because prototypes are
//! freed and their addresses reused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use probe_common::lua::{
    LuaConfig,
    layout::{GCT_THREAD, GCVMASK, OFF_GCT},
};

use super::build::LuaJitBuild;
use super::ffnames;
use super::memory::{Memory, ProcMem, read_u64};
use super::proto::{Proto, callee_name};
use super::sample::{LuaFrameKind, LuaSample, LuaStatus};
use super::symbols::{
    CallEntry, FastEntry, LineEntry, LuaDisabled, LuaLibrary, LuaMeta, LuaSymbols, ProtoEntry,
};
use crate::flame::elf::ElfFile;
use crate::flame::stripped::is_luajit;
use crate::flame::unwind::{bias_for, parse_maps};

/// Test aid: added to every `g2dispatch` handed to the kernel, to prove that wrong offsets give
/// native stacks only (never wrong names).
pub const SKEW_ENV: &str = "RELOADSCOPE_TEST_LUAJIT_SKEW";

/// Where `G` sits after the main `lua_State` in `GG_State`: OpenResty's luajit2 (its
/// `lua_State` has `exdata`/`exdata2`), then upstream LuaJIT.
const MAIN_THREAD_BEFORE_G: [u64; 2] = [0x70, 0x60];

/// What is known of one LuaJIT process.
struct Process {
    build: LuaJitBuild,
    /// Its build's fast-function names, by ffid.
    ffnames: Option<std::rc::Rc<Vec<String>>>,
    mem: Option<ProcMem>,
    protos: HashMap<u64, Option<Proto>>,
    /// `global_State`s that passed (true) or failed (false) the check.
    checked: HashMap<u64, bool>,
    walked: u64,
    mismatched: u64,
}

/// Lua frames across one recording.
#[derive(Default)]
pub struct LuaRecorder {
    /// Each LuaJIT library seen, by path, read once.
    libraries: BTreeMap<String, Library>,
    processes: HashMap<u32, Process>,
    /// Pids whose maps held no LuaJIT when last looked at.
    without: HashSet<u32>,
    symbols: LuaSymbols,
    lines: HashSet<(u32, u64, u32)>,
    calls: HashSet<(u32, u64, u32)>,
    fast: HashSet<(u32, u32)>,
    disabled: BTreeMap<u32, String>,
    samples: BTreeMap<LuaStatus, u64>,
    unreadable: u64,
    skew: u64,
    /// `--no-lua`: configure nothing.
    off: bool,
}

/// One LuaJIT library, read once for every process that maps it.
struct Library {
    /// Its offsets, or why it has none.
    build: Result<LuaJitBuild, String>,
    /// Its LOAD segments, for each process's load bias.
    loads: Vec<(u64, u64, u64)>,
    /// Its build's fast-function names.
    ffnames: Option<std::rc::Rc<Vec<String>>>,
}

impl Library {
    /// Reads the library `path` as `pid` maps it: through the process's root, because the file
    /// may exist only inside its mount namespace.
    fn read(pid: u32, path: &str) -> Option<Self> {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let elf = ElfFile::load(&root.join(path.trim_start_matches('/')))
            .or_else(|_| ElfFile::load(Path::new(path)))
            .ok()?;
        Some(Library {
            build: LuaJitBuild::analyze(&elf).map_err(|e| e.to_string()),
            loads: elf.loads.clone(),
            ffnames: ffnames::for_library(&root, path).map(std::rc::Rc::new),
        })
    }
}

impl LuaRecorder {
    /// A recorder; reads the test skew from the environment.
    pub fn new() -> Self {
        let skew = std::env::var(SKEW_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        LuaRecorder { skew, ..Default::default() }
    }

    /// A recorder that walks nothing (`--no-lua`).
    pub fn off() -> Self {
        LuaRecorder { off: true, ..Default::default() }
    }

    /// Finds a LuaJIT VM in `pid`'s memory map (`maps`, the text of `/proc/PID/maps`); returns
    /// what the kernel's walk needs, or `None` when there is none (or it cannot be walked: the
    /// reason goes to meta.json).
    pub fn configure(&mut self, pid: u32, maps: &str) -> Option<LuaConfig> {
        if self.off || self.processes.contains_key(&pid) {
            return None;
        }
        let maps = parse_maps(maps);
        let Some(entry) = maps.iter().find(|m| is_luajit(Path::new(&m.path))) else {
            self.without.insert(pid);
            return None;
        };
        if !self.libraries.contains_key(&entry.path) {
            self.libraries.insert(entry.path.clone(), Library::read(pid, &entry.path)?);
        }
        let lib = &self.libraries[&entry.path];
        let build = lib.build.clone().ok()?;
        let bias = bias_for(&lib.loads, entry)?;
        self.without.remove(&pid);
        self.processes.insert(
            pid,
            Process {
                build: build.clone(),
                ffnames: lib.ffnames.clone(),
                mem: ProcMem::open(pid),
                protos: HashMap::new(),
                checked: HashMap::new(),
                walked: 0,
                mismatched: 0,
            },
        );
        Some(LuaConfig {
            vm_start: build.vm.start.wrapping_add(bias),
            vm_end: build.vm.end.wrapping_add(bias),
            g2dispatch: build.g2dispatch.wrapping_add(self.skew),
            off_vmstate: build.vmstate as u32,
            off_cur_l: build.cur_l as u32,
            off_trace: build.trace.unwrap_or(0) as u32,
            _pad: 0,
            last_g: 0,
        })
    }

    /// [`Self::configure`] with the map read from /proc now.
    pub fn configure_live(&mut self, pid: u32) -> Option<LuaConfig> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        self.configure(pid, &maps)
    }

    /// Whether `pid` was looked at and has no LuaJIT (yet).
    pub fn lacks(&self, pid: u32) -> bool {
        self.without.contains(&pid)
    }

    /// Takes one sample's Lua stack of `pid`: checks its `global_State` once, then reads each
    /// new prototype, line and call-site name it points at.
    pub fn observe(&mut self, pid: u32, sample: &LuaSample) {
        *self.samples.entry(sample.status).or_default() += 1;
        if !self.processes.contains_key(&pid) {
            // A fork of a configured process (the kernel copied its entry): same layout.
            let _ = self.configure_live(pid);
        }
        let Some(p) = self.processes.get_mut(&pid) else { return };
        if sample.status == LuaStatus::StateMismatch {
            p.mismatched += 1;
        }
        if !sample.status.walked() || self.disabled.contains_key(&pid) {
            return;
        }
        p.walked += 1;
        let Some(mem) = p.mem.as_ref() else { return };
        let ok = *p.checked.entry(sample.g).or_insert_with(|| main_thread_checks(mem, &p.build, sample.g));
        if !ok {
            self.disabled.insert(
                pid,
                format!(
                    "global_State {:#x} failed the runtime check (mainthref at +{:#x} does not point at its main thread)",
                    sample.g, p.build.mainthref
                ),
            );
            return;
        }
        for (i, frame) in sample.frames.iter().enumerate() {
            if frame.kind == LuaFrameKind::Fast
                && let (Some(ffid), Some(names)) = (frame.pos, &p.ffnames)
                && self.fast.insert((pid, ffid))
                && let Some(name) = names.get(ffid as usize)
            {
                self.symbols.fast.push(FastEntry { pid, ffid, name: name.clone() });
            }
            if !matches!(frame.kind, LuaFrameKind::Lua | LuaFrameKind::Trace) {
                continue;
            }
            let fresh = !p.protos.contains_key(&frame.ptr);
            let proto = p.protos.entry(frame.ptr).or_insert_with(|| Proto::read(mem, frame.ptr));
            let Some(proto) = proto.as_ref() else {
                self.unreadable += fresh as u64;
                continue;
            };
            if fresh {
                self.symbols.protos.push(ProtoEntry {
                    pid,
                    addr: proto.addr,
                    file: proto.file(),
                    chunk: proto.chunk.clone(),
                    firstline: proto.firstline,
                });
            }
            let Some(pos) = frame.pos else { continue };
            if self.lines.insert((pid, frame.ptr, pos))
                && let Some(line) = proto.line(mem, pos)
            {
                self.symbols.lines.push(LineEntry { pid, proto: frame.ptr, pos, line });
            }
            // This frame's call site names the frame above it (its callee).
            if i > 0
                && frame.kind == LuaFrameKind::Lua
                && self.calls.insert((pid, frame.ptr, pos))
                && let Some(name) = callee_name(mem, proto, pos)
            {
                self.symbols.calls.push(CallEntry { pid, proto: frame.ptr, pos, name });
            }
        }
    }

    /// The symbols for `lua-symbols.json` and the Lua part of meta.json (`None` when no
    /// traced process ran LuaJIT).
    pub fn finish(mut self) -> (LuaSymbols, Option<LuaMeta>) {
        if self.libraries.is_empty() {
            return (self.symbols, None);
        }
        for (pid, p) in &self.processes {
            if p.walked == 0 && p.mismatched > 0 {
                self.disabled.entry(*pid).or_insert_with(|| {
                    format!(
                        "cur_L never pointed back at global_State ({} samples): the offsets do not fit this build",
                        p.mismatched
                    )
                });
            }
        }
        let libraries = self
            .libraries
            .into_iter()
            .map(|(path, lib)| match lib.build {
                Ok(build) => LuaLibrary { path, build: Some(build), unsupported: None },
                Err(why) => LuaLibrary { path, build: None, unsupported: Some(why) },
            })
            .collect();
        let meta = LuaMeta {
            libraries,
            disabled: self.disabled.into_iter().map(|(pid, reason)| LuaDisabled { pid, reason }).collect(),
            samples: self.samples,
            unreadable_protos: self.unreadable,
        };
        (self.symbols, Some(meta))
    }
}

/// §4.2 of the notes: `G->mainthref` points at the main `lua_State`, which sits right before
/// `G` in `GG_State` and is a thread object.
fn main_thread_checks(mem: &dyn Memory, build: &LuaJitBuild, g: u64) -> bool {
    let Some(main) = read_u64(mem, g.wrapping_add(build.mainthref)).map(|v| v & GCVMASK) else {
        return false;
    };
    let mut gct = [0u8; 1];
    MAIN_THREAD_BEFORE_G.iter().any(|&d| main == g.wrapping_sub(d))
        && mem.read(main + OFF_GCT as u64, &mut gct)
        && gct[0] == GCT_THREAD
}
