//! `requests-linked.jsonl`: every request of the load test beside what the kernel saw of it,
//! one line each: which worker read it (by the request id on its socket), which worker the
//! gateway's header named, when the worker read and answered it, the status it wrote, and the
//! plugin socket its handler called.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Request;
use super::correlate::KernelRequests;
use super::routes::Routes;

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

/// The lines, in the load test's order.
pub fn lines<'a>(
    requests: &'a [Request],
    kernel: &KernelRequests<'a>,
    routes: &'a Routes,
) -> Vec<LinkedLine<'a>> {
    requests
        .iter()
        .map(|r| {
            let k = kernel.get(r.request_id.as_str());
            LinkedLine {
                request_id: &r.request_id,
                endpoint: &r.endpoint,
                worker_kernel: k.map(|k| k.task.tgid),
                worker_header: r.worker_pid,
                read_ns: k.map(|k| k.task.ts_ns),
                answered_ns: k.and_then(|k| k.response_ns),
                status: k.and_then(|k| k.status),
                closed_ns: k.and_then(|k| k.closed_ns),
                plugin_socket: k.and_then(|k| routes.socket_path(k.plugin_inode?)),
            }
        })
        .collect()
}

/// Writes the lines to `path`.
pub fn write(path: &Path, lines: &[LinkedLine<'_>]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for l in lines {
        serde_json::to_writer(&mut w, l)?;
        w.write_all(b"\n")?;
    }
    Ok(w.flush()?)
}
