//! Golden tests of the report: one hand-built reload, rendered to `report.md`, `report.json` and
//! `timeline.json`, compared byte for byte with the files in `probe-user/tests/golden/report/`.
//!
//! After a deliberate change of the report, write the files anew with
//! `RELOADSCOPE_BLESS=1 cargo test -p probe-user golden` and review the diff.

use std::path::{Path, PathBuf};

use super::correlate::LinkClass;
use super::fit::CauseKind;
use super::testkit::*;
use super::*;
use crate::event::Event;
use crate::model::{ProcInfo, processes};
use shared::requests::Outcome;

const JS: &str = "/p/jsplugin.socket";
const PY: &str = "/p/pyplugin.socket";
/// The master, its two old workers, the two new ones, the old JS and Python servers, the new JS one.
const ROOT: u32 = 1;
const OLD: [u32; 2] = [10, 11];
const NEW: [u32; 2] = [12, 13];
const JS_OLD: u32 = 20;
const PY_OLD: u32 = 21;
const JS_NEW: u32 = 30;
/// Who sent the HUP.
const KONG_CLI: u32 = 5000;
const SIGHUP: u32 = 1;
const SIGQUIT: u32 = 3;
const SIGKILL: u32 = 9;
const ECONNREFUSED: i64 = -111;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report")
}

fn request(
    id: &str,
    endpoint: &str,
    span_ms: (u64, u64),
    worker: Option<u32>,
    failure: Option<&str>,
) -> Request {
    Request {
        start_mono_ns: ms(span_ms.0),
        end_mono_ns: ms(span_ms.1),
        endpoint: endpoint.into(),
        request_id: id.into(),
        status: worker.map(|_| if failure.is_some_and(|f| f.starts_with("status 4")) { 404 } else { 200 }),
        outcome: if failure.is_some() { Outcome::Failed } else { Outcome::Ok },
        reason: failure.map(shared::requests::Failure::parse),
        worker_pid: worker,
        ..Request::default()
    }
}

/// A kong-2.7 reload at 10 s: the old JS server is SIGKILLed by its old worker, a new worker's
/// connect is refused before the new server binds, the other new worker spins from 11 s to 13 s,
/// and the old workers exit.
fn reload_run(dir: &Path) -> Run {
    let known =
        [(ROOT, 0, "nginx"), (OLD[0], ROOT, "nginx"), (OLD[1], ROOT, "nginx"), (JS_OLD, OLD[0], "node")]
            .into_iter()
            .chain([(PY_OLD, OLD[0], "python3")])
            .map(|(pid, ppid, comm)| {
                (pid, ProcInfo { ppid, comm: comm.into(), argv: vec![comm.into()], ns: None })
            })
            // The worker that spins, seen from the host, is pid 7 in its own pid namespace.
            .chain([(
                NEW[1],
                ProcInfo {
                    ppid: ROOT,
                    comm: "nginx".into(),
                    argv: vec!["nginx".into()],
                    ns: Some(crate::model::Namespaces { pid_ns: 2, mnt_ns: 3, nspid: vec![NEW[1], 7] }),
                },
            )])
            .collect();
    let mut events = vec![
        sock(ms(9000), OLD[0], UnixOp::Connect, 0, 500, JS_OLD, JS),
        flow(ms(9000), ms(9500), OLD[0], 500, JS_OLD),
        sock(ms(9100), OLD[1], UnixOp::Connect, 0, 510, PY_OLD, PY),
        signal(ms(10_000), KONG_CLI, ROOT, SIGHUP),
        fork(ms(10_050), ROOT, NEW[0]),
        fork(ms(10_060), ROOT, NEW[1]),
        signal(ms(10_100), ROOT, OLD[0], SIGQUIT),
        signal(ms(10_100), ROOT, OLD[1], SIGQUIT),
        fork(ms(10_200), NEW[0], JS_NEW),
        sock(ms(10_300), NEW[0], UnixOp::Connect, ECONNREFUSED, 0, 0, JS),
        sock(ms(10_400), JS_NEW, UnixOp::Bind, 0, 600, 0, JS),
        signal(ms(10_500), OLD[0], JS_OLD, SIGKILL),
        exit(ms(10_501), JS_OLD, SIGKILL as i32, OLD[0]),
        sock(ms(10_600), NEW[1], UnixOp::Connect, 0, 601, JS_NEW, JS),
        flow(ms(10_600), ms(10_700), NEW[1], 601, JS_NEW),
        // A new worker talks to the old worker generation's Python server.
        sock(ms(10_790), NEW[1], UnixOp::Connect, 0, 511, PY_OLD, PY),
        flow(ms(10_800), ms(10_900), NEW[1], 511, PY_OLD),
        exit(ms(11_500), OLD[0], 0, ROOT),
        exit(ms(12_000), OLD[1], 0, ROOT),
    ];
    events.extend((0..20).map(|i| bucket(NEW[1], 11_000 + 100 * i, 800, 800)));
    // What the kernel read of the requests: the timeout reached the spinning worker and was
    // never answered; the closed /python request was read by old worker 10, which closed its
    // connection on its way out.
    events.push(http(ms(11_201), NEW[1], "/js", "r-7", None, None, Some(601)));
    events.push(http(ms(11_491), OLD[0], "/python", "r-6", None, Some(ms(11_499)), None));
    events.push(http(ms(9_101), OLD[0], "/js", "r-1", Some((ms(9_108), 200)), None, Some(500)));
    // The routes' plugin sockets, learned from answered requests whose handlers called them
    // (these three of each route came from outside the load test).
    for i in 0..3 {
        events.push(http_req(ms(9_200 + i), OLD[0], "/js", Some(200), Some(500)));
        events.push(http_req(ms(9_300 + i), OLD[1], "/python", Some(200), Some(510)));
    }
    // Old worker 11 closes two idle keep-alive connections on its way out; r-8, sent on one of
    // them, never reached a worker.
    events.push(close(ms(11_900), OLD[1], 2000, 3));
    events.push(close(ms(11_950), OLD[1], 2001, 1));
    events.sort_by_key(|e| e.task().ts_ns);
    let processes = processes(&events, ROOT, &known);
    let mut meta = crate::trace::Meta {
        tool: "reloadscope (golden)".into(),
        kernel: "6.18.0-golden".into(),
        started_ns: ms(8000),
        ended_ns: ms(14_000),
        events: events.len() as u64,
        root_comm: "nginx".into(),
        ..Default::default()
    };
    meta.options.root_pid = ROOT;
    meta.options.bucket_ms = 100;
    meta.options.follow_forks = true;
    let requests = vec![
        request("r-1", "/js", (9100, 9110), Some(OLD[0]), None),
        request("r-2", "/python", (9200, 9210), Some(OLD[1]), None),
        request("r-3", "/js", (10_290, 10_310), Some(NEW[0]), Some("plugin header missing")),
        request("r-4", "/go", (10_800, 10_810), Some(NEW[0]), None),
        request("r-5", "/go", (10_900, 10_905), Some(NEW[0]), Some("status 404")),
        request("r-6", "/python", (11_490, 11_501), None, Some("connection closed before message completed")),
        request("r-7", "/js", (11_200, 13_200), None, Some("operation timed out")),
        request("r-8", "/python", (11_940, 11_945), None, Some("connection closed before message completed")),
    ];
    let ground_truth = [
        serde_json::json!({"ev":"master_init","behaviour":"kong-2.7","pid":ROOT,"mono_ns":ms(8100)}),
        serde_json::json!({"ev":"server_ready","socket":JS,"server_pid":JS_NEW,"pid":NEW[0],"mono_ns":ms(10_400)}),
        serde_json::json!({"ev":"kill","signal":"SIGKILL","server_pid":JS_OLD,"pid":OLD[0],"mono_ns":ms(10_500)}),
        serde_json::json!({"ev":"claim_spin","pid":NEW[1],"mono_ns":ms(11_200)}),
    ].map(truth).to_vec();
    // requests-linked.jsonl reads the log from the run directory again.
    let lines: Vec<String> = requests.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    std::fs::write(dir.join("requests.jsonl"), lines.join("\n") + "\n").unwrap();
    let mut log = shared::requests::LogSummary::default();
    requests.into_iter().for_each(|r| log.add(r));
    Run {
        dir: dir.to_path_buf(),
        trace_dir: dir.join("trace"),
        meta,
        votes: super::routes::Votes::of(&events),
        kernel: Some(super::linked::KernelIndex::of(&events).unwrap()),
        reads: super::correlate::kernel_requests(&events),
        failed_connects: Vec::new(),
        events,
        processes,
        log,
        reloads: vec![Reload {
            monotonic_ns: ms(10_000),
            how: "SIGHUP".into(),
            offset_ms: 2000,
            ..Reload::default()
        }],
        ground_truth,
    }
}

/// A keep-alive connection `pid` closed idle after `requests` requests.
fn close(ts: u64, pid: u32, conn: u64, requests: u32) -> Event {
    Event::TcpConn(crate::event::TcpConnEvent {
        task: crate::event::Task { ts_ns: ts, cpu: 0, tgid: pid, tid: pid, comm: "nginx".into() },
        op: crate::event::ConnOp::Close,
        fd: 9,
        conn,
        local: String::new(),
        peer: String::new(),
        requests,
        unanswered: false,
        plugin_inode: None,
    })
}

/// Compares `actual` with the golden file `name`, or writes it when blessing.
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("RELOADSCOPE_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with RELOADSCOPE_BLESS=1)", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b);
        let line = first.unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (a deliberate change? bless with RELOADSCOPE_BLESS=1 and review the diff)",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

#[test]
fn golden_report_of_a_kong_2_7_reload() {
    let dir = tempfile::tempdir().unwrap();
    let run = reload_run(dir.path());
    let a = analyze(&run);
    let written = report::write(&run, &a).unwrap();
    for (name, path) in [
        ("report.md", &written.markdown),
        ("report.json", &written.json),
        ("timeline.json", &written.timeline),
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        // The timeline is one line: pretty-print it so a diff shows where it changed.
        let text = if name == "timeline.json" {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            serde_json::to_string_pretty(&v).unwrap() + "\n"
        } else {
            text
        };
        golden(name, &text);
    }
}

#[test]
fn the_golden_run_shows_each_kind_of_finding() {
    // What the golden files must keep showing, independent of their wording.
    let dir = tempfile::tempdir().unwrap();
    let a = analyze(&reload_run(dir.path()));
    assert_eq!(a.spins.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![NEW[1]]);
    assert_eq!(a.lifecycle.kills.iter().map(|k| k.target).collect::<Vec<_>>(), vec![JS_OLD]);
    assert_eq!((a.attribution.failed, a.attribution.not_reload), (5, 1));
    assert!(a.ground_truth_check.iter().all(|c| c.agrees), "{:?}", a.ground_truth_check);
    // The kernel named the workers of the timeout and the closed request; the header the rest.
    let att = &a.attribution;
    assert_eq!((att.by_kernel, att.by_header, att.by_window), (2, 2, 1));
    let kind = |id: &str| att.links.iter().find(|l| l.request_id == id).map(|l| (l.link, l.kind));
    assert_eq!(kind("r-7"), Some((LinkClass::Exact, Some(CauseKind::Spin))));
    assert_eq!(kind("r-6"), Some((LinkClass::Exact, Some(CauseKind::WorkerClosed))));
    assert_eq!(kind("r-8"), Some((LinkClass::Window, Some(CauseKind::KeepaliveClosed))));
    let js: Vec<(u32, u32)> =
        a.lifecycle.servers.iter().filter(|s| s.path == JS).map(|s| (s.pid, s.generation)).collect();
    assert_eq!(js, vec![(JS_OLD, 1), (JS_NEW, 2)]);
}

/// A long run's report still fits one GitHub comment: thousands of failures whose window
/// sentences list every spin span, hundreds of spin rows, and an attribution table longer than
/// the budget by itself.
#[test]
fn a_long_runs_report_stays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let run = reload_run(dir.path());
    let mut a = analyze(&run);
    let spin = a.spins[0].clone();
    a.spins = (0..500).map(|i| super::spin::Spin { start_s: i as f64, ..spin.clone() }).collect();
    let link = a.attribution.links.all()[0].clone();
    let long = "a spin span of worker 13 from 1.00 s to 2.00 s; ".repeat(200);
    a.attribution.links = (0..5000)
        .map(|i| correlate::Link {
            request_id: format!("r-{i}"),
            worker_pid: Some(i),
            link: LinkClass::Window,
            sentence: long.clone(),
            ..link.clone()
        })
        .collect();
    a.attribution.window = 5000;
    // A reload every 6 s for 10 minutes, each leaving one more replaced server running.
    let window =
        super::reloads::ReloadWindow { handovers: a.reloads[0].handovers.clone(), ..Default::default() };
    a.reloads = (0..100)
        .map(|i| super::reloads::ReloadWindow {
            index: i + 1,
            at_s: 6.0 * i as f64,
            until_s: 6.0 * (i + 1) as f64,
            servers_superseded: i,
            ..window.clone()
        })
        .collect();
    let md = report::markdown::markdown(&run, &a);
    assert!(md.chars().count() <= report::markdown::BUDGET, "{} characters", md.chars().count());
    assert!(md.contains("## Reloads") && md.contains("…and 90 more"), "the reload rows are summarised");
    assert!(
        md.contains("Plugin servers left running after being replaced"),
        "the accumulation is a headline"
    );
    assert!(md.contains("…and 490 more"), "the spin rows are summarised");
    assert!(md.contains("…and 4990 more"), "the window examples are summarised");
    assert!(md.lines().all(|l| l.chars().count() <= 1_000), "every sentence is bounded");
    // A section that cannot fit is left out whole, with a line saying so.
    let row = a.attribution.table[0].clone();
    a.attribution.table =
        (0..5000).map(|i| correlate::Row { endpoint: format!("/route-{i}"), ..row.clone() }).collect();
    let md = report::markdown::markdown(&run, &a);
    assert!(md.chars().count() <= report::markdown::BUDGET, "{} characters", md.chars().count());
    assert!(md.contains("The failure attribution section ("), "{}", &md[..2000]);
    assert!(md.contains("## Artifacts"), "the artifacts are always listed");
}
