//! The findings checked against the stand-in's own log (`standin-ground-truth.jsonl`): servers,
//! kills, crashes and spinning workers, as the stand-in logged them and as the trace shows them.

use std::collections::BTreeSet;

use serde::Serialize;
use shared::truth::{TruthEv, TruthLine};

use super::lifecycle::Lifecycle;
use super::spin::Spin;
use super::text::short_path;

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

fn pid_list(set: &BTreeSet<(String, u32)>) -> String {
    let v: Vec<String> = set
        .iter()
        .map(|(p, pid)| if p.is_empty() { pid.to_string() } else { format!("{}:{pid}", short_path(p)) })
        .collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// How long before its `server_ready` line a bind of the same path may stand for it (the
/// stand-in polls every 20 ms), and how much later the line may come.
const READY_WINDOW_NS: u64 = 2_000_000_000;
const READY_LAG_NS: u64 = 50_000_000;

/// The kinds of the stand-in's lines the check reads.
pub const READS: [TruthEv; 6] = [
    TruthEv::MasterInit,
    TruthEv::ServerReady,
    TruthEv::ServerExit,
    TruthEv::Kill,
    TruthEv::ClaimWait,
    TruthEv::ClaimSpin,
];

/// Compares servers, kills, crashes and spinning workers with the stand-in's ground truth.
///
/// Only lines logged inside the trace's window (`until_ns`) must have evidence in it: what the
/// stand-in did after the probe stopped (teardown kills, say) cannot. A kill or crash the trace
/// saw must be in the log, though it may be logged a little after the window (the stand-in logs
/// an exit when it reaps the server, after the kernel saw it).
pub fn ground_truth_check(gt: &[TruthLine], l: &Lifecycle, spins: &[Spin], until_ns: u64) -> Vec<Check> {
    if gt.is_empty() {
        return Vec::new();
    }
    let all: Vec<&TruthLine> = gt.iter().collect();
    let within: Vec<&TruthLine> = gt.iter().filter(|v| until_ns == 0 || v.mono_ns <= until_ns).collect();
    // (socket, pid) of the lines of `ev` that `keep` keeps; `pid` picks the pid the line names.
    let set_of = |lines: &[&TruthLine],
                  ev: TruthEv,
                  keep: &dyn Fn(&TruthLine) -> bool,
                  pid: fn(&TruthLine) -> Option<u32>| {
        lines
            .iter()
            .filter(|v| v.ev == ev && keep(v))
            .filter_map(|v| Some((v.socket.clone().unwrap_or_default(), pid(v)?)))
            .collect::<BTreeSet<(String, u32)>>()
    };
    let gt_set = |ev, keep: &dyn Fn(&TruthLine) -> bool, pid| set_of(&within, ev, keep, pid);
    let gt_all = |ev, keep: &dyn Fn(&TruthLine) -> bool, pid| set_of(&all, ev, keep, pid);
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
    let sigkill = |v: &TruthLine| v.is_kill_with("SIGKILL");
    let kills_gt = strip(gt_set(TruthEv::Kill, &sigkill, server));
    let kills_logged = strip(gt_all(TruthEv::Kill, &sigkill, server));
    let server_pids: BTreeSet<u32> = l.servers.iter().map(|s| s.pid).collect();
    let kills: BTreeSet<(String, u32)> = l
        .kills
        .iter()
        .filter(|k| server_pids.contains(&k.target))
        .map(|k| (String::new(), k.target))
        .collect();
    let non_zero = |v: &TruthLine| v.code.is_some_and(|c| c != 0);
    let crashes_gt = strip(gt_set(TruthEv::ServerExit, &non_zero, server));
    let crashes_logged = strip(gt_all(TruthEv::ServerExit, &non_zero, server));
    let crashes: BTreeSet<(String, u32)> =
        l.servers.iter().filter(|s| s.crashed).map(|s| (String::new(), s.pid)).collect();
    // A request that busy-waited a whole second must show as a spin (the detector needs half a
    // second); a spin must come from a worker where some request waited at least a quarter.
    let waited_long = strip(gt_set(TruthEv::ClaimSpin, &|_| true, writer));
    let waited = strip(gt_set(TruthEv::ClaimWait, &|_| true, writer));
    let spinning: BTreeSet<(String, u32)> = spins.iter().map(|s| (String::new(), s.pid)).collect();
    let spins_agree = waited_long.is_subset(&spinning)
        && spinning.is_subset(&waited.union(&waited_long).cloned().collect());
    // The stand-in logs a server ready when a new file appears at its path. After several
    // reloads, several old workers 0 respawn servers on the same path, and the new file may be
    // another one's: then that server's bind just before stands for it.
    let bound_just_before = |path: &str, at: u64| {
        l.servers.iter().any(|s| {
            s.path == path && s.bound_ns.is_some_and(|b| b <= at + READY_LAG_NS && b + READY_WINDOW_NS >= at)
        })
    };
    let servers_agree = within.iter().filter(|v| v.ev == TruthEv::ServerReady).all(|v| {
        let socket = v.socket.clone().unwrap_or_default();
        v.server_pid.is_some_and(|p| servers.contains(&(socket.clone(), p)))
            || bound_just_before(&socket, v.mono_ns)
    });
    [
        ("plugin servers (socket:pid)", servers_agree, servers_gt, servers),
        ("servers SIGKILLed", kills_gt.is_subset(&kills) && kills.is_subset(&kills_logged), kills_gt, kills),
        (
            "servers that exited non-zero",
            crashes_gt.is_subset(&crashes) && crashes.is_subset(&crashes_logged),
            crashes_gt,
            crashes,
        ),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::analyze::lifecycle;
    use crate::analyze::testkit::truth;

    fn spin_of(pid: u32) -> Spin {
        Spin { pid, tid: pid, ..Spin::default() }
    }

    fn check<'a>(checks: &'a [Check], what: &str) -> &'a Check {
        checks.iter().find(|c| c.what.starts_with(what)).unwrap()
    }

    #[test]
    fn a_ready_line_for_a_server_that_never_bound_agrees_only_with_a_bind_of_its_path_just_before() {
        // After two reloads two managers respawn on one path: the new file the stand-in saw for
        // 99 was 41's.
        let gt =
            [json!({"ev":"server_ready","server_pid":99,"socket":"/p/js.sock","mono_ns":3_000_000_000u64})]
                .map(truth);
        let server = |pid: u32, bound: u64| lifecycle::ServerGen {
            path: "/p/js.sock".into(),
            pid,
            bound_ns: Some(bound),
            ..lifecycle::ServerGen::default()
        };
        let what = "plugin servers";
        let l = lifecycle::Lifecycle { servers: vec![server(41, 2_500_000_000)], ..Default::default() };
        assert!(check(&ground_truth_check(&gt, &l, &[], 0), what).agrees);
        let l = lifecycle::Lifecycle { servers: vec![server(41, 500_000_000)], ..Default::default() };
        assert!(
            !check(&ground_truth_check(&gt, &l, &[], 0), what).agrees,
            "a bind 2.5 s before is another's"
        );
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

    #[test]
    fn a_crash_the_trace_saw_may_be_logged_after_it_ended_but_must_be_logged() {
        // The stand-in logs an exit when it reaps the server: after the kernel saw it.
        let gt = [json!({"ev":"server_exit","code":1,"server_pid":20,"mono_ns":600})].map(truth);
        let crashed = |pid| lifecycle::ServerGen { pid, crashed: true, ..Default::default() };
        let l = lifecycle::Lifecycle { servers: vec![crashed(20)], ..Default::default() };
        let what = "servers that exited non-zero";
        assert!(check(&ground_truth_check(&gt, &l, &[], 500), what).agrees);
        // A crash the log never mentions is a disagreement.
        let l = lifecycle::Lifecycle { servers: vec![crashed(20), crashed(22)], ..Default::default() };
        assert!(!check(&ground_truth_check(&gt, &l, &[], 500), what).agrees);
    }
}
