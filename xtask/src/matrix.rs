//! `cargo xtask matrix`: which gateway behaviour, PDK release and CPU limit show Kong #8531, and
//! how. One short `cargo xtask run` per cell and repeat, each in its own directory with its full
//! report; `matrix.md` and `matrix.json` sum them up, rewritten after every run, so Ctrl-C (which
//! stops the current run, and its teardown, first) keeps the table of the finished ones.
//!
//! The repeats run pass by pass (every cell once, then every cell again), so a slow spell of the
//! machine spreads over the cells instead of landing on one.

mod cells;
mod findings;
mod table;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::stack::{Addresses, Behaviour, JsPdk, PyPdk};
use crate::util::{require_root, workspace_root};
use cells::{Axes, Axis, Cell, CpuLimit};
use table::{CellResult, RunResult, Setup};

/// Options of `cargo xtask matrix`.
#[derive(Args, Clone, Debug)]
pub struct MatrixOptions {
    /// Plugin-server lifecycles to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Behaviour::Kong27, Behaviour::Fixed])]
    pub behaviour: Vec<Behaviour>,
    /// kong-pdk releases for the JS plugin server.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [JsPdk::V050, JsPdk::V060])]
    pub js_pdk: Vec<JsPdk>,
    /// kong-pdk releases for the Python plugin server (0.30: the reproduction's; 0.36: PyPI's newest).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PyPdk::ALL)]
    pub python_pdk: Vec<PyPdk>,
    /// CPU limits of the gateway: `none` or a number of CPUs (0.15: the reproduction's compose file).
    #[arg(long, value_delimiter = ',', default_values = [cells::NO_LIMIT, "0.15"], value_parser = CpuLimit::parse)]
    pub cpu_limit: Vec<CpuLimit>,
    /// Runs per cell: a reload is a race, so one run shows one outcome of it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// How long each run's load lasts. 24 s after the reload holds old worker 0's exit even
    /// under a 0.15-CPU limit, where the master takes about 11 s to fork the new workers.
    #[arg(long, default_value = "28s", value_parser = shared::duration::parse)]
    pub duration: Duration,
    /// When each run reloads, from the start of its load.
    #[arg(long, default_value = "4s", value_parser = shared::duration::parse)]
    pub reload_at: Duration,
    /// Where in old worker 0's pump window each run's reload lands (see `cargo xtask run --help`):
    /// 7s gives the reproduction's order of the hand-over.
    #[arg(long, default_value = "7s", value_parser = crate::run::parse_phase)]
    pub reload_phase: Duration,
    /// Load-test users per run.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
    /// Where the matrix and every run's directory go (default: out/matrix-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where each run's stand-in and reflection listen.
    #[command(flatten)]
    pub addr: Addresses,
    /// Run nothing: write `matrix.md` and `matrix.json` of the matrix in DIR anew from its runs'
    /// `verdict.json` (after `reloadscope analyze` of a run, or an upgrade of the table).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub rewrite: Option<PathBuf>,
}

impl MatrixOptions {
    fn axes(&self) -> Axes {
        Axes {
            behaviour: self.behaviour.clone(),
            js_pdk: self.js_pdk.clone(),
            python_pdk: self.python_pdk.clone(),
            cpu_limit: self.cpu_limit.clone(),
        }
    }

    /// The addresses every run gets, when they are not the defaults.
    fn addr_args(&self) -> Vec<String> {
        if self.addr.are_default() {
            return Vec::new();
        }
        vec!["--listen".into(), self.addr.listen.clone(), "--reflection".into(), self.addr.reflection.clone()]
    }

    /// The load options every run gets, as `cargo xtask run` takes them.
    fn load_args(&self) -> Vec<String> {
        vec![
            "--reload-at".into(),
            shared::duration::format(self.reload_at),
            "--duration".into(),
            shared::duration::format(self.duration),
            "--users".into(),
            self.users.to_string(),
            "--reload-phase".into(),
            shared::duration::format(self.reload_phase),
        ]
    }
}

/// The least load after the reload: a run must outlast its last failure by
/// [`shared::verdict::CLEAN_TAIL_S`] to count as clean, so less would call every run failing.
const MIN_AFTER_RELOAD: Duration = Duration::from_secs(4);

/// Checks the options that need no system state.
pub fn validate(opts: &MatrixOptions) -> Result<()> {
    opts.axes().check().map_err(anyhow::Error::msg)?;
    let fmt = shared::duration::format;
    if opts.reload_at.is_zero() || opts.reload_at + MIN_AFTER_RELOAD > opts.duration {
        bail!(
            "--reload-at {} leaves less than {} of the load's --duration {} after the reload",
            fmt(opts.reload_at),
            fmt(MIN_AFTER_RELOAD),
            fmt(opts.duration)
        );
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A run's wall time before any has finished: its load, plus about this much around it (up,
/// probe attach, phase alignment, settle, teardown, analysis).
const RUN_OVERHEAD_GUESS: Duration = Duration::from_secs(30);

/// Checks before anything is built or started.
pub fn preflight(opts: &MatrixOptions) -> Result<()> {
    validate(opts)?;
    if opts.rewrite.is_some() {
        return Ok(());
    }
    require_root("each run loads eBPF programs and runs the stand-in")?;
    // Runs write into their directories: another matrix's files would mix with this one's.
    if let Some(out) = &opts.out
        && std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some())
    {
        bail!("{} is not empty; choose another --out", out.display());
    }
    Ok(())
}

/// The matrix's data file; `matrix.md` is its table.
const MATRIX_JSON: &str = "matrix.json";
const MATRIX_MD: &str = "matrix.md";

/// Writes the table of an existing matrix anew from its runs' verdicts.
pub fn rewrite(dir: &Path) -> Result<()> {
    let saved = table::Saved::read(&dir.join(MATRIX_JSON)).map_err(anyhow::Error::msg)?;
    let mut results = Vec::new();
    for c in saved.cells {
        let bad = |what: &str, v: &str| {
            anyhow::anyhow!("{}: unknown {what} '{v}'", dir.join(MATRIX_JSON).display())
        };
        let cell = Cell {
            behaviour: Behaviour::from_str(&c.behaviour, false)
                .map_err(|_| bad("behaviour", &c.behaviour))?,
            js_pdk: JsPdk::from_str(&c.js_pdk, false).map_err(|_| bad("js pdk", &c.js_pdk))?,
            python_pdk: PyPdk::from_str(&c.python_pdk, false)
                .map_err(|_| bad("python pdk", &c.python_pdk))?,
            cpu_limit: CpuLimit(c.cpu_limit),
        };
        let runs = c
            .runs
            .into_iter()
            .map(|r| RunResult {
                repeat: r.repeat,
                // A verdict written since (`reloadscope analyze` of a run whose analysis failed)
                // replaces the saved error.
                outcome: match (r.error, dir.join(&r.dir).join(shared::verdict::FILE).exists()) {
                    (Some(e), false) => Err(e),
                    _ => shared::verdict::read(&dir.join(&r.dir)),
                },
                dir: r.dir,
                seconds: r.seconds,
            })
            .collect();
        results.push(CellResult { cell, runs });
    }
    let setup = Setup {
        load: saved.load,
        repeat: saved.repeat,
        elapsed_s: saved.elapsed_s,
        complete: saved.complete,
    };
    write_files(dir, &setup, &results)?;
    println!("matrix: wrote {} and {} anew", dir.join(MATRIX_MD).display(), dir.join(MATRIX_JSON).display());
    Ok(())
}

/// Runs the matrix; see the module documentation.
pub fn run(opts: &MatrixOptions) -> Result<()> {
    if let Some(dir) = &opts.rewrite {
        return rewrite(dir);
    }
    preflight(opts)?;
    let out = opts.out.clone().unwrap_or_else(|| {
        let unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        workspace_root().join("out").join(format!("matrix-{}", unix_s.as_secs()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let axes = opts.axes();
    let mut results: Vec<CellResult> =
        axes.cells().into_iter().map(|cell| CellResult { cell, runs: Vec::new() }).collect();
    let total = results.len() * opts.repeat as usize;
    let load = opts.load_args().join(" ");
    println!(
        "matrix: {} cells × {} repeat(s) = {total} runs of `cargo xtask run {load}`, into {}",
        results.len(),
        opts.repeat,
        out.display()
    );
    let started = Instant::now();
    let mut done = 0usize;
    let mut spent = Duration::ZERO;
    'passes: for repeat in 1..=opts.repeat {
        for i in 0..results.len() {
            if STOP.load(Ordering::SeqCst) {
                break 'passes;
            }
            let cell = results[i].cell;
            let per_run = if done == 0 { opts.duration + RUN_OVERHEAD_GUESS } else { spent / done as u32 };
            println!(
                "matrix: [run {}/{total}, pass {repeat}/{}] {}: about {} left",
                done + 1,
                opts.repeat,
                cell.label(),
                table::fmt_duration((per_run * (total - done) as u32).as_secs_f64())
            );
            let rel = PathBuf::from(cell.dir_name()).join(format!("r{repeat}"));
            let t0 = Instant::now();
            let outcome = run_cell(&cell, &out.join(&rel), opts);
            if STOP.load(Ordering::SeqCst) && outcome.is_err() {
                // Stopped and torn down by Ctrl-C: not a finished run, so not in the table.
                println!("matrix: [run {}/{total}] {} interrupted", done + 1, cell.label());
                break 'passes;
            }
            let seconds = t0.elapsed().as_secs_f64();
            spent += t0.elapsed();
            done += 1;
            println!("matrix: [run {done}/{total}] {} in {:.0} s: {}", cell.label(), seconds, said(&outcome));
            results[i].runs.push(RunResult { repeat, dir: rel, outcome, seconds });
            write_outputs(&out, opts, &results, started.elapsed().as_secs_f64(), false)?;
        }
    }
    let complete = done == total;
    let findings = write_outputs(&out, opts, &results, started.elapsed().as_secs_f64(), complete)?;
    println!("\n{}", findings.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n"));
    println!(
        "\nmatrix: {done} of {total} runs in {}; the table is {}",
        table::fmt_duration(started.elapsed().as_secs_f64()),
        out.join(MATRIX_MD).display()
    );
    if !complete {
        bail!(
            "interrupted after {done} of {total} runs; the table of the finished ones is in {}",
            out.display()
        );
    }
    let failed = results.iter().flat_map(|c| &c.runs).filter(|r| r.outcome.is_err()).count();
    match failed {
        0 => Ok(()),
        n if n == total => bail!("no run completed; see each run's run.log under {}", out.display()),
        n => {
            eprintln!("matrix: {n} of {total} runs failed and are left out of the table (see their run.log)");
            Ok(())
        }
    }
}

/// One line on a finished run.
fn said(outcome: &std::result::Result<shared::verdict::Verdict, String>) -> String {
    let v = match outcome {
        Ok(v) => v,
        Err(e) => return format!("failed: {e}"),
    };
    let rates: Vec<String> = v
        .endpoints
        .iter()
        .map(|(e, c)| format!("{e} {} failed", table::fmt_percent(c.failed_percent())))
        .collect();
    format!(
        "{}; {} spinning worker(s), {} crash loop(s), {} SIGKILL(s)",
        rates.join(", "),
        v.spinning_workers.len(),
        v.crash_loops.len(),
        v.sigkills
    )
}

/// Rewrites `matrix.md` and `matrix.json` with the runs so far; returns the findings.
fn write_outputs(
    out: &Path,
    opts: &MatrixOptions,
    results: &[CellResult],
    elapsed_s: f64,
    complete: bool,
) -> Result<Vec<String>> {
    let setup = Setup { load: opts.load_args().join(" "), repeat: opts.repeat, elapsed_s, complete };
    write_files(out, &setup, results)
}

/// Writes `matrix.md` and `matrix.json`; returns the findings.
fn write_files(out: &Path, setup: &Setup, results: &[CellResult]) -> Result<Vec<String>> {
    let findings = findings::derive(results, &Axis::ALL);
    let md = out.join(MATRIX_MD);
    std::fs::write(&md, table::markdown(setup, results, &findings))
        .with_context(|| format!("cannot write {}", md.display()))?;
    let json = out.join(MATRIX_JSON);
    let text = serde_json::to_string_pretty(&table::json(setup, results, &findings))?;
    std::fs::write(&json, text + "\n").with_context(|| format!("cannot write {}", json.display()))?;
    Ok(findings)
}

/// How often a run's log is read for progress, and its exit checked.
const POLL: Duration = Duration::from_millis(200);

/// One `cargo xtask run` of `cell` into `dir` (its output in `dir/run.log`); its verdict, or why
/// there is none.
fn run_cell(
    cell: &Cell,
    dir: &Path,
    opts: &MatrixOptions,
) -> std::result::Result<shared::verdict::Verdict, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log_path = dir.join("run.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(workspace_root().join("target/release/xtask"));
    cmd.arg("run")
        .args(["--target", "local", "--worker-header", "off"])
        .args(cell.run_args())
        .args(opts.load_args())
        .args(opts.addr_args())
        .arg("--out")
        .arg(dir)
        // Built and set up once, by the matrix.
        .env(crate::util::PREBUILT_ENV, "1")
        // Straight to the file, not through us: a run outlives a matrix that dies, and then
        // tears its stack down (the death signal below) instead of failing on a closed pipe.
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it makes the kernel send
    // the run SIGINT (stop and tear down) when the matrix dies.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start `cargo xtask run`: {e}"))?;
    let mut phase = String::new();
    let mut read = 0u64;
    let mut pending = Vec::new();
    let mut forwarded = false;
    let status = loop {
        let exited = match child.try_wait() {
            Ok(exited) => exited,
            Err(e) => {
                // Never leave a run going while the next one starts.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot wait for `cargo xtask run`: {e}"));
            }
        };
        // The run's phases as they change, from the whole lines written since the last look.
        pending.extend(appended(&log_path, &mut read));
        let whole = pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&pending[..whole]).lines() {
            if let Some(tag) = phase_tag(line)
                && tag != phase
            {
                println!("  {}", line.trim_start_matches("run: "));
                phase = tag.to_string();
            }
        }
        pending.drain(..whole);
        if let Some(status) = exited {
            break status;
        }
        // A SIGTERM to us alone: the run must still stop and tear down (Ctrl-C reaches it too).
        if STOP.load(Ordering::SeqCst) && !forwarded {
            // SAFETY: signalling our own child; SIGINT makes it stop and tear down.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            forwarded = true;
        }
        std::thread::sleep(POLL);
    };
    if !status.success() {
        // The run tears its stack down itself; this catches a run that could not.
        if let Err(e) = crate::stack::down() {
            eprintln!("matrix: cleanup after the failed run: {e:#}");
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let said = text.lines().rev().find_map(|l| l.strip_prefix("cargo xtask: ")).map(str::to_string);
        return Err(said.unwrap_or_else(|| format!("`cargo xtask run` exited with {status}")));
    }
    shared::verdict::read(dir)
}

/// The bytes appended to `path` since offset `read`, which moves past them.
fn appended(path: &Path, read: &mut u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(*read)).is_ok()
        && let Ok(n) = f.read_to_end(&mut out)
    {
        *read += n as u64;
    }
    out
}

/// The phase of a `run: [phase] …` line (`load`, `reload 1`, `after reload`, …).
fn phase_tag(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("run: [")?;
    let tag = &rest[..rest.find(']')?];
    Some(tag)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        m: MatrixOptions,
    }

    fn parse(args: &[&str]) -> Result<MatrixOptions> {
        let mut all = vec!["matrix"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        validate(&cli.m)?;
        Ok(cli.m)
    }

    #[test]
    fn the_default_matrix_spans_every_axis_the_issue_names() {
        let o = parse(&[]).unwrap();
        let cells = o.axes().cells();
        assert_eq!(cells.len(), 16);
        assert_eq!(cells[0].label(), "kong-2.7 · js 0.5.0 · python 0.30 · cpu none");
        assert_eq!(cells[15].label(), "fixed · js 0.6.0 · python 0.36 · cpu 0.15");
        assert_eq!(o.load_args().join(" "), "--reload-at 4s --duration 28s --users 8 --reload-phase 7s");
        assert_eq!(o.repeat, 1);
    }

    #[test]
    fn axes_take_lists_and_bad_input_is_refused_with_a_reason() {
        let o = parse(&["--behaviour", "fixed", "--cpu-limit", "0.5", "--repeat", "3"]).unwrap();
        assert_eq!(o.axes().cells().len(), 4);
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["--js-pdk", "0.5.0,0.5.0"]).contains("lists 0.5.0 twice"));
        assert!(err(&["--cpu-limit", "lots"]).contains("'lots'"));
        assert!(err(&["--python-pdk", "0.40"]).contains("0.40"));
        assert!(err(&["--reload-at", "25s"]).contains("leaves less than 4s of the load's --duration 28s"));
        assert!(err(&["--reload-at", "0s"]).contains("0s"));
        assert!(err(&["--repeat", "0"]).contains("'0'"), "{}", err(&["--repeat", "0"]));
    }

    #[test]
    fn a_runs_phase_is_read_from_its_progress_lines() {
        assert_eq!(phase_tag("run: [after reload]   4.0 s / 20 s: 10 requests"), Some("after reload"));
        assert_eq!(phase_tag("run: [reload 1] at 4.01 s"), Some("reload 1"));
        assert_eq!(phase_tag("stack: up"), None);
    }
}
