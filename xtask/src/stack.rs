//! The system under test, up and down: `cargo xtask up|reload|down`.
//!
//! Two targets run the same routes (/go, /python, /js → reflection, each through its plugin):
//! `local`, the stand-in gateway on Debian's nginx + Lua (kong/standin), and `compose`, the
//! real Kong 2.7.1 by docker compose. The chosen target and options are kept in the prefix's
//! `stack.json`, so `reload` and `down` need no arguments. Every command is idempotent.

mod cgroup;
mod compose;
mod http;
mod local;
pub(crate) mod phase;
pub(crate) mod plugins;
mod procs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// Where the local stack keeps everything (override with RELOADSCOPE_STANDIN_PREFIX).
pub const DEFAULT_PREFIX: &str = "/tmp/reloadscope-standin";

/// Which gateway runs the routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The stand-in gateway on Debian's nginx + lua-nginx-module (no Docker needed).
    Local,
    /// Real Kong 2.7.1 and reflection by docker compose.
    Compose,
}

/// How the stand-in manages plugin servers and their instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Behaviour {
    /// Kong 2.7.1: SIGKILL of the old generation, reset only on "no plugin instance", unbounded
    /// busy-wait on claims.
    #[value(name = "kong-2.7")]
    Kong27,
    /// The later Kong fixes: SIGTERM, reset on any error, bounded waits.
    Fixed,
}

/// The kong-pdk release that serves the JS plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JsPdk {
    /// Crashes on an error reply (`has is not defined`): the JS crash loop of #8531.
    #[value(name = "0.5.0")]
    V050,
    /// Has the fix: stale ids are reported and reset like Python's.
    #[value(name = "0.6.0")]
    V060,
}

/// The kong-pdk release (PyPI) that serves the Python plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PyPdk {
    /// The release the reproduction installed (PyPI's "0.30").
    #[value(name = "0.30")]
    V030,
    /// PyPI's newest; the same wire protocol (kong/README.md).
    #[value(name = "0.36")]
    V036,
}

impl PyPdk {
    /// Every release the stand-in installs.
    pub const ALL: [PyPdk; 2] = [PyPdk::V030, PyPdk::V036];

    /// The PyPI version string.
    pub fn version(self) -> &'static str {
        match self {
            PyPdk::V030 => "0.30",
            PyPdk::V036 => "0.36",
        }
    }
}

/// How the gateway runs its plugin servers; shared by `cargo xtask up` and `cargo xtask run`.
#[derive(Args, Clone, Debug)]
pub struct GatewayOptions {
    /// Plugin-server lifecycle of the stand-in (compose is always Kong 2.7.1).
    #[arg(long, value_enum, default_value_t = Behaviour::Kong27)]
    pub behaviour: Behaviour,
    /// nginx worker processes (several, so per-worker effects show).
    #[arg(long, default_value_t = DEFAULT_WORKERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// kong-pdk version for the JS plugin server.
    #[arg(long, value_enum, default_value_t = JsPdk::V050)]
    pub js_pdk: JsPdk,
    /// kong-pdk version for the Python plugin server.
    #[arg(long, value_enum, default_value_t = PyPdk::V036)]
    pub python_pdk: PyPdk,
    /// CPU limit of the gateway in CPUs (cgroup quota; compose defaults to 0.15 as in #8531).
    #[arg(long)]
    pub cpu_limit: Option<f64>,
    /// Stand-in only: answer with `x-standin-worker` (a test aid); `off` behaves as real Kong,
    /// which names no worker, so only the kernel can.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub worker_header: Switch,
    /// Stand-in only, a test aid: a fault to inject (the product never relies on it).
    #[arg(long, value_enum)]
    pub inject: Option<Inject>,
    /// Stand-in only: how long each worker's init_worker holds it before it serves. Kong 2.7.1
    /// loads its config and builds its router there; the reproduction's slowest /go request
    /// (202 ms across the reload) bounds that near 0.3 s (kong/README.md).
    #[arg(long, default_value = DEFAULT_WORKER_INIT, value_parser = parse_worker_init)]
    pub worker_init: Duration,
}

/// `--workers`' default: several, so per-worker effects show.
pub const DEFAULT_WORKERS: u32 = 4;

/// `--worker-init`'s default: the reproduction's bound on Kong 2.7.1's init_worker.
pub const DEFAULT_WORKER_INIT: &str = "300ms";
/// The same, as a duration.
const DEFAULT_WORKER_INIT_TIME: Duration = Duration::from_millis(300);
/// The longest `--worker-init` taken: tests widen the slot after the quit with it, but 5 s
/// already holds the new workers for a sixth of a default run.
const MAX_WORKER_INIT: Duration = Duration::from_secs(5);

fn parse_worker_init(s: &str) -> std::result::Result<Duration, String> {
    // No wait at all is a valid model here, unlike for the durations `parse` is made for.
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if number != s && number.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    let d = shared::duration::parse(s)?;
    if d > MAX_WORKER_INIT {
        return Err(format!("'{s}' is longer than {}", shared::duration::format(MAX_WORKER_INIT)));
    }
    // The stand-in takes whole milliseconds.
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("'{s}' is not a whole number of milliseconds"));
    }
    Ok(d)
}

impl GatewayOptions {
    /// Whether `--worker-init` was left at its default (the only value compose can honour).
    pub fn worker_init_is_default(&self) -> bool {
        self.worker_init == DEFAULT_WORKER_INIT_TIME
    }

    /// `--worker-init` as the stand-in takes it (`parse_worker_init` keeps it whole and small).
    pub fn worker_init_ms(&self) -> u64 {
        u64::try_from(self.worker_init.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A fault the stand-in can inject, to force one branch of a race in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Inject {
    /// After a reload, each worker's first JS StartInstance connects where nothing listens
    /// (as between a server's crash and respawn): kong-2.7 leaks the claim and the worker spins.
    RefusedStart,
}

impl Inject {
    /// The name on the command line and in standin.json.
    pub fn name(self) -> &'static str {
        match self {
            Inject::RefusedStart => "refused-start",
        }
    }
}

/// On or off.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Switch {
    /// On.
    #[default]
    On,
    /// Off.
    Off,
}

/// Options of `cargo xtask up`.
#[derive(Args, Clone, Debug)]
pub struct UpOptions {
    /// Which gateway to run.
    #[arg(long, value_enum, default_value_t = Target::Local)]
    pub target: Target,
    /// How it runs its plugin servers.
    #[command(flatten)]
    pub gateway: GatewayOptions,
    /// Where the stand-in and reflection listen.
    #[command(flatten)]
    pub addr: Addresses,
}

/// Kong's proxy port, where the gateway listens unless told otherwise (compose: always).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// reflection's default listen address.
pub const DEFAULT_REFLECTION: &str = "127.0.0.1:9000";

/// Where the local stack listens; shared by `cargo xtask up` and `cargo xtask run`.
#[derive(Args, Clone, Debug)]
pub struct Addresses {
    /// Gateway listen address (stand-in only; compose publishes Kong's proxy on 127.0.0.1:8000).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// reflection's listen address (stand-in only).
    #[arg(long, default_value = DEFAULT_REFLECTION)]
    pub reflection: String,
}

impl Addresses {
    /// Whether both are the defaults (the only ones the compose target can use).
    pub fn are_default(&self) -> bool {
        self.listen == DEFAULT_LISTEN && self.reflection == DEFAULT_REFLECTION
    }
}

impl Behaviour {
    /// The name used on the command line and in the stand-in's config.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Kong27 => "kong-2.7",
            Behaviour::Fixed => "fixed",
        }
    }
}

impl JsPdk {
    /// The npm version string.
    pub fn version(self) -> &'static str {
        match self {
            JsPdk::V050 => "0.5.0",
            JsPdk::V060 => "0.6.0",
        }
    }
}

impl UpOptions {
    /// The options as kept in stack.json (also compared to tell "already up" from "restart").
    fn to_json(&self) -> Value {
        json!({
            "target": match self.target { Target::Local => "local", Target::Compose => "compose" },
            "behaviour": self.gateway.behaviour.name(),
            "workers": self.gateway.workers,
            "js_pdk": self.gateway.js_pdk.version(),
            "python_pdk": self.gateway.python_pdk.version(),
            "cpu_limit": self.gateway.cpu_limit,
            "inject": self.gateway.inject.map(Inject::name),
            "worker_init_ms": self.gateway.worker_init_ms(),
            "listen": self.addr.listen,
            "reflection": self.addr.reflection,
        })
    }
}

/// The prefix directory of the local stack (sockets, pid files, logs, ground truth).
pub fn prefix() -> PathBuf {
    std::env::var_os("RELOADSCOPE_STANDIN_PREFIX")
        .map_or_else(|| PathBuf::from(DEFAULT_PREFIX), PathBuf::from)
}

fn state_path() -> PathBuf {
    prefix().join("stack.json")
}

/// The options of the stack that is (or was last) up, if any.
fn read_state() -> Option<Value> {
    let text = std::fs::read_to_string(state_path()).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(opts: &UpOptions) -> Result<()> {
    std::fs::create_dir_all(prefix())?;
    let text = serde_json::to_string_pretty(&opts.to_json())?;
    std::fs::write(state_path(), text).with_context(|| format!("cannot write {}", state_path().display()))
}

fn state_target(state: &Option<Value>) -> Target {
    match state.as_ref().and_then(|s| s["target"].as_str()) {
        Some("compose") => Target::Compose,
        _ => Target::Local,
    }
}

/// Brings the stack up and waits until every route is healthy; a running stack with the same
/// options is left as it is, one with other options is replaced.
pub fn up(opts: &UpOptions) -> Result<()> {
    crate::util::require_root("the stand-in starts nginx, plugin servers and a cgroup")?;
    let state = read_state();
    if let Some(old) = &state {
        if *old == opts.to_json() && is_up(opts) {
            println!("stack: already up ({}), nothing to do", describe(opts));
            return wait_healthy(opts);
        }
        println!("stack: replacing the previous stack");
        down()?;
    } else {
        // Leftovers of a crashed run (no state file) must not hold the ports or sockets.
        local::down()?;
    }
    let started = match opts.target {
        Target::Local => local::up(opts),
        Target::Compose => compose::up(opts),
    };
    if let Err(e) = started {
        // Leave nothing half-started behind (reflection without a gateway, say).
        let cleanup = match opts.target {
            Target::Local => local::down(),
            Target::Compose => compose::down().and_then(|()| local::down()),
        };
        if let Err(c) = cleanup {
            eprintln!("stack: cleanup after the failed up also failed: {c:#}");
        }
        return Err(e);
    }
    // Written last: the prefix is emptied by a local `up`.
    write_state(opts)?;
    println!("stack: up ({})", describe(opts));
    Ok(())
}

/// Reloads the gateway (HUP to the nginx master, or `kong reload` in the container) and waits
/// until the new generation of plugin servers serves.
pub fn reload() -> Result<()> {
    crate::util::require_root("reload signals the stand-in's nginx master")?;
    let state = read_state();
    match state_target(&state) {
        Target::Local => local::reload(),
        Target::Compose => compose::reload(),
    }
}

/// Stops everything of ours: gateway, reflection, every plugin server generation (orphans
/// included). Succeeds only when none of those processes is left.
pub fn down() -> Result<()> {
    crate::util::require_root("down stops root-owned nginx and plugin-server processes")?;
    let state = read_state();
    if state_target(&state) == Target::Compose {
        compose::down()?;
    }
    local::down()?;
    let _ = std::fs::remove_file(state_path());
    println!("stack: down");
    Ok(())
}

/// The gateway's nginx master pid on this host, for the probe to attach to.
pub fn master_pid() -> Result<u32> {
    let state = read_state();
    let pid = match state_target(&state) {
        Target::Local => local::master_pid(),
        Target::Compose => compose::master_pid(),
    };
    pid.map(|p| p as u32).context("the gateway's nginx master is not running")
}

/// The nginx workers of `master` (its children that serve, not those shutting down).
pub fn workers(master: u32) -> Vec<u32> {
    procs::children(master as i32)
        .into_iter()
        .filter(|&p| {
            let cmd = procs::cmdline(p);
            cmd.starts_with("nginx: worker process") && !cmd.contains("shutting")
        })
        .map(|p| p as u32)
        .collect()
}

/// Whether the gateway serves /go: the stand-in says in its ground truth when it skipped Go.
pub fn go_available() -> std::result::Result<(), String> {
    if state_target(&read_state()) == Target::Compose {
        return Ok(());
    }
    let skipped = local::truth_events()
        .into_iter()
        .find(|e| e["ev"] == "skipped" && e["plugin"] == "goplugin")
        .map(|e| e["reason"].as_str().unwrap_or("Go plugin skipped").to_string());
    skipped.map_or(Ok(()), Err)
}

/// Stand-in only: starts every worker's plugin instances, then waits until a reload
/// `reload_at` from now lands `phase` into old worker 0's pump windows ([`phase`]). Returns the
/// servers' last output (unix seconds), the windows' anchor.
pub fn align_reload_phase(
    listen: &str,
    endpoints: &[(&str, &str)],
    workers: u32,
    reload_at: Duration,
    phase: Duration,
) -> Result<f64> {
    let paths: Vec<(String, &str)> = endpoints.iter().map(|(e, p)| (format!("/{e}"), *p)).collect();
    let refs: Vec<(&str, &str)> = paths.iter().map(|(e, p)| (e.as_str(), *p)).collect();
    phase::align(
        |path| http::get(listen, path, Duration::from_secs(2)).is_ok(),
        local::truth_events,
        &refs,
        workers,
        reload_at,
        phase,
    )
}

/// True when a Docker engine answers.
pub fn compose_engine_answers() -> bool {
    compose::engine_answers()
}

/// The ground-truth log of the local stand-in.
pub fn truth_log() -> PathBuf {
    local::truth_log()
}

fn is_up(opts: &UpOptions) -> bool {
    match opts.target {
        Target::Local => local::is_up(),
        Target::Compose => compose::is_up(),
    }
}

fn wait_healthy(opts: &UpOptions) -> Result<()> {
    match opts.target {
        Target::Local => local::wait_healthy(opts),
        Target::Compose => compose::wait_healthy(opts),
    }
}

fn describe(opts: &UpOptions) -> String {
    let cpu = opts.gateway.cpu_limit.map_or_else(|| "no CPU limit".to_string(), |c| format!("{c} CPU"));
    match opts.target {
        Target::Local => format!(
            "stand-in on http://{}, behaviour {}, workers {}, js kong-pdk {}, python kong-pdk {}, {cpu}, \
             prefix {}",
            opts.addr.listen,
            opts.gateway.behaviour.name(),
            opts.gateway.workers,
            opts.gateway.js_pdk.version(),
            opts.gateway.python_pdk.version(),
            prefix().display()
        ),
        Target::Compose => format!(
            "Kong 2.7.1 by docker compose on http://{DEFAULT_LISTEN}, js kong-pdk {}, python kong-pdk {}, {cpu}",
            opts.gateway.js_pdk.version(),
            opts.gateway.python_pdk.version()
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpOptions,
    }

    #[test]
    fn options_parse_with_the_documented_names() {
        let cli = Cli::parse_from([
            "up",
            "--behaviour",
            "fixed",
            "--js-pdk",
            "0.6.0",
            "--python-pdk",
            "0.30",
            "--workers",
            "2",
        ]);
        assert_eq!(cli.up.gateway.behaviour, Behaviour::Fixed);
        assert_eq!(cli.up.gateway.js_pdk, JsPdk::V060);
        assert_eq!(cli.up.gateway.python_pdk, PyPdk::V030);
        assert_eq!(cli.up.gateway.workers, 2);
        let cli = Cli::parse_from(["up", "--target", "compose", "--cpu-limit", "0.5"]);
        assert_eq!(cli.up.target, Target::Compose);
        assert_eq!(cli.up.gateway.behaviour, Behaviour::Kong27);
        assert_eq!(cli.up.gateway.cpu_limit, Some(0.5));
        assert_eq!(cli.up.gateway.python_pdk, PyPdk::V036);
        assert!(Cli::try_parse_from(["up", "--python-pdk", "0.40"]).is_err());
        assert!(Cli::try_parse_from(["up", "--behaviour", "kong-2.8"]).is_err());
        assert!(Cli::try_parse_from(["up", "--workers", "0"]).is_err());
    }

    #[test]
    fn state_round_trips_its_target() {
        let cli = Cli::parse_from(["up", "--target", "compose"]);
        assert_eq!(state_target(&Some(cli.up.to_json())), Target::Compose);
        assert_eq!(state_target(&None), Target::Local);
    }
}
