//! The process model of a trace: every process seen, its parent, exec, exit and the signals it
//! got, and the generations a reload creates (workers per HUP of the master, plugin servers per
//! socket path).
//!
//! The two rules the whole tool numbers generations by live here: [`root_hup`] (a reload) and
//! [`server_generations`] (who served a socket path, in order); `processes.json`, the report and
//! the timeline all take them from here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, SignalEvent, UnixOp, sig};

/// What is known of a process before tracing or from /proc while it lived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    /// Parent pid when first seen.
    pub ppid: u32,
    /// comm when first seen.
    pub comm: String,
    /// argv from /proc/PID/cmdline.
    pub argv: Vec<String>,
    /// Its namespaces.
    pub ns: Option<Namespaces>,
}

/// A process's pid and mount namespaces (inode numbers of `/proc/PID/ns/*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// Its pid namespace.
    pub pid_ns: u64,
    /// Its mount namespace.
    pub mnt_ns: u64,
    /// Its pid in each pid namespace it is in, outermost (the host's) first (`NSpid`).
    pub nspid: Vec<u32>,
}

impl Namespaces {
    /// Its pid as its own namespace (a container) sees it, when that differs from the host's.
    pub fn inner_pid(&self) -> Option<u32> {
        (self.nspid.len() > 1).then(|| *self.nspid.last().unwrap_or(&0))
    }
}

/// A signal a process received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// When.
    pub ts_ns: u64,
    /// Signal name.
    pub sig: String,
    /// Sender's pid.
    pub from: u32,
    /// Sender's comm.
    pub from_comm: String,
}

/// One process of the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Parent when it was created (or first seen).
    pub parent: u32,
    /// Last comm.
    pub comm: String,
    /// argv, read from /proc while it lived.
    pub argv: Vec<String>,
    /// Program exec'ed during the trace.
    pub exec: Option<String>,
    /// Fork time, when it was created during the trace.
    pub forked_ns: Option<u64>,
    /// Exec time.
    pub exec_ns: Option<u64>,
    /// Exit time of the process (its leader thread).
    pub exit_ns: Option<u64>,
    /// Exit status, when it exited normally.
    pub exit_status: Option<i32>,
    /// The signal that ended it.
    pub exit_signal: Option<String>,
    /// Parent at exit; differs from `parent` when it was orphaned and reparented.
    pub parent_at_exit: Option<u32>,
    /// True when it was reparented (to pid 1 or a subreaper) before it exited.
    pub orphaned: bool,
    /// Signals it received.
    pub signals: Vec<Received>,
    /// Worker generation for children of the root: 1 + HUPs the root got before the fork.
    pub worker_generation: Option<u32>,
    /// (path, generation) for each unix path it served (see [`server_generations`]).
    pub server_generations: Vec<(String, u32)>,
    /// Its namespaces, read from /proc while it lived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<Namespaces>,
}

impl Process {
    /// `16565`, or `16565 (pid 7 in its container)` for a process in a nested pid namespace.
    pub fn pid_label(&self) -> String {
        match self.ns.as_ref().and_then(Namespaces::inner_pid) {
            Some(inner) => format!("{} (pid {inner} in its container)", self.pid),
            None => self.pid.to_string(),
        }
    }
}

/// The one rule for a reload: a SIGHUP to the root of the traced tree (nginx's master).
pub fn root_hup(ev: &Event, root: u32) -> Option<&SignalEvent> {
    match ev {
        Event::Signal(s) if s.sig == sig::HUP && s.target == root => Some(s),
        _ => None,
    }
}

/// How a plugin server was found in the trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// Its `bind` of the path.
    #[default]
    Bind,
    /// It accepted on the path, or a connect to the path reached it as peer: it bound before
    /// the trace.
    Peer,
}

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FoundBy::Bind => "bind",
            FoundBy::Peer => "peer",
        })
    }
}

/// One generation of a socket path's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSeen {
    /// The socket path.
    pub path: String,
    /// 1 for the first server of the path, then one more for each next.
    pub generation: u32,
    /// Its pid.
    pub pid: u32,
    /// Its bind (CLOCK_MONOTONIC ns), when traced.
    pub bound_ns: Option<u64>,
    /// How it was found.
    pub found_by: FoundBy,
}

/// The one rule for server generations: on each path, the servers that bound before the trace
/// (found by their traffic alone) come first, then each traced bind in time order; a pid counts
/// once per path.
pub fn server_generations(events: &[Event]) -> Vec<ServerSeen> {
    let mut binds: BTreeMap<&str, Vec<(u64, u32)>> = BTreeMap::new();
    let mut earlier: BTreeMap<&str, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for ev in events {
        let Event::UnixSock(u) = ev else { continue };
        if u.path.is_empty() || u.ret < 0 {
            continue;
        }
        match u.op {
            UnixOp::Bind => binds.entry(&u.path).or_default().push((u.task.ts_ns, u.task.tgid)),
            // Whoever accepts on the path serves it; a connect's peer pid is the listener's owner.
            UnixOp::Accept => {
                earlier.entry(&u.path).or_default().insert(u.task.tgid);
            }
            UnixOp::Connect if u.id.peer_pid != 0 => {
                earlier.entry(&u.path).or_default().insert(u.id.peer_pid);
            }
            _ => {}
        }
    }
    let paths: std::collections::BTreeSet<&str> = binds.keys().chain(earlier.keys()).copied().collect();
    let mut out = Vec::new();
    for path in paths {
        let mut bound = binds.remove(path).unwrap_or_default();
        bound.sort_by_key(|&(ts, _)| ts);
        let pre = earlier.remove(path).unwrap_or_default();
        let pre: Vec<u32> = pre.into_iter().filter(|pid| !bound.iter().any(|&(_, b)| b == *pid)).collect();
        let order = pre
            .into_iter()
            .map(|pid| (pid, None, FoundBy::Peer))
            .chain(bound.into_iter().map(|(ts, pid)| (pid, Some(ts), FoundBy::Bind)));
        let mut seen = std::collections::BTreeSet::new();
        for (pid, bound_ns, found_by) in order {
            if seen.insert(pid) {
                let generation = seen.len() as u32;
                out.push(ServerSeen { path: path.to_string(), generation, pid, bound_ns, found_by });
            }
        }
    }
    out
}

/// Builds the process table from the events, the processes known at start and /proc reads.
pub fn processes(events: &[Event], root: u32, known: &BTreeMap<u32, ProcInfo>) -> Vec<Process> {
    let mut table: BTreeMap<u32, Process> = BTreeMap::new();
    for (&pid, info) in known {
        table.insert(
            pid,
            Process {
                pid,
                parent: info.ppid,
                comm: info.comm.clone(),
                argv: info.argv.clone(),
                ns: info.ns.clone(),
                ..Process::default()
            },
        );
    }
    // Forks create threads too: a child is a process only if it ever shows up as one.
    let processes: std::collections::BTreeSet<u32> =
        known.keys().copied().chain(events.iter().map(|e| e.task().tgid)).collect();
    let mut hups_of_root = 0u32;
    for ev in events {
        match ev {
            Event::ProcFork(f) => {
                // Threads appear as forks too; only children that show up as processes count.
                if let Some(p) = table.get_mut(&f.child) {
                    p.parent = f.task.tgid;
                    p.forked_ns.get_or_insert(f.task.ts_ns);
                } else if processes.contains(&f.child) {
                    table.insert(
                        f.child,
                        Process {
                            pid: f.child,
                            parent: f.task.tgid,
                            comm: f.task.comm.clone(),
                            forked_ns: Some(f.task.ts_ns),
                            ..Process::default()
                        },
                    );
                }
                if f.task.tgid == root
                    && let Some(p) = table.get_mut(&f.child)
                {
                    p.worker_generation = Some(hups_of_root + 1);
                }
            }
            Event::ProcExec(e) => {
                let p = entry(&mut table, e.task.tgid);
                p.comm.clone_from(&e.task.comm);
                p.exec = Some(e.filename.clone());
                p.exec_ns = Some(e.task.ts_ns);
            }
            Event::ProcExit(x) if x.task.tid == x.task.tgid => {
                let p = entry(&mut table, x.task.tgid);
                p.exit_ns = Some(x.task.ts_ns);
                p.exit_status = x.status();
                p.exit_signal = x.signal().map(crate::event::signal_name);
                if x.parent != 0 {
                    p.parent_at_exit = Some(x.parent);
                    p.orphaned = p.parent != 0 && x.parent != p.parent;
                }
            }
            Event::Signal(s) => {
                if root_hup(ev, root).is_some() {
                    hups_of_root += 1;
                }
                if let Some(p) = table.get_mut(&s.target) {
                    p.signals.push(Received {
                        ts_ns: s.task.ts_ns,
                        sig: s.name.clone(),
                        from: s.task.tgid,
                        from_comm: s.task.comm.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    for s in server_generations(events) {
        entry(&mut table, s.pid).server_generations.push((s.path, s.generation));
    }
    table.into_values().collect()
}

fn entry(table: &mut BTreeMap<u32, Process>, pid: u32) -> &mut Process {
    table.entry(pid).or_insert_with(|| Process { pid, ..Process::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn task(ts: u64, pid: u32, tid: u32, comm: &str) -> Task {
        Task { ts_ns: ts, cpu: 0, tgid: pid, tid, comm: comm.into() }
    }

    fn fork(ts: u64, parent: u32, child: u32) -> Event {
        Event::ProcFork(ProcForkEvent { task: task(ts, parent, parent, "master"), child })
    }

    fn sig(ts: u64, from: u32, to: u32, sig: u32) -> Event {
        Event::Signal(SignalEvent {
            task: task(ts, from, from, "kill"),
            sig,
            name: signal_name(sig),
            target: to,
            result: 0,
            code: 0,
        })
    }

    fn exit(ts: u64, pid: u32, code: i32, parent: u32) -> Event {
        Event::ProcExit(ProcExitEvent { task: task(ts, pid, pid, "w"), exit_code: code, parent })
    }

    fn bind(ts: u64, pid: u32, path: &str) -> Event {
        Event::UnixSock(UnixSockEvent {
            task: task(ts, pid, pid, "srv"),
            op: UnixOp::Bind,
            fd: 3,
            ret: 0,
            id: SockId::default(),
            path: path.into(),
        })
    }

    #[test]
    fn a_hup_makes_a_new_worker_generation_and_old_workers_exit() {
        let known = BTreeMap::from([
            (100, ProcInfo { ppid: 1, comm: "master".into(), argv: vec![], ns: None }),
            (101, ProcInfo { ppid: 100, comm: "w".into(), argv: vec![], ns: None }),
        ]);
        let events = [
            fork(5, 100, 150),
            fork(10, 100, 102),
            sig(20, 7, 100, 1),
            fork(30, 100, 103),
            sig(31, 100, 102, 15),
            exit(40, 102, 15, 100),
            exit(50, 103, 2 << 8, 1),
        ];
        let t = processes(&events, 100, &known);
        let p = |pid| t.iter().find(|p| p.pid == pid).unwrap();
        assert!(t.iter().all(|p| p.pid != 150), "150 never showed up as a process: a thread");
        assert_eq!(p(101).worker_generation, None, "existed before the trace");
        assert_eq!(p(102).worker_generation, Some(1));
        assert_eq!(p(103).worker_generation, Some(2));
        assert_eq!(p(102).exit_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(p(102).signals[0].from, 100);
        assert!(!p(102).orphaned);
        assert_eq!((p(103).exit_status, p(103).orphaned), (Some(2), true));
    }

    #[test]
    fn a_server_seen_only_as_peer_bound_before_every_traced_bind() {
        let mut connect = bind(1, 20, "/s/js.sock");
        if let Event::UnixSock(u) = &mut connect {
            (u.op, u.task.tgid, u.id.peer_pid) = (UnixOp::Connect, 10, 5);
        }
        let events = [bind(2, 6, "/s/js.sock"), connect];
        let s = server_generations(&events);
        let gens: Vec<_> = s.iter().map(|s| (s.pid, s.generation, s.found_by)).collect();
        assert_eq!(gens, vec![(5, 1, FoundBy::Peer), (6, 2, FoundBy::Bind)]);
        let t = processes(&events, 1, &BTreeMap::new());
        let of = |pid| t.iter().find(|p| p.pid == pid).unwrap().server_generations.clone();
        assert_eq!((of(5), of(6)), (vec![("/s/js.sock".into(), 1)], vec![("/s/js.sock".into(), 2)]));
    }

    #[test]
    fn each_bind_of_a_path_is_a_new_server_generation() {
        let events = [bind(1, 10, "/s/js.sock"), bind(2, 11, "/s/py.sock"), bind(3, 12, "/s/js.sock")];
        let t = processes(&events, 1, &BTreeMap::new());
        let gens: Vec<_> = t.iter().map(|p| (p.pid, p.server_generations.clone())).collect();
        assert_eq!(
            gens,
            vec![
                (10, vec![("/s/js.sock".to_string(), 1)]),
                (11, vec![("/s/py.sock".to_string(), 1)]),
                (12, vec![("/s/js.sock".to_string(), 2)]),
            ]
        );
    }
}
