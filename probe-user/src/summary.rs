//! Per-thread epoll summary of a trace: rates and shares, and the table `record` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// One thread's epoll activity over the whole trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Last comm seen.
    pub comm: String,
    /// Completed calls.
    pub calls: u64,
    /// Calls with a zero timeout.
    pub zero_timeout: u64,
    /// Calls that returned no event.
    pub zero_events: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time spent inside the calls.
    pub blocked_ns: u64,
    /// epfd of the last call.
    pub epfd: i32,
    /// Timeout of the last call in ns; -1 is infinite.
    pub timeout_ns: i64,
    /// First call's entry.
    pub first_ns: u64,
    /// Last call's exit.
    pub last_ns: u64,
    /// Syscalls seen.
    pub syscalls: BTreeSet<probe_common::Syscall>,
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

impl ThreadSummary {
    /// Calls per second over a window of `window_ns`.
    pub fn calls_per_sec(&self, window_ns: u64) -> f64 {
        share(self.calls, window_ns) * 1e9
    }

    /// Share of calls with a zero timeout.
    pub fn zero_timeout_share(&self) -> f64 {
        share(self.zero_timeout, self.calls)
    }

    /// Share of calls that returned no event.
    pub fn zero_event_share(&self) -> f64 {
        share(self.zero_events, self.calls)
    }

    /// Share of the window spent inside epoll calls.
    pub fn blocked_share(&self, window_ns: u64) -> f64 {
        share(self.blocked_ns, window_ns).min(1.0)
    }
}

/// Sums the epoll buckets of each thread; busiest thread first.
pub fn by_thread<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<ThreadSummary> {
    let mut threads: BTreeMap<u32, ThreadSummary> = BTreeMap::new();
    for ev in events {
        let Event::EpollBucket(b) = ev else { continue };
        let t = threads.entry(b.task.tid).or_insert_with(|| ThreadSummary {
            tgid: b.task.tgid,
            tid: b.task.tid,
            first_ns: b.start_ns,
            ..ThreadSummary::default()
        });
        t.comm.clone_from(&b.task.comm);
        t.calls += b.calls;
        t.zero_timeout += b.zero_timeout;
        t.zero_events += b.zero_events;
        t.errors += b.errors;
        t.blocked_ns += b.blocked_ns;
        t.first_ns = t.first_ns.min(b.start_ns);
        if b.end_ns >= t.last_ns {
            t.last_ns = b.end_ns;
            t.epfd = b.epfd;
            t.timeout_ns = b.timeout_ns;
        }
        t.syscalls.extend(b.syscalls.iter().copied());
    }
    let mut out: Vec<_> = threads.into_values().collect();
    out.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.tid.cmp(&b.tid)));
    out
}

/// Renders a timeout for humans.
pub fn timeout_text(ns: i64) -> String {
    match ns {
        n if n < 0 => "inf".into(),
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
        n => format!("{:.3}ms", n as f64 / 1e6),
    }
}

/// The per-thread table: calls per second, zero-timeout, zero-event and blocked shares.
pub fn table(threads: &[ThreadSummary], window_ns: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>7} {:<16} {:>12} {:>8} {:>8} {:>8} {:>5} {:>9} SYSCALLS",
        "PID", "TID", "COMM", "CALLS/S", "ZERO-TO", "ZERO-EV", "BLOCKED", "EPFD", "TIMEOUT",
    );
    for t in threads {
        let syscalls: Vec<&str> = t.syscalls.iter().map(|s| s.name()).collect();
        let _ = writeln!(
            s,
            "{:>7} {:>7} {:<16} {:>12.1} {:>7.1}% {:>7.1}% {:>7.1}% {:>5} {:>9} {}",
            t.tgid,
            t.tid,
            t.comm,
            t.calls_per_sec(window_ns),
            100.0 * t.zero_timeout_share(),
            100.0 * t.zero_event_share(),
            100.0 * t.blocked_share(window_ns),
            t.epfd,
            timeout_text(t.timeout_ns),
            syscalls.join(",")
        );
    }
    if threads.is_empty() {
        s.push_str("(no epoll calls completed by the traced processes)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EpollBucketEvent, Task};

    fn bucket(tid: u32, start: u64, calls: u64, zero_to: u64, blocked: u64, timeout: i64) -> Event {
        Event::EpollBucket(EpollBucketEvent {
            task: Task { ts_ns: start + 10, cpu: 0, tgid: 100, tid, comm: format!("t{tid}") },
            start_ns: start,
            end_ns: start + 10,
            calls,
            zero_timeout: zero_to,
            zero_events: zero_to,
            events: 0,
            errors: 0,
            blocked_ns: blocked,
            epfd: 4,
            maxevents: 512,
            timeout_ns: timeout,
            syscalls: vec![probe_common::Syscall::EpollPwait],
        })
    }

    #[test]
    fn sums_buckets_per_thread_and_sorts_by_calls() {
        let events = [
            bucket(7, 0, 10, 0, 900_000_000, 200_000_000),
            bucket(8, 5, 1_000_000, 1_000_000, 100_000_000, 0),
            bucket(8, 100, 500_000, 500_000, 50_000_000, 0),
        ];
        let t = by_thread(&events);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].tid, t[0].calls, t[0].first_ns, t[0].last_ns), (8, 1_500_000, 5, 110));
        let window = 2_000_000_000;
        assert!((t[0].calls_per_sec(window) - 750_000.0).abs() < 1e-6);
        assert_eq!(t[0].zero_timeout_share(), 1.0);
        assert!((t[0].blocked_share(window) - 0.075).abs() < 1e-9);
        assert_eq!((t[1].tid, t[1].zero_timeout_share(), t[1].timeout_ns), (7, 0.0, 200_000_000));
        let table = table(&t, window);
        assert!(table.lines().nth(1).unwrap().contains("750000.0"), "{table}");
        assert!(table.contains("200ms"), "{table}");
    }

    #[test]
    fn ignores_other_events_and_handles_empty_input() {
        assert!(by_thread(&[]).is_empty());
        assert!(table(&[], 1).contains("no epoll calls"));
        assert_eq!(timeout_text(-1), "inf");
        assert_eq!(timeout_text(1_500_000), "1.500ms");
    }
}
