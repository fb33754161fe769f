//! Our per-request log: one JSON line per request, failures of every kind included (goose's own
//! request log still marks a `set_failure` request as a success). Users hand records to a writer
//! thread over a channel, so a request never waits on the disk.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shared::clock;
use shared::requests::{Failure, Outcome, RequestLine};

use crate::endpoint::Endpoint;
use crate::summary::Summary;

/// How stale the file may get: bounds what an abrupt exit (a second Ctrl-C) loses.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Wall clock (CLOCK_REALTIME) just before the request was sent, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Wall clock once the body was read (or the request failed), ns since the Unix epoch.
    pub end_unix_ns: u64,
    /// CLOCK_MONOTONIC at the start, comparable with eBPF's `bpf_ktime_get_ns`.
    pub start_mono_ns: u64,
    /// CLOCK_MONOTONIC at the end.
    pub end_mono_ns: u64,
    /// The endpoint path, e.g. `/js`.
    pub endpoint: &'static str,
    /// The `x-request-id` we sent.
    pub request_id: String,
    /// goose's user index (0-based).
    pub user: usize,
    /// The HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// Why it failed, or `None` for a request that passed.
    pub failure: Option<Failure>,
    /// The `x-standin-worker` response header: the gateway worker that answered.
    pub worker_pid: Option<u32>,
    /// The `x-request-id` the upstream echoed back.
    pub echoed_request_id: Option<String>,
}

/// Appends `record` as one JSON line (with its newline) to `out`, in the shape the readers of
/// `requests.jsonl` share ([`RequestLine`]).
pub fn format_line(record: &Record, out: &mut Vec<u8>) {
    let line = RequestLine {
        start_unix_ns: record.start_unix_ns,
        end_unix_ns: record.end_unix_ns,
        start_mono_ns: record.start_mono_ns,
        end_mono_ns: record.end_mono_ns,
        endpoint: record.endpoint.to_string(),
        request_id: record.request_id.clone(),
        user: record.user,
        status: record.status,
        outcome: if record.failure.is_none() { Outcome::Ok } else { Outcome::Failed },
        reason: record.failure.clone(),
        worker_pid: record.worker_pid,
        echoed_request_id: record.echoed_request_id.clone(),
    };
    serde_json::to_writer(&mut *out, &line).expect("writing JSON to a Vec cannot fail");
    out.push(b'\n');
}

/// Both clocks read together, in ns.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// CLOCK_REALTIME since the Unix epoch.
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC.
    pub mono_ns: u64,
}

impl Stamp {
    /// Reads both clocks now.
    pub fn now() -> Self {
        Stamp { unix_ns: clock::realtime_ns(), mono_ns: clock::monotonic_ns() }
    }
}

enum Msg {
    Record(Record),
    Stop,
}

/// The sending side, cloned into every transaction.
#[derive(Clone)]
pub struct RecordSender(mpsc::Sender<Msg>);

impl RecordSender {
    /// Queues a record; after the writer has stopped there is nowhere to put it, so it is dropped.
    pub fn send(&self, record: Record) {
        let _ = self.0.send(Msg::Record(record));
    }
}

/// The writer thread and its channel.
pub struct RequestLog {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<(Summary, io::Result<()>)>,
}

impl RequestLog {
    /// Creates the file (if a path is given) and starts the writer; it counts records either way.
    pub fn start(path: Option<&Path>, endpoints: &[Endpoint]) -> io::Result<Self> {
        let file = match path {
            Some(p) => Some(BufWriter::with_capacity(1 << 16, File::create(p)?)),
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let summary = Summary::new(endpoints);
        let thread = std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || write_loop(rx, file, summary))?;
        Ok(RequestLog { tx, thread })
    }

    /// A handle for the transactions.
    pub fn sender(&self) -> RecordSender {
        RecordSender(self.tx.clone())
    }

    /// Stops the writer after every record already queued, flushes, and returns the counts and
    /// the first write error, if any.
    pub fn finish(self) -> (Summary, io::Result<()>) {
        // Stop rather than hang up: goose may still hold senders inside its scenarios.
        let _ = self.tx.send(Msg::Stop);
        self.thread
            .join()
            .unwrap_or_else(|_| (Summary::default(), Err(io::Error::other("log writer panicked"))))
    }
}

fn write_loop(
    rx: mpsc::Receiver<Msg>,
    mut file: Option<BufWriter<File>>,
    mut summary: Summary,
) -> (Summary, io::Result<()>) {
    let mut result = Ok(());
    let mut buf = Vec::with_capacity(512);
    let mut last_flush = Instant::now();
    loop {
        let msg = rx.recv_timeout(FLUSH_EVERY);
        if let Ok(Msg::Record(record)) = &msg {
            summary.add(record);
            if let Some(w) = file.as_mut() {
                buf.clear();
                format_line(record, &mut buf);
                if let Err(e) = w.write_all(&buf) {
                    // Keep counting so the summary still matches goose's tables; report it at the end.
                    result = Err(e);
                    file = None;
                }
            }
        }
        let stop = matches!(msg, Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected));
        if stop || last_flush.elapsed() >= FLUSH_EVERY {
            if let Some(Err(e)) = file.as_mut().map(Write::flush) {
                result = Err(e);
                file = None;
            }
            last_flush = Instant::now();
        }
        if stop {
            return (summary, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(failure: Option<&str>, status: Option<u16>) -> Record {
        Record {
            start_unix_ns: 1_764_000_000_000_000_001,
            end_unix_ns: 1_764_000_000_002_000_000,
            start_mono_ns: 5,
            end_mono_ns: 2_000_004,
            endpoint: "/js",
            request_id: "ab12-3-7".into(),
            user: 3,
            status,
            failure: failure.map(Failure::parse),
            worker_pid: status.map(|_| 4242),
            echoed_request_id: status.map(|_| "ab12-3-7".to_string()),
        }
    }

    fn line(r: &Record) -> String {
        let mut out = Vec::new();
        format_line(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ok_line() {
        assert_eq!(
            line(&record(None, Some(200))),
            concat!(
                r#"{"start_unix_ns":1764000000000000001,"end_unix_ns":1764000000002000000,"#,
                r#""start_mono_ns":5,"end_mono_ns":2000004,"endpoint":"/js","request_id":"ab12-3-7","user":3,"#,
                r#""status":200,"outcome":"ok","reason":null,"worker_pid":4242,"echoed_request_id":"ab12-3-7"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn failed_lines() {
        let l = line(&record(Some("plugin header missing"), Some(200)));
        assert!(l.contains(r#""status":200,"outcome":"failed","reason":"plugin header missing""#), "{l}");
        let l = line(&record(Some("operation timed out"), None));
        assert!(l.contains(
            r#""status":null,"outcome":"failed","reason":"operation timed out","worker_pid":null"#
        ));
        assert!(l.ends_with("\"echoed_request_id\":null}\n"));
    }

    #[test]
    fn writer_writes_every_record_and_counts() {
        let dir = std::env::temp_dir().join(format!("loadtest-reqlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let log = RequestLog::start(Some(&path), &[Endpoint::JS]).unwrap();
        let tx = log.sender();
        for i in 0..1000 {
            tx.send(record(if i % 10 == 0 { Some("plugin header missing") } else { None }, Some(200)));
        }
        let (summary, result) = log.finish();
        result.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(summary.requests, 1000);
        assert_eq!(summary.failures["/js"]["plugin header missing"], 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clocks_move_forward() {
        let a = Stamp::now();
        let b = Stamp::now();
        assert!(a.unix_ns > 1_600_000_000_000_000_000 && b.mono_ns >= a.mono_ns);
    }
}
