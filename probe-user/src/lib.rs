//! reloadscope: what exactly a gateway reload does to traffic in flight, from the kernel's view.
//!
//! The public surface is what the `reloadscope` binary and the tests use: record a trace
//! ([`record`]), read it back ([`read_trace`]), analyse a run ([`load`], [`analyze`], [`write_report`])
//! and draw its flamegraphs ([`flame`]). Behind it, private modules, each with one job; the crate
//! is split so that everything but the kernel-facing part is plain, testable logic:
//!
//! - `tracefs`, `offsets`, `event`, `summary`, `model`, `proctree`, `trace`:
//!   parsing, decoding, aggregation and the trace directory; unit-tested without root.
//! - `btf`: kernel struct member offsets and sizes from the running kernel's BTF.
//! - `probe`: loads and attaches the eBPF programs with aya and reads their maps (thin).
//! - `preflight` and `record`: the `reloadscope record` command.
//! - `analyze`: detectors, failure attribution and the report of a run directory (no root).

mod analyze;
mod binaries;
mod btf;
pub mod bundle;
mod event;
pub mod flame;
mod http;
mod http_events;
mod luajit;
mod model;
mod offsets;
mod preflight;
mod probe;
mod proctree;
mod record;
mod samples;
mod summary;
mod trace;
mod tracefs;

pub use analyze::report::{headlines, location, write as write_report};
pub use analyze::{Analysis, Run, analyze, flame_input, load};
pub use event::{ConnOp, Event, HttpRequestEvent, TcpConnEvent, UnixOp};
pub use luajit::symbols::{LuaDisabled, LuaLibrary, LuaMeta};
pub use model::Process;
pub use record::{RecordArgs, footer, record};
pub use summary::{ThreadSummary, by_thread, table};
pub use trace::{Meta, Trace, read as read_trace};
