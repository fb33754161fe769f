//! The reload's phase against old worker 0's plugin-server pumps (kong/README.md, "Why old
//! worker 0 lingers"). Worker 0 reads each server's output in 10 s windows that restart at the
//! spawn and at each output chunk; after the quit it exits only when every window has ended with
//! no output. So when old worker 0 (and with it the old servers) dies depends on where in a
//! window the reload lands: its phase.
//!
//! `cargo xtask run --reload-phase P` fixes that phase: it first starts every worker's plugin
//! instances (the servers print a line per instance), so the servers go quiet before the load,
//! then delays the load's start until the reload, `--reload-at` into the load, lands P seconds
//! after the servers' last output, modulo the window.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

/// lua-resty-core's default pipe read timeout: the pump's window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long the warm-up may try to reach every worker.
const WARM_UP_LIMIT: Duration = Duration::from_secs(15);

/// Seconds since the epoch, as a float (the ground truth's `ts`).
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The wait before the load so that `now + wait + reload_at` is `phase` past `anchor` modulo
/// `window` (all in seconds).
pub fn delay_before_load(anchor: f64, now: f64, reload_at: f64, phase: f64, window: f64) -> f64 {
    (anchor + phase - now - reload_at).rem_euclid(window)
}

/// Where in its window the reload at `at` landed, for `reload.json`.
pub fn phase_at(anchor: f64, at: f64, window: f64) -> f64 {
    (at - anchor).rem_euclid(window)
}

/// The latest output or spawn of the generation-`generation` servers (unix seconds): their
/// pumps' windows restart there. Output is the growth of each server's own output file.
pub fn last_output(events: &[Value], generation: u64) -> Option<f64> {
    events
        .iter()
        .filter(|e| e["ev"] == "spawn" && e["gen"].as_u64() == Some(generation))
        .filter_map(|e| {
            let spawned = e["ts"].as_f64()?;
            let written = e["log"]
                .as_str()
                .and_then(|p| std::fs::metadata(Path::new(p)).ok()?.modified().ok())
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            Some(spawned.max(written))
        })
        .reduce(f64::max)
}

/// True when every worker of `generation` has started an instance of every plugin.
pub fn all_instances_started(events: &[Value], generation: u64, workers: u32, plugins: &[&str]) -> bool {
    plugins.iter().all(|plugin| {
        let started: std::collections::BTreeSet<i64> = events
            .iter()
            .filter(|e| {
                e["ev"] == "instance_started"
                    && e["gen"].as_u64() == Some(generation)
                    && e["plugin"] == *plugin
            })
            .filter_map(|e| e["worker"].as_i64())
            .collect();
        started.len() as u32 >= workers
    })
}

/// Sends requests on every endpoint until each worker has its instances (or the limit passes),
/// then waits so the reload lands at `phase`. Returns the anchor (unix seconds).
pub fn align(
    get: impl Fn(&str) -> bool,
    events: impl Fn() -> Vec<Value>,
    endpoints: &[(&str, &str)],
    workers: u32,
    reload_at: Duration,
    phase: Duration,
) -> Result<f64> {
    let started = Instant::now();
    let plugins: Vec<&str> = endpoints.iter().map(|(_, p)| *p).collect();
    while !all_instances_started(&events(), 1, workers, &plugins) {
        if started.elapsed() > WARM_UP_LIMIT {
            eprintln!("run: [phase] not every worker started its plugin instances in the warm-up; going on");
            break;
        }
        for (path, _) in endpoints {
            get(path);
        }
    }
    // Let the last instance lines reach the output files.
    std::thread::sleep(Duration::from_millis(300));
    let anchor = last_output(&events(), 1).unwrap_or_else(unix_now);
    let wait = delay_before_load(
        anchor,
        unix_now(),
        reload_at.as_secs_f64(),
        phase.as_secs_f64(),
        WINDOW.as_secs_f64(),
    );
    println!(
        "run: [phase] the plugin servers last wrote at {anchor:.2}; waiting {wait:.2} s so the reload lands {:.1} s into their pumps' 10 s window",
        phase.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs_f64(wait));
    Ok(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_starts_so_the_reload_lands_at_the_phase() {
        // Servers last wrote at 100 s; now 103 s; reload 10 s into the load; phase 7 s.
        let wait = delay_before_load(100.0, 103.0, 10.0, 7.0, 10.0);
        assert!((wait - 4.0).abs() < 1e-9, "{wait}");
        assert!((phase_at(100.0, 103.0 + wait + 10.0, 10.0) - 7.0).abs() < 1e-9);
        // Already past: the next window.
        assert!((delay_before_load(100.0, 108.5, 1.0, 0.5, 10.0) - 1.0).abs() < 1e-9);
    }
}
