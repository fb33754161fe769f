//! A run's outcome in a few numbers (`verdict.json`, [`shared::verdict`]), counted from the
//! findings of the same analysis, so the matrix of runs never disagrees with a run's report.

use std::collections::BTreeSet;

use shared::verdict::{self, Clean, EndpointCount, Loop, Verdict};

use super::text::rel_s as secs;
use super::{Analysis, Run, fit};

/// Counts `a`'s findings. Needs the whole request log (before [`Run::keep_for_report`]).
pub fn of(run: &Run, a: &Analysis) -> Verdict {
    let zero = a.zero_ns;
    let reloaded = !run.reloads.is_empty() || !a.timeline.hups.is_empty();
    // Failures the reload could cause that were still going on after it.
    let last_failure_end = run
        .log
        .failed
        .iter()
        .filter(|r| fit::reload_can_cause(fit::classify(r.reason.as_ref())))
        .filter(|r| r.end_mono_ns > zero)
        .map(|r| secs(r.end_mono_ns, zero))
        .max_by(f64::total_cmp);
    let spinning: BTreeSet<u32> = a.spins.iter().map(|s| s.pid).collect();
    Verdict {
        schema_version: verdict::SCHEMA_VERSION,
        endpoints: run
            .log
            .endpoints
            .iter()
            .map(|(e, l)| (e.clone(), EndpointCount { requests: l.requests, failed: l.failed() }))
            .collect(),
        reload_failed: a.attribution.reload_failed,
        exact: a.attribution.exact,
        spinning_workers: spinning.into_iter().collect(),
        crash_loops: a
            .lifecycle
            .loops
            .iter()
            .map(|l| Loop { socket: l.path.clone(), crashes: count(l.crashes) })
            .collect(),
        sigkills: count(a.lifecycle.kills.len()),
        orphans: count(a.lifecycle.orphans.len()),
        stale_flows: count(a.stale.stale_flows.len()),
        failed_connects: a.stale.failed_connects,
        forked_s: a.reloads.first().and_then(|r| r.forked_s),
        clean: if reloaded {
            let last_start = (run.log.requests > 0).then(|| secs(run.log.last_start_mono_ns, zero));
            verdict::clean(last_failure_end, last_start)
        } else {
            Clean::Unknown
        },
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use shared::requests::{Failure, LogSummary, Outcome, RequestLine};

    use super::*;
    use crate::analyze::Reload;

    const HUP_NS: u64 = 100_000_000_000;

    fn request(start_s: f64, end_s: f64, failure: Option<Failure>) -> RequestLine {
        let ns = |s: f64| (HUP_NS as f64 + s * 1e9) as u64;
        RequestLine {
            start_mono_ns: ns(start_s),
            end_mono_ns: ns(end_s),
            endpoint: "/js".into(),
            outcome: if failure.is_some() { Outcome::Failed } else { Outcome::Ok },
            reason: failure,
            ..RequestLine::default()
        }
    }

    fn run(requests: Vec<RequestLine>, reloaded: bool) -> Run {
        let mut log = LogSummary::default();
        requests.into_iter().for_each(|r| log.add(r));
        let reloads =
            if reloaded { vec![Reload { monotonic_ns: HUP_NS, ..Reload::default() }] } else { vec![] };
        Run { log, reloads, ..Run::default() }
    }

    fn clean_of(run: &Run) -> Clean {
        of(run, &Analysis { zero_ns: HUP_NS, ..Analysis::default() }).clean
    }

    #[test]
    fn only_failures_a_reload_can_cause_after_it_delay_the_clean_state() {
        let ok = |s| request(s, s + 0.01, None);
        let missing = |s: f64| request(s, s + 0.01, Some(Failure::HeaderMissing));
        // A failure at 3 s, then 7 s of good load.
        assert_eq!(clean_of(&run(vec![ok(1.0), missing(3.0), ok(10.0)], true)), Clean::After { s: 3.01 });
        // A 404 is no reload effect; a failure before the HUP is not after it.
        let not_found = request(5.0, 5.01, Some(Failure::Status(404)));
        let before = request(-2.0, -1.0, Some(Failure::HeaderMissing));
        assert_eq!(clean_of(&run(vec![before, not_found, ok(10.0)], true)), Clean::After { s: 0.0 });
        // A timeout that ends after the load's last start: still failing.
        let timeout = request(6.0, 26.0, Some(Failure::TimedOut));
        assert_eq!(clean_of(&run(vec![ok(1.0), timeout, ok(10.0)], true)), Clean::StillFailing);
        // No reload, or no request: nothing to tell.
        assert_eq!(clean_of(&run(vec![ok(1.0)], false)), Clean::Unknown);
        assert_eq!(clean_of(&run(vec![], true)), Clean::Unknown);
    }

    #[test]
    fn endpoints_count_every_request_and_failure() {
        let r = run(vec![request(1.0, 1.1, None), request(2.0, 2.1, Some(Failure::HeaderMissing))], true);
        let v = of(&r, &Analysis { zero_ns: HUP_NS, ..Analysis::default() });
        assert_eq!(v.endpoints["/js"], EndpointCount { requests: 2, failed: 1 });
        assert_eq!(v.schema_version, verdict::SCHEMA_VERSION);
    }
}
