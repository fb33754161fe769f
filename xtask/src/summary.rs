//! The run's `summary.md`: what the load test saw per endpoint, the reload instant, and what the
//! probe recorded (processes and generations, unix-socket failures, the busiest epoll threads,
//! drops). A first look until the analysis issue links failures to their causes.

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

    let meta = json(dir, "trace/meta.json");
    s.push_str("\n## Probe\n\n");
    let _ = writeln!(
        s,
        "{} events over {:.2} s, {} dropped, {} undecodable; kernel {}.",
        meta["events"],
        (meta["ended_ns"].as_f64().unwrap_or(0.0) - meta["started_ns"].as_f64().unwrap_or(0.0)) / 1e9,
        meta["drops"].as_object().map_or(0, |d| d.values().filter_map(Value::as_u64).sum::<u64>()),
        meta["decode_errors"],
        meta["kernel"].as_str().unwrap_or("?")
    );

    let procs = json(dir, "trace/processes.json");
    let servers: Vec<&Value> = procs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["server_generations"].as_array().is_some_and(|g| !g.is_empty()))
        .collect();
    if !servers.is_empty() {
        s.push_str("\n### Plugin-server generations (by bind of their socket path)\n\n| path | generation | pid | parent | end |\n|---|---:|---:|---:|---|\n");
        for p in servers {
            for g in p["server_generations"].as_array().into_iter().flatten() {
                let end = match (p["exit_signal"].as_str(), p["exit_status"].as_i64()) {
                    (Some(sig), _) => {
                        let by = p["signals"].as_array().and_then(|v| v.iter().find(|r| r["sig"] == sig));
                        by.map_or(sig.to_string(), |r| {
                            format!("{sig} from {} ({})", r["from"], r["from_comm"].as_str().unwrap_or(""))
                        })
                    }
                    (None, Some(code)) => format!("exit {code}"),
                    _ => "still running".into(),
                };
                let orphan = if p["orphaned"] == true { ", orphaned" } else { "" };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {end}{orphan} |",
                    g[0].as_str().unwrap_or("?"),
                    g[1],
                    p["pid"],
                    p["parent"]
                );
            }
        }
    }

    let mut connect_errors: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut io_errors: BTreeMap<(String, i64, u64), u64> = BTreeMap::new();
    for line in read(dir, "trace/events.jsonl").lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        match v["type"].as_str() {
            Some("unix_sock") if v["op"] == "connect" && v["ret"].as_i64().unwrap_or(0) < 0 => {
                *connect_errors
                    .entry((v["path"].as_str().unwrap_or("").into(), v["ret"].as_i64().unwrap_or(0)))
                    .or_default() += 1;
            }
            Some("unix_io") => {
                let key = (
                    v["op"].as_str().unwrap_or("").into(),
                    v["ret"].as_i64().unwrap_or(0),
                    v["peer_pid"].as_u64().unwrap_or(0),
                );
                *io_errors.entry(key).or_default() += 1;
            }
            _ => {}
        }
    }
    if !connect_errors.is_empty() {
        s.push_str("\n### Failed connects to unix sockets\n\n| path | result | count |\n|---|---|---:|\n");
        for ((path, ret), n) in &connect_errors {
            let _ = writeln!(s, "| {path} | {} | {n} |", errno_name(*ret));
        }
    }
    if !io_errors.is_empty() {
        s.push_str("\n### Unix sends and receives that failed or hit a closed peer\n\n| op | result | peer pid | count |\n|---|---|---:|---:|\n");
        for ((op, ret, peer), n) in &io_errors {
            let _ = writeln!(s, "| {op} | {} | {peer} | {n} |", errno_name(*ret));
        }
    }
    let table = read(dir, "trace/summary.txt");
    if !table.is_empty() {
        s.push_str("\n### Busiest epoll threads\n\n```\n");
        for line in table.lines().take(9) {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str("```\n");
    }
    s.push_str("\nArtifacts: `requests.jsonl` (every request), `goose-report.{json,html}`, `loadtest.log`, `reload.json`, `trace/` (see trace/meta.json), `standin-ground-truth.jsonl` (local stand-in only), `reloadscope.log`.\n");
    s
}

/// Writes `summary.md` into the run directory and returns its text.
pub fn write(dir: &Path) -> Result<String> {
    let text = render(dir);
    std::fs::write(dir.join("summary.md"), &text)
        .with_context(|| format!("cannot write {}/summary.md", dir.display()))?;
    Ok(text)
}

/// `-111` -> `ECONNREFUSED`, `0` -> `0 (peer closed)`.
fn errno_name(ret: i64) -> String {
    match -ret {
        0 => "0 (peer closed)".into(),
        2 => "ENOENT".into(),
        11 => "EAGAIN".into(),
        32 => "EPIPE".into(),
        104 => "ECONNRESET".into(),
        111 => "ECONNREFUSED".into(),
        n => format!("errno {n}"),
    }
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
        assert_eq!(errno_name(-111), "ECONNREFUSED");
    }
}
