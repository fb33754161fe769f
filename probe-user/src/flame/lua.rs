//! Lua frames in the flamegraphs: a sample's walked Lua stack replaces the `lj_vm(interpreter)`
//! frame it ran in (native callers below, C functions it called above), and each process
//! counts where its Lua samples concentrate.

use std::collections::HashMap;

use serde::Serialize;

use super::fold::{Frame, FrameKind};
use super::stripped::LUAJIT_VM;
use crate::luajit::sample::LuaFrameKind;
use crate::luajit::symbols::NamedFrame;

/// Where a process's Lua samples concentrate: the leaf Lua function and line most samples were
/// in, and its caller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LuaHot {
    /// The function (`name file:firstline`, or `file:firstline`).
    pub function: String,
    /// The line most of its samples were at (`file:line`), when known.
    pub at: Option<String>,
    /// Its caller, when the walk saw one.
    pub caller: Option<String>,
    /// Samples at that function and line.
    pub samples: u64,
    /// The process's samples with Lua frames.
    pub lua_samples: u64,
    /// The deepest Lua function on the stack of at least half of those samples: where the
    /// process keeps returning to (a busy-wait's loop, when it spins).
    pub dominant: Option<String>,
    /// Its caller there.
    pub dominant_caller: Option<String>,
    /// Samples with it on the stack.
    pub dominant_samples: u64,
}

/// How the Lua frames of the samples went in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LuaMerge {
    /// Samples whose Lua frames replaced an interpreter frame.
    pub merged: u64,
    /// Samples on a JIT trace: Lua frames shown, native callers not unwound past the trace code.
    pub on_trace: u64,
    /// Samples with Lua frames but no interpreter frame on the native stack: dropped.
    pub no_vm_frame: u64,
}

/// Per process: the hot spots by (function, line, caller).
#[derive(Debug, Default)]
pub struct LuaCounts {
    spots: HashMap<(String, Option<String>, Option<String>), u64>,
    samples: u64,
    /// Samples by their Lua functions, outermost first (a spinning worker repeats a few paths
    /// thousands of times).
    paths: HashMap<Vec<String>, u64>,
}

impl LuaCounts {
    /// Counts one sample's Lua frames (leaf first): the innermost Lua function, at the line
    /// its JIT trace or its own frame says, and its caller.
    pub fn add(&mut self, frames: &[NamedFrame]) {
        let Some(i) = frames.iter().position(|f| f.kind == LuaFrameKind::Lua) else { return };
        self.samples += 1;
        let trace_at = frames[..i].iter().find(|f| f.kind == LuaFrameKind::Trace).and_then(|t| t.at.clone());
        let caller = frames[i + 1..].iter().find(|f| f.kind == LuaFrameKind::Lua).map(NamedFrame::func_label);
        let at = trace_at.or_else(|| frames[i].at.clone());
        *self.spots.entry((frames[i].func_label(), at, caller)).or_default() += 1;
        let path =
            frames.iter().rev().filter(|f| f.kind == LuaFrameKind::Lua).map(NamedFrame::func_label).collect();
        *self.paths.entry(path).or_default() += 1;
    }

    /// The deepest function on the stack of at least half the samples, its caller, and count.
    fn dominant(&self) -> Option<(String, Option<String>, u64)> {
        let mut path: Vec<&str> = Vec::new();
        let mut count = 0;
        loop {
            let mut next: HashMap<&str, u64> = HashMap::new();
            for (p, n) in self
                .paths
                .iter()
                .filter(|(p, _)| p.len() > path.len() && p.iter().zip(&path).all(|(a, b)| a == b))
            {
                *next.entry(p[path.len()].as_str()).or_default() += n;
            }
            match next.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))) {
                Some((f, n)) if n * 2 >= self.samples => {
                    path.push(f);
                    count = n;
                }
                _ => break,
            }
        }
        let f = path.pop()?;
        Some((f.to_owned(), path.last().map(|c| (*c).to_owned()), count))
    }

    /// The hottest spot, ties broken by name for a stable report.
    pub fn hottest(&self) -> Option<LuaHot> {
        let ((function, at, caller), n) = self.spots.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        let (dominant, dominant_caller, dominant_samples) = match self.dominant() {
            Some((f, c, n)) => (Some(f), c, n),
            None => (None, None, 0),
        };
        Some(LuaHot {
            function: function.clone(),
            at: at.clone(),
            caller: caller.clone(),
            samples: *n,
            lua_samples: self.samples,
            dominant,
            dominant_caller,
            dominant_samples,
        })
    }
}

fn lua_frame(f: &NamedFrame) -> Frame {
    Frame { kind: FrameKind::Lua, func: f.func_label(), module: String::new() }
}

/// Puts `lua` (leaf first) into `user` (leaf first) in place of the innermost interpreter frame.
/// C functions and fast functions the walk saw are left out when native frames above the
/// interpreter already show what ran. Returns the Lua-only stack (leaf first) when merged.
pub fn merge(
    user: &mut Vec<Frame>,
    lua: &[NamedFrame],
    on_trace: bool,
    stats: &mut LuaMerge,
) -> Option<Vec<Frame>> {
    if lua.is_empty() {
        return None;
    }
    let only: Vec<Frame> = lua.iter().map(lua_frame).collect();
    match user.iter().position(|f| f.func.starts_with(LUAJIT_VM)) {
        Some(vm) => {
            // The interpreter's own helpers unwind as more interpreter frames: one run, one VM.
            let end = vm + user[vm..].iter().take_while(|f| f.func.starts_with(LUAJIT_VM)).count();
            let shown = lua
                .iter()
                .filter(|f| vm == 0 || !matches!(f.kind, LuaFrameKind::C | LuaFrameKind::Fast))
                .map(lua_frame);
            user.splice(vm..end, shown);
            stats.merged += 1;
            Some(only)
        }
        None if on_trace => {
            // Trace code has no unwind info: native code it called (FFI) stays on top, its
            // native callers are unknown, and the graph says so.
            let trace_code = user.iter().position(|f| f.module.is_empty()).unwrap_or(user.len());
            user.truncate(trace_code);
            user.extend(only.iter().cloned());
            user.push(Frame {
                kind: FrameKind::User,
                func: "[JIT trace: native callers not unwound]".into(),
                module: String::new(),
            });
            stats.on_trace += 1;
            Some(only)
        }
        None => {
            stats.no_vm_frame += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(func: &str) -> Frame {
        Frame { kind: FrameKind::User, func: func.into(), module: "m".into() }
    }

    fn named(function: &str, kind: LuaFrameKind, at: Option<&str>) -> NamedFrame {
        NamedFrame { function: function.into(), defined: None, at: at.map(Into::into), kind }
    }

    #[test]
    fn lua_frames_take_the_interpreters_place() {
        let mut user =
            vec![native("ngx_http_lua_ffi_md5"), native(LUAJIT_VM), native("ngx_http_lua_run_thread")];
        let lua = [
            named("md5", LuaFrameKind::C, None),
            named("burn_md5", LuaFrameKind::Lua, Some("spinmod.lua:30")),
            named("spin_md5", LuaFrameKind::Lua, Some("spinmod.lua:40")),
        ];
        let mut stats = LuaMerge::default();
        let only = merge(&mut user, &lua, false, &mut stats).unwrap();
        let labels: Vec<String> = user.iter().map(Frame::label).collect();
        assert_eq!(
            labels,
            ["ngx_http_lua_ffi_md5 [m]", "burn_md5 [lua]", "spin_md5 [lua]", "ngx_http_lua_run_thread [m]"]
        );
        assert_eq!(only.len(), 3);
        assert_eq!(stats, LuaMerge { merged: 1, ..Default::default() });
        // On a trace: the FFI callee stays above the Lua frames, the trace code goes.
        let mut jit = vec![
            native("ngx_http_lua_ffi_md5"),
            Frame { kind: FrameKind::User, func: "[anonymous code]".into(), module: String::new() },
        ];
        merge(&mut jit, &lua[1..], true, &mut stats).unwrap();
        let labels: Vec<String> = jit.iter().map(Frame::label).collect();
        assert_eq!(labels[..3], ["ngx_http_lua_ffi_md5 [m]", "burn_md5 [lua]", "spin_md5 [lua]"]);
        assert!(labels[3].starts_with("[JIT_trace"), "{labels:?}");
        // No interpreter frame to replace: nothing Lua-shaped goes in.
        let mut idle = vec![native("epoll_wait")];
        assert!(merge(&mut idle, &lua, false, &mut stats).is_none());
        assert_eq!((idle.len(), stats.no_vm_frame), (1, 1));
    }

    #[test]
    fn the_hottest_line_is_counted_with_its_caller() {
        let mut c = LuaCounts::default();
        let spin = [
            named("wait_for_claim", LuaFrameKind::Lua, Some("instances.lua:88")),
            named("get_instance_id", LuaFrameKind::Lua, Some("instances.lua:130")),
        ];
        for _ in 0..3 {
            c.add(&spin);
        }
        c.add(&[named("other", LuaFrameKind::Lua, Some("x.lua:1"))]);
        let hot = c.hottest().unwrap();
        assert_eq!((hot.function.as_str(), hot.at.as_deref()), ("wait_for_claim", Some("instances.lua:88")));
        assert_eq!((hot.caller.as_deref(), hot.samples, hot.lua_samples), (Some("get_instance_id"), 3, 4));
        // get_instance_id and wait_for_claim are on 3 of 4 stacks; wait_for_claim is deeper.
        assert_eq!(
            (hot.dominant.as_deref(), hot.dominant_caller.as_deref(), hot.dominant_samples),
            (Some("wait_for_claim"), Some("get_instance_id"), 3)
        );
    }
}
