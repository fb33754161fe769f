//! The Lua part of a CPU sample as the trace keeps it: typed from the kernel's [`LuaStack`].

use probe_common::lua::{LuaStack, POS_UNKNOWN, frame_kind, status};
use serde::{Deserialize, Serialize};

/// Why a sample's Lua stack is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LuaStatus {
    /// No Lua stack was live: every coroutine was suspended.
    NotLive,
    /// Walked to the bottom, or to where C entered the VM.
    Ok,
    /// No `global_State` confirmed yet.
    NoGlobalState,
    /// `cur_L` did not point back at the `global_State`: wrong offsets, or a foreign stack.
    StateMismatch,
    /// A frame did not look like one; the frames above it are kept.
    BadFrame,
    /// Deeper than the walk goes; the bottom frames are missing.
    Truncated,
}

impl LuaStatus {
    /// Whether frames were walked.
    pub fn walked(self) -> bool {
        matches!(self, LuaStatus::Ok | LuaStatus::BadFrame | LuaStatus::Truncated)
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LuaFrameKind {
    /// A Lua function: `ptr` is its prototype.
    Lua,
    /// A C function: `ptr` is its address.
    C,
    /// A builtin fast function: `pos` is its ffid.
    Fast,
    /// A JIT trace, `pos` where it starts in prototype `ptr`.
    Trace,
}

/// One frame, leaf first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaFrame {
    /// What it is.
    pub kind: LuaFrameKind,
    /// Prototype or C function address.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ptr: u64,
    /// Bytecode position (or ffid); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u32>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A sample's Lua stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaSample {
    /// What the walk found.
    pub status: LuaStatus,
    /// `global_State` (0 when none).
    pub g: u64,
    /// `vmstate`: negative is a VM state (~state), positive a trace number.
    pub vmstate: i32,
    /// Leaf first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<LuaFrame>,
}

impl LuaSample {
    /// From the kernel's record; `None` for a process without a LuaJIT VM.
    pub fn from_raw(raw: &LuaStack) -> Option<Self> {
        let status = match raw.status {
            status::NOT_LIVE => LuaStatus::NotLive,
            status::OK => LuaStatus::Ok,
            status::NO_G => LuaStatus::NoGlobalState,
            status::L_MISMATCH => LuaStatus::StateMismatch,
            status::BAD_FRAME => LuaStatus::BadFrame,
            status::TRUNCATED => LuaStatus::Truncated,
            _ => return None,
        };
        let n = (raw.nframes as usize).min(raw.frames.len());
        let frames = std::iter::once(&raw.trace)
            .chain(&raw.frames[..n])
            .filter_map(|f| {
                let kind = match f.kind {
                    frame_kind::LUA => LuaFrameKind::Lua,
                    frame_kind::C => LuaFrameKind::C,
                    frame_kind::FAST => LuaFrameKind::Fast,
                    frame_kind::TRACE => LuaFrameKind::Trace,
                    _ => return None,
                };
                Some(LuaFrame { kind, ptr: f.ptr, pos: (f.pos != POS_UNKNOWN).then_some(f.pos) })
            })
            .collect();
        Some(LuaSample { status, g: raw.g, vmstate: raw.vmstate, frames })
    }

    /// The running trace's number, when on a trace.
    pub fn trace(&self) -> Option<u32> {
        (self.vmstate >= 1).then_some(self.vmstate as u32)
    }
}
