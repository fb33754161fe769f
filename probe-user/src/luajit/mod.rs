//! Lua frames for LuaJIT 2.1 (x86-64, GC64) processes, such as nginx workers running Lua.
//!
//! - [`build`] reads a library's build-specific offsets from its code;
//! - the kernel walks the live Lua stack at each sample with them (`probe-ebpf/src/lua.rs`),
//!   and [`sample`] types what it recorded;
//! - [`recorder`] configures each process and, while it lives, reads the prototypes the walks
//!   point at ([`proto`], through [`memory`]);
//! - [`symbols`] is what the trace keeps of them, and names frames for the analysis.

pub mod build;
pub mod ffnames;
pub mod memory;
pub mod proto;
pub mod recorder;
pub mod sample;
pub mod symbols;
