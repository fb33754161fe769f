//! What the recorder learned about the Lua frames it saw (`lua-symbols.json`), and what the
//! analysis needs to label them: prototypes, lines, and the names call sites give callees.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::build::LuaJitBuild;
use super::sample::{LuaFrame, LuaFrameKind, LuaSample, LuaStatus};

/// One prototype of one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoEntry {
    /// The process.
    pub pid: u32,
    /// The prototype's address there.
    pub addr: u64,
    /// Its chunk's file name (directories dropped), or the inline chunk's name.
    pub file: String,
    /// The chunk name as LuaJIT keeps it.
    pub chunk: String,
    /// Line of its `function` keyword.
    pub firstline: u32,
}

/// A source line of one bytecode position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineEntry {
    /// The process.
    pub pid: u32,
    /// The prototype.
    pub proto: u64,
    /// The bytecode position.
    pub pos: u32,
    /// Its line.
    pub line: u32,
}

/// The name a call site gives the function it calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEntry {
    /// The process.
    pub pid: u32,
    /// The caller's prototype.
    pub proto: u64,
    /// The call's bytecode position.
    pub pos: u32,
    /// The callee's name there.
    pub name: String,
}

/// The name of a builtin fast function in one process's LuaJIT build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastEntry {
    /// The process.
    pub pid: u32,
    /// Its ffid.
    pub ffid: u32,
    /// Its name (`pcall`, `coroutine.yield`).
    pub name: String,
}

/// `lua-symbols.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaSymbols {
    /// Prototypes read and validated.
    pub protos: Vec<ProtoEntry>,
    /// Lines of the positions samples were at.
    pub lines: Vec<LineEntry>,
    /// Names of the callees at the call sites samples passed through.
    pub calls: Vec<CallEntry>,
    /// Names of the fast functions samples passed through, from the build's `vmdef.lua`.
    #[serde(default)]
    pub fast: Vec<FastEntry>,
}

/// A LuaJIT library found in a traced process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaLibrary {
    /// Its path as the process maps it.
    pub path: String,
    /// The offsets read from it, when it passed the checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<LuaJitBuild>,
    /// Why it gets no Lua frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

/// A process whose Lua frames were dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaDisabled {
    /// The process.
    pub pid: u32,
    /// Why.
    pub reason: String,
}

/// The Lua part of `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaMeta {
    /// Every LuaJIT library seen.
    pub libraries: Vec<LuaLibrary>,
    /// Processes whose walks failed the runtime checks: native stacks only.
    #[serde(default)]
    pub disabled: Vec<LuaDisabled>,
    /// Samples of LuaJIT processes by what their walk found.
    #[serde(default)]
    pub samples: BTreeMap<LuaStatus, u64>,
    /// Prototypes that failed validation (corrupt or freed memory): shown as unknown frames.
    #[serde(default)]
    pub unreadable_protos: u64,
}

/// One Lua frame as the flamegraph and the report show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFrame {
    /// The function's name where its caller names it, else `file:firstline`.
    pub function: String,
    /// Where the function is defined (`file:firstline`), when known.
    pub defined: Option<String>,
    /// The current line (`file:line`), when known.
    pub at: Option<String>,
    /// What it is.
    pub kind: LuaFrameKind,
}

impl NamedFrame {
    /// The frame's name in a folded stack: one per function (not per line), as `lj-lua-stacks`
    /// shows them, with where it is defined when a caller named it.
    pub fn func_label(&self) -> String {
        match (&self.kind, &self.defined) {
            (LuaFrameKind::Lua, Some(def)) if self.function != *def => format!("{} {def}", self.function),
            _ => self.function.clone(),
        }
    }
}

/// The symbols indexed for lookups.
#[derive(Debug, Default)]
pub struct Index {
    protos: HashMap<(u32, u64), ProtoEntry>,
    lines: HashMap<(u32, u64, u32), u32>,
    calls: HashMap<(u32, u64, u32), String>,
    fast: HashMap<(u32, u32), String>,
    disabled: std::collections::HashSet<u32>,
}

impl Index {
    /// Indexes `symbols`; processes in `disabled` get no Lua frames.
    pub fn new(symbols: LuaSymbols, disabled: &[u32]) -> Self {
        Index {
            protos: symbols.protos.into_iter().map(|p| ((p.pid, p.addr), p)).collect(),
            lines: symbols.lines.into_iter().map(|l| ((l.pid, l.proto, l.pos), l.line)).collect(),
            calls: symbols.calls.into_iter().map(|c| ((c.pid, c.proto, c.pos), c.name)).collect(),
            fast: symbols.fast.into_iter().map(|f| ((f.pid, f.ffid), f.name)).collect(),
            disabled: disabled.iter().copied().collect(),
        }
    }

    /// The frames of a sample of `pid`, leaf first, named; empty when it has none to show.
    /// `c_name` names a C function's address (the native symbol).
    pub fn frames(
        &self,
        pid: u32,
        sample: &LuaSample,
        c_name: &mut dyn FnMut(u64) -> String,
    ) -> Vec<NamedFrame> {
        if !sample.status.walked() || self.disabled.contains(&pid) {
            return Vec::new();
        }
        let f = &sample.frames;
        (0..f.len()).map(|i| self.frame(pid, &f[i], f.get(i + 1), sample.trace(), c_name)).collect()
    }

    fn frame(
        &self,
        pid: u32,
        frame: &LuaFrame,
        caller: Option<&LuaFrame>,
        trace: Option<u32>,
        c_name: &mut dyn FnMut(u64) -> String,
    ) -> NamedFrame {
        let proto = self.protos.get(&(pid, frame.ptr));
        let defined = proto.map(|p| format!("{}:{}", p.file, p.firstline));
        let at = proto
            .zip(frame.pos)
            .and_then(|(p, pos)| self.lines.get(&(pid, frame.ptr, pos)).map(|l| format!("{}:{l}", p.file)));
        let function = match frame.kind {
            LuaFrameKind::Lua => caller
                .filter(|c| c.kind == LuaFrameKind::Lua)
                .and_then(|c| self.calls.get(&(pid, c.ptr, c.pos?)).cloned())
                .or_else(|| defined.clone())
                .unwrap_or_else(|| "unknown Lua function".into()),
            LuaFrameKind::C => c_name(frame.ptr),
            LuaFrameKind::Fast => {
                let ffid = frame.pos.unwrap_or(0);
                self.fast
                    .get(&(pid, ffid))
                    .map_or_else(|| format!("builtin#{ffid}"), |n| format!("{n} (builtin)"))
            }
            LuaFrameKind::Trace => {
                format!(
                    "[trace #{} {}]",
                    trace.unwrap_or(0),
                    at.clone().or(defined.clone()).unwrap_or_default()
                )
            }
        };
        NamedFrame { function, defined, at, kind: frame.kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua(ptr: u64, pos: u32) -> LuaFrame {
        LuaFrame { kind: LuaFrameKind::Lua, ptr, pos: Some(pos) }
    }

    #[test]
    fn a_callee_is_named_by_its_callers_call_site_and_falls_back_to_its_definition() {
        let symbols = LuaSymbols {
            protos: vec![
                ProtoEntry {
                    pid: 7,
                    addr: 0x100,
                    file: "instances.lua".into(),
                    chunk: "@/x/instances.lua".into(),
                    firstline: 80,
                },
                ProtoEntry {
                    pid: 7,
                    addr: 0x200,
                    file: "instances.lua".into(),
                    chunk: "@/x/instances.lua".into(),
                    firstline: 120,
                },
            ],
            lines: vec![LineEntry { pid: 7, proto: 0x100, pos: 5, line: 88 }],
            calls: vec![CallEntry { pid: 7, proto: 0x200, pos: 9, name: "wait_for_claim".into() }],
            fast: vec![FastEntry { pid: 7, ffid: 20, name: "pcall".into() }],
        };
        let index = Index::new(symbols, &[]);
        let sample = LuaSample {
            status: LuaStatus::Ok,
            g: 1,
            vmstate: -1,
            frames: vec![lua(0x100, 5), lua(0x200, 9)],
        };
        let frames = index.frames(7, &sample, &mut |_| String::new());
        assert_eq!(frames[0].func_label(), "wait_for_claim instances.lua:80");
        assert_eq!(frames[0].at.as_deref(), Some("instances.lua:88"));
        // The bottom frame has no caller in the walk: its definition names it.
        assert_eq!(frames[1].func_label(), "instances.lua:120");
        // A fast function by its build's name, where the build's vmdef.lua gave one.
        let fast = |ffid| LuaFrame { kind: LuaFrameKind::Fast, ptr: 0, pos: Some(ffid) };
        let s2 = LuaSample { status: LuaStatus::Ok, g: 1, vmstate: -1, frames: vec![fast(20), fast(21)] };
        let names: Vec<String> =
            index.frames(7, &s2, &mut |_| String::new()).iter().map(NamedFrame::func_label).collect();
        assert_eq!(names, ["pcall (builtin)", "builtin#21"]);
        // Another process, or one whose checks failed, shows nothing Lua-shaped.
        assert_eq!(index.frames(8, &sample, &mut |_| String::new())[0].func_label(), "unknown Lua function");
        let off = Index::new(LuaSymbols::default(), &[7]);
        assert!(off.frames(7, &sample, &mut |_| String::new()).is_empty());
        let idle = LuaSample { status: LuaStatus::NotLive, ..sample };
        assert!(index.frames(7, &idle, &mut |_| String::new()).is_empty());
    }
}
