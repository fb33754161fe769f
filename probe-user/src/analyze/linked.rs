//! `requests-linked.jsonl`: every request of the load test beside what the kernel saw of it,
//! one line each: which worker read it (by the request id on its socket), which worker the
//! gateway's header named, when the worker read and answered it, the status it wrote, and the
//! plugin socket its handler called.
//!
//! A long run has millions of requests: the kernel's side is kept as a compact [`KernelIndex`]
//! (48 bytes a request, by a hash of its id) and the load test's log is read again one line at
//! a time while the file is written.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Request;
use super::routes::Routes;
use crate::event::{Event, HttpRequestEvent};

/// What the kernel saw of one request, with 0 for "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Brief {
    tgid: u32,
    status: u16,
    read_ns: u64,
    answered_ns: u64,
    closed_ns: u64,
    plugin_inode: u64,
}

/// The requests the probe read, by a hash of their id; the first read of an id counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelIndex {
    entries: Vec<(u64, Brief)>,
    sorted: bool,
}

fn id_hash(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl KernelIndex {
    /// Adds a request the probe read.
    pub fn add(&mut self, h: &HttpRequestEvent) {
        let Some(id) = &h.request_id else { return };
        self.sorted = false;
        self.entries.push((
            id_hash(id),
            Brief {
                tgid: h.task.tgid,
                status: h.status.unwrap_or(0),
                read_ns: h.task.ts_ns,
                answered_ns: h.response_ns.unwrap_or(0),
                closed_ns: h.closed_ns.unwrap_or(0),
                plugin_inode: h.plugin_inode.unwrap_or(0),
            },
        ));
    }

    /// The index of every request among `events`.
    pub fn of(events: &[Event]) -> KernelIndex {
        let mut ix = KernelIndex::default();
        for e in events {
            if let Event::HttpRequest(h) = e {
                ix.add(h);
            }
        }
        ix.finish();
        ix
    }

    /// Sorts for lookups, keeping the first read of each id.
    pub fn finish(&mut self) {
        self.entries.sort_by_key(|(h, b)| (*h, b.read_ns));
        self.entries.dedup_by_key(|(h, _)| *h);
        self.entries.shrink_to_fit();
        self.sorted = true;
    }

    fn get(&self, id: &str) -> Option<&Brief> {
        debug_assert!(self.sorted, "KernelIndex::finish before lookups");
        let h = id_hash(id);
        let i = self.entries.binary_search_by_key(&h, |(k, _)| *k).ok()?;
        Some(&self.entries[i].1)
    }
}

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkedLine<'a> {
    /// The request id the client sent.
    pub request_id: &'a str,
    /// Its endpoint.
    pub endpoint: &'a str,
    /// The worker that read it, by the kernel.
    pub worker_kernel: Option<u32>,
    /// The worker the gateway's response header named (the stand-in only).
    pub worker_header: Option<u32>,
    /// When the worker's read of it returned (CLOCK_MONOTONIC ns).
    pub read_ns: Option<u64>,
    /// When the worker started its response.
    pub answered_ns: Option<u64>,
    /// The status the worker wrote.
    pub status: Option<u16>,
    /// When the worker closed the connection with it unanswered.
    pub closed_ns: Option<u64>,
    /// The unix socket its handler wrote first, in the turn that read it.
    pub plugin_socket: Option<&'a str>,
}

/// The line of one request.
fn line<'a>(r: &'a Request, kernel: &KernelIndex, routes: &'a Routes) -> LinkedLine<'a> {
    let k = kernel.get(&r.request_id);
    let some = |v: u64| Some(v).filter(|&v| v != 0);
    LinkedLine {
        request_id: &r.request_id,
        endpoint: &r.endpoint,
        worker_kernel: k.map(|k| k.tgid),
        worker_header: r.worker_pid,
        read_ns: k.map(|k| k.read_ns),
        answered_ns: k.and_then(|k| some(k.answered_ns)),
        status: k.and_then(|k| Some(k.status).filter(|&s| s != 0)),
        closed_ns: k.and_then(|k| some(k.closed_ns)),
        plugin_socket: k.and_then(|k| routes.socket_path(some(k.plugin_inode)?)),
    }
}

/// Writes `out` with one line per request of the log at `requests`, read one at a time.
pub fn write(out: &Path, requests: &Path, kernel: &KernelIndex, routes: &Routes) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut failed = None;
    shared::for_each_json_line(requests, |r: Request| {
        if failed.is_none()
            && let Err(e) = serde_json::to_writer(&mut w, &line(&r, kernel, routes))
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(w.write_all(b"\n")?))
        {
            failed = Some(e);
        }
    })
    .with_context(|| format!("cannot read {}", requests.display()))?;
    if let Some(e) = failed {
        return Err(e.context(format!("cannot write {}", out.display())));
    }
    Ok(w.flush()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testkit::*;

    #[test]
    fn each_request_gets_its_first_read_by_id() {
        let events = vec![
            http(30, 12, "/js", "b", Some((35, 200)), None, None),
            http(10, 11, "/js", "a", Some((15, 502)), None, Some(7)),
            // A second read of the same id (a retry on another worker): the first counts.
            http(40, 13, "/js", "a", None, Some(45), None),
        ];
        let ix = KernelIndex::of(&events);
        assert_eq!(ix.entries.len(), 2);
        let a = ix.get("a").unwrap();
        assert_eq!((a.tgid, a.status, a.read_ns, a.answered_ns, a.plugin_inode), (11, 502, 10, 15, 7));
        assert!(ix.get("c").is_none());
        let routes = Routes::default();
        let r = Request {
            request_id: "b".into(),
            endpoint: "/js".into(),
            worker_pid: Some(12),
            ..Request::default()
        };
        let l = line(&r, &ix, &routes);
        assert_eq!(
            (l.worker_kernel, l.answered_ns, l.status, l.closed_ns),
            (Some(12), Some(35), Some(200), None)
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        std::fs::write(&log, format!("{}\n{{\"cut", serde_json::to_string(&r).unwrap())).unwrap();
        write(&dir.path().join("linked.jsonl"), &log, &ix, &routes).unwrap();
        let text = std::fs::read_to_string(dir.path().join("linked.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#""worker_kernel":12"#), "{text}");
    }
}
