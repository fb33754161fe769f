//! The reload timeline: the HUP to the root (the nginx master), the workers it forks afterwards,
//! and the old workers' exits, grouped by worker generation.

use std::collections::BTreeMap;

use serde::Serialize;

use super::text::rel_s;
use crate::event::{ConnOp, Event};
use crate::model::Process;
use crate::model::root_hup;

/// A SIGHUP to the root.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Hup {
    /// Seconds from time zero.
    pub at_s: f64,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Sender's pid.
    pub from_pid: u32,
    /// Sender's comm.
    pub from_comm: String,
}

/// One worker of the root.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Worker {
    /// Process id.
    pub pid: u32,
    /// 1 for workers that existed before any traced HUP, then 1 + HUPs before its fork.
    pub generation: u32,
    /// Fork time (s from zero); `None` when it existed before the trace.
    pub forked_s: Option<f64>,
    /// Exit time (s from zero); `None` when it outlived the trace.
    pub exit_s: Option<f64>,
    /// How it ended: `exit 0`, `SIGKILL`, or `running`.
    pub end: String,
    /// Idle keep-alive connections it closed after the reload (`tcp_conn` closes of connections
    /// that had served requests and had none unanswered): the clients' next request on them
    /// fails as "connection closed".
    pub keepalive_closed: u32,
    /// The first of those closes (s from zero).
    pub keepalive_closed_s: Option<f64>,
    /// The first and the last of them, in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub keepalive_closed_ns: Option<(u64, u64)>,
}

/// A program the root ran through fork+exec after a HUP (e.g. a plugin server's query command).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Helper {
    /// Process id.
    pub pid: u32,
    /// Fork time (s from zero).
    pub forked_s: Option<f64>,
    /// The program (argv when known, else the exec'ed path).
    pub command: String,
}

/// The workers of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Generation {
    /// Worker generation.
    pub generation: u32,
    /// Its workers' pids.
    pub workers: Vec<u32>,
    /// First fork (s from zero), when forked during the trace.
    pub first_fork_s: Option<f64>,
    /// How many exited during the trace.
    pub exited: usize,
    /// Last exit (s from zero), when all exited.
    pub all_exited_s: Option<f64>,
}

/// The reload timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// The root (nginx master).
    pub root: u32,
    /// HUPs to the root.
    pub hups: Vec<Hup>,
    /// Every worker of the root, by pid.
    pub workers: Vec<Worker>,
    /// Workers grouped by generation.
    pub generations: Vec<Generation>,
    /// Programs the root forked and exec'ed.
    pub helpers: Vec<Helper>,
}

impl Timeline {
    /// The worker generation of `pid`, when it is a worker of the root.
    pub fn worker_generation(&self, pid: u32) -> Option<u32> {
        self.workers.binary_search_by_key(&pid, |w| w.pid).ok().map(|i| self.workers[i].generation)
    }
}

/// Builds the timeline from the events and the process table.
pub fn detect(events: &[Event], processes: &[Process], root: u32, zero_ns: u64) -> Timeline {
    let hups = events
        .iter()
        .filter_map(|e| root_hup(e, root))
        .map(|s| Hup {
            at_s: rel_s(s.task.ts_ns, zero_ns),
            ts_ns: s.task.ts_ns,
            from_pid: s.task.tgid,
            from_comm: s.task.comm.clone(),
        })
        .collect();
    let mut workers = Vec::new();
    let mut helpers = Vec::new();
    for p in processes.iter().filter(|p| p.parent == root && p.pid != root) {
        // A worker is a plain fork of the master; anything exec'ed is a helper program.
        if let Some(exec) = &p.exec {
            helpers.push(Helper {
                pid: p.pid,
                forked_s: p.forked_ns.map(|t| rel_s(t, zero_ns)),
                command: if p.argv.is_empty() { exec.clone() } else { p.argv.join(" ") },
            });
            continue;
        }
        let end = match (&p.exit_signal, p.exit_status, p.exit_ns) {
            (Some(sig), _, _) => sig.clone(),
            (None, Some(code), _) => format!("exit {code}"),
            (None, None, Some(_)) => "exited".into(),
            _ => "running".into(),
        };
        workers.push(Worker {
            pid: p.pid,
            generation: p.worker_generation.unwrap_or(1),
            forked_s: p.forked_ns.map(|t| rel_s(t, zero_ns)),
            exit_s: p.exit_ns.map(|t| rel_s(t, zero_ns)),
            end,
            ..Worker::default()
        });
    }
    workers.sort_by_key(|w| w.pid);
    keepalive_closes(events, root, &mut workers, zero_ns);
    let mut by_gen: BTreeMap<u32, Generation> = BTreeMap::new();
    for w in &workers {
        let g = by_gen
            .entry(w.generation)
            .or_insert_with(|| Generation { generation: w.generation, ..Generation::default() });
        g.workers.push(w.pid);
        if let Some(f) = w.forked_s {
            g.first_fork_s = Some(g.first_fork_s.map_or(f, |x: f64| x.min(f)));
        }
        if w.exit_s.is_some() {
            g.exited += 1;
        }
    }
    for g in by_gen.values_mut() {
        if g.exited == g.workers.len() {
            g.all_exited_s = workers
                .iter()
                .filter(|w| w.generation == g.generation)
                .filter_map(|w| w.exit_s)
                .fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x))));
        }
    }
    Timeline { root, hups, workers, generations: by_gen.into_values().collect(), helpers }
}

/// Counts the idle keep-alive connections each worker closed after the first HUP of the root.
fn keepalive_closes(events: &[Event], root: u32, workers: &mut [Worker], zero_ns: u64) {
    let Some(first_hup) = events.iter().find_map(|e| root_hup(e, root)).map(|s| s.task.ts_ns) else {
        return;
    };
    for e in events {
        let Event::TcpConn(c) = e else { continue };
        if c.op != ConnOp::Close || c.unanswered || c.requests == 0 || c.task.ts_ns < first_hup {
            continue;
        }
        let Ok(i) = workers.binary_search_by_key(&c.task.tgid, |w| w.pid) else { continue };
        let w = &mut workers[i];
        w.keepalive_closed += 1;
        let t = c.task.ts_ns;
        let (first, last) = w.keepalive_closed_ns.map_or((t, t), |(a, b)| (a.min(t), b.max(t)));
        w.keepalive_closed_ns = Some((first, last));
        w.keepalive_closed_s = Some(rel_s(first, zero_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testkit::*;
    use crate::model::{ProcInfo, processes};

    #[test]
    fn hup_new_workers_and_old_exits() {
        let known = BTreeMap::from([
            (100, ProcInfo { ppid: 1, comm: "nginx".into(), argv: vec![], ns: None }),
            (101, ProcInfo { ppid: 100, comm: "nginx".into(), argv: vec![], ns: None }),
        ]);
        let zero = ms(1000);
        let events = [
            signal(ms(1000), 7, 100, 1),
            fork(ms(1500), 100, 102),
            // 102 acts as a process (not a thread) of its own.
            sock(ms(1600), 102, UnixOp::Connect, 0, 1, 0, "/x.sock"),
            exit(ms(1800), 101, 0, 100),
        ];
        let procs = processes(&events, 100, &known);
        let t = detect(&events, &procs, 100, zero);
        assert_eq!(t.hups.len(), 1);
        assert_eq!((t.hups[0].at_s, t.hups[0].from_pid), (0.0, 7));
        assert_eq!(t.worker_generation(101), Some(1));
        assert_eq!(t.worker_generation(102), Some(2));
        assert_eq!(t.workers[1].forked_s, Some(0.5));
        assert_eq!((t.workers[0].exit_s, t.workers[0].end.as_str()), (Some(0.8), "exit 0"));
        assert_eq!(t.generations[0].all_exited_s, Some(0.8));
        assert_eq!(t.generations[1].all_exited_s, None);
    }

    #[test]
    fn no_reload_means_no_hup_and_one_generation() {
        let known =
            BTreeMap::from([(101, ProcInfo { ppid: 100, comm: "nginx".into(), argv: vec![], ns: None })]);
        let procs = processes(&[], 100, &known);
        let t = detect(&[], &procs, 100, 0);
        assert!(t.hups.is_empty());
        assert_eq!(t.generations.len(), 1);
    }
}
