//! The analysis of a run directory: detectors over the recorded trace, the link from each failed
//! request to the kernel events behind it, and the report files.
//!
//! Everything here is pure logic over recorded artifacts (no root, no kernel): [`load`] reads a
//! run directory, [`analyze`] runs the detectors and the correlation, [`report::write`] writes
//! `report.md`, `report.json` and `timeline.json`.

pub mod correlate;
pub mod fit;
pub mod lifecycle;
pub mod report;
pub mod spin;
pub mod stale;
pub mod timeline;

#[cfg(test)]
mod golden_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::event::Event;
use crate::model::{ProcInfo, Process};
use crate::trace::Meta;

/// Version of `report.json`'s layout.
pub const REPORT_SCHEMA_VERSION: u32 = 2;

pub use shared::reload::Reload;
pub use shared::requests::RequestLine as Request;
use shared::truth::{TruthEv, TruthLine};

/// Everything recorded in a run directory.
#[derive(Debug, Default)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// The trace directory (`trace/`, or the run directory itself).
    pub trace_dir: PathBuf,
    /// `trace/meta.json`.
    pub meta: Meta,
    /// `trace/events.jsonl`.
    pub events: Vec<Event>,
    /// `trace/processes.json`, or the model rebuilt from the events.
    pub processes: Vec<Process>,
    /// `requests.jsonl` (empty when absent).
    pub requests: Vec<Request>,
    /// `reload.json`, when present.
    pub reload: Option<Reload>,
    /// `standin-ground-truth.jsonl` (empty when absent).
    pub ground_truth: Vec<TruthLine>,
}

impl Run {
    /// Time zero of the analysis: the reload, else the first HUP of the root, else the trace start.
    pub fn zero_ns(&self) -> u64 {
        if let Some(r) = &self.reload {
            return r.monotonic_ns;
        }
        let root = self.meta.options.root_pid;
        self.events
            .iter()
            .find_map(|e| crate::model::root_hup(e, root))
            .map(|s| s.task.ts_ns)
            .unwrap_or(self.meta.started_ns)
    }
}

/// Reads a run directory (a trace directory under `trace/`, or the directory itself).
pub fn load(dir: &Path) -> Result<Run> {
    let trace_dir = if dir.join("trace/meta.json").exists() { dir.join("trace") } else { dir.to_path_buf() };
    let trace = crate::trace::read(&trace_dir)?;
    let processes = match crate::trace::read_processes(&trace_dir)? {
        Some(p) => p,
        // Older traces: rebuild the model from the events alone.
        None => crate::model::processes(
            &trace.events,
            trace.meta.options.root_pid,
            &BTreeMap::<u32, ProcInfo>::new(),
        ),
    };
    let requests = json_lines(&dir.join("requests.jsonl"))?;
    let reload = Reload::read(&dir.join("reload.json"));
    let ground_truth = json_lines(&dir.join("standin-ground-truth.jsonl"))?;
    Ok(Run {
        dir: dir.to_path_buf(),
        trace_dir,
        meta: trace.meta,
        events: trace.events,
        processes,
        requests,
        reload,
        ground_truth,
    })
}

fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    shared::read_json_lines(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The whole analysis of a run, as written to `report.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// CLOCK_MONOTONIC ns of time zero (the reload); every `*_s` field is relative to it.
    pub zero_ns: u64,
    /// The reload timeline.
    pub timeline: timeline::Timeline,
    /// Plugin-server generations, kills, crash loops and orphans.
    pub lifecycle: lifecycle::Lifecycle,
    /// Spinning workers.
    pub spins: Vec<spin::Spin>,
    /// Stale sockets and failed unix traffic.
    pub stale: stale::Stale,
    /// Failed requests linked to their causes.
    pub attribution: correlate::Attribution,
    /// The findings checked against the stand-in's own log (empty without one).
    pub ground_truth_check: Vec<Check>,
    /// The flamegraphs drawn from the CPU samples (filled by the caller that draws them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flamegraphs: Option<crate::flame::FlameSummary>,
}

/// One finding compared with the stand-in's own log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is compared.
    pub what: String,
    /// What the stand-in logged.
    pub standin: String,
    /// What the analysis found.
    pub found: String,
    /// True when they agree.
    pub agrees: bool,
}

fn pid_list(set: &std::collections::BTreeSet<(String, u32)>) -> String {
    let v: Vec<String> = set
        .iter()
        .map(|(p, pid)| if p.is_empty() { pid.to_string() } else { format!("{}:{pid}", short_path(p)) })
        .collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Compares servers, kills, crashes and spinning workers with the stand-in's ground truth.
///
/// Only lines logged inside the trace's window (`until_ns`) count: what the stand-in did after
/// the probe stopped (teardown kills, say) has no evidence in the trace.
pub fn ground_truth_check(
    gt: &[TruthLine],
    l: &lifecycle::Lifecycle,
    spins: &[spin::Spin],
    until_ns: u64,
) -> Vec<Check> {
    use std::collections::BTreeSet;
    if gt.is_empty() {
        return Vec::new();
    }
    let gt: Vec<&TruthLine> = gt.iter().filter(|v| until_ns == 0 || v.mono_ns <= until_ns).collect();
    // (socket, pid) of the lines of `ev` that `keep` keeps; `pid` picks the pid the line names.
    let gt_set = |ev: TruthEv, keep: &dyn Fn(&TruthLine) -> bool, pid: fn(&TruthLine) -> Option<u32>| {
        gt.iter()
            .filter(|v| v.ev == ev && keep(v))
            .filter_map(|v| Some((v.socket.clone().unwrap_or_default(), pid(v)?)))
            .collect::<BTreeSet<(String, u32)>>()
    };
    let server = |v: &TruthLine| v.server_pid;
    let writer = |v: &TruthLine| Some(v.pid);
    // The stand-in names a server's socket in `spawn` and `server_ready` only: key the other sets by pid.
    let strip = |s: BTreeSet<(String, u32)>| -> BTreeSet<(String, u32)> {
        s.into_iter().map(|(_, p)| (String::new(), p)).collect()
    };
    // The servers the stand-in saw bind their path: a spawn that had not bound when the trace
    // ended left no socket evidence to compare.
    let servers_gt = gt_set(TruthEv::ServerReady, &|_| true, server);
    let servers: BTreeSet<(String, u32)> = l.servers.iter().map(|s| (s.path.clone(), s.pid)).collect();
    let kills_gt = strip(gt_set(TruthEv::Kill, &|v| v.is_kill_with("SIGKILL"), server));
    let server_pids: BTreeSet<u32> = l.servers.iter().map(|s| s.pid).collect();
    let kills: BTreeSet<(String, u32)> = l
        .kills
        .iter()
        .filter(|k| server_pids.contains(&k.target))
        .map(|k| (String::new(), k.target))
        .collect();
    let crashes_gt = strip(gt_set(TruthEv::ServerExit, &|v| v.code.is_some_and(|c| c != 0), server));
    let crashes: BTreeSet<(String, u32)> =
        l.servers.iter().filter(|s| s.crashed).map(|s| (String::new(), s.pid)).collect();
    // A request that busy-waited a whole second must show as a spin (the detector needs half a
    // second); a spin must come from a worker where some request waited at least a quarter.
    let waited_long = strip(gt_set(TruthEv::ClaimSpin, &|_| true, writer));
    let waited = strip(gt_set(TruthEv::ClaimWait, &|_| true, writer));
    let spinning: BTreeSet<(String, u32)> = spins.iter().map(|s| (String::new(), s.pid)).collect();
    let spins_agree = waited_long.is_subset(&spinning)
        && spinning.is_subset(&waited.union(&waited_long).cloned().collect());
    [
        ("plugin servers (socket:pid)", servers_gt.is_subset(&servers), servers_gt, servers),
        ("servers SIGKILLed", kills_gt == kills, kills_gt, kills),
        ("servers that exited non-zero", crashes_gt == crashes, crashes_gt, crashes),
        (
            "workers where a request busy-waited on an instance claim for 1 s vs. spinning workers",
            spins_agree,
            waited_long,
            spinning,
        ),
    ]
    .into_iter()
    .map(|(what, agrees, a, b)| Check {
        what: what.into(),
        standin: pid_list(&a),
        found: pid_list(&b),
        agrees,
    })
    .collect()
}

/// Runs every detector and the correlation over a loaded run.
pub fn analyze(run: &Run) -> Analysis {
    let zero = run.zero_ns();
    let root = run.meta.options.root_pid;
    let timeline = timeline::detect(&run.events, &run.processes, root, zero);
    let lifecycle = lifecycle::detect(&run.events, &run.processes, zero);
    let bucket_ns = run.meta.options.bucket_ms.max(1) * 1_000_000;
    let spins =
        spin::detect(&run.events, &timeline, spin::Params::new(run.meta.options.sample_hz, bucket_ns), zero);
    let stale = stale::detect(&run.events, &timeline, &lifecycle, zero);
    let attribution = correlate::correlate(&run.requests, &timeline, &spins, &stale, zero);
    let ground_truth_check = ground_truth_check(&run.ground_truth, &lifecycle, &spins, run.meta.ended_ns);
    Analysis {
        schema_version: REPORT_SCHEMA_VERSION,
        zero_ns: zero,
        timeline,
        lifecycle,
        spins,
        stale,
        attribution,
        ground_truth_check,
        flamegraphs: None,
    }
}

/// What the flamegraphs of a run are drawn from: its samples, worker generations, reload and
/// spinning workers.
pub fn flame_input<'a>(run: &'a Run, a: &Analysis) -> crate::flame::Input<'a> {
    crate::flame::Input {
        trace: &run.trace_dir,
        samples: run
            .events
            .iter()
            .filter_map(|e| match e {
                Event::CpuSample(s) => Some(s),
                _ => None,
            })
            .collect(),
        worker_generations: run
            .processes
            .iter()
            .filter_map(|p| Some((p.pid, p.worker_generation?)))
            .collect(),
        reload_ns: run.reload.as_ref().map(|r| r.monotonic_ns),
        spinning: a.spins.iter().map(|s| s.pid).collect(),
    }
}

/// Seconds of `ts_ns` relative to `zero_ns` (negative before it).
pub fn rel_s(ts_ns: u64, zero_ns: u64) -> f64 {
    (ts_ns as i128 - zero_ns as i128) as f64 / 1e9
}

/// `-111` -> `ECONNREFUSED`, `0` -> `0 (peer closed)`.
pub fn errno_name(ret: i64) -> String {
    const NAMES: [(i32, &str); 5] = [
        (libc::ENOENT, "ENOENT"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EPIPE, "EPIPE"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
    ];
    if ret == 0 {
        return "0 (peer closed)".into();
    }
    NAMES
        .iter()
        .find(|(e, _)| crate::event::neg_errno(*e) == ret)
        .map_or_else(|| format!("errno {}", -ret), |(_, n)| (*n).to_string())
}

/// The file name of a socket path, for short sentences.
pub fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceWriter;

    #[test]
    fn loads_a_run_directory_in_the_recorded_formats() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TraceWriter::create(&dir.path().join("trace")).unwrap();
        w.write(&testkit::signal(5_000, 9, 1, 1)).unwrap();
        let mut meta = Meta { started_ns: 1_000, ended_ns: 9_000, ..Meta::default() };
        meta.options.root_pid = 1;
        let end =
            crate::trace::Ending { threads: &[], table: "", stacks: &Default::default(), processes: &[] };
        w.finish(&mut meta, &end).unwrap();
        // A line exactly as loadtest/src/reqlog.rs writes it, and a cut-off last line.
        let line = r#"{"start_unix_ns":1,"end_unix_ns":2,"start_mono_ns":6000,"end_mono_ns":7000,"endpoint":"/js","request_id":"r-1","user":0,"status":200,"outcome":"failed","reason":"plugin header missing","worker_pid":42,"echoed_request_id":"r-1"}"#;
        std::fs::write(dir.path().join("requests.jsonl"), format!("{line}\n{{\"start_mo")).unwrap();
        let run = load(dir.path()).unwrap();
        assert_eq!(run.requests.len(), 1);
        assert_eq!((run.requests[0].worker_pid, run.requests[0].status), (Some(42), Some(200)));
        assert!(run.reload.is_none() && run.ground_truth.is_empty());
        assert_eq!(run.zero_ns(), 5_000, "no reload.json: the HUP to the root is time zero");
        std::fs::write(
            dir.path().join("reload.json"),
            r#"{"how":"SIGHUP","monotonic_ns":4000,"offset_ms":3}"#,
        )
        .unwrap();
        let run = load(dir.path()).unwrap();
        assert_eq!(run.zero_ns(), 4_000);
        let a = analyze(&run);
        assert_eq!((a.attribution.failed, a.attribution.unexplained), (1, 1));
        assert_eq!(a.timeline.hups.len(), 1);
    }
}

#[cfg(test)]
mod ground_truth_tests {
    use serde_json::json;

    use super::testkit::truth;
    use super::*;

    fn spin_of(pid: u32) -> spin::Spin {
        spin::Spin { pid, tid: pid, ..spin::Spin::default() }
    }

    fn check<'a>(checks: &'a [Check], what: &str) -> &'a Check {
        checks.iter().find(|c| c.what.starts_with(what)).unwrap()
    }

    #[test]
    fn spinning_workers_are_checked_against_the_requests_that_waited_on_a_claim() {
        let gt = [
            json!({"ev":"claim_wait","pid":11,"mono_ns":100}),
            json!({"ev":"claim_spin","pid":11,"mono_ns":200}),
            // A leaked claim nobody waited on spins nothing: it is not compared.
            json!({"ev":"claim_leaked","pid":12,"mono_ns":150}),
            json!({"ev":"claim_wait","pid":13,"mono_ns":300}),
        ]
        .map(truth);
        let l = lifecycle::Lifecycle::default();
        let what = "workers where a request busy-waited";
        // 11 waited a second and spun; 13 waited a quarter and may or may not show a spin.
        assert!(check(&ground_truth_check(&gt, &l, &[spin_of(11)], 0), what).agrees);
        assert!(check(&ground_truth_check(&gt, &l, &[spin_of(11), spin_of(13)], 0), what).agrees);
        // The trace disagrees: 11's second-long wait shows no spin, or 12 spins with no wait.
        assert!(!check(&ground_truth_check(&gt, &l, &[], 0), what).agrees);
        assert!(!check(&ground_truth_check(&gt, &l, &[spin_of(11), spin_of(12)], 0), what).agrees);
        // A wait logged after the trace ended has no evidence to be checked against.
        assert!(check(&ground_truth_check(&gt, &l, &[], 150), what).agrees);
    }

    #[test]
    fn a_server_the_trace_does_not_show_is_a_disagreement() {
        let gt = [
            json!({"ev":"server_ready","socket":"/p/js.sock","server_pid":20,"mono_ns":1}),
            // Spawned at the very end, never bound: nothing to find in the trace.
            json!({"ev":"spawn","socket":"/p/js.sock","server_pid":21,"mono_ns":2}),
        ]
        .map(truth);
        let server = lifecycle::ServerGen { path: "/p/js.sock".into(), pid: 20, ..Default::default() };
        let with = lifecycle::Lifecycle { servers: vec![server], ..Default::default() };
        let what = "plugin servers";
        assert!(check(&ground_truth_check(&gt, &with, &[], 0), what).agrees);
        assert!(!check(&ground_truth_check(&gt, &lifecycle::Lifecycle::default(), &[], 0), what).agrees);
    }

    #[test]
    fn kills_after_the_trace_are_not_expected_in_it() {
        let gt = [
            json!({"ev":"kill","signal":"SIGKILL","server_pid":20,"mono_ns":100}),
            json!({"ev":"kill","signal":"SIGKILL","server_pid":21,"mono_ns":900}),
        ]
        .map(truth);
        let l = lifecycle::Lifecycle {
            servers: vec![lifecycle::ServerGen { pid: 20, ..Default::default() }],
            kills: vec![lifecycle::Kill { target: 20, ..Default::default() }],
            ..Default::default()
        };
        assert!(check(&ground_truth_check(&gt, &l, &[], 500), "servers SIGKILLed").agrees);
        // Within the trace, the missing kill of 21 is a disagreement.
        let c = ground_truth_check(&gt, &l, &[], 1000);
        let c = check(&c, "servers SIGKILLed");
        assert!(!c.agrees, "{c:?}");
        assert_eq!((c.standin.as_str(), c.found.as_str()), ("20, 21", "20"));
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Hand-built events for the detectors' tests.

    pub use crate::event::UnixOp;
    use crate::event::*;
    use crate::model::Process;

    pub fn task(ts: u64, pid: u32, comm: &str) -> Task {
        Task { ts_ns: ts, cpu: 0, tgid: pid, tid: pid, comm: comm.into() }
    }

    pub fn sock(ts: u64, pid: u32, op: UnixOp, ret: i64, inode: u64, peer_pid: u32, path: &str) -> Event {
        Event::UnixSock(UnixSockEvent {
            task: task(ts, pid, "x"),
            op,
            fd: 5,
            ret,
            id: SockId { inode, peer_inode: 0, peer_pid },
            path: path.into(),
        })
    }

    pub fn io(ts: u64, pid: u32, op: UnixOp, ret: i64, inode: u64, peer_pid: u32) -> Event {
        Event::UnixIo(UnixIoEvent {
            task: task(ts, pid, ""),
            op,
            ret,
            id: SockId { inode, peer_inode: 0, peer_pid },
        })
    }

    pub fn flow(start: u64, end: u64, pid: u32, inode: u64, peer_pid: u32) -> Event {
        Event::UnixFlow(UnixFlowEvent {
            task: task(end, pid, ""),
            id: SockId { inode, peer_inode: 0, peer_pid },
            start_ns: start,
            end_ns: end,
            sends: 3,
            send_bytes: 30,
            recvs: 3,
            recv_bytes: 30,
            eagain: 0,
        })
    }

    pub fn signal(ts: u64, from: u32, to: u32, sig: u32) -> Event {
        Event::Signal(SignalEvent {
            task: task(ts, from, "nginx"),
            sig,
            name: signal_name(sig),
            target: to,
            result: 0,
            code: 0,
        })
    }

    pub fn fork(ts: u64, parent: u32, child: u32) -> Event {
        Event::ProcFork(ProcForkEvent { task: task(ts, parent, "nginx"), child })
    }

    pub fn exit(ts: u64, pid: u32, code: i32, parent: u32) -> Event {
        Event::ProcExit(ProcExitEvent { task: task(ts, pid, "x"), exit_code: code, parent })
    }

    pub fn worker(pid: u32, root: u32, generation: Option<u32>) -> Process {
        Process {
            pid,
            parent: root,
            comm: "nginx".into(),
            worker_generation: generation,
            ..Process::default()
        }
    }

    /// One 100 ms epoll bucket of `pid` starting at `start_ms`: `calls` calls, `zero` of them
    /// zero-timeout calls that returned nothing.
    pub fn bucket(pid: u32, start_ms: u64, calls: u64, zero: u64) -> Event {
        Event::EpollBucket(EpollBucketEvent {
            task: Task { ts_ns: ms(start_ms + 100), cpu: 0, tgid: pid, tid: pid, comm: "nginx".into() },
            start_ns: ms(start_ms),
            end_ns: ms(start_ms + 100),
            calls,
            zero_timeout: zero,
            zero_events: zero,
            events: calls - zero,
            errors: 0,
            blocked_ns: ms(5),
            epfd: 20,
            maxevents: 512,
            timeout_ns: 0,
            syscalls: vec![probe_common::Syscall::EpollWait],
        })
    }

    /// A line of the stand-in's log.
    pub fn truth(v: serde_json::Value) -> shared::truth::TruthLine {
        serde_json::from_value(v).expect("a ground-truth line")
    }

    /// Milliseconds to ns, for readable test times.
    pub fn ms(v: u64) -> u64 {
        v * 1_000_000
    }
}
