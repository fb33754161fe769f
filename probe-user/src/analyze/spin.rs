//! Spinning workers: threads whose epoll calls almost all have a zero timeout and return no
//! event, at a high rate, for a sustained time. That is the signature of nginx looping on
//! `ngx.sleep(0)` (a leaked instance claim in Kong 2.7's `get_instance_id`): each iteration is
//! one `epoll_wait(..., 0)` and nothing else.

use std::collections::BTreeMap;

use serde::Serialize;

use super::text::rel_s;
use super::timeline::Timeline;
use crate::event::{EpollBucketEvent, Event};

/// How long a spin episode lasts through buckets that do not spin at full rate. A worker
/// starved of CPU (a CFS quota, more busy workers than cores) makes fewer calls, or none, for a
/// while, but every call it makes still has a zero timeout: it never left the loop. A worker
/// that leaves it makes a call with a real timeout, which ends the episode at once; so this gap
/// only bounds silence and starved stretches. 2 s is 20 CFS periods, far longer than the
/// throttling pauses of a quota, and short against the 20 s request timeouts a leaked claim
/// causes.
pub const EPISODE_GAP_NS: u64 = 2_000_000_000;

/// Thresholds of the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Minimum share of zero-timeout calls in a bucket.
    pub min_zero_timeout: f64,
    /// Minimum share of zero-event returns in a bucket.
    pub min_zero_events: f64,
    /// Minimum calls per second over a bucket.
    pub min_rate: f64,
    /// Minimum length of a spin.
    pub min_duration_ns: u64,
    /// CPU sampling frequency of the trace (0: no samples).
    pub sample_hz: u64,
    /// epoll bucket length: buckets closer than half of it are contiguous.
    pub bucket_ns: u64,
    /// When the trace ended (CLOCK_MONOTONIC ns): a thread silent from its last bucket until
    /// then for longer than [`EPISODE_GAP_NS`] left the loop; 0 when unknown.
    pub trace_end_ns: u64,
}

impl Params {
    /// The default thresholds (90%, 90%, 1000 calls/s, 0.5 s) for a trace's sampling and buckets.
    pub fn new(sample_hz: u64, bucket_ns: u64) -> Self {
        Params {
            min_zero_timeout: 0.9,
            min_zero_events: 0.9,
            min_rate: 1000.0,
            min_duration_ns: 500_000_000,
            sample_hz,
            bucket_ns,
            trace_end_ns: 0,
        }
    }
}

/// One sustained spin of one thread.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Spin {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// comm.
    pub comm: String,
    /// Worker generation, when the process is a worker of the root.
    pub generation: Option<u32>,
    /// Onset (s from zero, i.e. after the reload).
    pub start_s: f64,
    /// End of the last spinning bucket (s from zero).
    pub end_s: f64,
    /// Length in s.
    pub duration_s: f64,
    /// epoll calls during the spin.
    pub calls: u64,
    /// Calls per second.
    pub rate_per_s: f64,
    /// Share of zero-timeout calls.
    pub zero_timeout_share: f64,
    /// Share of zero-event returns.
    pub zero_event_share: f64,
    /// Share of one CPU the thread used during the spin.
    pub cpu_share: f64,
    /// Where `cpu_share` comes from: `samples` or `epoll` (time outside epoll calls).
    pub cpu_source: String,
    /// The epoll fd it spins on.
    pub epfd: i32,
    /// Since when (s from zero) its calls were already ≥90% zero-timeout, in contiguous buckets
    /// before the spin: the busy-wait loop began then, while the worker still had real events.
    pub zero_timeout_since_s: f64,
    /// Whether the thread left the busy-wait loop before the trace ended (a later call with a
    /// real timeout); false: it was still spinning when the trace ended.
    pub ended: bool,
    /// Start in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub start_ns: u64,
    /// End in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub end_ns: u64,
    /// `zero_timeout_since_s` in CLOCK_MONOTONIC ns.
    #[serde(skip)]
    pub since_ns: u64,
}

/// Whether all but a few of a bucket's calls had a zero timeout: still in the busy-wait loop,
/// however slowly.
fn busy_waiting(b: &EpollBucketEvent, p: &Params) -> bool {
    b.calls > 0 && b.zero_timeout as f64 >= p.min_zero_timeout * b.calls as f64
}

fn spinning(b: &EpollBucketEvent, p: &Params) -> bool {
    let len = b.end_ns.saturating_sub(b.start_ns).max(1);
    b.calls > 0
        && b.zero_timeout as f64 >= p.min_zero_timeout * b.calls as f64
        && b.zero_events as f64 >= p.min_zero_events * b.calls as f64
        && b.calls as f64 * 1e9 / len as f64 >= p.min_rate
}

/// Finds every sustained spin, earliest first.
pub fn detect(events: &[Event], timeline: &Timeline, p: Params, zero_ns: u64) -> Vec<Spin> {
    let mut by_tid: BTreeMap<u32, Vec<&EpollBucketEvent>> = BTreeMap::new();
    let mut samples: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for ev in events {
        match ev {
            Event::EpollBucket(b) => by_tid.entry(b.task.tid).or_default().push(b),
            Event::CpuSample(s) => samples.entry(s.task.tid).or_default().push(s.task.ts_ns),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (tid, mut buckets) in by_tid {
        buckets.sort_by_key(|b| b.start_ns);
        let first_new = out.len();
        // One episode per stretch of busy-waiting: spinning buckets, joined across starved or
        // silent stretches of at most EPISODE_GAP_NS; a call with a real timeout ends it.
        let mut run: Vec<&EpollBucketEvent> = Vec::new();
        for &b in &buckets {
            if spinning(b, &p) {
                let joins = run.last().is_none_or(|l| b.start_ns <= l.end_ns.saturating_add(EPISODE_GAP_NS));
                if !joins {
                    flush(&mut run, tid, timeline, &p, &samples, zero_ns, &mut out);
                }
                run.push(b);
            } else if !busy_waiting(b, &p) {
                flush(&mut run, tid, timeline, &p, &samples, zero_ns, &mut out);
            }
        }
        flush(&mut run, tid, timeline, &p, &samples, zero_ns, &mut out);
        for spin in &mut out[first_new..] {
            spin.since_ns = zero_timeout_since(&buckets, spin.start_ns, &p);
            spin.zero_timeout_since_s = rel_s(spin.since_ns, zero_ns);
            spin.ended = buckets.iter().any(|b| b.start_ns >= spin.end_ns && !busy_waiting(b, &p))
                || buckets.last().is_some_and(|b| b.end_ns.saturating_add(EPISODE_GAP_NS) < p.trace_end_ns);
        }
    }
    out.sort_by_key(|s| (s.start_ns, s.tid));
    out
}

/// Walks back from `start` over contiguous buckets whose calls are mostly zero-timeout.
fn zero_timeout_since(buckets: &[&EpollBucketEvent], start: u64, p: &Params) -> u64 {
    let mut since = start;
    let i = buckets.partition_point(|b| b.start_ns < start);
    for b in buckets[..i].iter().rev() {
        let contiguous = b.end_ns.saturating_add(p.bucket_ns / 2) >= since;
        if !contiguous || b.calls == 0 || (b.zero_timeout as f64) < p.min_zero_timeout * b.calls as f64 {
            break;
        }
        since = b.start_ns;
    }
    since
}

fn flush(
    run: &mut Vec<&EpollBucketEvent>,
    tid: u32,
    timeline: &Timeline,
    p: &Params,
    samples: &BTreeMap<u32, Vec<u64>>,
    zero_ns: u64,
    out: &mut Vec<Spin>,
) {
    let (Some(first), Some(last)) = (run.first(), run.last()) else { return };
    let (start, end) = (first.start_ns, last.end_ns);
    let len = end.saturating_sub(start);
    if len >= p.min_duration_ns {
        let calls: u64 = run.iter().map(|b| b.calls).sum();
        let zt: u64 = run.iter().map(|b| b.zero_timeout).sum();
        let ze: u64 = run.iter().map(|b| b.zero_events).sum();
        let blocked: u64 = run.iter().map(|b| b.blocked_ns).sum();
        let secs = len as f64 / 1e9;
        let (cpu_share, cpu_source) = if p.sample_hz > 0 {
            let n = samples.get(&tid).map_or(0, |v| v.iter().filter(|&&t| t >= start && t <= end).count());
            ((n as f64 / (secs * p.sample_hz as f64)).min(1.0), "samples")
        } else {
            // No samples: the time it was not blocked in epoll is an upper bound of its CPU.
            ((1.0 - blocked as f64 / len as f64).clamp(0.0, 1.0), "epoll")
        };
        out.push(Spin {
            pid: first.task.tgid,
            tid,
            comm: last.task.comm.clone(),
            generation: timeline.worker_generation(first.task.tgid),
            start_s: rel_s(start, zero_ns),
            end_s: rel_s(end, zero_ns),
            duration_s: secs,
            calls,
            rate_per_s: calls as f64 / secs,
            zero_timeout_share: zt as f64 / calls as f64,
            zero_event_share: ze as f64 / calls as f64,
            cpu_share,
            cpu_source: cpu_source.into(),
            epfd: last.epfd,
            zero_timeout_since_s: rel_s(start, zero_ns),
            ended: false,
            start_ns: start,
            end_ns: end,
            since_ns: start,
        });
    }
    run.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testkit::*;
    use crate::event::{CpuSampleEvent, Task};

    fn sample(pid: u32, ts: u64) -> Event {
        Event::CpuSample(CpuSampleEvent {
            task: Task { ts_ns: ts, cpu: 0, tgid: pid, tid: pid, comm: "nginx".into() },
            kstack_id: -1,
            ustack_id: -1,
            ip: 0,
            sp: 0,
            bp: 0,
            user_mode: true,
            stack_len: 0,
            stack_offset: 0,
            lua: None,
        })
    }

    fn timeline() -> Timeline {
        let procs = vec![worker(11, 1, Some(2))];
        super::super::timeline::detect(&[], &procs, 1, 0)
    }

    #[test]
    fn finds_a_sustained_spin_with_onset_rate_and_cpu() {
        // Worker 11 spins from 1.0 s to 1.8 s (8 buckets of 800 calls, all zero), then calms down.
        let mut events: Vec<Event> = (0..8).map(|i| bucket(11, 1000 + 100 * i, 800, 800)).collect();
        events.push(bucket(11, 1800, 10, 0));
        // The lead-up: zero timeouts while real events still arrive.
        let mut lead = bucket(11, 900, 50, 0);
        if let Event::EpollBucket(b) = &mut lead {
            b.zero_timeout = 50;
        }
        events.push(lead);
        events.push(bucket(11, 1900, 800, 800));
        events.extend((0..40).map(|i| sample(11, ms(1000) + i * ms(20))));
        let spins = detect(&events, &timeline(), Params::new(100, ms(100)), ms(500));
        assert_eq!(spins.len(), 1, "{spins:?}");
        let s = &spins[0];
        assert_eq!((s.pid, s.tid, s.generation, s.epfd), (11, 11, Some(2), 20));
        assert!((s.start_s - 0.5).abs() < 1e-9 && (s.duration_s - 0.8).abs() < 1e-9);
        assert!((s.rate_per_s - 8000.0).abs() < 1e-6);
        assert!((s.cpu_share - 0.5).abs() < 1e-9, "{}", s.cpu_share);
        assert!((s.zero_timeout_since_s - 0.4).abs() < 1e-9, "{}", s.zero_timeout_since_s);
    }

    #[test]
    fn a_starved_spin_is_one_episode_and_says_whether_it_ended() {
        // Worker 11 spins, is starved for 0.5 s (few calls, still all zero-timeout), spins again,
        // then is silent for 1 s and spins again: one episode, still spinning at the end.
        let mut events: Vec<Event> = (0..8).map(|i| bucket(11, 1000 + 100 * i, 800, 800)).collect();
        for i in 0..5 {
            let mut starved = bucket(11, 1800 + 100 * i, 20, 20);
            if let Event::EpollBucket(b) = &mut starved {
                b.zero_timeout = 20;
            }
            events.push(starved);
        }
        events.extend((0..8).map(|i| bucket(11, 2300 + 100 * i, 800, 800)));
        events.extend((0..8).map(|i| bucket(11, 4100 + 100 * i, 800, 800)));
        let p = Params::new(0, ms(100));
        let spins = detect(&events, &timeline(), p, 0);
        assert_eq!(spins.len(), 1, "{spins:?}");
        assert!((spins[0].start_s - 1.0).abs() < 1e-9 && (spins[0].end_s - 4.9).abs() < 1e-9, "{spins:?}");
        assert!(!spins[0].ended);
        // A call with a real timeout ends the episode: two spins, the first one ended.
        events.push(bucket(11, 3500, 10, 0));
        let spins = detect(&events, &timeline(), p, 0);
        assert_eq!(spins.len(), 2, "{spins:?}");
        assert!(spins[0].ended && !spins[1].ended);
        // Silent past the gap until the trace's end: it left the loop.
        let spins = detect(&events, &timeline(), Params { trace_end_ns: ms(8000), ..p }, 0);
        assert!(spins[1].ended);
    }

    #[test]
    fn short_or_blocking_epoll_is_not_a_spin() {
        // 0.3 s of spinning, then a busy but blocking worker (timeouts, events returned).
        let mut events: Vec<Event> = (0..3).map(|i| bucket(11, 1000 + 100 * i, 800, 800)).collect();
        events.extend((0..20).map(|i| bucket(12, 1000 + 100 * i, 900, 0)));
        assert!(detect(&events, &timeline(), Params::new(0, ms(100)), 0).is_empty());
    }

    #[test]
    fn without_samples_cpu_comes_from_epoll() {
        let events: Vec<Event> = (0..10).map(|i| bucket(11, 100 * i, 500, 500)).collect();
        let s = &detect(&events, &timeline(), Params::new(0, ms(100)), 0)[0];
        assert_eq!(s.cpu_source, "epoll");
        assert!((s.cpu_share - 0.95).abs() < 1e-9);
    }
}
