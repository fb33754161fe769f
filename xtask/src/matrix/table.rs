//! The matrix's outputs, `matrix.md` and `matrix.json`: one row per cell, its repeats summed up,
//! from each run's `verdict.json`. Pure: the runs are read before, the files written after.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use shared::verdict::{Clean, Verdict};

use super::cells::{Axis, Cell, CpuLimit};

/// One run of a cell.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// 1-based.
    pub repeat: u32,
    /// The run directory, relative to the matrix directory.
    pub dir: PathBuf,
    /// Its verdict, or why it has none.
    pub outcome: Result<Verdict, String>,
    /// Wall time of the run.
    pub seconds: f64,
}

/// A cell and its runs so far.
#[derive(Clone, Debug)]
pub struct CellResult {
    pub cell: Cell,
    pub runs: Vec<RunResult>,
}

impl CellResult {
    /// The verdicts of the runs that completed.
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.runs.iter().filter_map(|r| r.outcome.as_ref().ok())
    }
}

/// What the table's header says about how the runs were made.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `--reload-at 4s --duration 20s --users 8`, as each run got it.
    pub load: String,
    pub repeat: u32,
    /// Wall time of the whole matrix so far.
    pub elapsed_s: f64,
    /// False when Ctrl-C stopped it early.
    pub complete: bool,
}

/// Every endpoint any run loaded, in order.
fn endpoints(cells: &[CellResult]) -> Vec<String> {
    let all: BTreeSet<&String> =
        cells.iter().flat_map(|c| c.verdicts()).flat_map(|v| v.endpoints.keys()).collect();
    all.into_iter().cloned().collect()
}

/// The median of `v` (sorted in place); `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `3.1%`, or `3.1% (0.2%–6.0%)` when the runs disagree; `—` without runs.
fn spread(r: Option<Range>, show: impl Fn(f64) -> String) -> String {
    let Some(r) = r else { return "—".into() };
    if show(r.min) == show(r.max) {
        show(r.median)
    } else {
        format!("{} ({}–{})", show(r.median), show(r.min), show(r.max))
    }
}

/// A count per run: `2`, or `0–2` when the runs disagree; `—` without runs.
fn count_range(r: Option<Range>) -> String {
    let count = |x: f64| fmt_count(x as u64);
    match r {
        Some(r) if r.min == r.max => count(r.min),
        Some(r) => format!("{}–{}", count(r.min), count(r.max)),
        None => "—".into(),
    }
}

/// `1,234`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3.1%`; two decimals below 1% and above 99%, so a handful of failures (or of unexplained
/// ones) in thousands still shows, and `<0.01%` (`>99.99%`) beyond that.
pub fn fmt_percent(p: f64) -> String {
    if p > 0.0 && p < SMALLEST_PERCENT {
        format!("<{SMALLEST_PERCENT}%")
    } else if p > 100.0 - SMALLEST_PERCENT && p < 100.0 {
        format!(">{}%", 100.0 - SMALLEST_PERCENT)
    } else if (p > 0.0 && p < 1.0) || (p > 99.0 && p < 100.0) {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// The smallest share [`fmt_percent`] writes with digits.
const SMALLEST_PERCENT: f64 = 0.01;

/// `2/3 (1–4)`: in how many of the runs a sign showed, and its size's range among those.
fn presence(shown: &Option<Range>, shown_runs: usize, completed: usize) -> String {
    let head = format!("{shown_runs}/{completed}");
    if shown_runs == 0 { head } else { format!("{head} ({})", count_range(*shown)) }
}

/// Pooled exact share: `98.7% of 1,181`; `—` when nothing failed.
fn exact(n: &RowNumbers) -> String {
    match n.exact_percent {
        Some(p) => format!("{} of {}", fmt_percent(p), fmt_count(n.reload_failed)),
        None => "—".into(),
    }
}

/// `1.2 s`, `never`, or `1.2 s; never 1/3` (`never`: the load ended still failing).
fn clean_after(n: &RowNumbers) -> String {
    let mut parts = Vec::new();
    if n.clean_after_s.is_some() {
        parts.push(spread(n.clean_after_s, |s| format!("{s:.1} s")));
    }
    match n.still_failing_runs {
        0 => {}
        k if k == n.completed => parts.push("never".into()),
        k => parts.push(format!("never {k}/{}", n.completed)),
    }
    if n.unknown_clean_runs > 0 {
        parts.push(format!("unknown {}/{}", n.unknown_clean_runs, n.completed));
    }
    if parts.is_empty() { "—".into() } else { parts.join("; ") }
}

/// The seconds of a clean state.
fn after(c: Clean) -> Option<f64> {
    match c {
        Clean::After { s } => Some(s),
        _ => None,
    }
}

/// The links to a cell's reports, or why a run has none.
fn reports(c: &CellResult) -> String {
    let links: Vec<String> = c
        .runs
        .iter()
        .map(|r| match &r.outcome {
            Ok(_) => format!("[r{}]({}/report.md)", r.repeat, r.dir.display()),
            Err(_) => format!("r{}: failed ([log]({}/run.log))", r.repeat, r.dir.display()),
        })
        .collect();
    links.join(" ")
}

/// The table's columns after the axes.
const COLUMNS: [&str; 10] = [
    "exact",
    "spinning workers",
    "crash loops",
    "SIGKILLs",
    "orphans",
    "stale flows",
    "failed connects",
    "fork after HUP",
    "clean after",
    "reports",
];

/// `matrix.md`: the setup, the table, what it shows, and the columns' meaning.
pub fn markdown(setup: &Setup, cells: &[CellResult], findings: &[String]) -> String {
    let runs: usize = cells.iter().map(|c| c.runs.len()).sum();
    let mut s = String::from("# reloadscope version matrix\n\n");
    let _ = writeln!(
        s,
        "{} cells × {} repeat(s), each one `cargo xtask run {}` on the local stand-in ({} workers, \
         worker header off, so every exact link is the kernel's): {runs} runs in {}{}.\n",
        cells.len(),
        setup.repeat,
        setup.load,
        crate::stack::DEFAULT_WORKERS,
        fmt_duration(setup.elapsed_s),
        if setup.complete { "" } else { ", **stopped early**: the rows hold the runs that finished" }
    );
    let eps = endpoints(cells);
    let mut header: Vec<String> = Axis::ALL.iter().map(|a| a.header().to_string()).collect();
    header.extend(eps.iter().map(|e| format!("{e} failed")));
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let align: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i < Axis::ALL.len() || i == header.len() - 1 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(s, "|{}|", align.join("|"));
    for c in cells {
        let n = numbers(c);
        let mut row: Vec<String> = Axis::ALL.iter().map(|&a| c.cell.value(a)).collect();
        for e in &eps {
            row.push(spread(n.failed_percent.get(e).copied(), fmt_percent));
        }
        row.push(exact(&n));
        row.push(presence(&n.spinning_workers, n.spinning_runs, n.completed));
        row.push(presence(&n.loop_crashes, n.crash_loop_runs, n.completed));
        row.push(count_range(n.sigkills));
        row.push(count_range(n.orphans));
        row.push(count_range(n.stale_flows));
        row.push(count_range(n.failed_connects));
        row.push(spread(n.forked_s, |s| format!("{s:.1} s")));
        row.push(clean_after(&n));
        row.push(reports(c));
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s.push_str("\n## What the table shows\n\n");
    for f in findings {
        let _ = writeln!(s, "- {f}");
    }
    s.push_str(COLUMN_NOTES);
    s
}

/// What each column means, under the table.
const COLUMN_NOTES: &str = "
## Columns

- **/… failed**: failed requests of that endpoint, in percent: the median over the repeats, and
  the range when they differ.
- **exact**: of all failures a reload can cause, pooled over the repeats, the share linked to
  their cause through the worker that served them.
- **spinning workers**, **crash loops**: in how many runs they appeared, and how many workers
  spun or how many crashes the loops had in those runs.
- **SIGKILLs** (of plugin servers), **orphans** (plugin servers left without their worker),
  **stale flows** (worker sockets still talking to a superseded server), **failed connects**
  (refused or missing plugin sockets): per run, the range over the repeats.
- **fork after HUP**: how long the master took to fork the new workers.
- **clean after**: from the reload until requests stopped failing (the end of the last failure);
  `never` when the load ended still failing.
- **reports**: each run's own `report.md`; its directory holds everything the run recorded.
";

/// `41 min 3 s`.
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        _ => format!("{} min {} s", s / 60, s % 60),
    }
}

/// `matrix.json`, the file.
#[derive(Serialize)]
pub struct MatrixFile<'a> {
    pub schema_version: u32,
    /// The load options every run got.
    pub load: &'a str,
    pub repeat: u32,
    pub elapsed_s: f64,
    /// False when Ctrl-C stopped it early.
    pub complete: bool,
    pub cells: Vec<CellRow<'a>>,
    pub findings: &'a [String],
}

/// `matrix.json`'s schema.
const SCHEMA_VERSION: u32 = 1;

/// One cell: its axes, its row's numbers, and each run's verdict.
#[derive(Serialize)]
pub struct CellRow<'a> {
    pub behaviour: &'static str,
    pub js_pdk: &'static str,
    pub python_pdk: &'static str,
    pub cpu_limit: CpuLimit,
    /// What `matrix.md`'s row shows, as numbers.
    pub row: RowNumbers,
    pub runs: Vec<RunRow<'a>>,
}

/// A row's numbers over the runs that completed.
#[derive(Serialize)]
pub struct RowNumbers {
    pub completed: usize,
    /// Per endpoint: the median failed percent, and its range.
    pub failed_percent: std::collections::BTreeMap<String, Range>,
    /// Failures a reload can cause, over the runs; and of them the exact share, when any.
    pub reload_failed: u64,
    pub exact_percent: Option<f64>,
    /// Runs with a spinning worker, and how many workers spun in those.
    pub spinning_runs: usize,
    pub spinning_workers: Option<Range>,
    /// Runs with a crash loop, and how many crashes their loops had.
    pub crash_loop_runs: usize,
    pub loop_crashes: Option<Range>,
    pub sigkills: Option<Range>,
    pub orphans: Option<Range>,
    pub stale_flows: Option<Range>,
    pub failed_connects: Option<Range>,
    pub forked_s: Option<Range>,
    /// Seconds until clean, over the runs that became clean; and the runs still failing.
    pub clean_after_s: Option<Range>,
    pub still_failing_runs: usize,
    /// Runs that cannot tell (no request after the reload).
    pub unknown_clean_runs: usize,
}

/// A median and the range around it.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Range {
    fn of(mut v: Vec<f64>) -> Option<Range> {
        let median = median(&mut v)?;
        Some(Range { median, min: v[0], max: v[v.len() - 1] })
    }
}

/// One run of a cell: where it is, and its verdict or error.
#[derive(Serialize)]
pub struct RunRow<'a> {
    pub repeat: u32,
    pub dir: &'a std::path::Path,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'a Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

fn numbers(c: &CellResult) -> RowNumbers {
    let v: Vec<&Verdict> = c.verdicts().collect();
    let range = |f: &dyn Fn(&Verdict) -> f64| Range::of(v.iter().map(|x| f(x)).collect());
    let mut failed_percent = std::collections::BTreeMap::new();
    for e in v.iter().flat_map(|x| x.endpoints.keys()) {
        if !failed_percent.contains_key(e) {
            let rates = v.iter().filter_map(|x| x.endpoints.get(e)).map(|n| n.failed_percent()).collect();
            if let Some(r) = Range::of(rates) {
                failed_percent.insert(e.clone(), r);
            }
        }
    }
    let failed: u64 = v.iter().map(|x| x.reload_failed).sum();
    let exact: u64 = v.iter().map(|x| x.exact).sum();
    let spun: Vec<&&Verdict> = v.iter().filter(|x| !x.spinning_workers.is_empty()).collect();
    let looped: Vec<&&Verdict> = v.iter().filter(|x| !x.crash_loops.is_empty()).collect();
    let clean_after_s = Range::of(v.iter().filter_map(|x| after(x.clean)).collect());
    let still_failing_runs = v.iter().filter(|x| x.clean == Clean::StillFailing).count();
    let became_clean = v.iter().filter(|x| after(x.clean).is_some()).count();
    RowNumbers {
        completed: v.len(),
        failed_percent,
        reload_failed: failed,
        exact_percent: (failed > 0).then(|| 100.0 * exact as f64 / failed as f64),
        spinning_runs: spun.len(),
        spinning_workers: Range::of(spun.iter().map(|x| x.spinning_workers.len() as f64).collect()),
        crash_loop_runs: looped.len(),
        loop_crashes: Range::of(looped.iter().map(|x| f64::from(x.loop_crashes())).collect()),
        sigkills: range(&|x| f64::from(x.sigkills)),
        orphans: range(&|x| f64::from(x.orphans)),
        stale_flows: range(&|x| f64::from(x.stale_flows)),
        failed_connects: range(&|x| x.failed_connects as f64),
        forked_s: Range::of(v.iter().filter_map(|x| x.forked_s).collect()),
        clean_after_s,
        still_failing_runs,
        unknown_clean_runs: v.len() - became_clean - still_failing_runs,
    }
}

/// `matrix.json`: the same rows as numbers, each with its runs' verdicts.
pub fn json<'a>(setup: &'a Setup, cells: &'a [CellResult], findings: &'a [String]) -> MatrixFile<'a> {
    MatrixFile {
        schema_version: SCHEMA_VERSION,
        load: &setup.load,
        repeat: setup.repeat,
        elapsed_s: setup.elapsed_s,
        complete: setup.complete,
        cells: cells
            .iter()
            .map(|c| CellRow {
                behaviour: c.cell.behaviour.name(),
                js_pdk: c.cell.js_pdk.version(),
                python_pdk: c.cell.python_pdk.version(),
                cpu_limit: c.cell.cpu_limit,
                row: numbers(c),
                runs: c
                    .runs
                    .iter()
                    .map(|r| RunRow {
                        repeat: r.repeat,
                        dir: &r.dir,
                        seconds: r.seconds,
                        verdict: r.outcome.as_ref().ok(),
                        error: r.outcome.as_ref().err().map(String::as_str),
                    })
                    .collect(),
            })
            .collect(),
        findings,
    }
}

/// `matrix.json` as read back: the setup and, per cell, where its runs are.
#[derive(serde::Deserialize)]
pub struct Saved {
    pub load: String,
    pub repeat: u32,
    pub elapsed_s: f64,
    pub complete: bool,
    pub cells: Vec<SavedCell>,
}

/// A cell of a saved matrix.
#[derive(serde::Deserialize)]
pub struct SavedCell {
    pub behaviour: String,
    pub js_pdk: String,
    pub python_pdk: String,
    pub cpu_limit: Option<f64>,
    pub runs: Vec<SavedRun>,
}

/// A run of a saved cell.
#[derive(serde::Deserialize)]
pub struct SavedRun {
    pub repeat: u32,
    pub dir: PathBuf,
    pub seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
}

impl Saved {
    /// Reads `matrix.json`.
    pub fn read(path: &std::path::Path) -> Result<Saved, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not a matrix: {e}", path.display()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use shared::verdict::{EndpointCount, Loop};

    use super::*;
    use crate::stack::{Behaviour, JsPdk, PyPdk};

    /// A verdict with `js_failed` of 1,000 /js requests, `spinning` workers and `crashes`.
    pub fn verdict(js_failed: u64, spinning: u32, crashes: u32) -> Verdict {
        Verdict {
            schema_version: shared::verdict::SCHEMA_VERSION,
            endpoints: [
                ("/js".to_string(), EndpointCount { requests: 1000, failed: js_failed }),
                ("/python".to_string(), EndpointCount { requests: 1000, failed: 0 }),
            ]
            .into(),
            reload_failed: js_failed,
            exact: js_failed / 2,
            spinning_workers: (0..spinning).collect(),
            crash_loops: if crashes > 0 {
                vec![Loop { socket: "js.socket".into(), crashes }]
            } else {
                vec![]
            },
            sigkills: 2,
            forked_s: Some(0.9),
            clean: if spinning == 0 { Clean::After { s: 1.5 } } else { Clean::StillFailing },
            ..Verdict::default()
        }
    }

    pub fn cell(behaviour: Behaviour, js_pdk: JsPdk) -> Cell {
        Cell { behaviour, js_pdk, python_pdk: PyPdk::V036, cpu_limit: CpuLimit(None) }
    }

    pub fn result(cell: Cell, verdicts: Vec<Result<Verdict, String>>) -> CellResult {
        let runs = verdicts
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| RunResult {
                repeat: i as u32 + 1,
                dir: PathBuf::from(cell.dir_name()).join(format!("r{}", i + 1)),
                outcome,
                seconds: 40.0,
            })
            .collect();
        CellResult { cell, runs }
    }

    #[test]
    fn a_row_sums_up_its_repeats() {
        let cells = vec![
            result(
                cell(Behaviour::Kong27, JsPdk::V050),
                vec![Ok(verdict(40, 1, 4)), Ok(verdict(10, 0, 6)), Err("the load test failed".into())],
            ),
            result(cell(Behaviour::Fixed, JsPdk::V060), vec![Ok(verdict(0, 0, 0))]),
        ];
        let setup = Setup {
            load: "--reload-at 4s --duration 20s --users 8".into(),
            repeat: 3,
            elapsed_s: 2463.0,
            complete: false,
        };
        let md = markdown(&setup, &cells, &["A finding.".to_string()]);
        let rows: Vec<&str> =
            md.lines().filter(|l| l.starts_with("| kong-2.7") || l.starts_with("| fixed")).collect();
        assert_eq!(
            rows[0],
            "| kong-2.7 | 0.5.0 | 0.36 | none | 2.5% (1.0%–4.0%) | 0.0% | 50.0% of 50 | 1/2 (1) | 2/2 (4–6) | 2 | 0 \
             | 0 | 0 | 0.9 s | 1.5 s; never 1/2 | [r1](kong-2.7_js-0.5.0_py-0.36_cpu-none/r1/report.md) \
             [r2](kong-2.7_js-0.5.0_py-0.36_cpu-none/r2/report.md) r3: failed \
             ([log](kong-2.7_js-0.5.0_py-0.36_cpu-none/r3/run.log)) |"
                .replace("  ", "")
        );
        assert!(
            rows[1].starts_with("| fixed | 0.6.0 | 0.36 | none | 0.0% | 0.0% | — | 0/1 | 0/1 | 2 |"),
            "{}",
            rows[1]
        );
        assert!(md.contains("41 min 3 s, **stopped early**"), "{md}");
        assert!(md.contains("- A finding.\n"));
        let j = serde_json::to_value(json(&setup, &cells, &[])).unwrap();
        assert_eq!(j["cells"][0]["runs"][0]["verdict"]["endpoints"]["/js"]["failed"], 40);
        assert_eq!(j["cells"][0]["runs"][2]["error"], "the load test failed");
        assert_eq!(j["cells"][1]["cpu_limit"], serde_json::Value::Null);
        let row = &j["cells"][0]["row"];
        assert_eq!(row["failed_percent"]["/js"]["median"], 2.5);
        assert_eq!((row["completed"].as_u64(), row["spinning_runs"].as_u64()), (Some(2), Some(1)));
        assert_eq!(
            (row["still_failing_runs"].as_u64(), row["exact_percent"].as_f64()),
            (Some(1), Some(50.0))
        );
    }

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_percent(0.123), "0.12%");
        assert_eq!(fmt_percent(12.34), "12.3%");
        assert_eq!(fmt_percent(99.984), "99.98%");
        assert_eq!(fmt_percent(0.004), "<0.01%");
        assert_eq!(fmt_percent(99.996), ">99.99%");
        assert_eq!(fmt_percent(100.0), "100.0%");
        assert_eq!(fmt_duration(59.4), "59 s");
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }
}
