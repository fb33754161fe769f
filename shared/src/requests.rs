//! `requests.jsonl`: one line per request of the load test, failures of every kind included.
//! loadtest writes it; the analysis, xtask's summary and the tests read it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How a request ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 200 with the plugin's header and the upstream's echo.
    #[default]
    Ok,
    /// Anything else; `reason` says what.
    Failed,
}

/// Why a request failed, as the load test tags it. Written as the tag's text, which is also
/// the key of goose's error table, so it never carries a URL, a port or a request id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The upstream's echo lacked the plugin's header: the plugin was skipped.
    HeaderMissing,
    /// The body was not the upstream's echo.
    NotReflection,
    /// The client's timeout ran out.
    TimedOut,
    /// The gateway answered with another status than 200.
    Status(u16),
    /// The connect failed (`connect error: <cause>`).
    Connect(String),
    /// Another transport error, by its innermost cause (e.g. `connection closed before message
    /// completed`).
    Transport(String),
}

impl Failure {
    const HEADER_MISSING: &'static str = "plugin header missing";
    const NOT_REFLECTION: &'static str = "response body is not reflection JSON";
    const TIMED_OUT: &'static str = "operation timed out";
    const STATUS: &'static str = "status ";
    const CONNECT: &'static str = "connect error: ";

    /// Reads a tag back; any text is some failure.
    pub fn parse(tag: &str) -> Self {
        match tag {
            Self::HEADER_MISSING => Failure::HeaderMissing,
            Self::NOT_REFLECTION => Failure::NotReflection,
            Self::TIMED_OUT => Failure::TimedOut,
            _ => {
                if let Some(code) = tag.strip_prefix(Self::STATUS).and_then(|c| c.parse().ok()) {
                    Failure::Status(code)
                } else if let Some(cause) = tag.strip_prefix(Self::CONNECT) {
                    Failure::Connect(cause.to_string())
                } else {
                    Failure::Transport(tag.to_string())
                }
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::HeaderMissing => f.write_str(Self::HEADER_MISSING),
            Failure::NotReflection => f.write_str(Self::NOT_REFLECTION),
            Failure::TimedOut => f.write_str(Self::TIMED_OUT),
            Failure::Status(code) => write!(f, "{}{code}", Self::STATUS),
            Failure::Connect(cause) => write!(f, "{}{cause}", Self::CONNECT),
            Failure::Transport(cause) => f.write_str(cause),
        }
    }
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Failure::parse(&String::deserialize(d)?))
    }
}

/// One line of `requests.jsonl`; field order is the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// Wall clock just before the request was sent, ns since the Unix epoch.
    #[serde(default)]
    pub start_unix_ns: u64,
    /// Wall clock once the body was read (or the request failed).
    #[serde(default)]
    pub end_unix_ns: u64,
    /// CLOCK_MONOTONIC at the start, comparable with the probe's timestamps.
    pub start_mono_ns: u64,
    /// CLOCK_MONOTONIC at the end.
    pub end_mono_ns: u64,
    /// Endpoint path, e.g. `/js`.
    pub endpoint: String,
    /// The `x-request-id` sent.
    pub request_id: String,
    /// goose's user index (0-based).
    #[serde(default)]
    pub user: usize,
    /// HTTP status, when a response arrived.
    #[serde(default)]
    pub status: Option<u16>,
    /// Passed or failed.
    pub outcome: Outcome,
    /// Why it failed, for a failed request.
    #[serde(default)]
    pub reason: Option<Failure>,
    /// The `x-standin-worker` response header (a test aid of the stand-in; real Kong sends none).
    #[serde(default)]
    pub worker_pid: Option<u32>,
    /// The `x-request-id` the upstream echoed back.
    #[serde(default)]
    pub echoed_request_id: Option<String>,
}

impl RequestLine {
    /// True when it failed.
    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Failed
    }
}

/// Requests and failures (by reason) of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointLoad {
    /// Requests sent.
    pub requests: u64,
    /// Failures by reason (the tag's text).
    pub failures: BTreeMap<String, u64>,
}

impl EndpointLoad {
    /// Failures in all.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// The per-endpoint counts, and the failed requests themselves: what the analysis keeps of a log
/// of any length (successes are only counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogSummary {
    /// Requests in the log.
    pub requests: u64,
    /// Requests and failures per endpoint.
    pub endpoints: BTreeMap<String, EndpointLoad>,
    /// Every failed request, in the log's order, without the echoed id (nothing reads it back,
    /// and a long run keeps hundreds of thousands of failures).
    pub failed: Vec<RequestLine>,
    /// CLOCK_MONOTONIC of the last request's start: where the load ended.
    pub last_start_mono_ns: u64,
}

impl LogSummary {
    /// Counts one request, and keeps it when it failed.
    pub fn add(&mut self, r: RequestLine) {
        self.requests += 1;
        self.last_start_mono_ns = self.last_start_mono_ns.max(r.start_mono_ns);
        let e = self.endpoints.entry(r.endpoint.clone()).or_default();
        e.requests += 1;
        if r.failed() {
            let tag = r.reason.as_ref().map_or_else(|| "unknown".into(), Failure::to_string);
            *e.failures.entry(tag).or_default() += 1;
            self.failed.push(RequestLine { echoed_request_id: None, ..r });
        }
    }

    /// Reads `requests.jsonl` one line at a time (empty when absent).
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        let mut s = LogSummary::default();
        crate::for_each_json_line(path, |r| s.add(r))?;
        s.failed.shrink_to_fit();
        Ok(s)
    }

    /// The per-endpoint table.
    pub fn table(&self) -> String {
        table_of(&self.endpoints)
    }
}

/// The Markdown table of the per-endpoint counts, as the report and the run's summary print it.
fn table_of(endpoints: &BTreeMap<String, EndpointLoad>) -> String {
    let mut s = String::from("| endpoint | requests | failed | failures by reason |\n|---|---:|---:|---|\n");
    for (endpoint, load) in endpoints {
        let why: Vec<String> = load.failures.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let _ = writeln!(s, "| {endpoint} | {} | {} | {} |", load.requests, load.failed(), why.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line exactly as loadtest writes it.
    const LINE: &str = r#"{"start_unix_ns":1,"end_unix_ns":2,"start_mono_ns":6000,"end_mono_ns":7000,"endpoint":"/js","request_id":"r-1","user":0,"status":200,"outcome":"failed","reason":"plugin header missing","worker_pid":42,"echoed_request_id":"r-1"}"#;

    #[test]
    fn reads_and_writes_the_same_line() {
        let r: RequestLine = serde_json::from_str(LINE).unwrap();
        assert!(r.failed() && r.worker_pid == Some(42));
        assert_eq!(serde_json::to_string(&r).unwrap(), LINE);
    }

    #[test]
    fn failures_read_back_as_they_were_written() {
        for f in [
            Failure::HeaderMissing,
            Failure::NotReflection,
            Failure::TimedOut,
            Failure::Status(502),
            Failure::Connect("Connection refused (os error 111)".into()),
            Failure::Transport("connection closed before message completed".into()),
        ] {
            assert_eq!(Failure::parse(&f.to_string()), f);
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), f);
        }
        assert_eq!(Failure::parse("status x"), Failure::Transport("status x".into()));
    }

    #[test]
    fn counts_per_endpoint() {
        let r: RequestLine = serde_json::from_str(LINE).unwrap();
        let ok = RequestLine { outcome: Outcome::Ok, reason: None, ..r.clone() };
        let mut log = LogSummary::default();
        for line in [r.clone(), ok, RequestLine { endpoint: "/go".into(), ..r }] {
            log.add(line);
        }
        assert_eq!(
            log.table().lines().skip(2).collect::<Vec<_>>(),
            ["| /go | 1 | 1 | plugin header missing: 1 |", "| /js | 2 | 1 | plugin header missing: 1 |"]
        );
        assert_eq!((log.requests, log.failed.len()), (3, 2), "only the failures are kept");
    }
}
