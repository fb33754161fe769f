//! End-to-end: runs the `loadtest` binary for about 2 s against a tiny loopback server that
//! answers like reflection behind the stand-in gateway (with `x-pythonplugin` echoed on /python,
//! without `x-jsplugin` on /js), then checks the request log against goose's tables and the
//! summary line. Also checks that SIGINT and SIGTERM stop the run with the log flushed.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The worker pid our fake gateway claims in `x-standin-worker`.
const WORKER: u64 = 777;

/// Starts the fake gateway+reflection on an ephemeral loopback port; returns its base URL.
fn start_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    url
}

/// Answers keep-alive HTTP/1.1 GETs until the client closes.
fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = serde_json::Map::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), json!(value.trim()));
            }
        }
        // The "plugin" works on /python only.
        if path == "/python" {
            headers.insert("x-pythonplugin".into(), json!("foobar"));
        }
        let body = json!({"method": "GET", "path": path, "headers": headers}).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-standin-worker: {WORKER}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("loadtest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn loadtest(host: &str, log: &PathBuf, stdout: &PathBuf, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args([
        "--host",
        host,
        "-u",
        "2",
        "-r",
        "4",
        "--no-reset-metrics",
        "--no-task-metrics",
        "--no-telnet",
    ])
    .arg("--request-log-out")
    .arg(log)
    .args(extra)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(stdout).unwrap())
    .stderr(Stdio::inherit());
    cmd
}

fn read_log(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

fn summary(stdout: &str) -> Value {
    let line =
        stdout.lines().rev().find_map(|l| l.strip_prefix("loadtest-summary ")).expect("no summary line");
    serde_json::from_str(line).unwrap()
}

/// Failures per endpoint and reason, counted from the log.
fn log_failures(lines: &[Value]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for l in lines {
        if l["outcome"] == "failed" {
            let tags = out.entry(l["endpoint"].as_str().unwrap().to_string()).or_default();
            *tags.entry(l["reason"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    out
}

/// `(requests, fails)` for `GET <path>` from goose's per-request table.
fn goose_counts(stdout: &str, path: &str) -> (u64, u64) {
    let table = stdout.split("=== PER REQUEST METRICS ===").nth(1).expect("no goose request table");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("GET {path} ")) && l.contains('('))
        .unwrap_or_else(|| panic!("no row for {path}"));
    let cols: Vec<&str> = row.split('|').collect();
    let num = |s: &str| s.split_whitespace().next().unwrap().replace(',', "").parse::<u64>().unwrap();
    (num(cols[1]), num(cols[2]))
}

#[test]
fn logs_every_request_and_matches_goose() {
    let host = start_server();
    let dir = scratch("run");
    let (log, out) = (dir.join("requests.jsonl"), dir.join("stdout.txt"));
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let status = loadtest(&host, &log, &out, &["-t", "2s", "--endpoints", "python,js", "--report-file"])
        .arg(dir.join("report.json"))
        .status()
        .unwrap();
    let ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(status.success(), "loadtest exited with {status}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    let lines = read_log(&log);
    assert!(lines.len() > 20, "only {} requests logged", lines.len());

    let mut ids = HashSet::new();
    for l in &lines {
        let id = l["request_id"].as_str().unwrap();
        assert!(ids.insert(id.to_string()), "duplicate request id {id}");
        assert_eq!(l["echoed_request_id"], l["request_id"], "{l}");
        assert_eq!(l["worker_pid"], WORKER, "{l}");
        assert_eq!(l["status"], 200, "{l}");
        let (start, end) = (l["start_unix_ns"].as_u64().unwrap(), l["end_unix_ns"].as_u64().unwrap());
        assert!(started <= start && start <= end && end <= ended, "{l}");
        assert!(l["start_mono_ns"].as_u64().unwrap() <= l["end_mono_ns"].as_u64().unwrap());
        match l["endpoint"].as_str().unwrap() {
            "/python" => assert!(l["outcome"] == "ok" && l["reason"].is_null(), "{l}"),
            "/js" => assert!(l["outcome"] == "failed" && l["reason"] == "plugin header missing", "{l}"),
            other => panic!("unexpected endpoint {other}"),
        }
    }

    // One user per scenario: both endpoints were loaded.
    let failures = log_failures(&lines);
    let js_failed = failures["/js"]["plugin header missing"];
    assert!(js_failed > 0 && !failures.contains_key("/python"));

    // The summary line counts exactly what the log holds.
    let s = summary(&stdout);
    assert_eq!(s["requests"], lines.len() as u64);
    assert_eq!(s["failures"]["/js"], json!({"plugin header missing": js_failed}));
    assert_eq!(s["failures"]["/python"], json!({}));
    assert_eq!(s["stopped_early"], false);

    // And so do goose's own tables (metrics are not reset, so they cover the whole run).
    let by_endpoint = |path: &str| lines.iter().filter(|l| l["endpoint"] == path).count() as u64;
    assert_eq!(goose_counts(&stdout, "/js"), (by_endpoint("/js"), js_failed));
    assert_eq!(goose_counts(&stdout, "/python"), (by_endpoint("/python"), 0));
    assert_eq!(s["goose"]["/js"], json!({"requests": by_endpoint("/js"), "failures": js_failed}));
    assert_eq!(s["goose"]["/python"], json!({"requests": by_endpoint("/python"), "failures": 0}));
    assert!(stdout.contains("GET /js: plugin header missing"), "goose's error table lacks the tag");
    assert!(dir.join("report.json").exists(), "goose's report file is missing");
    // Kept on failure for a look; removed once everything passed.
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a long run, sends `signal` after ~2 s, and checks the graceful stop.
fn stops_on(signal: libc::c_int, name: &str) {
    let host = start_server();
    let dir = scratch(name);
    let (log, out) = (dir.join("requests.jsonl"), dir.join("stdout.txt"));
    let mut child = loadtest(&host, &log, &out, &["-t", "60s", "--endpoints", "python"]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadtest did not stop within 20 s of {name}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "loadtest exited with {status} after {name}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    let lines = read_log(&log);
    let s = summary(&stdout);
    assert!(!lines.is_empty());
    assert_eq!(s["requests"], lines.len() as u64);
    assert_eq!(s["stopped_early"], true);
    assert_eq!(goose_counts(&stdout, "/python"), (lines.len() as u64, 0));
    assert_eq!(s["goose"]["/python"]["requests"], lines.len() as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_stops_gracefully() {
    stops_on(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_stops_gracefully() {
    stops_on(libc::SIGINT, "sigint");
}
