//! What more than one crate of reloadscope reads or writes, defined once.
//!
//! - [`requests`]: `requests.jsonl`, the load test's log of every request, and its per-endpoint
//!   table;
//! - [`reload`]: `reload.json`, when and how the reload was sent;
//! - [`truth`]: the stand-in's ground-truth log (`standin-ground-truth.jsonl`);
//! - [`container`]: `--container NAME|ID`, the nginx master inside a container;
//! - [`endpoint`]: `--endpoint PATH[=HEADER]`, an operator's own route;
//! - [`progstats`]: the probe's per-program cost in `meta.json`, and its table;
//! - [`verdict`]: `verdict.json`, a run's outcome in a few numbers (what the matrix compares);
//! - [`clock`], [`procstat`], [`duration`], [`size`]: the clocks, `/proc/PID/stat`, and
//!   durations and sizes typed by a user.
//!
//! The writers (loadtest, xtask, the stand-in) and the readers (probe-user, xtask's tests) use
//! these types, so a field renamed on one side fails to compile on the other.

pub mod clock;
pub mod container;
pub mod duration;
pub mod endpoint;
mod jsonl;
pub mod procstat;
pub mod progstats;
pub mod reload;
pub mod requests;
pub mod size;
pub mod truth;
pub mod verdict;

pub use jsonl::{for_each_json_line, read_json_lines};
