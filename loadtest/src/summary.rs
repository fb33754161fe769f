//! The end-of-run count of requests and failures, built from exactly the records that went to
//! the request log, next to goose's own per-request counts, printed as one
//! `loadtest-summary {json}` line for a driver to check.

use std::collections::BTreeMap;

use goose::metrics::GooseMetrics;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::reqlog::Record;

/// The prefix of the machine-readable summary line.
pub const PREFIX: &str = "loadtest-summary";

/// Requests and failures counted per endpoint path and failure tag.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// All requests logged.
    pub requests: u64,
    /// Requests per endpoint path.
    pub requests_by_endpoint: BTreeMap<&'static str, u64>,
    /// Failures per endpoint path, then per failure tag.
    pub failures: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// goose's own counts per request path (what its PER REQUEST table shows; after a metrics
    /// reset, unless `--no-reset-metrics`, they cover only the time after all users started).
    pub goose: BTreeMap<String, GooseCount>,
    /// Whether the run was cut short (SIGINT, SIGTERM or a goose --threshold) instead of running out.
    pub stopped_early: bool,
}

/// One row of goose's per-request table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct GooseCount {
    /// `# reqs`.
    pub requests: u64,
    /// `# fails`.
    pub failures: u64,
}

impl Summary {
    /// An empty summary that lists every loaded endpoint, so a zero is explicit.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let mut summary = Summary::default();
        for e in endpoints {
            summary.requests_by_endpoint.insert(e.path(), 0);
            summary.failures.insert(e.path(), BTreeMap::new());
        }
        summary
    }

    /// Counts one finished request.
    pub fn add(&mut self, record: &Record) {
        self.requests += 1;
        *self.requests_by_endpoint.entry(record.endpoint).or_default() += 1;
        if let Some(reason) = &record.failure {
            *self.failures.entry(record.endpoint).or_default().entry(reason.to_string()).or_default() += 1;
        }
    }

    /// Copies goose's per-request counts from the metrics `execute()` returned.
    pub fn add_goose(&mut self, metrics: &GooseMetrics) {
        for request in metrics.requests.values() {
            let row = self.goose.entry(request.path.clone()).or_default();
            row.requests += (request.success_count + request.fail_count) as u64;
            row.failures += request.fail_count as u64;
        }
    }

    /// The `loadtest-summary {...}` line.
    pub fn line(&self) -> String {
        format!("{PREFIX} {}", serde_json::to_string(self).expect("a map of strings and numbers serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(endpoint: &'static str, failure: Option<&str>) -> Record {
        Record {
            start_unix_ns: 1,
            end_unix_ns: 2,
            start_mono_ns: 1,
            end_mono_ns: 2,
            endpoint,
            request_id: "r".into(),
            user: 0,
            status: Some(200),
            failure: failure.map(shared::requests::Failure::parse),
            worker_pid: None,
            echoed_request_id: None,
        }
    }

    #[test]
    fn counts_per_endpoint_and_tag() {
        let mut s = Summary::new(&[Endpoint::PYTHON, Endpoint::JS]);
        s.add(&record("/js", Some("plugin header missing")));
        s.add(&record("/js", Some("plugin header missing")));
        s.add(&record("/js", Some("status 502")));
        s.add(&record("/python", None));
        assert_eq!(
            s.line(),
            r#"loadtest-summary {"requests":4,"requests_by_endpoint":{"/js":3,"/python":1},"failures":{"/js":{"plugin header missing":2,"status 502":1},"/python":{}},"goose":{},"stopped_early":false}"#
        );
    }
}
