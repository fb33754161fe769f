//! `timeline.json`: the run as Chrome/Perfetto trace events (servers, spins, epoll buckets, socket
//! errors, signals, the reload and failed requests), for ui.perfetto.dev.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use crate::analyze::correlate::Link;
use crate::analyze::text::{errno_name, rel_s, short_path};
use crate::analyze::{Analysis, Request, Run};
use crate::event::Event;

/// Failed-request instants in `timeline.json` at most.
const MAX_REQUEST_INSTANTS: usize = crate::analyze::links::FIRST;
/// Socket-error instants in `timeline.json` at most.
pub const MAX_SOCKET_INSTANTS: usize = 20_000;
/// The synthetic track of the load test's failed requests.
const LOADTEST_PID: u32 = 999_999_999;

/// The `traceEvents` array, written one event at a time: a long run has hundreds of thousands,
/// which as one document in memory took far more than the file.
struct EventArray<'w> {
    w: &'w mut dyn Write,
    first: bool,
    error: Option<std::io::Error>,
}

impl EventArray<'_> {
    fn push(&mut self, ev: Value) {
        if self.error.is_some() {
            return;
        }
        let sep: &[u8] = if self.first { b"" } else { b"," };
        self.first = false;
        let r =
            self.w.write_all(sep).and_then(|()| serde_json::to_writer(&mut *self.w, &ev).map_err(Into::into));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }
}

/// Writes the Chrome/Perfetto trace-event document to `w`.
pub fn write_trace_events(run: &Run, a: &Analysis, w: &mut dyn Write) -> std::io::Result<()> {
    let t0 = run.meta.started_ns.min(a.zero_ns);
    let us = |ns: u64| ns.saturating_sub(t0) as f64 / 1e3;
    w.write_all(b"{\"traceEvents\":[")?;
    let mut ev = EventArray { w: &mut *w, first: true, error: None };
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for p in &run.processes {
        names.insert(p.pid, p.comm.clone());
    }
    names.insert(a.timeline.root, format!("nginx master {}", a.timeline.root));
    for w in &a.timeline.workers {
        names.insert(w.pid, format!("worker {} (gen {})", w.pid, w.generation));
    }
    for g in &a.lifecycle.servers {
        names.insert(g.pid, format!("{} {} gen {} ({})", g.comm, short_path(&g.path), g.generation, g.pid));
        let start = g.bound_ns.unwrap_or(run.meta.started_ns);
        let end = g.exit_ns.unwrap_or(run.meta.ended_ns);
        ev.push(json!({"name": format!("{} gen {}", short_path(&g.path), g.generation), "cat": "server",
            "ph": "X", "pid": g.pid, "tid": g.pid, "ts": us(start), "dur": us(end) - us(start),
            "args": {"end": g.end, "found_by": g.found_by}}));
    }
    names.insert(LOADTEST_PID, "load test: failed requests".into());
    let mut threads: BTreeMap<(u32, u32), String> = BTreeMap::new();
    for s in &a.spins {
        ev.push(
            json!({"name": "spin: epoll_wait(…, 0)", "cat": "spin", "ph": "X", "pid": s.pid, "tid": s.tid,
            "ts": us(s.start_ns), "dur": us(s.end_ns) - us(s.start_ns),
            "args": {"calls_per_s": s.rate_per_s.round(), "cpu_share": s.cpu_share, "epfd": s.epfd}}),
        );
        threads.insert((s.pid, s.tid), s.comm.clone());
    }
    // Every epoll bucket of a thread that spun at some point: the lead-up is part of the story.
    for e in &run.events {
        if let Event::EpollBucket(b) = e
            && threads.contains_key(&(b.task.tgid, b.task.tid))
        {
            ev.push(
                json!({"name": "epoll", "cat": "epoll", "ph": "X", "pid": b.task.tgid, "tid": b.task.tid,
                "ts": us(b.start_ns), "dur": us(b.end_ns) - us(b.start_ns),
                "args": {"calls": b.calls, "zero_timeout": b.zero_timeout, "zero_events": b.zero_events,
                         "blocked_ms": b.blocked_ns as f64 / 1e6, "epfd": b.epfd}}),
            );
        }
    }
    for c in a.stale.connect_failures.iter().take(MAX_SOCKET_INSTANTS) {
        ev.push(json!({"name": format!("connect {}: {}", short_path(&c.path), errno_name(c.ret)),
            "cat": "socket", "ph": "i", "s": "t", "pid": c.pid, "tid": c.pid, "ts": us(c.ts_ns)}));
    }
    for i in &a.stale.io_failures {
        ev.push(json!({"name": format!("{} {}: {}", i.op, short_path(&i.path), i.error), "cat": "socket",
            "ph": "i", "s": "t", "pid": i.pid, "tid": i.pid, "ts": us(i.ts_ns),
            "args": {"peer_pid": i.peer_pid, "peer_generation": i.peer_generation}}));
    }
    for e in &run.events {
        if let Event::Signal(sg) = e {
            // On the receiver's track, so a SIGKILL sits where the process ends.
            ev.push(json!({"name": format!("{} from {}", sg.name, sg.task.tgid), "cat": "signal", "ph": "i",
                "s": "p", "pid": sg.target, "tid": sg.target, "ts": us(sg.task.ts_ns),
                "args": {"from": sg.task.tgid, "from_comm": sg.task.comm}}));
        }
    }
    for h in &a.timeline.hups {
        ev.push(json!({"name": "reload (SIGHUP to master)", "cat": "reload", "ph": "i", "s": "g",
            "pid": a.timeline.root, "tid": a.timeline.root, "ts": us(h.ts_ns)}));
    }
    // The earliest failures, as the links keep them in full.
    let mut failed: Vec<&Request> = run.log.failed.iter().collect();
    failed.sort_by_key(|r| r.start_mono_ns);
    let by_id: BTreeMap<&str, &Link> =
        a.attribution.links.first().iter().map(|l| (l.request_id.as_str(), l)).collect();
    for r in failed.iter().take(MAX_REQUEST_INSTANTS) {
        let link = by_id.get(r.request_id.as_str());
        let pid = r.worker_pid.unwrap_or(LOADTEST_PID);
        ev.push(json!({"name": format!("failed {}: {}", r.endpoint, r.reason.as_ref().map_or_else(|| "?".into(), ToString::to_string)),
            "cat": "request", "ph": "i", "s": "t", "pid": pid, "tid": LOADTEST_PID, "ts": us(r.start_mono_ns),
            "args": {"request_id": r.request_id, "link": link.map(|l| l.link.as_str()),
                     "kind": link.map(|l| l.kind.map_or("", |k| k.as_str())), "explanation": link.map(|l| l.sentence.as_str())}}));
        threads.insert((pid, LOADTEST_PID), "failed requests".into());
    }
    for (pid, name) in &names {
        let name = match a.container_pids.get(pid) {
            Some(inner) => format!("{name} [pid {inner} in its container]"),
            None => name.clone(),
        };
        ev.push(json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}));
    }
    for ((pid, tid), name) in &threads {
        ev.push(json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}));
    }
    if let Some(e) = ev.error {
        return Err(e);
    }
    let tail = json!({"zero_s_from_trace_start": rel_s(a.zero_ns, t0), "source": "reloadscope analyze",
                      // The instants are capped; a reader must know when some are missing.
                      "failed_requests": a.attribution.failed,
                      "failed_request_instants": failed.len().min(MAX_REQUEST_INSTANTS)});
    w.write_all(b"],\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut *w, &tail)?;
    w.write_all(b"}")
}
