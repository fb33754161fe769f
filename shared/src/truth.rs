//! The stand-in's ground-truth log: one JSON line per thing the stand-in did (kong/standin's
//! `truth.lua` writes it). Tests and the report's cross-check read it; it is never evidence.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a line records (the `ev` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruthEv {
    /// The master read its configuration (`behaviour`, `gen`).
    MasterInit,
    /// A worker started (`worker` is its index).
    WorkerStart,
    /// A worker exited.
    WorkerExit,
    /// Worker 0 spawned a plugin server (`server_pid`, `socket`).
    Spawn,
    /// A plugin server bound its socket.
    ServerReady,
    /// A plugin server exited (`code` or `signal`).
    ServerExit,
    /// A worker signalled a plugin server (`signal` by name).
    Kill,
    /// A request began waiting on another request's instance claim.
    ClaimWait,
    /// A request has waited a full second on a claim: it spins.
    ClaimSpin,
    /// A claim was left behind by a failed start.
    ClaimLeaked,
    /// A worker found no instance id for a plugin in its cache.
    CacheMiss,
    /// A plugin instance was started (`instance_id`).
    InstanceStarted,
    /// A cached instance id was dropped (`reason`).
    CacheReset,
    /// An RPC to a plugin server failed.
    RpcError,
    /// Old worker 0's pump of a server ended an empty window while exiting (`plugin`,
    /// `server_pid`).
    PumpEnd,
    /// Any other line.
    #[serde(other)]
    Other,
}

/// A signal as the stand-in logs it: by name in `kill`, by number in `server_exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TruthSignal {
    /// e.g. `SIGKILL`.
    Name(String),
    /// e.g. 9.
    Number(i64),
}

/// One line of the log (the fields the readers use; the others are skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthLine {
    /// CLOCK_REALTIME s.
    #[serde(default)]
    pub ts: f64,
    /// CLOCK_MONOTONIC ns, comparable with the probe's timestamps.
    pub mono_ns: u64,
    /// What happened.
    pub ev: TruthEv,
    /// The writing process.
    #[serde(default)]
    pub pid: u32,
    /// The configuration generation (1, then one more per reload).
    #[serde(default)]
    pub r#gen: Option<u32>,
    /// The plugin's name.
    #[serde(default)]
    pub plugin: Option<String>,
    /// The worker's index.
    #[serde(default)]
    pub worker: Option<i64>,
    /// The plugin server's pid.
    #[serde(default)]
    pub server_pid: Option<u32>,
    /// The process that spawned the plugin server.
    #[serde(default)]
    pub parent_pid: Option<u32>,
    /// A plugin instance's id.
    #[serde(default)]
    pub instance_id: Option<i64>,
    /// Why a cached instance id was dropped, or a kill was sent.
    #[serde(default)]
    pub reason: Option<String>,
    /// The plugin server's socket path.
    #[serde(default)]
    pub socket: Option<String>,
    /// A signal sent or received.
    #[serde(default)]
    pub signal: Option<TruthSignal>,
    /// An exit status.
    #[serde(default)]
    pub code: Option<i64>,
    /// `kong-2.7` or `fixed`, in `master_init`.
    #[serde(default)]
    pub behaviour: Option<String>,
}

impl TruthLine {
    /// True for a `kill` with this signal name.
    pub fn is_kill_with(&self, name: &str) -> bool {
        self.ev == TruthEv::Kill && matches!(&self.signal, Some(TruthSignal::Name(n)) if n == name)
    }
}

/// Reads the log; a missing file is empty, lines that do not parse are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<TruthLine>> {
    crate::read_json_lines(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lines_truth_lua_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"ts":1.5,"mono_ns":100,"plugin":"js","server_pid":20,"signal":"SIGKILL","ev":"kill","pid":10,"gen":1}"#,
                "\n",
                r#"{"ts":1.6,"mono_ns":101,"plugin":"js","server_pid":20,"signal":9,"ev":"server_exit","pid":10,"gen":1}"#,
                "\n",
                r#"{"ts":1.7,"mono_ns":102,"ev":"query","pid":10,"gen":1,"plugins":["a"]}"#,
                "\n{\"ts\":1.8,\"mono"
            ),
        )
        .unwrap();
        let lines = read(&path).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].is_kill_with("SIGKILL") && lines[0].server_pid == Some(20));
        assert_eq!(lines[1].signal, Some(TruthSignal::Number(9)));
        assert_eq!(lines[2].ev, TruthEv::Other);
    }
}
