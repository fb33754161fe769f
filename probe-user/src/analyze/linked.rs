//! `requests-linked.jsonl`: every request of the load test beside what the kernel saw of it,
//! one line each: which worker read it (by the request id on its socket), which worker the
//! gateway's header named, when the worker read and answered it, the status it wrote, and the
//! plugin socket its handler called.
//!
//! A long run has millions of requests, more than memory should hold at once. So the kernel's
//! side is written, as the trace is read, into [`PARTS`] files by a hash of the request id
//! (40 bytes a request); the load test's log is then read once, each line's offset filed under
//! the same hash; and the file is written one part at a time, with only that part's requests in
//! memory. The lines come out grouped by part, not in the log's order.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Request;
use super::routes::Routes;
use crate::event::{Event, HttpRequestEvent};

/// Parts the requests are split into: a part of a 3-million-request run is 200k requests.
const PARTS: u64 = 16;

/// What the kernel saw of one request (its first read), with 0 for "none": the record of the
/// on-disk join and of the correlation alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelRead {
    id_hash: u64,
    /// When the worker read it (CLOCK_MONOTONIC ns).
    pub read_ns: u64,
    answered_ns: u64,
    closed_ns: u64,
    /// The worker that read it.
    pub tgid: u32,
    status: u16,
    plugin_inode: u64,
}

impl KernelRead {
    const LEN: usize = 46;

    /// The read `h`; `None` when it carried no request id.
    pub fn of(h: &HttpRequestEvent) -> Option<Self> {
        Some(KernelRead {
            id_hash: id_hash(h.request_id.as_deref()?),
            read_ns: h.task.ts_ns,
            answered_ns: h.response_ns.unwrap_or(0),
            closed_ns: h.closed_ns.unwrap_or(0),
            tgid: h.task.tgid,
            status: h.status.unwrap_or(0),
            plugin_inode: h.plugin_inode.unwrap_or(0),
        })
    }

    /// Its request id's hash ([`id_hash`]).
    pub fn id_hash(&self) -> u64 {
        self.id_hash
    }

    /// When its response started.
    pub fn answered_ns(&self) -> Option<u64> {
        Some(self.answered_ns).filter(|&t| t != 0)
    }

    /// When the worker closed the connection with it unanswered.
    pub fn closed_ns(&self) -> Option<u64> {
        Some(self.closed_ns).filter(|&t| t != 0)
    }

    /// The status written.
    pub fn status(&self) -> Option<u16> {
        Some(self.status).filter(|&s| s != 0)
    }

    /// The plugin socket (inode) its handler wrote first.
    pub fn plugin_inode(&self) -> Option<u64> {
        Some(self.plugin_inode).filter(|&i| i != 0)
    }

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.id_hash.to_le_bytes());
        b[8..16].copy_from_slice(&self.read_ns.to_le_bytes());
        b[16..24].copy_from_slice(&self.answered_ns.to_le_bytes());
        b[24..32].copy_from_slice(&self.closed_ns.to_le_bytes());
        b[32..36].copy_from_slice(&self.tgid.to_le_bytes());
        b[36..38].copy_from_slice(&self.status.to_le_bytes());
        b[38..46].copy_from_slice(&self.plugin_inode.to_le_bytes());
        b
    }

    fn decode(b: &[u8; Self::LEN]) -> KernelRead {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        KernelRead {
            id_hash: u64_at(0),
            read_ns: u64_at(8),
            answered_ns: u64_at(16),
            closed_ns: u64_at(24),
            tgid: u32::from_le_bytes(b[32..36].try_into().unwrap_or_default()),
            status: u16::from_le_bytes(b[36..38].try_into().unwrap_or_default()),
            plugin_inode: u64_at(38),
        }
    }
}

/// A request id's 64-bit hash: the key of the kernel's reads (a collision among a run's ids is
/// about one in 10^8 at a million requests).
pub fn id_hash(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// What the kernel saw of every request, filed by part in a temporary directory.
#[derive(Debug)]
pub struct KernelIndex {
    dir: tempfile::TempDir,
    parts: Vec<BufWriter<File>>,
    /// The first error writing a part, reported by [`write`].
    error: Option<String>,
}

impl KernelIndex {
    /// An empty index in a new temporary directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("reloadscope-linked").tempdir()?;
        let parts = (0..PARTS)
            .map(|p| Ok(BufWriter::new(File::create(dir.path().join(format!("kernel-{p}")))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KernelIndex { dir, parts, error: None })
    }

    /// Adds a request the probe read.
    pub fn add(&mut self, h: &HttpRequestEvent) {
        let Some(b) = KernelRead::of(h) else { return };
        let part = (b.id_hash % PARTS) as usize;
        if let Err(e) = self.parts[part].write_all(&b.encode())
            && self.error.is_none()
        {
            self.error = Some(e.to_string());
        }
    }

    /// The index of every request among `events`.
    pub fn of(events: &[Event]) -> Result<KernelIndex> {
        let mut ix = KernelIndex::new()?;
        for e in events {
            if let Event::HttpRequest(h) = e {
                ix.add(h);
            }
        }
        ix.finish()?;
        Ok(ix)
    }

    /// Writes out what is buffered: call before [`write`].
    pub fn finish(&mut self) -> Result<()> {
        for p in &mut self.parts {
            p.flush()?;
        }
        match &self.error {
            Some(e) => {
                anyhow::bail!("cannot keep the kernel's requests in {}: {e}", self.dir.path().display())
            }
            None => Ok(()),
        }
    }

    /// One part's requests, by id hash; the first read of an id counts.
    fn part(&self, p: u64) -> Result<HashMap<u64, KernelRead>> {
        let mut r = BufReader::new(File::open(self.dir.path().join(format!("kernel-{p}")))?);
        let mut out: HashMap<u64, KernelRead> = HashMap::new();
        let mut buf = [0u8; KernelRead::LEN];
        while r.read_exact(&mut buf).is_ok() {
            let b = KernelRead::decode(&buf);
            out.entry(b.id_hash)
                .and_modify(|e| {
                    if b.read_ns < e.read_ns {
                        *e = b
                    }
                })
                .or_insert(b);
        }
        Ok(out)
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
fn line<'a>(r: &'a Request, k: Option<&KernelRead>, routes: &'a Routes) -> LinkedLine<'a> {
    LinkedLine {
        request_id: &r.request_id,
        endpoint: &r.endpoint,
        worker_kernel: k.map(|k| k.tgid),
        worker_header: r.worker_pid,
        read_ns: k.map(|k| k.read_ns),
        answered_ns: k.and_then(KernelRead::answered_ns),
        status: k.and_then(KernelRead::status),
        closed_ns: k.and_then(KernelRead::closed_ns),
        plugin_socket: k.and_then(|k| routes.socket_path(k.plugin_inode()?)),
    }
}

/// Writes `out` with one line per request of the log at `requests`, part by part.
pub fn write(out: &Path, requests: &Path, kernel: &KernelIndex, routes: &Routes) -> Result<()> {
    let cannot_read = || format!("cannot read {}", requests.display());
    // Each line's offset and length, filed by part.
    let mut offsets: Vec<BufWriter<File>> = (0..PARTS)
        .map(|p| Ok(BufWriter::new(File::create(kernel.dir.path().join(format!("log-{p}")))?)))
        .collect::<Result<Vec<_>>>()?;
    let mut log = match File::open(requests) {
        Ok(f) => BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(cannot_read),
    };
    let (mut at, mut text) = (0u64, String::new());
    loop {
        text.clear();
        let n = log.read_line(&mut text).with_context(cannot_read)?;
        if n == 0 {
            break;
        }
        if let Ok(r) = serde_json::from_str::<Request>(&text) {
            let p = (id_hash(&r.request_id) % PARTS) as usize;
            offsets[p].write_all(&at.to_le_bytes())?;
            offsets[p].write_all(&(n as u64).to_le_bytes())?;
        }
        at += n as u64;
    }
    let file = File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut w = BufWriter::new(file);
    let log = log.into_inner();
    for p in 0..PARTS {
        let briefs = kernel.part(p)?;
        offsets[p as usize].flush()?;
        let mut ix = BufReader::new(File::open(kernel.dir.path().join(format!("log-{p}")))?);
        let mut pair = [0u8; 16];
        while ix.read_exact(&mut pair).is_ok() {
            let (off, len) =
                (u64::from_le_bytes(pair[..8].try_into()?), u64::from_le_bytes(pair[8..].try_into()?));
            let mut bytes = vec![0u8; len as usize];
            log.read_exact_at(&mut bytes, off).with_context(cannot_read)?;
            let Ok(r) = serde_json::from_slice::<Request>(&bytes) else { continue };
            serde_json::to_writer(&mut w, &line(&r, briefs.get(&id_hash(&r.request_id)), routes))?;
            w.write_all(b"\n")?;
        }
    }
    w.flush().with_context(|| format!("cannot write {}", out.display()))
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
        let ix = KernelIndex::of(&events).unwrap();
        let a = *ix.part(id_hash("a") % PARTS).unwrap().get(&id_hash("a")).unwrap();
        assert_eq!((a.tgid, a.status, a.read_ns, a.answered_ns, a.plugin_inode), (11, 502, 10, 15, 7));
        assert_eq!(KernelRead::decode(&a.encode()), a);
        let routes = Routes::default();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let req = |id: &str, w: u32| Request {
            request_id: id.into(),
            endpoint: "/js".into(),
            worker_pid: Some(w),
            ..Request::default()
        };
        // Every request of the log gets one line, the cut-off last line none.
        let lines: Vec<String> =
            (0..200).map(|i| serde_json::to_string(&req(&format!("x{i}"), 1)).unwrap()).collect();
        let text = format!(
            "{}\n{}\n{}\n{{\"cut",
            serde_json::to_string(&req("b", 12)).unwrap(),
            serde_json::to_string(&req("a", 11)).unwrap(),
            lines.join("\n")
        );
        std::fs::write(&log, text).unwrap();
        write(&dir.path().join("linked.jsonl"), &log, &ix, &routes).unwrap();
        let out: Vec<serde_json::Value> = shared::read_json_lines(&dir.path().join("linked.jsonl")).unwrap();
        assert_eq!(out.len(), 202);
        let b = out.iter().find(|l| l["request_id"] == "b").unwrap();
        assert_eq!(
            (b["worker_kernel"].as_u64(), b["answered_ns"].as_u64(), b["status"].as_u64()),
            (Some(12), Some(35), Some(200))
        );
        let a = out.iter().find(|l| l["request_id"] == "a").unwrap();
        assert_eq!((a["worker_kernel"].as_u64(), a["closed_ns"].as_u64()), (Some(11), None));
        assert!(
            out.iter()
                .filter(|l| l["request_id"].as_str().unwrap().starts_with('x'))
                .all(|l| l["worker_kernel"].is_null())
        );
    }
}
