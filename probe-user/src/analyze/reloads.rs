//! Each reload on its own, for runs that reload more than once: what it started and stopped, what
//! was left running after it, and the failures that followed it. Kong #8531's orphaned plugin
//! servers showed only "after continuous reloading under load": this is where they accumulate.
//!
//! A reload's window runs from when it was sent (or, without `reload.json`, from a HUP to the
//! root) to the next reload, the last one to the end of the trace.

use std::collections::BTreeMap;

use serde::Serialize;

use super::correlate::Attribution;
use super::lifecycle::{self, Handover, Lifecycle, ServerGen};
use super::text::rel_s;
use super::timeline::Timeline;

/// One reload and its window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReloadWindow {
    /// 1 for the first reload.
    pub index: usize,
    /// When it was sent (s from zero).
    pub at_s: f64,
    /// When its window ends: the next reload, or the end of the trace (s from zero).
    pub until_s: f64,
    /// The first HUP to the root in its window (s from zero).
    pub hup_s: Option<f64>,
    /// The worker generation first forked in its window.
    pub generation: Option<u32>,
    /// When that generation's first worker was forked (s from zero).
    pub forked_s: Option<f64>,
    /// When the last worker of the older generations exited (s from zero); `None` when one was
    /// still running at the end of the trace.
    pub older_workers_gone_s: Option<f64>,
    /// Per socket path, the server that held it at the reload against the next to bind it.
    pub handovers: Vec<Handover>,
    /// Plugin servers that bound their path in the window.
    pub servers_bound: usize,
    /// SIGKILLs to plugin servers in the window.
    pub servers_killed: usize,
    /// Plugin-server processes alive at the end of the window.
    pub servers_alive: usize,
    /// Of those, the ones a newer server had replaced on their path: left running.
    pub servers_superseded: usize,
    /// Of those, the ones whose parent had gone.
    pub servers_orphaned: usize,
    /// Load-test failures that started in the window.
    pub failed: u64,
    /// Those failures by explanation (`failed_connect`, `spin`, ...; `unexplained`, `not_reload`).
    pub failed_by_kind: BTreeMap<String, u64>,
    /// CLOCK_MONOTONIC ns of `at_s` and `until_s`.
    #[serde(skip)]
    pub span_ns: (u64, u64),
}

/// The window of every reload: `instants_ns` are when each was sent, in order.
pub fn windows(
    instants_ns: &[u64],
    trace_end_ns: u64,
    timeline: &Timeline,
    lifecycle: &Lifecycle,
    attribution: &Attribution,
    zero_ns: u64,
) -> Vec<ReloadWindow> {
    let mut out = Vec::new();
    for (i, &at) in instants_ns.iter().enumerate() {
        let until = instants_ns.get(i + 1).copied().unwrap_or(trace_end_ns).max(at);
        let (at_s, until_s) = (rel_s(at, zero_ns), rel_s(until, zero_ns));
        let inside_s = |t: f64| t >= at_s && t < until_s;
        let hup_s = timeline.hups.iter().find(|h| h.ts_ns >= at && h.ts_ns < until).map(|h| h.at_s);
        let generation = timeline.generations.iter().find(|g| g.first_fork_s.is_some_and(inside_s));
        let older: Vec<_> = generation
            .map(|g| timeline.workers.iter().filter(|w| w.generation < g.generation).collect())
            .unwrap_or_default();
        let older_workers_gone_s = if older.iter().all(|w| w.exit_s.is_some()) {
            older.iter().filter_map(|w| w.exit_s).reduce(f64::max)
        } else {
            None
        };
        let alive: Vec<&ServerGen> = lifecycle.servers.iter().filter(|s| alive_at(s, until)).collect();
        let superseded = alive
            .iter()
            .filter(|s| lifecycle.owner_at(&s.path, until).is_some_and(|o| o.pid != s.pid))
            .count();
        let mut failed_by_kind = BTreeMap::new();
        let mut failed = 0;
        for l in attribution.links.briefs().iter().filter(|l| inside_s(l.start_s)) {
            failed += 1;
            let kind = l.kind.map_or(l.link.as_str(), |k| k.as_str());
            *failed_by_kind.entry(kind.to_string()).or_default() += 1;
        }
        out.push(ReloadWindow {
            index: i + 1,
            at_s,
            until_s,
            hup_s,
            generation: generation.map(|g| g.generation),
            forked_s: generation.and_then(|g| g.first_fork_s),
            older_workers_gone_s,
            handovers: lifecycle::handovers(&lifecycle.servers, at),
            servers_bound: lifecycle
                .servers
                .iter()
                .filter(|s| s.bound_ns.is_some_and(|b| b >= at && b < until))
                .count(),
            servers_killed: lifecycle
                .kills
                .iter()
                .filter(|k| !k.target_role.is_empty() && inside_s(k.at_s))
                .count(),
            servers_alive: alive.len(),
            servers_superseded: superseded,
            servers_orphaned: alive.iter().filter(|s| s.orphaned).count(),
            failed,
            failed_by_kind,
            span_ns: (at, until),
        });
    }
    out
}

/// True when the server process was running at `ts_ns`.
fn alive_at(s: &ServerGen, ts_ns: u64) -> bool {
    s.since_ns <= ts_ns && s.exit_ns.is_none_or(|e| e > ts_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::correlate::{Link, LinkClass};
    use crate::analyze::fit::CauseKind;
    use crate::analyze::lifecycle::Kill;
    use crate::analyze::testkit::ms;
    use crate::analyze::timeline::{Generation, Hup, Worker};

    fn server(pid: u32, generation: u32, since: u64, bound: Option<u64>, exit: Option<u64>) -> ServerGen {
        ServerGen {
            path: "/p/js.sock".into(),
            generation,
            pid,
            since_ns: ms(since),
            bound_ns: bound.map(ms),
            bound_s: bound.map(|b| rel_s(ms(b), 0)),
            exit_ns: exit.map(ms),
            exit_s: exit.map(|e| rel_s(ms(e), 0)),
            orphaned: exit.is_none() && generation < 3,
            ..ServerGen::default()
        }
    }

    fn link(start_ms: u64, kind: Option<CauseKind>) -> Link {
        Link {
            start_s: rel_s(ms(start_ms), 0),
            link: if kind.is_none() { LinkClass::Unexplained } else { LinkClass::Exact },
            kind,
            ..Link::default()
        }
    }

    /// Three reloads at 10, 20 and 30 s: generation 1's server is killed at the first, generation
    /// 2's is left running after the second (its parent gone), generation 3 holds the path.
    #[test]
    fn each_reload_says_what_it_started_stopped_and_left_running() {
        let hup = |t: u64| Hup { at_s: rel_s(ms(t), 0), ts_ns: ms(t), ..Hup::default() };
        let worker = |pid: u32, generation: u32, exit: Option<u64>| Worker {
            pid,
            generation,
            exit_s: exit.map(|e| rel_s(ms(e), 0)),
            ..Worker::default()
        };
        let generation_of = |generation: u32, fork: Option<u64>| Generation {
            generation,
            first_fork_s: fork.map(|f| rel_s(ms(f), 0)),
            ..Generation::default()
        };
        let timeline = Timeline {
            hups: vec![hup(10_050), hup(20_050), hup(30_050)],
            workers: vec![
                worker(1, 1, Some(12_000)),
                worker(2, 2, Some(25_000)),
                worker(3, 3, Some(33_000)),
                worker(4, 4, None),
            ],
            generations: vec![
                generation_of(1, None),
                generation_of(2, Some(10_100)),
                generation_of(3, Some(20_100)),
                generation_of(4, Some(30_100)),
            ],
            ..Timeline::default()
        };
        let lifecycle = Lifecycle {
            servers: vec![
                server(100, 1, 0, None, Some(11_000)),
                server(200, 2, 10_500, Some(10_600), None),
                server(300, 3, 20_500, Some(20_600), None),
            ],
            kills: vec![Kill {
                at_s: 11.0,
                target: 100,
                target_role: "js.sock generation 1".into(),
                ..Kill::default()
            }],
            ..Lifecycle::default()
        };
        let attribution = Attribution {
            links: [
                link(9_000, None),
                link(10_200, Some(CauseKind::FailedConnect)),
                link(10_300, Some(CauseKind::FailedConnect)),
                link(31_000, Some(CauseKind::Spin)),
            ]
            .into_iter()
            .collect(),
            ..Attribution::default()
        };
        let w = windows(
            &[ms(10_000), ms(20_000), ms(30_000)],
            ms(40_000),
            &timeline,
            &lifecycle,
            &attribution,
            0,
        );
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].index, w[0].at_s, w[0].until_s, w[0].hup_s), (1, 10.0, 20.0, Some(10.05)));
        assert_eq!((w[0].generation, w[0].older_workers_gone_s), (Some(2), Some(12.0)));
        assert_eq!(
            (w[0].servers_bound, w[0].servers_killed, w[0].servers_alive, w[0].servers_superseded),
            (1, 1, 1, 0)
        );
        assert_eq!(w[0].handovers.len(), 1);
        assert_eq!((w[0].failed, w[0].failed_by_kind.get("failed_connect")), (2, Some(&2)));
        // After the second reload the replaced generation-2 server is still running: left over.
        assert_eq!(
            (w[1].generation, w[1].servers_alive, w[1].servers_superseded, w[1].servers_orphaned),
            (Some(3), 2, 1, 1)
        );
        assert_eq!(w[1].failed, 0);
        // Generation 4's older workers: worker 3 exited at 33 s, so all are gone then.
        assert_eq!((w[2].generation, w[2].older_workers_gone_s, w[2].until_s), (Some(4), Some(33.0), 40.0));
        assert_eq!(w[2].failed_by_kind.get("spin"), Some(&1));
        assert_eq!(
            w[0].failed + w[1].failed + w[2].failed,
            3,
            "a failure before the first reload belongs to none"
        );
    }
}
