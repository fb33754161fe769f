//! The run's `summary.md`: what the load test saw per endpoint, whether goose's own counts agree
//! with the request log, and the reload instant. The analysis of the trace, linking each failure
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

/// The failures per endpoint and reason that the load test printed in its summary line.
pub fn goose_failures(loadtest_log: &str) -> Option<BTreeMap<String, BTreeMap<String, u64>>> {
    let line = loadtest_log.lines().rev().find_map(|l| l.strip_prefix("loadtest-summary "))?;
    let v: Value = serde_json::from_str(line).ok()?;
    let mut out = BTreeMap::new();
    for (endpoint, reasons) in v["failures"].as_object()? {
        let reasons =
            reasons.as_object()?.iter().filter_map(|(r, n)| Some((r.clone(), n.as_u64()?))).collect();
        out.insert(endpoint.clone(), reasons);
    }
    Some(out)
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
    if let Some(goose) = goose_failures(&read(dir, "loadtest.log")) {
        let ours: BTreeMap<String, BTreeMap<String, u64>> =
            counts.iter().map(|(e, (_, r))| (e.clone(), r.clone())).filter(|(_, r)| !r.is_empty()).collect();
        let goose: BTreeMap<_, _> = goose.into_iter().filter(|(_, r)| !r.is_empty()).collect();
        let verdict = if ours == goose { "equal" } else { "DIFFERENT" };
        let _ = writeln!(s, "\nFailure counts in goose's metrics and in the request log: {verdict}.");
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
    fn reads_the_load_tests_summary_line() {
        let log = "goose tables...\nloadtest-summary {\"requests\":3,\"failures\":{\"/js\":{\"plugin header missing\":1}}}\n";
        let g = goose_failures(log).unwrap();
        assert_eq!(g["/js"]["plugin header missing"], 1);
        assert!(goose_failures("nothing").is_none());
    }
}
