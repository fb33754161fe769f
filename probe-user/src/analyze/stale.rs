//! Stale sockets: a worker's traffic with a plugin server that no longer owns its socket path,
//! new workers pinned to servers of the previous worker generation, connects refused or not
//! found while a server restarts, and sends or receives that fail (EPIPE, ECONNRESET) or read 0.
//!
//! The path of a flow comes from the `unix_sock` events (connect, accept, seen) of the same
//! inode; the owner of a path at a time from the lifecycle's generations (the last to bind it).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::lifecycle::{Lifecycle, ServerGen};
use super::text::{Interner, errno_name, rel_s};
use super::timeline::Timeline;
use crate::event::{Event, UnixOp, UnixSockEvent, neg_errno};

/// Traffic of a worker with a server generation older than the path's owner at that time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StaleFlow {
    /// Worker pid.
    pub pid: u32,
    /// Worker generation.
    pub worker_generation: Option<u32>,
    /// Socket path.
    pub path: String,
    /// The server it talked to.
    pub peer_pid: u32,
    /// That server's generation.
    pub peer_generation: u32,
    /// The generation that owned the path meanwhile.
    pub owner_generation: u32,
    /// Owner's pid.
    pub owner_pid: u32,
    /// First stale message (s from zero).
    pub first_s: f64,
    /// Last stale message (s from zero).
    pub last_s: f64,
    /// Messages exchanged (sends and receives, failed ones included).
    pub messages: u64,
    /// First stale message in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub first_ns: u64,
    /// Last stale message in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub last_ns: u64,
}

/// Connects of a new-generation worker that reached a server spawned by an older-generation
/// worker: instance ids it gets there go stale once that server dies.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OldGenerationConnect {
    /// Worker pid.
    pub pid: u32,
    /// Worker generation.
    pub worker_generation: u32,
    /// Socket path.
    pub path: String,
    /// The server reached.
    pub peer_pid: u32,
    /// Its server generation.
    pub peer_generation: u32,
    /// Generation of the worker that spawned it.
    pub peer_worker_generation: u32,
    /// Connects.
    pub count: u64,
    /// First connect (s from zero).
    pub first_s: f64,
    /// Last connect (s from zero).
    pub last_s: f64,
}

/// What a socket path looked like at an instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PathState {
    /// Owner generation and pid, when any server had bound it.
    pub owner: Option<(u32, u32)>,
    /// True when the owner had exited by then.
    pub owner_dead: bool,
    /// How the owner ended, when dead.
    pub owner_end: String,
    /// True when the owner crashed (vs. was killed).
    pub owner_crashed: bool,
    /// When the owner bound the path (s from zero); `None` before the trace.
    pub owner_bound_s: Option<f64>,
    /// The next generation and when it bound (s from zero).
    pub next: Option<(u32, u32, f64)>,
}

impl PathState {
    /// "while server generation 3 restarted after a crash" and the like.
    pub fn clause(&self) -> String {
        match (self.owner, self.owner_dead, &self.next) {
            (Some((g, pid)), true, Some((ng, _, at))) => {
                let why = if self.owner_crashed { "a crash" } else { "a kill" };
                format!(
                    "while server generation {ng} restarted after {why} (generation {g}, pid {pid}, {}; \
                     generation {ng} bound at {at:.2} s)",
                    self.owner_end
                )
            }
            (Some((g, pid)), true, None) => {
                format!(
                    "after server generation {g} (pid {pid}) ended ({}) and none replaced it",
                    self.owner_end
                )
            }
            (Some((g, pid)), false, _) => match self.owner_bound_s {
                Some(b) => {
                    format!("while server generation {g} (pid {pid}, bound at {b:.2} s) held the path")
                }
                None => format!("while server generation {g} (pid {pid}) held the path"),
            },
            (None, _, _) => "before any server had bound the path".into(),
        }
    }
}

/// Failed connects of one worker to one path with one errno while one generation owned it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConnectEpisode {
    /// Worker pid.
    pub pid: u32,
    /// Worker generation.
    pub worker_generation: Option<u32>,
    /// Socket path.
    pub path: String,
    /// `ECONNREFUSED`, `ENOENT`, ...
    pub error: String,
    /// Failed connects.
    pub count: u64,
    /// First (s from zero).
    pub first_s: f64,
    /// Last (s from zero).
    pub last_s: f64,
    /// The path at the first failure.
    pub state: PathState,
}

/// A failed connect to a unix socket as the trace has it, kept apart from the other events
/// because a crash loop makes hundreds of thousands of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedConnect {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// The process.
    pub tgid: u32,
    /// -errno.
    pub ret: i64,
    /// Socket path (one shared copy per path).
    pub path: Arc<str>,
}

impl FailedConnect {
    /// True for a connect that failed.
    pub fn is(u: &UnixSockEvent) -> bool {
        u.op == UnixOp::Connect && u.ret < 0
    }

    /// The failed connect `u` (see [`FailedConnect::is`]), its path shared through `paths`.
    pub fn of(u: &UnixSockEvent, paths: &mut Interner) -> Self {
        FailedConnect { ts_ns: u.task.ts_ns, tgid: u.task.tgid, ret: u.ret, path: paths.get(&u.path) }
    }
}

/// One failed connect of a worker (kept for correlation, not written).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectFailure {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Worker pid.
    pub pid: u32,
    /// Socket path.
    pub path: Arc<str>,
    /// -errno.
    pub ret: i64,
    /// Index of its episode in [`Stale::connect_episodes`].
    pub episode: usize,
}

/// A send or receive of a worker that failed or read 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoFailure {
    /// Seconds from zero.
    pub at_s: f64,
    /// CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub ts_ns: u64,
    /// Worker pid.
    pub pid: u32,
    /// Worker generation.
    pub worker_generation: Option<u32>,
    /// `send` or `recv`.
    pub op: UnixOp,
    /// `EPIPE`, `ECONNRESET`, `0 (peer closed)`.
    pub error: String,
    /// Socket path, when known.
    pub path: String,
    /// Peer pid.
    pub peer_pid: u32,
    /// Peer's server generation, when it is a server.
    pub peer_generation: Option<u32>,
    /// How the peer ended, when it is a server.
    pub peer_end: String,
}

/// The stale-socket findings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stale {
    /// Traffic with a server older than the path's owner.
    pub stale_flows: Vec<StaleFlow>,
    /// New workers connected to servers of an older worker generation.
    pub old_generation_connects: Vec<OldGenerationConnect>,
    /// Failed connects, grouped.
    pub connect_episodes: Vec<ConnectEpisode>,
    /// Failed connects in all.
    pub failed_connects: u64,
    /// Failed or closed sends and receives of workers.
    pub io_failures: Vec<IoFailure>,
    /// Every failed connect, in time order (after the correlation, the first ones only).
    #[serde(skip)]
    pub connect_failures: Vec<ConnectFailure>,
}

/// The state of `path` at `ts_ns`.
pub fn path_state(l: &Lifecycle, path: &str, ts_ns: u64) -> PathState {
    let Some(owner) = l.owner_at(path, ts_ns) else { return PathState::default() };
    let dead = owner.exit_ns.is_some_and(|e| e <= ts_ns);
    PathState {
        owner: Some((owner.generation, owner.pid)),
        owner_dead: dead,
        owner_end: if dead { owner.end.clone() } else { String::new() },
        owner_crashed: dead && owner.crashed,
        owner_bound_s: owner.bound_s,
        next: l.next(owner).and_then(|n| Some((n.generation, n.pid, n.bound_s?))),
    }
}

/// Failed-connect episodes by (worker, path, errno, owner generation, owner dead).
type Episodes = BTreeMap<(u32, Arc<str>, i64, u32, bool), usize>;

/// Counts a worker's failed connect into its episode.
fn add_failed_connect(
    out: &mut Stale,
    episodes: &mut Episodes,
    c: &FailedConnect,
    wgen: u32,
    l: &Lifecycle,
    zero_ns: u64,
) {
    let (pid, ts) = (c.tgid, c.ts_ns);
    let state = path_state(l, &c.path, ts);
    // One episode per owner and liveness, so its path state holds for every failure in it.
    let key = (pid, c.path.clone(), c.ret, state.owner.map_or(0, |o| o.0), state.owner_dead);
    let idx = *episodes.entry(key).or_insert_with(|| {
        out.connect_episodes.push(ConnectEpisode {
            pid,
            worker_generation: Some(wgen),
            path: c.path.to_string(),
            error: errno_name(c.ret),
            first_s: rel_s(ts, zero_ns),
            state,
            ..ConnectEpisode::default()
        });
        out.connect_episodes.len() - 1
    });
    let e = &mut out.connect_episodes[idx];
    e.count += 1;
    e.last_s = rel_s(ts, zero_ns);
    out.failed_connects += 1;
    out.connect_failures.push(ConnectFailure {
        ts_ns: ts,
        pid,
        path: c.path.clone(),
        ret: c.ret,
        episode: idx,
    });
}

/// Finds stale flows, old-generation connects, failed connects and failed I/O of workers. The
/// failed connects are those in `events` and then `failed_connects` (a loaded run keeps them
/// apart); `paths` are the unix sockets' paths by inode ([`super::routes::socket_paths`]).
pub fn detect(
    events: &[Event],
    failed_connects: &[FailedConnect],
    paths: &BTreeMap<u64, &str>,
    timeline: &Timeline,
    l: &Lifecycle,
    zero_ns: u64,
) -> Stale {
    let path_of = |inode: u64, peer: Option<&ServerGen>| -> String {
        paths.get(&inode).map(|p| p.to_string()).or_else(|| peer.map(|s| s.path.clone())).unwrap_or_default()
    };
    let mut out = Stale::default();
    let mut stale: BTreeMap<(u32, u64), StaleFlow> = BTreeMap::new();
    let mut oldgen: BTreeMap<(u32, String, u32), OldGenerationConnect> = BTreeMap::new();
    let mut episodes = Episodes::new();
    let mut paths_seen = Interner::default();
    for ev in events {
        let pid = ev.task().tgid;
        let Some(wgen) = timeline.worker_generation(pid) else { continue };
        // (inode, peer, time range, messages) of successful or failed traffic.
        let traffic = match ev {
            Event::UnixFlow(f) => Some((f.id.inode, f.id.peer_pid, f.start_ns, f.end_ns, f.sends + f.recvs)),
            Event::UnixIo(i) => Some((i.id.inode, i.id.peer_pid, i.task.ts_ns, i.task.ts_ns, 1)),
            _ => None,
        };
        if let Some((inode, peer, start, end, n)) = traffic
            && peer != 0
        {
            let path = path_of(inode, l.server(peer, None));
            if let Some(g) = l.server(peer, Some(&path))
                && let Some(owner) = l.owner_at(&path, start)
                && owner.generation > g.generation
            {
                let s = stale.entry((pid, inode)).or_insert_with(|| StaleFlow {
                    pid,
                    worker_generation: Some(wgen),
                    path: path.clone(),
                    peer_pid: peer,
                    peer_generation: g.generation,
                    owner_generation: owner.generation,
                    owner_pid: owner.pid,
                    first_ns: start,
                    ..StaleFlow::default()
                });
                s.last_ns = s.last_ns.max(end);
                s.messages += n;
            }
        }
        match ev {
            Event::UnixSock(u) if u.op == UnixOp::Connect && u.ret == 0 && u.id.peer_pid != 0 => {
                if let Some(g) = l.server(u.id.peer_pid, Some(&u.path))
                    && let Some(sgen) = timeline.worker_generation(g.parent)
                    && sgen < wgen
                {
                    let key = (pid, u.path.clone(), g.pid);
                    let c = oldgen.entry(key).or_insert_with(|| OldGenerationConnect {
                        pid,
                        worker_generation: wgen,
                        path: u.path.clone(),
                        peer_pid: g.pid,
                        peer_generation: g.generation,
                        peer_worker_generation: sgen,
                        first_s: rel_s(u.task.ts_ns, zero_ns),
                        ..OldGenerationConnect::default()
                    });
                    c.count += 1;
                    c.last_s = rel_s(u.task.ts_ns, zero_ns);
                }
            }
            Event::UnixSock(u) if FailedConnect::is(u) => {
                let c = FailedConnect::of(u, &mut paths_seen);
                add_failed_connect(&mut out, &mut episodes, &c, wgen, l, zero_ns);
            }
            Event::UnixIo(i) if i.ret <= 0 && i.ret != neg_errno(libc::EAGAIN) => {
                let peer = l.server(i.id.peer_pid, None);
                let path = path_of(i.id.inode, peer);
                let peer = l.server(i.id.peer_pid, Some(&path)).or(peer);
                out.io_failures.push(IoFailure {
                    at_s: rel_s(i.task.ts_ns, zero_ns),
                    ts_ns: i.task.ts_ns,
                    pid,
                    worker_generation: Some(wgen),
                    op: i.op,
                    error: errno_name(i.ret),
                    path,
                    peer_pid: i.id.peer_pid,
                    peer_generation: peer.map(|g| g.generation),
                    peer_end: peer.map(|g| g.end.clone()).unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    for c in failed_connects {
        if let Some(wgen) = timeline.worker_generation(c.tgid) {
            add_failed_connect(&mut out, &mut episodes, c, wgen, l, zero_ns);
        }
    }
    out.stale_flows = stale
        .into_values()
        .map(|mut s| {
            s.first_s = rel_s(s.first_ns, zero_ns);
            s.last_s = rel_s(s.last_ns, zero_ns);
            s
        })
        .collect();
    out.stale_flows.sort_by_key(|s| s.first_ns);
    out.old_generation_connects = oldgen.into_values().collect();
    out.connect_failures.sort_by_key(|c| c.ts_ns);
    out.io_failures.sort_by_key(|i| i.ts_ns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::routes::socket_paths;
    use crate::analyze::testkit::*;
    use crate::analyze::{lifecycle, timeline};
    use crate::model::{ProcInfo, processes};

    const PY: &str = "/p/py.sock";

    /// Root 1; old worker 10 (generation 1) spawned server 20 before the trace; the HUP at
    /// 1.0 s makes worker 11 (generation 2), which spawns server 30 binding at 2.0 s.
    fn setup(extra: Vec<Event>) -> (Vec<Event>, Timeline, Lifecycle) {
        let known = BTreeMap::from([
            (1, ProcInfo { ppid: 0, comm: "nginx".into(), argv: vec![], ns: None }),
            (10, ProcInfo { ppid: 1, comm: "nginx".into(), argv: vec![], ns: None }),
            (20, ProcInfo { ppid: 10, comm: "python3".into(), argv: vec![], ns: None }),
        ]);
        let mut events = vec![
            sock(ms(500), 10, UnixOp::Connect, 0, 100, 20, PY),
            signal(ms(1000), 9, 1, 1),
            fork(ms(1100), 1, 11),
            fork(ms(1200), 11, 30),
            sock(ms(2000), 30, UnixOp::Bind, 0, 300, 0, PY),
        ];
        events.extend(extra);
        events.sort_by_key(|e| e.task().ts_ns);
        let procs = processes(&events, 1, &known);
        let t = timeline::detect(&events, &procs, 1, ms(1000));
        let l = lifecycle::detect(&events, &procs, ms(1000));
        (events, t, l)
    }

    #[test]
    fn a_new_worker_still_talking_to_the_old_server_is_stale() {
        let (events, t, l) = setup(vec![
            sock(ms(1300), 11, UnixOp::Connect, 0, 200, 20, PY),
            flow(ms(1300), ms(1400), 11, 200, 20),
            flow(ms(2500), ms(2600), 11, 200, 20),
            io(ms(2700), 11, UnixOp::Recv, -104, 200, 20),
        ]);
        let s = detect(&events, &[], &socket_paths(&events), &t, &l, ms(1000));
        assert_eq!(s.stale_flows.len(), 1, "{:?}", s.stale_flows);
        let f = &s.stale_flows[0];
        assert_eq!((f.pid, f.path.as_str(), f.peer_pid, f.peer_generation), (11, PY, 20, 1));
        assert_eq!((f.owner_pid, f.owner_generation), (30, 2));
        assert!((f.first_s - 1.5).abs() < 1e-9 && (f.last_s - 1.7).abs() < 1e-9);
        assert_eq!(s.old_generation_connects.len(), 1);
        assert_eq!((s.old_generation_connects[0].pid, s.old_generation_connects[0].peer_pid), (11, 20));
        assert_eq!(s.io_failures.len(), 1);
        let io = &s.io_failures[0];
        assert_eq!(
            (io.pid, io.error.as_str(), io.path.as_str(), io.peer_generation),
            (11, "ECONNRESET", PY, Some(1))
        );
        assert!((io.at_s - 1.7).abs() < 1e-9);
    }

    #[test]
    fn refused_connects_during_a_restart_are_grouped_with_the_path_state() {
        let (events, t, l) = setup(vec![
            signal(ms(1500), 10, 20, 9),
            exit(ms(1501), 20, 9, 10),
            sock(ms(1600), 11, UnixOp::Connect, -111, 201, 0, PY),
            sock(ms(1700), 11, UnixOp::Connect, -111, 202, 0, PY),
            sock(ms(1800), 11, UnixOp::Connect, -2, 203, 0, PY),
        ]);
        let s = detect(&events, &[], &socket_paths(&events), &t, &l, ms(1000));
        assert_eq!(s.failed_connects, 3);
        assert_eq!(s.connect_episodes.len(), 2);
        let e = &s.connect_episodes[0];
        assert_eq!((e.pid, e.path.as_str(), e.error.as_str(), e.count), (11, PY, "ECONNREFUSED", 2));
        assert!((e.first_s - 0.6).abs() < 1e-9);
        assert_eq!(e.state.owner, Some((1, 20)));
        assert!(e.state.owner_dead && !e.state.owner_crashed);
        assert_eq!(e.state.next, Some((2, 30, 1.0)));
        assert!(
            e.state.clause().starts_with("while server generation 2 restarted after a kill"),
            "{}",
            e.state.clause()
        );
        assert_eq!(s.connect_failures[2].ret, -2);
        // A loaded run keeps its failed connects apart from the events: the same findings.
        let mut paths = Interner::default();
        let (apart, rest): (Vec<&Event>, Vec<&Event>) =
            events.iter().partition(|e| matches!(e, Event::UnixSock(u) if FailedConnect::is(u)));
        let apart: Vec<FailedConnect> = apart
            .into_iter()
            .filter_map(|e| match e {
                Event::UnixSock(u) => Some(FailedConnect::of(u, &mut paths)),
                _ => None,
            })
            .collect();
        let rest: Vec<Event> = rest.into_iter().cloned().collect();
        assert_eq!(apart.len(), 3);
        assert_eq!(detect(&rest, &apart, &socket_paths(&rest), &t, &l, ms(1000)), s);
    }

    #[test]
    fn clean_traffic_gives_no_finding() {
        let (events, t, l) = setup(vec![
            sock(ms(2100), 11, UnixOp::Connect, 0, 210, 30, PY),
            flow(ms(2100), ms(2200), 11, 210, 30),
            flow(ms(600), ms(700), 10, 100, 20),
        ]);
        let s = detect(&events, &[], &socket_paths(&events), &t, &l, ms(1000));
        assert!(s.stale_flows.is_empty() && s.old_generation_connects.is_empty());
        assert!(s.connect_episodes.is_empty() && s.io_failures.is_empty());
    }
}
