//! The run's `summary.md`: what the load test saw per endpoint, whether goose's own report
//! (`goose-report.json`, goose's metrics) agrees with our request log, and the reload instant. The analysis of the trace, linking each failure
//! to its cause, is `reloadscope analyze`'s `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Per endpoint: requests, and failures by reason.
pub type Counts = BTreeMap<String, (u64, BTreeMap<String, u64>)>;

/// Counts requests and failures per endpoint in the load test's request log (JSON lines).
pub fn request_counts(text: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let endpoint = v["endpoint"].as_str().unwrap_or("?").to_string();
        let entry = counts.entry(endpoint).or_default();
        entry.0 += 1;
        if v["outcome"] == "failed" {
            let reason = v["reason"].as_str().unwrap_or("unknown").to_string();
            *entry.1.entry(reason).or_default() += 1;
        }
    }
    counts
}

/// One row of goose's own per-request metrics in `goose-report.json`.
#[derive(serde::Deserialize)]
struct GooseRow {
    name: String,
    number_of_requests: u64,
    number_of_failures: u64,
}

/// goose's own report, the part compared with the request log.
#[derive(serde::Deserialize)]
struct GooseReport {
    raw_request_metrics: Vec<GooseRow>,
}

/// Requests and failures per endpoint as goose itself counted them (`goose-report.json`),
/// without its "Aggregated" row.
pub fn goose_counts(report: &str) -> Option<BTreeMap<String, (u64, u64)>> {
    let r: GooseReport = serde_json::from_str(report).ok()?;
    Some(
        r.raw_request_metrics
            .into_iter()
            .filter(|row| row.name.starts_with('/'))
            .map(|row| (row.name, (row.number_of_requests, row.number_of_failures)))
            .collect(),
    )
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn json(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&read(dir, name)).unwrap_or(Value::Null)
}

/// Renders the summary of a run directory as Markdown.
pub fn render(dir: &Path) -> String {
    let mut s = String::from("# reloadscope run summary\n\n");
    let reload = json(dir, "reload.json");
    if reload.is_null() {
        s.push_str("No reload happened during the load.\n\n");
    } else {
        let _ = writeln!(
            s,
            "Reload at {:.2} s into the load ({}).\n",
            reload["offset_ms"].as_f64().unwrap_or(0.0) / 1e3,
            reload["how"].as_str().unwrap_or("?")
        );
    }

    let counts = request_counts(&read(dir, "requests.jsonl"));
    s.push_str(
        "## Load test\n\n| endpoint | requests | failed | failures by reason |\n|---|---:|---:|---|\n",
    );
    for (endpoint, (n, reasons)) in &counts {
        let failed: u64 = reasons.values().sum();
        let why: Vec<String> = reasons.iter().map(|(r, k)| format!("{r}: {k}")).collect();
        let _ = writeln!(s, "| {endpoint} | {n} | {failed} | {} |", why.join(", "));
    }
    if let Some(goose) = goose_counts(&read(dir, "goose-report.json")) {
        let ours: BTreeMap<String, (u64, u64)> =
            counts.iter().map(|(e, (n, r))| (e.clone(), (*n, r.values().sum()))).collect();
        let verdict =
            if ours == goose { "equal".to_string() } else { format!("DIFFERENT (goose {goose:?})") };
        let _ = writeln!(
            s,
            "\nRequests and failures per endpoint in goose's own report (`goose-report.json`) and in the request log: {verdict}."
        );
    }

    s.push_str("\nThe analysis (failures linked to workers, stale sockets, spins, plugin-server generations) is in `report.md`.\n");
    s.push_str("\nArtifacts: `report.md`, `report.json`, `timeline.json` (open in ui.perfetto.dev), `requests.jsonl` (every request), `goose-report.{json,html}`, `loadtest.log`, `reload.json`, `trace/` (see trace/meta.json), `standin-ground-truth.jsonl` (local stand-in only), `reloadscope.log`.\n");
    s
}

/// Writes `summary.md` into the run directory and returns its text.
pub fn write(dir: &Path) -> Result<String> {
    let text = render(dir);
    std::fs::write(dir.join("summary.md"), &text)
        .with_context(|| format!("cannot write {}/summary.md", dir.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_failures_per_endpoint() {
        let log = r#"{"endpoint":"/js","outcome":"ok"}
{"endpoint":"/js","outcome":"failed","reason":"plugin header missing"}
{"endpoint":"/python","outcome":"failed","reason":"status 502"}
not json"#;
        let c = request_counts(log);
        assert_eq!(c["/js"].0, 2);
        assert_eq!(c["/js"].1["plugin header missing"], 1);
        assert_eq!(c["/python"].1["status 502"], 1);
    }

    #[test]
    fn reads_gooses_own_report() {
        let report = r#"{"raw_request_metrics":[
            {"method":"GET","name":"/js","number_of_requests":19567,"number_of_failures":4734},
            {"method":"","name":"Aggregated","number_of_requests":19567,"number_of_failures":4734}]}"#;
        let g = goose_counts(report).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g["/js"], (19567, 4734));
        assert!(goose_counts("nothing").is_none());
    }

    #[test]
    fn a_disagreement_with_goose_is_said() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("requests.jsonl"),
            r#"{"endpoint":"/js","outcome":"failed","reason":"x"}"#,
        )
        .unwrap();
        let goose = |failures: u64| {
            format!(
                r#"{{"raw_request_metrics":[{{"name":"/js","number_of_requests":1,"number_of_failures":{failures}}}]}}"#
            )
        };
        std::fs::write(dir.path().join("goose-report.json"), goose(1)).unwrap();
        assert!(render(dir.path()).contains("in the request log: equal."));
        std::fs::write(dir.path().join("goose-report.json"), goose(0)).unwrap();
        assert!(render(dir.path()).contains("in the request log: DIFFERENT"));
    }
}
