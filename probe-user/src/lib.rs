//! reloadscope: what exactly a gateway reload does to traffic in flight, from the kernel's view.
//!
//! The crate is split so that everything but the kernel-facing part is plain, testable logic:
//!
//! - [`tracefs`], [`offsets`], [`event`], [`summary`], [`model`], [`proctree`], [`trace`]:
//!   parsing, decoding, aggregation and the trace directory; unit-tested without root.
//! - [`btf`]: kernel struct member offsets and sizes from the running kernel's BTF.
//! - [`probe`]: loads and attaches the eBPF programs with aya and reads their maps (thin).
//! - [`preflight`] and [`record`]: the `reloadscope record` command.
//! - [`analyze`]: detectors, failure attribution and the report of a run directory (no root).

pub mod analyze;
pub mod btf;
pub mod event;
pub mod flame;
pub mod model;
pub mod offsets;
pub mod preflight;
pub mod probe;
pub mod proctree;
pub mod record;
pub mod summary;
pub mod trace;
pub mod tracefs;
