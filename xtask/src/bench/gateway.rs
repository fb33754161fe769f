//! `cargo xtask bench --gateway`: what tracing the stand-in costs, tool beside tool. The
//! stand-in (fixed behaviour, 4 workers, no worker header) serves `/python` to `wrk -t1 -c8`;
//! each round measures every tool once, each between two untraced baselines, and a tool's
//! figure is its throughput over the mean of the baselines around it (this machine's untraced
//! rate alone drifts by tens of percent, so only ratios in one run compare). The medians over
//! the rounds are printed, with the kernel's own count of each eBPF program's runs and time
//! (`record --prog-stats`) and the recorder's CPU time, and written to
//! `target/bench/gateway.json`.
//!
//! Beside each program's cost goes the same program loaded empty at the same attach points
//! (`record --floor`): what dispatching to it and counting it cost with no work at all, the
//! floor its figure stands on. `--compare BIN` measures another reloadscope build in the same
//! rounds, for a before and after that one run's drift cannot fake.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};
use shared::progstats::{self, Beside, ProgRow, ProgStats};

use super::{BenchOptions, median};
use crate::stack::{self, Addresses, Behaviour, GatewayOptions, JsPdk, PyPdk, Switch, Target, UpOptions};
use crate::util::{require_root, workspace_root};

/// wrk's shape, as in the measurement the issue quotes: one thread, 8 connections.
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 8;
/// The route: a real Python plugin server behind every request.
const ROUTE: &str = "/python";
/// How long a tool may take to say it is attached.
const ATTACH_LIMIT: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A tracer measured against the untraced gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// reloadscope with every probe and 99 Hz samples.
    #[value(name = "reloadscope")]
    Reloadscope,
    /// The same with the kernel's run-time statistics on (two clock reads per program run),
    /// for the per-program table; its throughput is shown apart, as it pays for the counting.
    #[value(name = "reloadscope-counted")]
    ReloadscopeCounted,
    /// reloadscope's programs loaded empty at the same attach points, counted: what the attach
    /// points alone cost, the floor under the per-program figures.
    #[value(name = "reloadscope-floor")]
    ReloadscopeFloor,
    /// The reloadscope binary given with `--compare`, counted like `ReloadscopeCounted`.
    #[value(name = "reloadscope-compared")]
    ReloadscopeCompared,
    /// reloadscope without samples.
    #[value(name = "reloadscope-no-samples")]
    ReloadscopeNoSamples,
    /// bpftrace with two counting probes (epoll_wait entries and socket sends of nginx).
    Bpftrace,
    /// perf record at the sampling rate with DWARF call graphs, on the workers.
    Perf,
    /// strace -f on the workers.
    Strace,
}

impl Tool {
    const ALL: [Tool; 8] = [
        Tool::Reloadscope,
        Tool::ReloadscopeNoSamples,
        Tool::ReloadscopeCounted,
        Tool::ReloadscopeCompared,
        Tool::ReloadscopeFloor,
        Tool::Bpftrace,
        Tool::Perf,
        Tool::Strace,
    ];

    fn label(self, hz: u64) -> String {
        match self {
            Tool::Reloadscope => format!("reloadscope, all probes + {hz} Hz samples"),
            Tool::ReloadscopeNoSamples => "reloadscope, no samples".into(),
            Tool::ReloadscopeCounted => format!("reloadscope, {hz} Hz samples, counting its own cost"),
            Tool::ReloadscopeFloor => "reloadscope's attach points, empty programs, counted".into(),
            Tool::ReloadscopeCompared => {
                format!("the --compare build, {hz} Hz samples, counting its own cost")
            }
            Tool::Bpftrace => "bpftrace, 2 counting probes".into(),
            Tool::Perf => format!("perf record, {hz} Hz, dwarf"),
            Tool::Strace => "strace -f on the workers".into(),
        }
    }

    /// The program it needs on PATH (reloadscope is ours, built).
    fn program(self) -> Option<&'static str> {
        match self {
            Tool::Reloadscope
            | Tool::ReloadscopeNoSamples
            | Tool::ReloadscopeCounted
            | Tool::ReloadscopeFloor
            | Tool::ReloadscopeCompared => None,
            Tool::Bpftrace => Some("bpftrace"),
            Tool::Perf => Some("perf"),
            Tool::Strace => Some("strace"),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A tool attached to the gateway, to be stopped after the load.
struct Attached {
    child: Child,
    /// The signal that ends it cleanly (it writes what it has).
    stop: libc::c_int,
    /// reloadscope's trace directory.
    trace: Option<PathBuf>,
}

impl Attached {
    /// Ends the tool and waits for it; kills it after 60 s.
    fn detach(mut self) -> Result<Option<PathBuf>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, self.stop) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("a tool did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.trace.take())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` in its own process group (so a Ctrl-C reaches only the bench, which stops it)
/// with stdout or stderr piped, and returns once a line satisfies `ready`; the rest is drained in
/// the background so the tool never blocks on it.
fn start_until(
    cmd: &mut Command,
    stderr: bool,
    ready: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Child> {
    let (out, err) = if stderr { (Stdio::null(), Stdio::piped()) } else { (Stdio::piped(), Stdio::null()) };
    let mut child = cmd
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let stream: Box<dyn std::io::Read + Send> =
        if stderr { Box::new(child.stderr.take().unwrap()) } else { Box::new(child.stdout.take().unwrap()) };
    let (tx, rx) = mpsc::channel::<std::result::Result<(), String>>();
    std::thread::spawn(move || {
        let mut told = false;
        let mut last = Vec::new();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if !told && ready(&line) {
                told = tx.send(Ok(())).is_ok();
            } else if !told {
                last.push(line);
            }
        }
        if !told {
            let tail = last.len().saturating_sub(3);
            let _ = tx.send(Err(last[tail..].join(" / ")));
        }
    });
    let what = format!("{:?}", cmd.get_program());
    let failed = match rx.recv_timeout(ATTACH_LIMIT) {
        Ok(Ok(())) => return Ok(child),
        Ok(Err(said)) => format!("{what} ended before it was attached: {said}"),
        Err(_) => format!("{what} did not say it was attached within {} s", ATTACH_LIMIT.as_secs()),
    };
    let _ = child.kill();
    let _ = child.wait();
    bail!(failed)
}

/// What every measurement needs.
struct Bench<'a> {
    opts: &'a BenchOptions,
    bin: PathBuf,
    out: PathBuf,
    url: String,
    master: u32,
    workers: Vec<u32>,
}

impl Bench<'_> {
    /// Attaches `tool` for round `round`.
    fn attach(&self, tool: Tool, round: u32) -> Result<Attached> {
        let hz = self.opts.sample_hz.to_string();
        let pids = || self.workers.iter().map(u32::to_string).collect::<Vec<_>>();
        match tool {
            Tool::Reloadscope
            | Tool::ReloadscopeNoSamples
            | Tool::ReloadscopeCounted
            | Tool::ReloadscopeFloor
            | Tool::ReloadscopeCompared => {
                let (samples, name) = match tool {
                    Tool::ReloadscopeNoSamples => ("0", "nosamples"),
                    Tool::ReloadscopeCounted => (hz.as_str(), "counted"),
                    Tool::ReloadscopeFloor => (hz.as_str(), "floor"),
                    Tool::ReloadscopeCompared => (hz.as_str(), "compared"),
                    _ => (hz.as_str(), "samples"),
                };
                let trace = self.out.join(format!("round{round}-{name}"));
                let _ = std::fs::remove_dir_all(&trace);
                let exe = match (&self.opts.compare, tool) {
                    (Some(other), Tool::ReloadscopeCompared) => other.clone(),
                    _ => self.bin.join("reloadscope"),
                };
                let mut cmd = Command::new(exe);
                cmd.args(["record", "--pid", &self.master.to_string()])
                    .args(["--sample-hz", samples, "--duration", &format!("{}s", self.opts.seconds + 120)])
                    .arg("--out")
                    .arg(&trace);
                if matches!(
                    tool,
                    Tool::ReloadscopeCounted | Tool::ReloadscopeFloor | Tool::ReloadscopeCompared
                ) {
                    cmd.arg("--prog-stats");
                }
                if tool == Tool::ReloadscopeFloor {
                    cmd.arg("--floor");
                }
                let child = start_until(&mut cmd, true, |l| l.contains("reloadscope: tracing"))?;
                Ok(Attached { child, stop: libc::SIGUSR1, trace: Some(trace) })
            }
            Tool::Bpftrace => {
                let script = "tracepoint:syscalls:sys_enter_epoll_wait /comm == \"nginx\"/ { @epoll = count(); } \
                              tracepoint:sock:sock_send_length /comm == \"nginx\"/ { @send = count(); }";
                let child = start_until(Command::new("bpftrace").args(["-e", script]), false, |l| {
                    l.starts_with("Attaching")
                })?;
                // "Attaching N probes..." comes just before the attach itself.
                std::thread::sleep(Duration::from_millis(500));
                Ok(Attached { child, stop: libc::SIGINT, trace: None })
            }
            Tool::Perf => {
                let child = Command::new("perf")
                    .args(["record", "-q", "-F", &hz, "--call-graph", "dwarf", "-p", &pids().join(",")])
                    .arg("-o")
                    .arg(self.out.join("perf.data"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .context("cannot start perf")?;
                // perf says nothing when it has attached: give it a second.
                std::thread::sleep(Duration::from_secs(1));
                Ok(Attached { child, stop: libc::SIGINT, trace: None })
            }
            Tool::Strace => {
                let mut cmd = Command::new("strace");
                cmd.args(["-f", "-o", "/dev/null"]);
                for p in pids() {
                    cmd.args(["-p", &p]);
                }
                // strace announces each process it attached to; the last one means all are.
                let want = self.workers.len();
                let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let child = start_until(&mut cmd, true, move |l| {
                    l.contains("attached") && seen.fetch_add(1, Ordering::SeqCst) + 1 >= want
                })?;
                Ok(Attached { child, stop: libc::SIGINT, trace: None })
            }
        }
    }

    /// Requests per second `wrk` got over the bench's seconds.
    fn wrk(&self) -> Result<f64> {
        let out = Command::new("wrk")
            .args(["-t", &WRK_THREADS.to_string(), "-c", &WRK_CONNECTIONS.to_string()])
            .args(["-d", &format!("{}s", self.opts.seconds), &self.url])
            .process_group(0)
            .output()
            .context("cannot run wrk (cargo xtask setup installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk(&text).with_context(|| format!("wrk printed no rate:\n{text}"))
    }
}

/// The `Requests/sec:` figure of wrk's output.
fn parse_wrk(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())
}

/// Brings the stand-in up for the bench, and takes it down on drop.
struct Gateway;

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Err(e) = stack::down() {
            eprintln!("bench: teardown failed: {e:#}");
        }
    }
}

/// One tool's throughput ratios over the rounds.
struct Kept {
    tool: Tool,
    ratios: Vec<f64>,
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    require_root("the benchmark loads the probe and runs the stand-in")?;
    if !on_path("wrk") {
        bail!("wrk is not installed (cargo xtask setup installs it)");
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    if opts.tools.contains(&Tool::ReloadscopeCompared) && opts.compare.is_none() {
        bail!("--tools reloadscope-compared needs --compare PATH (the other reloadscope binary)");
    }
    if let Some(other) = &opts.compare
        && !other.is_file()
    {
        bail!("--compare {}: no such file", other.display());
    }
    let asked: &[Tool] = if opts.tools.is_empty() { &Tool::ALL } else { &opts.tools };
    let tools: Vec<Tool> = asked
        .iter()
        .copied()
        .filter(|&t| t != Tool::ReloadscopeCompared || opts.compare.is_some())
        .filter(|t| t.program().is_none_or(on_path))
        .collect();
    for t in asked.iter().filter(|t| !tools.contains(t)) {
        if let Some(program) = t.program() {
            println!("bench: {program} is not installed: left out");
        }
    }

    let out = workspace_root().join("target/bench/gateway");
    std::fs::create_dir_all(&out)?;
    stack::down()?;
    let _gateway = Gateway;
    let addr =
        Addresses { listen: stack::DEFAULT_LISTEN.into(), reflection: stack::DEFAULT_REFLECTION.into() };
    stack::up(&UpOptions {
        target: Target::Local,
        gateway: GatewayOptions {
            behaviour: Behaviour::Fixed,
            workers: 4,
            js_pdk: JsPdk::V060,
            python_pdk: PyPdk::V036,
            cpu_limit: None,
            worker_header: Switch::Off,
            inject: None,
            // No reload here, so no new workers whose start to model.
            worker_init: Duration::ZERO,
        },
        addr: addr.clone(),
    })?;
    let master = stack::master_pid()?;
    let bench = Bench {
        opts,
        bin: workspace_root().join("target/release"),
        url: format!("http://{}{ROUTE}", addr.listen),
        master,
        workers: stack::workers(master),
        out: out.clone(),
    };
    println!(
        "bench: stand-in (fixed, {} workers) on {}; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {} s per measurement, {} round(s) of {} tool(s)",
        bench.workers.len(),
        bench.url,
        opts.seconds,
        opts.rounds,
        tools.len()
    );
    // Warm every worker's plugin instance and the caches.
    bench.wrk()?;

    let mut kept: Vec<Kept> = tools.iter().map(|&tool| Kept { tool, ratios: Vec::new() }).collect();
    let mut baselines = Vec::new();
    let mut costs: Vec<ProgStats> = Vec::new();
    let mut floors: Vec<ProgStats> = Vec::new();
    let mut compared: Vec<ProgStats> = Vec::new();
    let mut dropped = 0;
    let started = Instant::now();
    let phases = opts.rounds as usize * (2 * tools.len() + 1);
    let mut done = 0;
    'rounds: for round in 1..=opts.rounds {
        let mut before = bench.wrk()?;
        baselines.push(before);
        done += 1;
        for k in kept.iter_mut() {
            if STOP.load(Ordering::SeqCst) {
                break 'rounds;
            }
            let attached = bench.attach(k.tool, round)?;
            let traced = bench.wrk()?;
            let trace = attached.detach()?;
            let after = bench.wrk()?;
            baselines.push(after);
            let ratio = traced / ((before + after) / 2.0);
            k.ratios.push(ratio);
            if let Some(trace) = trace {
                dropped += super::drops(&trace);
                match k.tool {
                    Tool::ReloadscopeCounted => costs.push(super::prog_stats(&trace)?),
                    Tool::ReloadscopeFloor => floors.push(super::prog_stats(&trace)?),
                    Tool::ReloadscopeCompared => compared.push(super::prog_stats(&trace)?),
                    _ => {}
                }
            }
            done += 2;
            let left = started.elapsed().as_secs_f64() / done as f64 * (phases - done) as f64;
            println!(
                "bench: round {round}/{}: {}: {traced:.0} req/s between {before:.0} and {after:.0} untraced: {:.1}% kept (about {left:.0} s left)",
                opts.rounds,
                k.tool.label(opts.sample_hz),
                100.0 * ratio
            );
            before = after;
        }
    }
    if STOP.load(Ordering::SeqCst) {
        println!("bench: interrupted: the figures below cover the finished measurements");
    }
    let costs = Costs { probe: &costs, floor: &floors, compared: &compared };
    report(opts, &kept, &baselines, &costs, dropped, &workspace_root().join("target/bench/gateway.json"))
}

/// Each program's median rates over the rounds.
fn median_rows(costs: &[ProgStats]) -> Vec<ProgRow> {
    let mut names: Vec<String> =
        costs.iter().flat_map(|c| c.programs.iter().map(|p| p.name.clone())).collect();
    names.sort();
    names.dedup();
    let mut rows: Vec<ProgRow> = names
        .into_iter()
        .map(|name| {
            let rows: Vec<ProgRow> = costs
                .iter()
                .filter_map(|c| c.programs.iter().find(|p| p.name == name).map(|p| p.row(c.window_ns)))
                .collect();
            let med = |f: fn(&ProgRow) -> f64| median(rows.iter().map(f).collect());
            ProgRow {
                name,
                runs_per_s: med(|r| r.runs_per_s),
                ns_per_run: med(|r| r.ns_per_run),
                cpu_percent: med(|r| r.cpu_percent),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    rows
}

/// Per-program rows as JSON.
fn rows_json(rows: &[ProgRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "runs_per_s": r.runs_per_s, "ns_per_run": r.ns_per_run, "cpu_percent": r.cpu_percent,
            })
        })
        .collect()
}

/// The kernel's counts over the rounds: the probe's, and its programs loaded empty.
struct Costs<'a> {
    probe: &'a [ProgStats],
    floor: &'a [ProgStats],
    /// The `--compare` build's.
    compared: &'a [ProgStats],
}

/// Prints both tables and writes them to `json`.
fn report(
    opts: &BenchOptions,
    kept: &[Kept],
    baselines: &[f64],
    costs: &Costs<'_>,
    dropped: u64,
    json: &Path,
) -> Result<()> {
    let lo = baselines.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = baselines.iter().copied().fold(0.0, f64::max);
    println!(
        "\nThroughput kept (median over {} round(s) of traced / mean of the untraced around it):\n",
        opts.rounds
    );
    println!("| tool | throughput kept | per round |\n|---|---:|---|");
    for k in kept.iter().filter(|k| !k.ratios.is_empty()) {
        let each: Vec<String> = k.ratios.iter().map(|r| format!("{:.1}%", 100.0 * r)).collect();
        println!(
            "| {} | {:.1}% | {} |",
            k.tool.label(opts.sample_hz),
            100.0 * median(k.ratios.clone()),
            each.join(", ")
        );
    }
    println!("\nUntraced baselines: {lo:.0} to {hi:.0} req/s ({} measurements).", baselines.len());
    let rows = median_rows(costs.probe);
    let kernel = median(costs.probe.iter().map(ProgStats::kernel_percent).collect());
    let recorder = median(costs.probe.iter().map(ProgStats::recorder_percent).collect());
    let floor_rows = median_rows(costs.floor);
    let floor_kernel = median(costs.floor.iter().map(ProgStats::kernel_percent).collect());
    let compared_rows = median_rows(costs.compared);
    let compared_kernel = median(costs.compared.iter().map(ProgStats::kernel_percent).collect());
    let compared_recorder = median(costs.compared.iter().map(ProgStats::recorder_percent).collect());
    println!(
        "\nreloadscope's cost per program at that load (kernel run-time statistics, samples on; median over {} round(s)):\n",
        costs.probe.len()
    );
    let mut beside = Vec::new();
    if !costs.compared.is_empty() {
        println!("Beside it, the --compare build, measured in the same rounds.");
        beside.push(Beside {
            label: "--compare build",
            rows: &compared_rows,
            kernel_percent: compared_kernel,
            recorder_percent: Some(compared_recorder),
        });
    }
    if !costs.floor.is_empty() {
        println!(
            "Beside it, the same programs loaded empty at the same attach points: what the attach \
             points and the counting cost with no work at all."
        );
        beside.push(Beside {
            label: "empty programs",
            rows: &floor_rows,
            kernel_percent: floor_kernel,
            recorder_percent: None,
        });
    }
    println!();
    print!("{}", progstats::table_beside(&rows, kernel, recorder, &beside));
    println!("\nRecords dropped by the kernel over all traced measurements: {dropped}.");
    let value = serde_json::json!({
        "route": ROUTE,
        "wrk": { "threads": WRK_THREADS, "connections": WRK_CONNECTIONS, "seconds": opts.seconds },
        "rounds": opts.rounds,
        "sample_hz": opts.sample_hz,
        "baselines": baselines,
        "tools": kept.iter().map(|k| serde_json::json!({
            "tool": k.tool.label(opts.sample_hz),
            "ratios": k.ratios,
            "median": median(k.ratios.clone()),
        })).collect::<Vec<_>>(),
        "programs": rows_json(&rows),
        "floor_programs": rows_json(&floor_rows),
        "floor_kernel_percent": floor_kernel,
        "compared": opts.compare.as_ref().filter(|_| !costs.compared.is_empty()).map(|bin| serde_json::json!({
            "binary": bin,
            "programs": rows_json(&compared_rows),
            "kernel_percent": compared_kernel,
            "recorder_percent": compared_recorder,
        })),
        "kernel_percent": kernel,
        "recorder_percent": recorder,
        "drops": dropped,
    });
    std::fs::write(json, serde_json::to_string_pretty(&value)?)?;
    println!("Written to {}.", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use shared::progstats::ProgStat;

    use super::*;

    #[test]
    fn wrk_rate_is_read_from_its_summary() {
        let text = "Running 6s test @ http://127.0.0.1:8000/python\n  1 threads and 8 connections\n\
                    17710 requests in 6.00s, 4.32MB read\nRequests/sec:   2951.31\nTransfer/sec:    737.32KB\n";
        assert_eq!(parse_wrk(text), Some(2951.31));
        assert_eq!(parse_wrk("no summary"), None);
    }

    #[test]
    fn per_program_rows_are_medians_over_rounds() {
        let round = |runs: u64, ns: u64| ProgStats {
            window_ns: 1_000_000_000,
            recorder_cpu_ns: 0,
            programs: vec![ProgStat { name: "unix_send".into(), runs, run_time_ns: runs * ns }],
        };
        let rows = median_rows(&[round(1000, 500), round(3000, 300), round(2000, 400)]);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].runs_per_s, rows[0].ns_per_run), (2000.0, 400.0));
    }
}
