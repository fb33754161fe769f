//! `cargo xtask run`: the main job. Brings the gateway up, attaches the probe to its process
//! tree, runs the load, reloads at the chosen offset (recording the exact instant), stops,
//! writes the artifacts and a summary, and tears everything down, on Ctrl-C and errors too.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::stack::{self, GatewayOptions, UpOptions, phase};
use crate::summary;
use crate::util::{require_root, workspace_root};
use shared::clock::{monotonic_ns, realtime_ns};

/// Which gateway the run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunTarget {
    /// compose when a Docker engine answers, else the local stand-in.
    Auto,
    /// The local stand-in gateway.
    Local,
    /// Real Kong 2.7.1 by docker compose.
    Compose,
    /// A gateway already running, given by its nginx master's `--pid`.
    Attach,
}

/// Options of `cargo xtask run`.
#[derive(Args, Clone, Debug)]
pub struct RunOptions {
    /// When to reload, from the start of the load: one instant (10s) or a list (10s,40s,70s).
    #[arg(
        long,
        value_name = "WHEN[,WHEN...]",
        value_delimiter = ',',
        value_parser = shared::duration::parse,
        required_unless_present = "reload_every"
    )]
    pub reload_at: Vec<Duration>,
    /// Reload again every this long until the load ends: after the last --reload-at, or from
    /// the start of the load (e.g. 30s).
    #[arg(long, value_parser = shared::duration::parse)]
    pub reload_every: Option<Duration>,
    /// How long the load runs. 30 s with the reload at 10 s holds old worker 0's exit, which its
    /// plugin-server pumps can put 10 s or more after the reload (kong/README.md).
    #[arg(long, default_value = "30s", value_parser = shared::duration::parse)]
    pub duration: Duration,
    /// Load-test users, spread evenly over the endpoints.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
    /// Which gateway to drive.
    #[arg(long, value_enum, default_value_t = RunTarget::Auto)]
    pub target: RunTarget,
    /// The nginx master of an already running gateway (with --target attach).
    #[arg(long, conflicts_with = "container")]
    pub pid: Option<u32>,
    /// With --target attach: the container whose nginx master to attach to (docker or podman
    /// name or id, or its cgroup's name).
    #[arg(long)]
    pub container: Option<String>,
    /// With --target attach: a command that reloads the gateway (default: SIGHUP to the master).
    #[arg(long)]
    pub reload_cmd: Option<String>,
    /// How the gateway runs its plugin servers (stand-in and compose targets).
    #[command(flatten)]
    pub gateway: GatewayOptions,
    /// Where to write the artifacts (default: out/run-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stand-in only: where in old worker 0's 10 s plugin-server pump window the reload lands,
    /// i.e. the time since the servers last wrote, modulo 10 s (kong/README.md). 7s lets the
    /// new servers bind before the old worker 0 exits, as in the reproduction; when the windows
    /// end between the quit and the new workers' first requests (see --worker-init; a band of
    /// about 0.2 s that moves with the master's re-init, 8.3–9.2 s here) it exits first.
    #[arg(long, default_value = "7s", value_parser = parse_phase)]
    pub reload_phase: Duration,
    /// Your own route to load instead of the plugin routes (repeatable): `PATH[=HEADER]`, the
    /// path and the response header that shows its plugin ran (none: the status alone).
    #[arg(long = "endpoint", value_name = "PATH[=HEADER]", value_parser = parse_endpoint)]
    pub endpoints: Vec<String>,
    /// The gateway's proxy URL the load goes to (default: http://127.0.0.1:8000).
    #[arg(long, value_parser = parse_host)]
    pub host: Option<String>,
    /// Where the stand-in and reflection listen (stand-in only).
    #[command(flatten)]
    pub addr: stack::Addresses,
}

fn parse_endpoint(s: &str) -> std::result::Result<String, String> {
    shared::endpoint::parse(s).map(|_| s.to_string())
}

fn parse_host(s: &str) -> std::result::Result<String, String> {
    let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {
            Ok(s.trim_end_matches('/').to_string())
        }
        _ => Err(format!("--host {s:?}: expected a URL such as http://127.0.0.1:8000")),
    }
}

/// The bundle `reloadscope bundle` writes into the run directory.
const BUNDLE: &str = "reloadscope-bundle.tar.gz";

pub fn parse_phase(s: &str) -> std::result::Result<Duration, String> {
    let d = shared::duration::parse(s)?;
    if d >= phase::WINDOW {
        return Err(format!("'{s}' is not inside the 10 s window"));
    }
    Ok(d)
}

/// How long the probe keeps watching after the load for old workers to finish shutting down.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Closest two reloads may be: a reload's new workers need about this long to start.
const MIN_RELOAD_GAP: Duration = Duration::from_secs(1);
/// Most reloads in one run.
const MAX_RELOADS: usize = 100;

impl RunOptions {
    /// When each reload goes out, from the start of the load, in order: the --reload-at
    /// instants, then every --reload-every after the last of them until the load ends.
    pub fn reloads(&self) -> Vec<Duration> {
        let mut at = self.reload_at.clone();
        if let Some(every) = self.reload_every.filter(|e| !e.is_zero()) {
            let mut next = at.last().map_or(every, |&l| l + every);
            while next < self.duration && at.len() <= MAX_RELOADS {
                at.push(next);
                next += every;
            }
        }
        at
    }
}

/// Checks the options that need no system state.
pub fn validate(opts: &RunOptions) -> Result<()> {
    let fmt = shared::duration::format;
    if let Some(every) = opts.reload_every
        && every < MIN_RELOAD_GAP
    {
        bail!("--reload-every {}: reloads must be at least {} apart", fmt(every), fmt(MIN_RELOAD_GAP));
    }
    let reloads = opts.reloads();
    if reloads.is_empty() {
        bail!(
            "--reload-every {} leaves no reload inside the load's --duration {}",
            fmt(opts.reload_every.unwrap_or_default()),
            fmt(opts.duration)
        );
    }
    if reloads.len() > MAX_RELOADS {
        bail!("more than {MAX_RELOADS} reloads in one run");
    }
    for pair in reloads.windows(2) {
        if pair[1] < pair[0] + MIN_RELOAD_GAP {
            bail!(
                "--reload-at {} after {}: reloads must come in order, at least {} apart",
                fmt(pair[1]),
                fmt(pair[0]),
                fmt(MIN_RELOAD_GAP)
            );
        }
    }
    if let Some(&last) = reloads.last()
        && last >= opts.duration
    {
        bail!("--reload-at {} is not inside the load's --duration {}", fmt(last), fmt(opts.duration));
    }
    match (opts.target, opts.pid.is_some() || opts.container.is_some()) {
        (RunTarget::Attach, false) => {
            bail!("--target attach needs --pid <nginx master pid> or --container <name>")
        }
        (RunTarget::Attach, true) => {}
        (_, true) => bail!("--pid and --container are only for --target attach"),
        _ => {}
    }
    if opts.reload_cmd.is_some() && opts.target != RunTarget::Attach {
        bail!("--reload-cmd is only for --target attach");
    }
    if !opts.endpoints.is_empty() && opts.target != RunTarget::Attach {
        bail!("--endpoint is only for --target attach (the stand-in and compose load their plugin routes)");
    }
    if opts.host.is_some() && opts.target != RunTarget::Attach {
        bail!(
            "--host is only for --target attach (the stand-in listens on --listen, compose on {})",
            stack::DEFAULT_LISTEN
        );
    }
    if !opts.addr.are_default() && matches!(opts.target, RunTarget::Attach | RunTarget::Compose) {
        bail!("--listen and --reflection are for the local stand-in (attach takes --host)");
    }
    Ok(())
}

/// Checks against the running system that are cheap, before anything is built or started.
pub fn preflight(opts: &RunOptions) -> Result<()> {
    validate(opts)?;
    require_root("the probe loads eBPF programs and the stand-in runs nginx and plugin servers")?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): reloadscope needs CONFIG_DEBUG_INFO_BTF=y");
    }
    if let Some(pid) = opts.pid {
        check_master(pid)?;
    }
    if opts.target == RunTarget::Compose && !stack::compose_engine_answers() {
        bail!("--target compose needs a running Docker engine, and none answers here");
    }
    Ok(())
}

/// What a run started and must stop, whatever happens.
#[derive(Default)]
struct Teardown {
    /// `reloadscope record`.
    recorder: Option<Child>,
    /// The load test.
    loadtest: Option<Child>,
    /// Whether we brought the gateway up (and so take it down).
    stack_started: bool,
}

impl Teardown {
    fn stop_children(&mut self) {
        let children = [("reloadscope", self.recorder.take()), ("loadtest", self.loadtest.take())];
        for (name, mut child) in children.into_iter().filter_map(|(n, c)| Some((n, c?))) {
            if child.try_wait().ok().flatten().is_none() {
                // SIGINT first: the load test and the recorder both save what they have.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if child.try_wait().ok().flatten().is_none() {
                    eprintln!("run: {name} did not stop on SIGINT; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.stop_children();
        if self.stack_started {
            println!("run: tearing the stack down");
            if let Err(e) = stack::down() {
                eprintln!("run: teardown failed: {e:#}");
            }
        }
    }
}

fn resolve_target(t: RunTarget) -> Result<RunTarget> {
    Ok(match t {
        RunTarget::Auto if stack::compose_engine_answers() => RunTarget::Compose,
        RunTarget::Auto => {
            println!("run: no Docker engine answers: using the local stand-in gateway");
            RunTarget::Local
        }
        RunTarget::Compose if !stack::compose_engine_answers() => {
            bail!("--target compose needs a running Docker engine, and none answers here")
        }
        other => other,
    })
}

/// Fails unless `pid` is an nginx master process.
fn check_master(pid: u32) -> Result<()> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("no process with pid {pid}"))?;
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !text.starts_with("nginx: master process") {
        bail!("pid {pid} is not an nginx master process (its command line is '{}')", text.trim());
    }
    Ok(())
}

/// Starts `program` with stdout and stderr appended to `log`; `watch` sees each line first.
fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    mut watch: impl FnMut(&str) + Send + 'static,
) -> Result<Child> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let file = File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    std::thread::spawn(move || {
        let mut file = std::io::BufWriter::new(file);
        for line in rx {
            watch(&line);
            let _ = writeln!(file, "{line}");
            let _ = file.flush();
        }
    });
    Ok(child)
}

/// Requests and failures so far, from the load test's request log.
fn progress(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines = text.lines().count();
    let failed = text.lines().filter(|l| l.contains("\"outcome\":\"failed\"")).count();
    (lines, failed)
}

/// Ctrl-C: stops the load and the probe (both keep what they collected), tears the stack down,
/// and says where the partial artifacts are.
fn interrupted(mut teardown: Teardown, out: &Path) -> anyhow::Error {
    println!("run: interrupted: stopping the load and the probe, keeping what was collected");
    teardown.stop_children();
    drop(teardown);
    anyhow::anyhow!(
        "interrupted; partial artifacts are in {0} (`reloadscope analyze {0}` reads them)",
        out.display()
    )
}

/// Pids of the master's children still "shutting down" (old workers after a reload).
fn shutting_down(master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let ppid = shared::procstat::read(*pid).map(|s| s.ppid);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(master) && String::from_utf8_lossy(&cmdline).contains("is shutting down")
        })
        .collect()
}

/// Waits (at most [`SETTLE_LIMIT`]) until no old worker of `master` is still shutting down.
fn settle(master: u32) {
    let started = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(1);
    loop {
        let left = shutting_down(master);
        if left.is_empty() || STOP.load(Ordering::SeqCst) {
            return;
        }
        if started.elapsed() >= SETTLE_LIMIT {
            println!(
                "run: [settle] workers {left:?} are still shutting down after {} s; ending the trace anyway",
                SETTLE_LIMIT.as_secs()
            );
            return;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            println!(
                "run: [settle] {:.1} s: waiting for old workers {left:?} to finish shutting down",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the run where it is when Ctrl-C came.
fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) { bail!("interrupted") } else { Ok(()) }
}

/// Runs the whole job; see the module documentation.
pub fn run(opts: &RunOptions) -> Result<()> {
    preflight(opts)?;
    let target = resolve_target(opts.target)?;
    let out = opts.out.clone().unwrap_or_else(|| {
        workspace_root().join("out").join(format!("run-{}", realtime_ns() / 1_000_000_000))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut teardown = Teardown::default();
    let bin = workspace_root().join("target/release");

    let master = gateway_up(opts, target, &mut teardown)?;
    // `up` already said "Go plugin skipped: ..." where Go is missing.
    let go = if target == RunTarget::Attach { Ok(()) } else { stack::go_available() };
    check_stop()?;
    attach_probe(&bin, master, &out, opts.duration, &mut teardown)?;
    let endpoints = if !opts.endpoints.is_empty() {
        opts.endpoints.join(" ")
    } else if go.is_ok() {
        "go,python,js".to_string()
    } else {
        "python,js".to_string()
    };
    let endpoints = endpoints.as_str();
    let pump_anchor = align_phase(opts, target, endpoints)?;
    check_stop()?;
    teardown.loadtest = Some(start_load(&bin, &out, opts, target, endpoints)?);
    let reload = ReloadPlan { opts, target, master, pump_anchor, out: &out };
    let Some(load_status) = drive_load(&reload, &mut teardown)? else {
        return Err(interrupted(teardown, &out));
    };

    // Let the old workers finish shutting down (their exits, and the kills they cause, are part
    // of the reload), stop the probe, keep the stand-in's own log, summarise, tear down.
    settle(master);
    if STOP.load(Ordering::SeqCst) {
        return Err(interrupted(teardown, &out));
    }
    end_probe(&mut teardown)?;
    teardown.stop_children();
    if target == RunTarget::Local {
        let _ = std::fs::copy(stack::truth_log(), out.join("standin-ground-truth.jsonl"));
    }
    let text = summary::write(&out)?;
    drop(teardown);
    println!("{text}");
    // The analysis also draws the flamegraphs (spinning workers first) and links them.
    println!("run: [analyse] reloadscope analyze {} (report and flamegraphs)", out.display());
    crate::util::run(Command::new(bin.join("reloadscope")).arg("analyze").arg(&out))?;
    // One file for the issue: the report and what it was drawn from, under GitHub's limit.
    println!("run: [bundle] reloadscope bundle {}", out.display());
    crate::util::run(Command::new(bin.join("reloadscope")).arg("bundle").arg(&out))?;
    println!(
        "run: artifacts in {}; the report to paste is {}, the file to attach is {}",
        out.display(),
        out.join("report.md").display(),
        out.join(BUNDLE).display()
    );
    if !load_status.success() {
        bail!("the load test failed ({load_status})");
    }
    Ok(())
}

/// Where the gateway we bring up listens: the stand-in's --listen, compose's fixed port.
fn gateway_addr(opts: &RunOptions, target: RunTarget) -> &str {
    if target == RunTarget::Compose { stack::DEFAULT_LISTEN } else { &opts.addr.listen }
}

/// Phase 1, the gateway: the user's (attach), or ours brought up; returns its master's pid.
fn gateway_up(opts: &RunOptions, target: RunTarget, teardown: &mut Teardown) -> Result<u32> {
    if target == RunTarget::Attach {
        let pid = match (&opts.container, opts.pid) {
            (Some(name), _) => {
                let pid = shared::container::find_master(name).map_err(anyhow::Error::msg)?;
                println!("run: [attach] container {name}: nginx master is pid {pid}");
                pid
            }
            (None, pid) => pid.expect("validated"),
        };
        check_master(pid)?;
        return Ok(pid);
    }
    println!("run: [up] bringing the gateway up");
    stack::down()?;
    let listen = gateway_addr(opts, target);
    if target == RunTarget::Local && TcpListener::bind(listen).is_err() {
        bail!("{listen} is already in use by another program; stop it or choose another --listen");
    }
    teardown.stack_started = true;
    stack::up(&UpOptions {
        target: if target == RunTarget::Compose { stack::Target::Compose } else { stack::Target::Local },
        gateway: opts.gateway.clone(),
        addr: opts.addr.clone(),
    })?;
    stack::master_pid()
}

/// Phase 2, the probe on the master's whole tree (workers, plugin servers, later generations);
/// returns once it traces.
fn attach_probe(bin: &Path, master: u32, out: &Path, load: Duration, teardown: &mut Teardown) -> Result<()> {
    println!("run: [attach] reloadscope record --pid {master}");
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    // At most this long: the run ends the recording with SIGUSR1 once the load is over.
    let record_for = load + Duration::from_secs(300);
    let recorder = spawn_logged(
        Command::new(bin.join("reloadscope"))
            .args(["record", "--pid", &master.to_string(), "--out"])
            .arg(out.join("trace"))
            .args(["--duration", &format!("{}ms", record_for.as_millis())]),
        &out.join("reloadscope.log"),
        move |line| {
            if line.contains("reloadscope: tracing") {
                let _ = attached_tx.send(());
            }
        },
    )?;
    // In the teardown before the wait, so a failure stops it.
    teardown.recorder = Some(recorder);
    attached_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the probe did not attach within 60 s (see reloadscope.log)")
}

/// Phase 3a (stand-in only: its servers' output files are ours to read): waits until the reload
/// will land at the asked phase of old worker 0's pump windows; returns the windows' anchor.
fn align_phase(opts: &RunOptions, target: RunTarget, endpoints: &str) -> Result<Option<f64>> {
    if target != RunTarget::Local {
        return Ok(None);
    }
    let plugins: Vec<(&str, &str)> = endpoints
        .split(',')
        .map(|e| {
            let server = match e {
                "go" => "goplugin",
                "python" => "pythonplugin",
                _ => "jsplugin",
            };
            (e, server)
        })
        .collect();
    // The phase is the first reload's; later ones land where the clock puts them.
    Ok(Some(stack::align_reload_phase(
        gateway_addr(opts, target),
        &plugins,
        opts.gateway.workers,
        opts.reloads()[0],
        opts.reload_phase,
    )?))
}

/// Phase 3b: starts the load test.
fn start_load(
    bin: &Path,
    out: &Path,
    opts: &RunOptions,
    target: RunTarget,
    endpoints: &str,
) -> Result<Child> {
    let at: Vec<String> = opts.reloads().into_iter().map(shared::duration::format).collect();
    println!(
        "run: [load] {} users on {endpoints} for {}, reload at {}",
        opts.users,
        shared::duration::format(opts.duration),
        at.join(", ")
    );
    let host = opts.host.clone().unwrap_or_else(|| format!("http://{}", gateway_addr(opts, target)));
    let mut cmd = Command::new(bin.join("loadtest"));
    if opts.endpoints.is_empty() {
        cmd.args(["--endpoints", endpoints]);
    }
    for e in &opts.endpoints {
        cmd.args(["--endpoint", e]);
    }
    spawn_logged(
        cmd.args(["--host", &host, "-u", &opts.users.to_string()])
            .args(["-t", &format!("{}s", opts.duration.as_secs_f64().ceil() as u64)])
            // All users at once, so the reload offset means the same as in the reproduction.
            .args(["--increase-rate", &opts.users.to_string()])
            .args(["--no-reset-metrics", "--request-log-out"])
            .arg(out.join("requests.jsonl"))
            .arg("--report-file")
            .arg(out.join("goose-report.json"))
            .arg("--report-file")
            .arg(out.join("goose-report.html")),
        &out.join("loadtest.log"),
        |_| {},
    )
}

/// What the reload needs to know.
struct ReloadPlan<'a> {
    opts: &'a RunOptions,
    target: RunTarget,
    master: u32,
    pump_anchor: Option<f64>,
    out: &'a Path,
}

impl ReloadPlan<'_> {
    /// Adds this reload to `sent`, writes `reload.json` with all of them, and sends the reload
    /// from a thread (a `kong reload` takes a while).
    fn send(
        &self,
        elapsed: Duration,
        sent: &mut Vec<shared::reload::Reload>,
    ) -> Result<std::thread::JoinHandle<Result<()>>> {
        let (target, master) = (self.target, self.master);
        let realtime_ns = realtime_ns();
        let instant = shared::reload::Reload {
            offset_ms: elapsed.as_millis() as u64,
            monotonic_ns: monotonic_ns(),
            realtime_ns,
            pump_phase_s: self
                .pump_anchor
                .map(|a| phase::phase_at(a, realtime_ns as f64 / 1e9, phase::WINDOW.as_secs_f64())),
            master,
            how: match (&self.opts.reload_cmd, target) {
                (Some(cmd), _) => cmd.clone(),
                (None, RunTarget::Compose) => "docker compose exec kong kong reload".into(),
                (None, _) => format!("SIGHUP to nginx master {master}"),
            },
        };
        sent.push(instant);
        shared::reload::write_all(&self.out.join("reload.json"), sent)?;
        println!("run: [reload {}] at {:.2} s", sent.len(), elapsed.as_secs_f64());
        let cmd = self.opts.reload_cmd.clone();
        Ok(std::thread::spawn(move || match (cmd, target) {
            (Some(cmd), _) => crate::util::run(Command::new("sh").args(["-c", &cmd])),
            (None, RunTarget::Attach) => {
                // SAFETY: signalling the gateway the user named.
                if unsafe { libc::kill(master as i32, libc::SIGHUP) } != 0 {
                    bail!("cannot send SIGHUP to {master}: {}", std::io::Error::last_os_error());
                }
                Ok(())
            }
            (None, _) => stack::reload(),
        }))
    }
}

/// Phase 4: the load runs, each reload goes out at its offset, progress every second; returns
/// the load test's exit status, or `None` on Ctrl-C.
fn drive_load(plan: &ReloadPlan<'_>, teardown: &mut Teardown) -> Result<Option<std::process::ExitStatus>> {
    let opts = plan.opts;
    let schedule = opts.reloads();
    let request_log = plan.out.join("requests.jsonl");
    let load_start = Instant::now();
    let mut sent = Vec::new();
    let mut in_flight: Option<std::thread::JoinHandle<Result<()>>> = None;
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let status = loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let elapsed = load_start.elapsed();
        if let Some(&due) = schedule.get(sent.len())
            && elapsed >= due
        {
            // One reload at a time: the next waits for the previous command to return.
            finish_reload(in_flight.take());
            in_flight = Some(plan.send(load_start.elapsed(), &mut sent)?);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let (requests, failures) = progress(&request_log);
            let phase = match sent.len() {
                0 => "load".to_string(),
                1 if schedule.len() == 1 => "after reload".to_string(),
                n => format!("after reload {n}/{}", schedule.len()),
            };
            println!(
                "run: [{phase}] {:>5.1} s / {:.0} s: {requests} requests logged, {failures} failed",
                elapsed.as_secs_f64(),
                opts.duration.as_secs_f64()
            );
            last_print = Instant::now();
        }
        let loadtest = teardown.loadtest.as_mut().expect("the load test was started");
        if let Some(status) = loadtest.try_wait()? {
            break status;
        }
        if elapsed > opts.duration + Duration::from_secs(60) {
            bail!("the load test did not end within a minute of its duration");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        eprintln!("run: the load test exited with {status} (see loadtest.log)");
    }
    finish_reload(in_flight);
    match sent.len() {
        0 => eprintln!("run: the load ended before the reload offset; no reload happened"),
        n if n < schedule.len() => {
            eprintln!("run: the load ended after {n} of {} reloads", schedule.len())
        }
        _ => {}
    }
    Ok(Some(status))
}

/// Waits for a reload command to return, and says so when it failed.
fn finish_reload(handle: Option<std::thread::JoinHandle<Result<()>>>) {
    match handle.map(std::thread::JoinHandle::join) {
        Some(Ok(Err(e))) => eprintln!("run: the reload failed: {e:#}"),
        Some(Err(_)) => eprintln!("run: the reload thread panicked"),
        _ => {}
    }
}

/// Phase 5: ends the probe's window normally (SIGUSR1), waiting up to 30 s for it to write.
fn end_probe(teardown: &mut Teardown) -> Result<()> {
    println!("run: [stop] the load is over: ending the probe's window");
    let recorder = teardown.recorder.as_mut().expect("the probe was started");
    // SAFETY: signalling our own child; SIGUSR1 ends its recording normally.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGUSR1) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunOptions,
    }

    fn parse(args: &[&str]) -> Result<RunOptions> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        validate(&cli.run)?;
        Ok(cli.run)
    }

    #[test]
    fn the_readme_command_parses_with_its_defaults() {
        let o = parse(&["--reload-at", "10s"]).unwrap();
        assert_eq!((o.reloads(), o.duration, o.users), (vec![secs(10)], secs(30), 8));
        assert_eq!(o.target, RunTarget::Auto);
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn reloads_come_as_a_list_or_every_so_often() {
        let at = |args: &[&str]| parse(args).unwrap().reloads();
        assert_eq!(
            at(&["--reload-at", "10s,40s,70s", "--duration", "90s"]),
            vec![secs(10), secs(40), secs(70)]
        );
        assert_eq!(at(&["--reload-every", "30s", "--duration", "90s"]), vec![secs(30), secs(60)]);
        assert_eq!(
            at(&["--reload-at", "10s", "--reload-every", "30s", "--duration", "90s"]),
            vec![secs(10), secs(40), secs(70)]
        );
        assert_eq!(at(&["--reload-every", "60s", "--duration", "10m"]).len(), 9);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["--reload-at", "30s"]).contains("not inside"));
        assert!(err(&["--reload-at", "5x"]).contains("5x"));
        assert!(err(&["--reload-at", "1s", "--target", "bogus"]).contains("bogus"));
        assert!(err(&["--reload-at", "1s", "--target", "attach"]).contains("--pid"));
        assert!(err(&["--reload-at", "1s", "--pid", "1"]).contains("only for --target attach"));
        assert!(err(&["--reload-at", "0s"]).contains("more than 0"));
        assert!(err(&["--reload-at", "1s", "--reload-phase", "10s"]).contains("not inside the 10 s window"));
        assert_eq!(parse(&["--reload-at", "1s"]).unwrap().reload_phase, Duration::from_secs(7));
        assert!(err(&["--reload-at", "1s", "--worker-init", "6s"]).contains("longer than 5s"));
        let o = parse(&["--reload-at", "1s"]).unwrap();
        assert_eq!(o.gateway.worker_init, Duration::from_millis(300));
        assert!(o.gateway.worker_init_is_default());
        for zero in ["0s", "0ms", "0.0s"] {
            let o = parse(&["--reload-at", "1s", "--worker-init", zero]).unwrap();
            assert_eq!(o.gateway.worker_init, Duration::ZERO, "{zero}");
            assert!(!o.gateway.worker_init_is_default());
        }
        assert!(
            err(&["--reload-at", "1s", "--worker-init", "0.5ms"]).contains("whole number of milliseconds")
        );
        assert!(err(&["--reload-at", "1s", "--worker-init", "300"]).contains("300"));
        assert!(err(&[]).contains("--reload-at"));
        assert!(err(&["--reload-at", "10s,5s"]).contains("in order"));
        assert!(err(&["--reload-at", "10s,10500ms"]).contains("at least 1s apart"));
        assert!(err(&["--reload-at", "10s,40s"]).contains("--reload-at 40s is not inside"));
        assert!(err(&["--reload-every", "500ms"]).contains("at least 1s apart"));
        assert!(err(&["--reload-every", "30s"]).contains("leaves no reload"));
        assert!(err(&["--reload-every", "1s", "--duration", "10m"]).contains("more than 100"));
        let attach = ["--reload-at", "1s", "--target", "attach", "--pid", "1"];
        assert!(
            err(&[&attach[..], &["--listen", "127.0.0.1:1"]].concat()).contains("for the local stand-in")
        );
        let o = parse(&["--reload-at", "1s", "--listen", "127.0.0.1:18000"]).unwrap();
        assert_eq!(
            (o.addr.listen.as_str(), o.addr.reflection.as_str()),
            ("127.0.0.1:18000", "127.0.0.1:9000")
        );
    }
}
