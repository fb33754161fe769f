//! Plugin-server lifecycle: the generations of servers per socket path, each SIGKILL and its
//! sender, crash/respawn loops, and orphans (reparented processes, and whether they outlive the
//! run).
//!
//! A generation is a process that served a path, numbered by the one rule of
//! [`crate::model::server_generations`]: servers that bound before the trace (found because they
//! accept on the path, or connects to it reach them as peer) come first, then each traced bind.
//! Only the trace counts: the stand-in's own log is for checking, never evidence.

use std::collections::BTreeMap;

use serde::Serialize;

use super::text::{rel_s, short_path};
use crate::event::{Event, sig};
use crate::model::{FoundBy, Process, ServerSeen, server_generations};

/// One plugin-server generation on one socket path.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerGen {
    /// The socket path.
    pub path: String,
    /// 1 for the first server seen on the path, then one more per bind.
    pub generation: u32,
    /// Process id.
    pub pid: u32,
    /// Parent at creation (the worker that spawned it).
    pub parent: u32,
    /// comm.
    pub comm: String,
    /// Bind time (s from zero); `None` when it bound before the trace.
    pub bound_s: Option<f64>,
    /// Bind time in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub bound_ns: Option<u64>,
    /// Exit time (s from zero).
    pub exit_s: Option<f64>,
    /// Exit time in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub exit_ns: Option<u64>,
    /// How it ended: `exit 1`, `SIGKILL from 4711 (nginx)`, or `running`.
    pub end: String,
    /// True when it ended abnormally on its own (non-zero status, or a signal nobody traced sent).
    pub crashed: bool,
    /// True when it was reparented before exiting, or is alive with its parent gone.
    pub orphaned: bool,
    /// How it was found: `bind` or `peer`.
    pub found_by: FoundBy,
    /// Since when it is known to exist (CLOCK_MONOTONIC ns): its bind, or 0 when only its
    /// traffic showed it (it bound before the trace).
    #[serde(skip)]
    pub since_ns: u64,
}

/// A SIGKILL seen in the trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Kill {
    /// Seconds from zero.
    pub at_s: f64,
    /// Sender's pid.
    pub from_pid: u32,
    /// Sender's comm.
    pub from_comm: String,
    /// Receiving pid.
    pub target: u32,
    /// The receiver's server role, e.g. `jsplugin.socket generation 1`, when it is a server.
    pub target_role: String,
}

/// Servers on one path that crashed and were respawned in a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CrashLoop {
    /// The socket path.
    pub path: String,
    /// Crashes followed by a respawn.
    pub crashes: usize,
    /// First crash (s from zero).
    pub first_s: f64,
    /// Last crash (s from zero).
    pub last_s: f64,
    /// Mean time between successive crashes, in s (0 with one crash).
    pub period_s: f64,
    /// The crashed pids, in order.
    pub pids: Vec<u32>,
    /// True when the last generation of the path was still running when the trace ended.
    pub last_alive: bool,
}

/// A process that lost its parent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Orphan {
    /// Process id.
    pub pid: u32,
    /// comm.
    pub comm: String,
    /// Parent at creation.
    pub parent: u32,
    /// Parent at exit (1 or a subreaper), when it exited.
    pub parent_at_exit: Option<u32>,
    /// Exit time (s from zero).
    pub exit_s: Option<f64>,
    /// True when it was still alive when the trace ended.
    pub outlives_run: bool,
}

/// Which came first on a socket path at the reload: the new server's bind or the old one's death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// The new generation bound before the old one died: new connects never failed, but
    /// connections to the old one broke when it died (Kong #8531's reproduction).
    NewBoundFirst,
    /// The old generation died before the new one bound: connects were refused in between.
    OldDiedFirst,
    /// The old generation outlived the trace.
    OldOutlivedTrace,
}

/// The hand-over of one socket path from the server that held it at the reload to the next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Handover {
    /// The socket path.
    pub path: String,
    /// The server that held the path at the reload.
    pub old_pid: u32,
    /// Its generation.
    pub old_generation: u32,
    /// When it died (s from zero), if it did in the trace.
    pub old_exit_s: Option<f64>,
    /// How it ended.
    pub old_end: String,
    /// The next server to bind the path.
    pub new_pid: u32,
    /// When it bound (s from zero).
    pub new_bound_s: f64,
    /// Which came first.
    pub order: Order,
}

impl Handover {
    /// One line for the report.
    pub fn sentence(&self) -> String {
        let path = short_path(&self.path);
        match (self.order, self.old_exit_s) {
            (Order::OldDiedFirst, Some(died)) => format!(
                "{path}: the old server {} (generation {}) died at {died:.2} s ({}), {:.2} s before the new \
                 one {} bound at {:.2} s: connects to the path failed in between",
                self.old_pid,
                self.old_generation,
                self.old_end,
                self.new_bound_s - died,
                self.new_pid,
                self.new_bound_s
            ),
            (_, Some(died)) => format!(
                "{path}: the new server {} bound at {:.2} s, {:.2} s before the old one {} (generation {}) \
                 died at {died:.2} s ({}): connections still open to the old one broke then",
                self.new_pid,
                self.new_bound_s,
                died - self.new_bound_s,
                self.old_pid,
                self.old_generation,
                self.old_end
            ),
            (_, None) => format!(
                "{path}: the new server {} bound at {:.2} s; the old one {} (generation {}) was still \
                 running when the trace ended",
                self.new_pid, self.new_bound_s, self.old_pid, self.old_generation
            ),
        }
    }
}

/// For each path, the server that held it at `zero_ns` against the first to bind it after.
pub fn handovers(servers: &[ServerGen], zero_ns: u64) -> Vec<Handover> {
    let mut out = Vec::new();
    let mut paths: Vec<&str> = servers.iter().map(|s| s.path.as_str()).collect();
    paths.dedup();
    for path in paths {
        let gens: Vec<&ServerGen> = servers.iter().filter(|s| s.path == path).collect();
        let old = gens.iter().rev().find(|s| s.since_ns <= zero_ns);
        let new = gens.iter().find(|s| s.bound_ns.is_some_and(|b| b > zero_ns));
        let (Some(old), Some(new)) = (old, new) else { continue };
        let bound = new.bound_ns.unwrap_or_default();
        let order = match old.exit_ns {
            Some(died) if died < bound => Order::OldDiedFirst,
            Some(_) => Order::NewBoundFirst,
            None => Order::OldOutlivedTrace,
        };
        out.push(Handover {
            path: path.to_string(),
            old_pid: old.pid,
            old_generation: old.generation,
            old_exit_s: old.exit_s,
            old_end: old.end.clone(),
            new_pid: new.pid,
            new_bound_s: new.bound_s.unwrap_or_default(),
            order,
        });
    }
    out
}

/// The lifecycle findings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Lifecycle {
    /// Every generation, by path then generation.
    pub servers: Vec<ServerGen>,
    /// Every SIGKILL.
    pub kills: Vec<Kill>,
    /// Crash/respawn loops.
    pub loops: Vec<CrashLoop>,
    /// Orphans.
    pub orphans: Vec<Orphan>,
    /// Per socket path, whether the new server bound before the old one died.
    pub handovers: Vec<Handover>,
}

impl Lifecycle {
    /// The generation that owns `path` at `ts_ns`: the last to bind it by then.
    pub fn owner_at(&self, path: &str, ts_ns: u64) -> Option<&ServerGen> {
        let mut owner = None;
        for s in self.servers.iter().filter(|s| s.path == path) {
            match s.bound_ns {
                // Bound before the trace: owns the path until the first traced bind.
                None => owner = Some(s),
                Some(b) if b <= ts_ns => owner = Some(s),
                Some(_) => break,
            }
        }
        owner
    }

    /// The generation `pid` is, on `path` when given, else on any path.
    pub fn server(&self, pid: u32, path: Option<&str>) -> Option<&ServerGen> {
        self.servers.iter().find(|s| s.pid == pid && path.is_none_or(|p| p == s.path))
    }

    /// The generation after `g` on its path.
    pub fn next(&self, g: &ServerGen) -> Option<&ServerGen> {
        self.servers.iter().find(|s| s.path == g.path && s.generation == g.generation + 1)
    }
}

/// Finds the server generations, kills, crash loops and orphans.
pub fn detect(events: &[Event], processes: &[Process], zero_ns: u64) -> Lifecycle {
    let procs: BTreeMap<u32, &Process> = processes.iter().map(|p| (p.pid, p)).collect();
    let servers: Vec<ServerGen> = server_generations(events)
        .into_iter()
        .map(|s| {
            let p = procs.get(&s.pid).copied();
            server_gen(s, p, &procs, zero_ns)
        })
        .collect();

    let kills = events
        .iter()
        .filter_map(|e| match e {
            Event::Signal(s) if s.sig == sig::KILL => Some(Kill {
                at_s: rel_s(s.task.ts_ns, zero_ns),
                from_pid: s.task.tgid,
                from_comm: s.task.comm.clone(),
                target: s.target,
                target_role: servers
                    .iter()
                    .find(|g| g.pid == s.target)
                    .map(|g| format!("{} generation {}", short_path(&g.path), g.generation))
                    .unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();

    let mut loops = Vec::new();
    let mut by_path: BTreeMap<&str, Vec<&ServerGen>> = BTreeMap::new();
    for s in &servers {
        by_path.entry(&s.path).or_default().push(s);
    }
    for (path, gens) in by_path {
        // A crash counts when another generation of the path came after it: a respawn.
        let crashed: Vec<&ServerGen> =
            gens.windows(2).filter(|w| w[0].crashed && w[0].exit_s.is_some()).map(|w| w[0]).collect();
        if crashed.len() >= 2 {
            let times: Vec<f64> = crashed.iter().filter_map(|g| g.exit_s).collect();
            let (first, last) = (times[0], times[times.len() - 1]);
            loops.push(CrashLoop {
                path: path.to_string(),
                crashes: crashed.len(),
                first_s: first,
                last_s: last,
                period_s: (last - first) / (times.len() - 1) as f64,
                pids: crashed.iter().map(|g| g.pid).collect(),
                last_alive: gens.last().is_some_and(|g| g.exit_s.is_none()),
            });
        }
    }

    let mut orphans = Vec::new();
    for p in processes {
        let parent_gone = p.exit_ns.is_none()
            && p.parent > 1
            && procs.get(&p.parent).is_some_and(|pp| pp.exit_ns.is_some());
        if p.orphaned || p.parent_at_exit == Some(1) && p.parent != 1 || parent_gone {
            orphans.push(Orphan {
                pid: p.pid,
                comm: p.comm.clone(),
                parent: p.parent,
                parent_at_exit: p.parent_at_exit,
                exit_s: p.exit_ns.map(|t| rel_s(t, zero_ns)),
                outlives_run: p.exit_ns.is_none(),
            });
        }
    }
    let handovers = handovers(&servers, zero_ns);
    Lifecycle { servers, kills, loops, orphans, handovers }
}

fn server_gen(
    s: ServerSeen,
    p: Option<&Process>,
    procs: &BTreeMap<u32, &Process>,
    zero_ns: u64,
) -> ServerGen {
    let ServerSeen { path, generation, pid, bound_ns, found_by } = s;
    let exit_ns = p.and_then(|p| p.exit_ns);
    let (end, crashed) = match p {
        Some(p) => match (&p.exit_signal, p.exit_status, p.exit_ns) {
            (Some(sig), _, _) => match p.signals.iter().rev().find(|r| &r.sig == sig) {
                Some(r) => (format!("{sig} from {} ({})", r.from, r.from_comm), false),
                None => (sig.clone(), true),
            },
            (None, Some(code), _) => (format!("exit {code}"), code != 0),
            (None, None, Some(_)) => ("exited".into(), false),
            _ => ("running".into(), false),
        },
        None => ("unknown".into(), false),
    };
    let orphaned = p.is_some_and(|p| {
        p.orphaned || (p.exit_ns.is_none() && procs.get(&p.parent).is_some_and(|pp| pp.exit_ns.is_some()))
    });
    ServerGen {
        path,
        generation,
        pid,
        parent: p.map_or(0, |p| p.parent),
        comm: p.map(|p| p.comm.clone()).unwrap_or_default(),
        bound_s: bound_ns.map(|t| rel_s(t, zero_ns)),
        bound_ns,
        exit_s: exit_ns.map(|t| rel_s(t, zero_ns)),
        exit_ns,
        end,
        crashed,
        orphaned,
        found_by,
        since_ns: bound_ns.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testkit::*;
    use crate::model::{ProcInfo, processes};

    const JS: &str = "/p/js.sock";

    /// Worker 10 spawned server 20 before the trace; after the reload worker 11's servers 30,
    /// 31, 32 crash-loop (exit 1), and worker 10 SIGKILLs 20 on its way out.
    fn crash_loop() -> (Vec<Event>, Vec<Process>) {
        let known = BTreeMap::from([
            (1, ProcInfo { ppid: 0, comm: "nginx".into(), argv: vec![], ns: None }),
            (10, ProcInfo { ppid: 1, comm: "nginx".into(), argv: vec![], ns: None }),
            (20, ProcInfo { ppid: 10, comm: "node".into(), argv: vec![], ns: None }),
        ]);
        let events = vec![
            sock(ms(100), 10, UnixOp::Connect, 0, 500, 20, JS),
            fork(ms(900), 1, 11),
            fork(ms(950), 11, 30),
            signal(ms(1000), 10, 20, 9),
            exit(ms(1001), 20, 9, 10),
            sock(ms(1100), 30, UnixOp::Bind, 0, 600, 0, JS),
            exit(ms(1500), 30, 1 << 8, 11),
            fork(ms(1600), 11, 31),
            sock(ms(1700), 31, UnixOp::Bind, 0, 601, 0, JS),
            exit(ms(2500), 31, 1 << 8, 11),
            fork(ms(2600), 11, 32),
            sock(ms(2700), 32, UnixOp::Bind, 0, 602, 0, JS),
            exit(ms(3500), 32, 1 << 8, 11),
            fork(ms(3600), 11, 33),
            sock(ms(3700), 33, UnixOp::Bind, 0, 603, 0, JS),
        ];
        let procs = processes(&events, 1, &known);
        (events, procs)
    }

    #[test]
    fn generations_kills_and_a_crash_loop() {
        let (events, procs) = crash_loop();
        let l = detect(&events, &procs, ms(1000));
        let gens: Vec<(u32, u32, FoundBy)> =
            l.servers.iter().map(|s| (s.generation, s.pid, s.found_by)).collect();
        use FoundBy::*;
        assert_eq!(gens, vec![(1, 20, Peer), (2, 30, Bind), (3, 31, Bind), (4, 32, Bind), (5, 33, Bind)]);
        // processes.json gives every server the generation the report gives it.
        for g in &l.servers {
            let p = procs.iter().find(|p| p.pid == g.pid).unwrap();
            assert_eq!(p.server_generations, vec![(g.path.clone(), g.generation)], "pid {}", g.pid);
        }
        assert_eq!(l.servers[0].end, "SIGKILL from 10 (nginx)");
        assert!(!l.servers[0].crashed && l.servers[1].crashed);
        assert_eq!(l.kills.len(), 1);
        assert_eq!((l.kills[0].from_pid, l.kills[0].target, l.kills[0].at_s), (10, 20, 0.0));
        assert_eq!(l.kills[0].target_role, "js.sock generation 1");
        assert_eq!(l.loops.len(), 1);
        let lp = &l.loops[0];
        assert_eq!((lp.path.as_str(), lp.crashes, lp.pids.clone()), (JS, 3, vec![30, 31, 32]));
        assert!((lp.period_s - 1.0).abs() < 1e-9 && lp.last_alive);
        assert_eq!(l.owner_at(JS, ms(1050)).map(|s| s.pid), Some(20));
        // 20 held the path at the reload and was SIGKILLed at 1.0 s; 30 bound at 1.1 s.
        assert_eq!(l.handovers.len(), 1);
        let h = &l.handovers[0];
        assert_eq!((h.old_pid, h.new_pid, h.order), (20, 30, Order::OldDiedFirst));
        assert!(h.sentence().contains("0.10 s before the new one 30 bound"), "{}", h.sentence());
        assert_eq!(l.owner_at(JS, ms(1800)).map(|s| s.pid), Some(31));
        assert!(l.orphans.is_empty());
    }

    #[test]
    fn a_pre_trace_server_is_found_by_its_traffic_and_orphans_are_found() {
        let known = BTreeMap::from([
            (10, ProcInfo { ppid: 1, comm: "nginx".into(), argv: vec![], ns: None }),
            (20, ProcInfo { ppid: 10, comm: "go".into(), argv: vec![], ns: None }),
        ]);
        let events = [sock(ms(5), 10, UnixOp::Connect, 0, 500, 20, JS), exit(ms(10), 10, 0, 1)];
        let procs = processes(&events, 1, &known);
        let l = detect(&events, &procs, 0);
        assert_eq!((l.servers[0].pid, l.servers[0].found_by), (20, FoundBy::Peer));
        assert!(l.servers[0].orphaned);
        assert_eq!(l.orphans.len(), 1);
        assert!(l.orphans[0].pid == 20 && l.orphans[0].outlives_run);
    }

    #[test]
    fn a_new_server_that_binds_before_the_old_one_dies_is_a_hand_over() {
        let known = BTreeMap::from([
            (10, ProcInfo { ppid: 1, comm: "nginx".into(), argv: vec![], ns: None }),
            (20, ProcInfo { ppid: 10, comm: "py".into(), argv: vec![], ns: None }),
        ]);
        let events = vec![
            sock(ms(100), 10, UnixOp::Connect, 0, 500, 20, JS),
            fork(ms(900), 1, 11),
            fork(ms(950), 11, 30),
            sock(ms(1900), 30, UnixOp::Bind, 0, 600, 0, JS),
            signal(ms(3000), 10, 20, 9),
            exit(ms(3001), 20, 9, 10),
        ];
        let procs = processes(&events, 1, &known);
        let l = detect(&events, &procs, ms(800));
        let h = &l.handovers[0];
        assert_eq!((h.old_pid, h.new_pid, h.order), (20, 30, Order::NewBoundFirst));
        assert!((h.new_bound_s - 1.1).abs() < 1e-9 && (h.old_exit_s.unwrap() - 2.201).abs() < 1e-9);
        assert!(h.sentence().contains("1.10 s before the old one 20"), "{}", h.sentence());
        let gens: Vec<(u32, u32)> = l.servers.iter().map(|s| (s.pid, s.generation)).collect();
        assert_eq!(gens, vec![(20, 1), (30, 2)]);
        // Without the kill in the trace, the old one outlived it.
        let l = detect(&events[..4], &processes(&events[..4], 1, &known), ms(800));
        assert_eq!(l.handovers[0].order, Order::OldOutlivedTrace);
    }

    #[test]
    fn a_clean_run_has_no_kill_loop_or_orphan() {
        let known = BTreeMap::from([(20, ProcInfo { ppid: 10, comm: "py".into(), argv: vec![], ns: None })]);
        let events =
            [sock(ms(1), 20, UnixOp::Bind, 0, 1, 0, JS), sock(ms(2), 10, UnixOp::Connect, 0, 2, 20, JS)];
        let procs = processes(&events, 1, &known);
        let l = detect(&events, &procs, 0);
        assert_eq!(l.servers.len(), 1);
        assert!(l.kills.is_empty() && l.loops.is_empty() && l.orphans.is_empty() && l.handovers.is_empty());
    }
}
