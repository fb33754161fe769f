//! `verdict.json`: a run's outcome in a few numbers, the row a comparison of runs is made of.
//!
//! `reloadscope analyze` writes it next to `report.json` (whose findings it counts);
//! `cargo xtask matrix` reads one per cell and repeat. Only counts live here: the evidence
//! behind each number stays in the report.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file's name in a run directory.
pub const FILE: &str = "verdict.json";

/// Bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Requests and failures of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCount {
    /// Requests sent.
    pub requests: u64,
    /// Of them, failed (for any reason).
    pub failed: u64,
}

impl EndpointCount {
    /// Failed share in percent (0 without requests).
    pub fn failed_percent(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { 100.0 * self.failed as f64 / self.requests as f64 }
    }
}

/// A crash/respawn loop of one plugin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loop {
    /// The socket the crashing servers served.
    pub socket: String,
    /// Crashes in the loop.
    pub crashes: u32,
}

/// One run's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Requests and failures per endpoint, from the request log.
    pub endpoints: BTreeMap<String, EndpointCount>,
    /// Failures a reload can cause (the report's base of every share).
    pub reload_failed: u64,
    /// Of them, explained through the worker that served them.
    pub exact: u64,
    /// Distinct workers seen spinning in `epoll_wait(…, 0)`.
    pub spinning_workers: Vec<u32>,
    /// Crash/respawn loops of plugin servers.
    pub crash_loops: Vec<Loop>,
    /// SIGKILLs sent to plugin servers.
    pub sigkills: u32,
    /// Plugin servers left without their worker.
    pub orphans: u32,
    /// Worker sockets still talking to a superseded server generation.
    pub stale_flows: u32,
    /// Connects to plugin sockets refused or not found.
    pub failed_connects: u64,
    /// From the (first) reload to the new worker generation's fork, in seconds.
    pub forked_s: Option<f64>,
    /// Whether and when requests stopped failing after the (first) reload.
    pub clean: Clean,
}

/// Whether and when a run's requests stopped failing after its reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Clean {
    /// Requests stopped failing this long after the reload: the end of the last failure after
    /// it, 0 when none failed.
    After { s: f64 },
    /// The load ended still failing: less than [`CLEAN_TAIL_S`] of it followed the last failure.
    StillFailing,
    /// No reload, or no request after it: nothing to tell.
    #[default]
    Unknown,
}

/// How long the load must go on without a failure after the last one for the run to count as
/// clean again.
pub const CLEAN_TAIL_S: f64 = 2.0;

impl Verdict {
    /// Exact share of the reload's failures, in percent; `None` when nothing failed.
    pub fn exact_percent(&self) -> Option<f64> {
        (self.reload_failed > 0).then(|| 100.0 * self.exact as f64 / self.reload_failed as f64)
    }

    /// Crashes over all loops.
    pub fn loop_crashes(&self) -> u32 {
        self.crash_loops.iter().map(|l| l.crashes).sum()
    }
}

/// When requests stopped failing, in seconds from the reload: `last_failure_end_s` is the end of
/// the last failure after it, `last_start_s` the load's last request start (`None`: no request).
pub fn clean(last_failure_end_s: Option<f64>, last_start_s: Option<f64>) -> Clean {
    match (last_failure_end_s, last_start_s) {
        (_, None) => Clean::Unknown,
        (_, Some(last)) if last < 0.0 => Clean::Unknown,
        (None, _) => Clean::After { s: 0.0 },
        (Some(end), Some(last)) if last - end >= CLEAN_TAIL_S => Clean::After { s: end.max(0.0) },
        (Some(_), Some(_)) => Clean::StillFailing,
    }
}

/// Writes `verdict.json` into a run directory.
pub fn write(dir: &Path, v: &Verdict) -> std::io::Result<()> {
    std::fs::write(dir.join(FILE), serde_json::to_string_pretty(v)? + "\n")
}

/// Reads a run directory's `verdict.json`.
pub fn read(dir: &Path) -> Result<Verdict, String> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Verdict =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a verdict: {e}", path.display()))?;
    if v.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "{} has schema {} (this build reads {SCHEMA_VERSION}): analyse the run again",
            path.display(),
            v.schema_version
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_clean_only_when_enough_load_followed_the_last_failure() {
        let after = |s| Clean::After { s };
        assert_eq!(clean(None, Some(10.0)), after(0.0));
        assert_eq!(clean(Some(3.5), Some(10.0)), after(3.5));
        assert_eq!(clean(Some(8.5), Some(10.0)), Clean::StillFailing, "1.5 s of load after it is not enough");
        assert_eq!(clean(Some(12.0), Some(10.0)), Clean::StillFailing, "a timeout that ended after the load");
        assert_eq!(clean(Some(-0.2), Some(10.0)), after(0.0), "a failure that ended before the HUP");
        assert_eq!(clean(None, None), Clean::Unknown, "no request at all");
        assert_eq!(clean(None, Some(-1.0)), Clean::Unknown, "the load ended before the reload");
    }

    #[test]
    fn it_round_trips_and_refuses_another_schema() {
        let dir = tempfile::tempdir().unwrap();
        let v = Verdict {
            schema_version: SCHEMA_VERSION,
            endpoints: [("/js".to_string(), EndpointCount { requests: 200, failed: 5 })].into(),
            reload_failed: 4,
            exact: 3,
            spinning_workers: vec![7, 9],
            crash_loops: vec![Loop { socket: "/p/js.socket".into(), crashes: 4 }],
            clean: Clean::StillFailing,
            ..Verdict::default()
        };
        write(dir.path(), &v).unwrap();
        assert_eq!(read(dir.path()).unwrap(), v);
        assert_eq!(v.exact_percent(), Some(75.0));
        assert_eq!(v.endpoints["/js"].failed_percent(), 2.5);
        assert_eq!(v.loop_crashes(), 4);
        write(dir.path(), &Verdict { schema_version: 99, ..v }).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("schema 99"));
        assert!(read(&dir.path().join("none")).unwrap_err().contains("cannot read"));
    }
}
