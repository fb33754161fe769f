//! The kernel's own cost accounting of the probe (`BPF_ENABLE_STATS`): how often each eBPF
//! program ran over a recording's window and for how long, plus the recorder's own CPU time.
//! `reloadscope record --prog-stats` writes it into `meta.json`; the benchmarks read it.

use serde::{Deserialize, Serialize};

/// One program's runs over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgStat {
    /// The program's name (its function name in probe-ebpf).
    pub name: String,
    /// Times it ran.
    pub runs: u64,
    /// Time it ran for in all, as the kernel measured it.
    pub run_time_ns: u64,
}

/// What the probe cost over one recording's window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgStats {
    /// The window the counts cover.
    pub window_ns: u64,
    /// CPU time (user + system) the recorder itself used in that window.
    pub recorder_cpu_ns: u64,
    /// Every program that ran at least once.
    pub programs: Vec<ProgStat>,
}

/// One row of the per-program table: rates over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgRow {
    pub name: String,
    pub runs_per_s: f64,
    pub ns_per_run: f64,
    /// Share of one CPU, in percent.
    pub cpu_percent: f64,
}

impl ProgStat {
    /// The rates of this program over a window of `window_ns`.
    pub fn row(&self, window_ns: u64) -> ProgRow {
        let secs = window_ns.max(1) as f64 / 1e9;
        ProgRow {
            name: self.name.clone(),
            runs_per_s: self.runs as f64 / secs,
            ns_per_run: if self.runs == 0 { 0.0 } else { self.run_time_ns as f64 / self.runs as f64 },
            cpu_percent: 100.0 * self.run_time_ns as f64 / window_ns.max(1) as f64,
        }
    }
}

/// A cumulative reading of the same counters at one instant; two make a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// Monotonic clock at the reading.
    pub at_ns: u64,
    /// The recorder's CPU time so far.
    pub recorder_cpu_ns: u64,
    /// Every loaded program's totals so far.
    pub programs: Vec<ProgStat>,
}

impl Reading {
    /// What happened between `earlier` and this reading (programs matched by name; those that
    /// did not run are left out).
    pub fn since(&self, earlier: &Reading) -> ProgStats {
        let programs = self
            .programs
            .iter()
            .map(|p| {
                let before = earlier.programs.iter().find(|e| e.name == p.name);
                ProgStat {
                    name: p.name.clone(),
                    runs: p.runs - before.map_or(0, |b| b.runs.min(p.runs)),
                    run_time_ns: p.run_time_ns - before.map_or(0, |b| b.run_time_ns.min(p.run_time_ns)),
                }
            })
            .filter(|p| p.runs > 0)
            .collect();
        ProgStats {
            window_ns: self.at_ns.saturating_sub(earlier.at_ns),
            recorder_cpu_ns: self.recorder_cpu_ns.saturating_sub(earlier.recorder_cpu_ns),
            programs,
        }
    }
}

impl ProgStats {
    /// The rows, busiest program (by CPU) first.
    pub fn rows(&self) -> Vec<ProgRow> {
        let mut rows: Vec<ProgRow> = self.programs.iter().map(|p| p.row(self.window_ns)).collect();
        rows.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then_with(|| a.name.cmp(&b.name)));
        rows
    }

    /// The kernel side's share of one CPU, in percent.
    pub fn kernel_percent(&self) -> f64 {
        self.rows().iter().map(|r| r.cpu_percent).sum()
    }

    /// The recorder's share of one CPU, in percent.
    pub fn recorder_percent(&self) -> f64 {
        100.0 * self.recorder_cpu_ns as f64 / self.window_ns.max(1) as f64
    }
}

/// A Markdown table of `rows`, with the kernel's total and the recorder's share under it.
pub fn table(rows: &[ProgRow], kernel_percent: f64, recorder_percent: f64) -> String {
    let mut s = String::from("| program | runs/s | ns per run | share of one CPU |\n|---|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}% |\n",
            r.name, r.runs_per_s, r.ns_per_run, r.cpu_percent
        ));
    }
    s.push_str(&format!(
        "| all programs (kernel) | | | {kernel_percent:.2}% |\n| recorder (user space) | | | {recorder_percent:.2}% |\n"
    ));
    s
}

/// Another measurement of the same programs, shown beside the main one: another build of the
/// probe, or its programs loaded empty at the same attach points (`record --floor`).
pub struct Beside<'a> {
    /// Column heading, e.g. "empty programs".
    pub label: &'a str,
    pub rows: &'a [ProgRow],
    pub kernel_percent: f64,
    /// The recorder's share, when it does the same work.
    pub recorder_percent: Option<f64>,
}

/// The table of `rows` with each of `others` beside it: its ns per run and share of a CPU for
/// the same program ("-" where it has none), and its totals.
pub fn table_beside(
    rows: &[ProgRow],
    kernel_percent: f64,
    recorder_percent: f64,
    others: &[Beside<'_>],
) -> String {
    let ns_heads: String = others.iter().map(|o| format!(" {}, ns per run |", o.label)).collect();
    let cpu_heads: String = others.iter().map(|o| format!(" {}, share |", o.label)).collect();
    let aligns = "---:|".repeat(2 * others.len());
    let mut s = format!(
        "| program | runs/s | ns per run |{ns_heads} share of one CPU |{cpu_heads}\n|---|---:|---:|{aligns}---:|\n"
    );
    let beside = |name: &str| {
        let found: Vec<Option<&ProgRow>> =
            others.iter().map(|o| o.rows.iter().find(|f| f.name == name)).collect();
        let ns: String = found
            .iter()
            .map(|f| f.map_or(" - |".to_owned(), |f| format!(" {:.0} |", f.ns_per_run)))
            .collect();
        let cpu: String = found
            .iter()
            .map(|f| f.map_or(" - |".to_owned(), |f| format!(" {:.2}% |", f.cpu_percent)))
            .collect();
        (ns, cpu)
    };
    for r in rows {
        let (ns, cpu) = beside(&r.name);
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} |{ns} {:.2}% |{cpu}\n",
            r.name, r.runs_per_s, r.ns_per_run, r.cpu_percent
        ));
    }
    // Programs that ran in the others and not in this build (one only another build has, say):
    // their cost is in the others' totals, so it is shown too.
    let mut gone: Vec<&str> = Vec::new();
    for f in others.iter().flat_map(|o| o.rows) {
        if !rows.iter().any(|r| r.name == f.name) && !gone.contains(&f.name.as_str()) {
            gone.push(&f.name);
        }
    }
    for name in gone {
        let (ns, cpu) = beside(name);
        s.push_str(&format!("| {name} (did not run in this build) | - | - |{ns} - |{cpu}\n"));
    }
    let blanks = " |".repeat(others.len());
    let kernels: String = others.iter().map(|o| format!(" {:.2}% |", o.kernel_percent)).collect();
    let recorders: String = others
        .iter()
        .map(|o| o.recorder_percent.map_or(" |".to_owned(), |p| format!(" {p:.2}% |")))
        .collect();
    s.push_str(&format!(
        "| all programs (kernel) | | |{blanks} {kernel_percent:.2}% |{kernels}\n\
         | recorder (user space) | | |{blanks} {recorder_percent:.2}% |{recorders}\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str, runs: u64, ns: u64) -> ProgStat {
        ProgStat { name: name.into(), runs, run_time_ns: ns }
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let start = Reading {
            at_ns: 5,
            recorder_cpu_ns: 1_000,
            programs: vec![stat("unix_send", 100, 50_000), stat("idle", 7, 700)],
        };
        let end = Reading {
            at_ns: 2_000_000_005,
            recorder_cpu_ns: 20_001_000,
            programs: vec![stat("unix_send", 2_100, 1_050_000), stat("idle", 7, 700), stat("new", 1, 10)],
        };
        let w = end.since(&start);
        assert_eq!(w.programs, vec![stat("unix_send", 2_000, 1_000_000), stat("new", 1, 10)]);
        let rows = w.rows();
        assert_eq!(rows[0].name, "unix_send");
        assert_eq!(rows[0].runs_per_s, 1_000.0);
        assert_eq!(rows[0].ns_per_run, 500.0);
        assert!((rows[0].cpu_percent - 0.05).abs() < 1e-9);
        assert!((w.recorder_percent() - 1.0).abs() < 1e-9);
        let t = table(&rows, w.kernel_percent(), w.recorder_percent());
        assert!(t.contains("| unix_send | 1000 | 500 | 0.05% |"), "{t}");
        assert!(t.contains("| recorder (user space) | | | 1.00% |"), "{t}");
    }

    #[test]
    fn other_measurements_sit_beside_each_program_they_cover() {
        let row = |name: &str, ns: f64, cpu: f64| ProgRow {
            name: name.into(),
            runs_per_s: 1000.0,
            ns_per_run: ns,
            cpu_percent: cpu,
        };
        let floor = [row("unix_send", 60.0, 0.25)];
        let before =
            [row("unix_send", 300.0, 1.2), row("cpu_sample", 9500.0, 0.31), row("read_enter", 200.0, 0.9)];
        let t = table_beside(
            &[row("unix_send", 250.0, 1.0), row("cpu_sample", 9000.0, 0.3)],
            1.3,
            1.1,
            &[
                Beside { label: "before", rows: &before, kernel_percent: 1.51, recorder_percent: Some(2.0) },
                Beside { label: "empty", rows: &floor, kernel_percent: 0.25, recorder_percent: None },
            ],
        );
        assert!(t.starts_with("| program | runs/s | ns per run | before, ns per run | empty, ns per run | share of one CPU | before, share | empty, share |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"), "{t}");
        assert!(t.contains("| unix_send | 1000 | 250 | 300 | 60 | 1.00% | 1.20% | 0.25% |"), "{t}");
        assert!(t.contains("| cpu_sample | 1000 | 9000 | 9500 | - | 0.30% | 0.31% | - |"), "{t}");
        assert!(
            t.contains("| read_enter (did not run in this build) | - | - | 200 | - | - | 0.90% | - |"),
            "{t}"
        );
        assert!(t.contains("| all programs (kernel) | | | | | 1.30% | 1.51% | 0.25% |"), "{t}");
        assert!(t.contains("| recorder (user space) | | | | | 1.10% | 2.00% | |"), "{t}");
    }
}
