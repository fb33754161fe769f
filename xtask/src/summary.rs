//! The run's `summary.md`: what the load test saw per endpoint, whether goose's own report
//! (`goose-report.json`, goose's metrics) agrees with our request log, and the reload instant. The analysis of the trace, linking each failure
//! to its cause, is `reloadscope analyze`'s `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use shared::requests;

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

/// Renders the summary of a run directory as Markdown.
pub fn render(dir: &Path) -> String {
    let mut s = String::from("# reloadscope run summary\n\n");
    let reloads = shared::reload::read_all(&dir.join("reload.json"));
    match reloads.as_slice() {
        [] => s.push_str("No reload happened during the load.\n\n"),
        [r] => {
            let _ = writeln!(s, "Reload at {:.2} s into the load ({}).\n", r.offset_ms as f64 / 1e3, r.how);
        }
        all => {
            let at: Vec<String> = all.iter().map(|r| format!("{:.2} s", r.offset_ms as f64 / 1e3)).collect();
            let _ =
                writeln!(s, "{} reloads at {} into the load ({}).\n", all.len(), at.join(", "), all[0].how);
        }
    }

    // One line at a time: a long run's log does not fit in memory comfortably.
    let log = requests::LogSummary::read(&dir.join("requests.jsonl")).unwrap_or_default();
    s.push_str("## Load test\n\n");
    s.push_str(&log.table());
    if let Some(goose) = goose_counts(&read(dir, "goose-report.json")) {
        let ours: BTreeMap<String, (u64, u64)> =
            log.endpoints.iter().map(|(e, load)| (e.clone(), (load.requests, load.failed()))).collect();
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
            r#"{"start_mono_ns":1,"end_mono_ns":2,"endpoint":"/js","request_id":"r","outcome":"failed","reason":"x"}"#,
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
