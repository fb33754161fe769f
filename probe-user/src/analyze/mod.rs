//! The analysis of a run directory: detectors over the recorded trace, the link from each failed
//! request to the kernel events behind it, and the report files.
//!
//! Everything here is pure logic over recorded artifacts (no root, no kernel): [`load`] reads a
//! run directory, [`analyze`] runs the detectors and the correlation, [`report::write`] writes
//! `report.md`, `report.json` and `timeline.json`.

pub mod correlate;
pub mod fit;
pub mod lifecycle;
mod linked;
pub mod links;
pub mod reloads;
pub mod report;
pub mod routes;
pub mod spin;
pub mod stale;
pub mod standin;
pub mod text;
pub mod timeline;
pub mod verdict;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
pub(crate) mod testkit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::event::{Event, UnixOp};
use crate::model::{ProcInfo, Process};
use crate::trace::Meta;

/// Version of `report.json`'s layout.
pub const REPORT_SCHEMA_VERSION: u32 = 2;

pub use shared::reload::Reload;
use shared::requests::LogSummary;
pub use shared::requests::RequestLine as Request;
use shared::truth::TruthLine;
use standin::Check;

/// Everything recorded in a run directory.
#[derive(Debug, Default)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// The trace directory (`trace/`, or the run directory itself).
    pub trace_dir: PathBuf,
    /// `trace/meta.json`.
    pub meta: Meta,
    /// `trace/events.jsonl`, but for the `http_request` events, which are folded into
    /// [`Run::votes`], [`Run::kernel`] and [`Run::reads`] as they are read, and the failed
    /// connects, which go to [`Run::failed_connects`].
    pub events: Vec<Event>,
    /// What the kernel saw of each failed request, by request id.
    pub reads: correlate::KernelRequests,
    /// Every worker's failed connect to a unix socket, in time order.
    pub failed_connects: Vec<stale::FailedConnect>,
    /// The answered requests' plugin-socket votes, per route.
    pub votes: routes::Votes,
    /// What the kernel saw of every request, by request id (none for a run built by hand).
    pub kernel: Option<linked::KernelIndex>,
    /// `trace/processes.json`, or the model rebuilt from the events.
    pub processes: Vec<Process>,
    /// `requests.jsonl`: counts per endpoint, and the failed requests (empty when absent).
    pub log: LogSummary,
    /// `reload.json`: every reload sent, in order (empty when absent).
    pub reloads: Vec<Reload>,
    /// `standin-ground-truth.jsonl` (empty when absent).
    pub ground_truth: Vec<TruthLine>,
}

impl Run {
    /// Drops what only the detectors and the correlation read, once `a` was analysed from it:
    /// the kernel's reads, the failed connects, the socket and process events, the epoll buckets
    /// of threads that never spun, and all but the earliest failed requests (the timeline's).
    /// The flamegraphs and the report files need the rest.
    pub fn keep_for_report(&mut self, a: &Analysis) {
        self.reads = correlate::KernelRequests::default();
        self.failed_connects = Vec::new();
        let spun: std::collections::HashSet<(u32, u32)> = a.spins.iter().map(|s| (s.pid, s.tid)).collect();
        self.events.retain(|e| match e {
            Event::EpollBucket(b) => spun.contains(&(b.task.tgid, b.task.tid)),
            Event::Signal(_) | Event::CpuSample(_) => true,
            _ => false,
        });
        self.events.shrink_to_fit();
        self.log.failed.sort_by_key(|r| r.start_mono_ns);
        self.log.failed.truncate(links::FIRST);
        self.log.failed.shrink_to_fit();
        release_freed_memory();
    }

    /// Time zero of the analysis: the first reload, else the first HUP of the root, else the
    /// trace start.
    pub fn zero_ns(&self) -> u64 {
        if let Some(r) = self.reloads.first() {
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

/// Reads a run directory (a trace directory under `trace/`, or the directory itself). Memory
/// grows with the failures and the findings, not with the requests: each of those is counted as
/// it is read, and only the failed ones are kept.
pub fn load(dir: &Path) -> Result<Run> {
    let trace_dir = if dir.join("trace/meta.json").exists() { dir.join("trace") } else { dir.to_path_buf() };
    let requests = dir.join("requests.jsonl");
    let log = LogSummary::read(&requests).with_context(|| format!("cannot read {}", requests.display()))?;
    let failed: std::collections::HashSet<&str> = log.failed.iter().map(|r| r.request_id.as_str()).collect();
    let mut votes = routes::Votes::default();
    let mut kernel = linked::KernelIndex::new()?;
    let mut reads = correlate::KernelRequests::default();
    let mut failed_connects = Vec::new();
    let mut paths = text::Interner::default();
    // Sockets whose path an event gave: their close adds nothing (a crash loop closes a quarter
    // of a million refused sockets).
    let mut named = std::collections::HashSet::new();
    let mut trace = crate::trace::read_with(&trace_dir, |e| match e {
        Event::HttpRequest(h) => {
            votes.add(&h);
            kernel.add(&h);
            if h.request_id.as_deref().is_some_and(|id| failed.contains(id)) {
                reads.add(&h);
            }
            None
        }
        Event::UnixSock(u) if u.op == UnixOp::Close && named.remove(&u.id.inode) => None,
        Event::UnixSock(u) if stale::FailedConnect::is(&u) => {
            named.insert(u.id.inode);
            failed_connects.push(stale::FailedConnect::of(&u, &mut paths));
            None
        }
        Event::UnixSock(u) => {
            if !u.path.is_empty() && u.op != UnixOp::Close {
                named.insert(u.id.inode);
            }
            Some(Event::UnixSock(u))
        }
        other => Some(other),
    })?;
    kernel.finish()?;
    reads.finish();
    trace.events.shrink_to_fit();
    failed_connects.shrink_to_fit();
    let processes = match crate::trace::read_processes(&trace_dir)? {
        Some(p) => p,
        // Older traces: rebuild the model from the events alone.
        None => crate::model::processes(
            &trace.events,
            trace.meta.options.root_pid,
            &BTreeMap::<u32, ProcInfo>::new(),
        ),
    };
    let reloads = shared::reload::read_all(&dir.join("reload.json"));
    // The stand-in logs every instance-cache event too: keep the kinds the analysis reads.
    let mut ground_truth = Vec::new();
    let truth = dir.join("standin-ground-truth.jsonl");
    shared::for_each_json_line(&truth, |l: TruthLine| {
        if standin::READS.contains(&l.ev) || l.behaviour.is_some() {
            ground_truth.push(l);
        }
    })
    .with_context(|| format!("cannot read {}", truth.display()))?;
    Ok(Run {
        dir: dir.to_path_buf(),
        trace_dir,
        meta: trace.meta,
        events: trace.events,
        reads,
        failed_connects,
        votes,
        kernel: Some(kernel),
        processes,
        log,
        reloads,
        ground_truth,
    })
}

/// Gives the heap's freed pages back to the system: after the detectors, most of what the load
/// held is free, and the flamegraphs come next.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's own heap; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
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
    /// Each route's plugin sockets, learned from the trace.
    pub routes: routes::Routes,
    /// Failed requests linked to their causes.
    pub attribution: correlate::Attribution,
    /// Each reload's window: what it started, stopped and left running, and its failures.
    pub reloads: Vec<reloads::ReloadWindow>,
    /// The findings checked against the stand-in's own log (empty without one).
    pub ground_truth_check: Vec<Check>,
    /// The flamegraphs drawn from the CPU samples (filled by the caller that draws them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flamegraphs: Option<crate::flame::FlameSummary>,
    /// Host pid → pid inside its own pid namespace, for processes in a container.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub container_pids: BTreeMap<u32, u32>,
    /// The findings counted, written apart as `verdict.json` (its format is `shared`'s).
    #[serde(skip)]
    pub verdict: shared::verdict::Verdict,
}

impl Analysis {
    /// `16565`, or `16565 (pid 7 in its container)`.
    pub fn pid_label(&self, pid: u32) -> String {
        match self.container_pids.get(&pid) {
            Some(inner) => format!("{pid} (pid {inner} in its container)"),
            None => pid.to_string(),
        }
    }
}

/// Runs every detector and the correlation over a loaded run.
pub fn analyze(run: &Run) -> Analysis {
    let zero = run.zero_ns();
    let root = run.meta.options.root_pid;
    let timeline = timeline::detect(&run.events, &run.processes, root, zero);
    let lifecycle = lifecycle::detect(&run.events, &run.processes, zero);
    let bucket_ns = run.meta.options.bucket_ms.max(1) * 1_000_000;
    let spins = spin::detect(
        &run.events,
        &timeline,
        spin::Params {
            trace_end_ns: run.meta.ended_ns,
            ..spin::Params::new(run.meta.options.sample_hz, bucket_ns)
        },
        zero,
    );
    let paths = routes::socket_paths(&run.events);
    let stale = stale::detect(&run.events, &run.failed_connects, &paths, &timeline, &lifecycle, zero);
    let routes = routes::Routes::learn(&run.votes, &paths);
    let instants: Vec<u64> = if run.reloads.is_empty() {
        timeline.hups.iter().map(|h| h.ts_ns).collect()
    } else {
        run.reloads.iter().map(|r| r.monotonic_ns).collect()
    };
    let attribution = correlate::correlate(
        &run.log,
        &correlate::Evidence {
            kernel: &run.reads,
            routes: &routes,
            timeline: &timeline,
            spins: &spins,
            stale: &stale,
        },
        &instants,
        zero,
    );
    let reloads = reloads::windows(&instants, run.meta.ended_ns, &timeline, &lifecycle, &attribution, zero);
    // Past the correlation only the timeline reads them, and only its first ones.
    let mut stale = stale;
    stale.connect_failures.truncate(report::MAX_SOCKET_INSTANTS);
    stale.connect_failures.shrink_to_fit();
    let ground_truth_check =
        standin::ground_truth_check(&run.ground_truth, &lifecycle, &spins, run.meta.ended_ns);
    let mut a = Analysis {
        schema_version: REPORT_SCHEMA_VERSION,
        zero_ns: zero,
        timeline,
        lifecycle,
        spins,
        stale,
        routes,
        attribution,
        reloads,
        ground_truth_check,
        flamegraphs: None,
        container_pids: run
            .processes
            .iter()
            .filter_map(|p| Some((p.pid, p.ns.as_ref()?.inner_pid()?)))
            .collect(),
        verdict: Default::default(),
    };
    a.verdict = verdict::of(run, &a);
    a
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
        reload_ns: run.reloads.first().map(|r| r.monotonic_ns),
        spinning: a.spins.iter().map(|s| s.pid).collect(),
        lua_disabled: run.meta.lua.iter().flat_map(|l| l.disabled.iter().map(|d| d.pid)).collect(),
    }
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
        let end = crate::trace::Ending {
            threads: &[],
            table: "",
            stacks: &Default::default(),
            processes: &[],
            lua_symbols: &Default::default(),
            binaries: &Default::default(),
        };
        w.finish(&mut meta, &end).unwrap();
        // A line exactly as loadtest/src/reqlog.rs writes it, and a cut-off last line.
        let line = r#"{"start_unix_ns":1,"end_unix_ns":2,"start_mono_ns":6000,"end_mono_ns":7000,"endpoint":"/js","request_id":"r-1","user":0,"status":200,"outcome":"failed","reason":"plugin header missing","worker_pid":42,"echoed_request_id":"r-1"}"#;
        std::fs::write(dir.path().join("requests.jsonl"), format!("{line}\n{{\"start_mo")).unwrap();
        let run = load(dir.path()).unwrap();
        assert_eq!((run.log.requests, run.log.failed.len()), (1, 1));
        assert_eq!((run.log.failed[0].worker_pid, run.log.failed[0].status), (Some(42), Some(200)));
        assert!(run.reloads.is_empty() && run.ground_truth.is_empty());
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
