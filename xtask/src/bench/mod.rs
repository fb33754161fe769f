//! `cargo xtask bench`: reproducible measurements of the probe's cost, not timed tests. Each
//! prints its figures, measured side by side in one run, and writes them under `target/bench/`.
//!
//! - [`pingpong`]: a unix-socket ping-pong, untraced / traced / untraced;
//! - [`gateway`] (`--gateway`): the stand-in under `wrk`, reloadscope beside bpftrace, perf and
//!   strace, with the kernel's per-program cost.

pub mod gateway;
mod pingpong;

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use shared::progstats::ProgStats;

/// Options of `cargo xtask bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchOptions {
    /// Measure on the stand-in gateway under wrk instead of the unix ping-pong.
    #[arg(long)]
    pub gateway: bool,
    /// Ping-pong: bytes per message.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
    /// CPU sampling frequency of the probe while it traces.
    #[arg(long, default_value_t = 99)]
    pub sample_hz: u64,
    /// Gateway: rounds of every tool between untraced baselines (the medians need several).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Gateway: seconds of load per measurement.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub seconds: u64,
    /// Gateway: the tools to measure (default: all, those not installed left out).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub tools: Vec<gateway::Tool>,
    /// Gateway: another reloadscope binary (say, built from an earlier commit), measured and
    /// counted beside this one in every round: a before and after from one run.
    #[arg(long, value_name = "RELOADSCOPE")]
    pub compare: Option<std::path::PathBuf>,
}

/// Runs the chosen benchmark.
pub fn run(opts: &BenchOptions) -> Result<()> {
    if opts.gateway { gateway::run(opts) } else { pingpong::overhead(opts.bytes, opts.sample_hz) }
}

/// The median of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// The probe's cost over a recording, from its `meta.json` (`record --prog-stats`).
fn prog_stats(trace: &Path) -> Result<ProgStats> {
    let path = trace.join("meta.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    serde_json::from_value(meta["prog_stats"].clone())
        .with_context(|| format!("{} has no prog_stats", path.display()))
}

/// Records dropped by the kernel over a recording, from its `meta.json`.
fn drops(trace: &Path) -> u64 {
    let meta: serde_json::Value = std::fs::read_to_string(trace.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    meta["drops"].as_object().map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
