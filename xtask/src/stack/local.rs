//! The local target: reflection plus the stand-in gateway (kong/standin on Debian's nginx),
//! everything under the prefix directory:
//!
//! | path | what |
//! |---|---|
//! | `conf/nginx.conf` | rendered from kong/standin/nginx.conf.tmpl |
//! | `standin.json` | options and plugin-server definitions, read by the master on each (re)load |
//! | `ground-truth.jsonl` | the stand-in's own log of generations, kills and instance-cache events |
//! | `generation` | the configuration generation counter (bumped by each master (re)load) |
//! | `logs/` | nginx error/access logs, plugin-server output, reflection's log, nginx.pid |
//! | `reflection.pid`, `*.socket` | reflection's pid, the plugin servers' unix sockets |

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Switch, UpOptions, cgroup, http, plugins, prefix, procs};
use crate::util::{cargo, run, workspace_root};

/// Files Debian's packages must have put in place.
const NEEDED_FILES: [&str; 3] = [
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
    "/usr/share/lua/5.1/MessagePack.lua",
    "/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so",
];
/// How long a (re)started generation may take to serve (a 0.15 CPU limit makes node slow).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The ground-truth log of the current (or last) local stack.
pub fn truth_log() -> PathBuf {
    prefix().join("ground-truth.jsonl")
}

fn pid_file() -> PathBuf {
    prefix().join("logs/nginx.pid")
}

fn reflection_pid_file() -> PathBuf {
    prefix().join("reflection.pid")
}

/// Starts reflection and the stand-in, then waits for health and the first generation.
pub fn up(opts: &UpOptions) -> Result<()> {
    for f in NEEDED_FILES {
        // cjson lives under the multiarch dir: accept any architecture's copy.
        let ok = Path::new(f).exists() || (f.ends_with("cjson.so") && any_cjson());
        if !ok {
            bail!("{f} is missing: run `cargo xtask setup` (nginx-light, libnginx-mod-http-lua, lua-*)");
        }
    }
    // nginx listens with reuseport: another listener with it on the same port would silently
    // share the traffic, so a port in use is refused (a plain bind fails against either kind).
    for (what, addr) in [("the gateway", &opts.addr.listen), ("reflection", &opts.addr.reflection)] {
        if std::net::TcpListener::bind(addr.as_str()).is_err() {
            bail!("{addr} ({what}) is already in use by another program; stop it or choose another address");
        }
    }
    let nginx = plugins::which("nginx").unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    let prefix = prefix();
    let mut servers = plugins::server_defs(&prefix, opts.gateway.js_pdk, opts.gateway.python_pdk)?;
    run(cargo().args(["build", "--release", "-p", "reflection"]))?;
    let skipped = match plugins::go_plugin() {
        Ok(bin) => {
            println!(
                "Go plugin: built {} (the stand-in's ProtoBuf host has not been tried against go-pdk before)",
                bin.display()
            );
            servers.push(plugins::go_def(&prefix, &bin));
            json!({})
        }
        Err(reason) => {
            println!("{reason}");
            json!({ "goplugin": reason })
        }
    };

    fresh_prefix(&prefix)?;
    let config = json!({
        "prefix": prefix.display().to_string(),
        "truth_log": truth_log().display().to_string(),
        "behaviour": opts.gateway.behaviour.name(),
        "inject": opts.gateway.inject.map(super::Inject::name),
        "workers": opts.gateway.workers,
        "worker_init_ms": opts.gateway.worker_init_ms(),
        // lua-resty-core's default pipe read timeout: worker 0's pump window (kong/README.md).
        "pump_window_s": super::phase::WINDOW.as_secs(),
        "servers": servers,
        "skipped": skipped,
    });
    std::fs::write(prefix.join("standin.json"), serde_json::to_string_pretty(&config)?)?;
    let template = std::fs::read_to_string(standin_dir().join("nginx.conf.tmpl"))?;
    let conf = render(
        &template,
        &[
            ("PREFIX", prefix.display().to_string()),
            ("WORKERS", opts.gateway.workers.to_string()),
            ("LUA_DIR", standin_dir().join("lua").display().to_string()),
            ("REFLECTION", opts.addr.reflection.clone()),
            ("LISTEN", opts.addr.listen.clone()),
            (
                "WORKER_HEADER",
                if opts.gateway.worker_header == Switch::On {
                    "add_header X-Standin-Worker $pid always;".into()
                } else {
                    "# no X-Standin-Worker: as real Kong".into()
                },
            ),
        ],
    )?;
    let conf_path = prefix.join("conf/nginx.conf");
    std::fs::write(&conf_path, conf)?;

    start_reflection(opts, &prefix)?;
    start_nginx(opts, &nginx, &prefix, &conf_path)?;
    wait_healthy(opts)
}

fn any_cjson() -> bool {
    std::fs::read_dir("/usr/lib")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("lua/5.1/cjson.so").exists()))
        .unwrap_or(false)
}

fn standin_dir() -> PathBuf {
    workspace_root().join("kong/standin")
}

/// Fills `{{NAME}}` placeholders; fails if one is left unfilled.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(at) = out.find("{{") {
        bail!("unfilled placeholder in nginx.conf.tmpl: {}", &out[at..out.len().min(at + 30)]);
    }
    Ok(out)
}

/// Empties the prefix, refusing to delete a non-empty directory that is not ours.
fn fresh_prefix(prefix: &Path) -> Result<()> {
    if prefix.exists() {
        let ours =
            ["standin.json", "stack.json", "generation", "logs"].iter().any(|f| prefix.join(f).exists());
        let empty = std::fs::read_dir(prefix)?.next().is_none();
        if !ours && !empty {
            bail!("{} exists and is not a stand-in prefix; refusing to empty it", prefix.display());
        }
        std::fs::remove_dir_all(prefix).with_context(|| format!("cannot empty {}", prefix.display()))?;
    }
    for sub in ["conf", "logs", "tmp"] {
        std::fs::create_dir_all(prefix.join(sub))?;
    }
    Ok(())
}

fn start_reflection(opts: &UpOptions, prefix: &Path) -> Result<()> {
    let bin = workspace_root().join("target/release/reflection");
    let log = File::create(prefix.join("logs/reflection.log"))?;
    let child = Command::new(&bin)
        .args(["--listen", &opts.addr.reflection])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for xtask must not take the upstream down.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    std::fs::write(reflection_pid_file(), child.id().to_string())?;
    wait_for("reflection /health", Duration::from_secs(10), || {
        http::get(&opts.addr.reflection, "/health", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
    })?;
    println!("stack: reflection on http://{} (pid {})", opts.addr.reflection, child.id());
    Ok(())
}

fn start_nginx(opts: &UpOptions, nginx: &Path, prefix: &Path, conf: &Path) -> Result<()> {
    let mut cmd = match opts.gateway.cpu_limit {
        // The shell joins the cgroup, then becomes nginx: every worker and server inherits it.
        Some(cpus) => {
            let procs_file = cgroup::create(cpus)?;
            let mut c = Command::new("/bin/sh");
            c.args(["-c", r#"echo $$ > "$1" && exec "$2" -p "$3" -c "$4""#, "sh"])
                .arg(procs_file)
                .arg(nginx)
                .arg(prefix)
                .arg(conf);
            c
        }
        None => {
            let mut c = Command::new(nginx);
            c.arg("-p").arg(prefix).arg("-c").arg(conf);
            c
        }
    };
    // nginx daemonizes: the command returns once the master runs.
    if let Err(e) = run(cmd.process_group(0)) {
        let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
        bail!("{e:#}\nnginx error.log:\n{log}");
    }
    Ok(())
}

/// True when the stand-in's master and reflection both run.
pub fn is_up() -> bool {
    let master = procs::read_pid_file(&pid_file()).is_some_and(procs::alive);
    let reflection = procs::read_pid_file(&reflection_pid_file()).is_some_and(procs::alive);
    master && reflection
}

/// Waits until the gateway answers its health check and every plugin server of the current
/// generation has bound its socket.
pub fn wait_healthy(opts: &UpOptions) -> Result<()> {
    wait_for("the stand-in's /__standin/health", Duration::from_secs(20), || {
        http::get(&opts.addr.listen, "/__standin/health", Duration::from_secs(2))
            .is_ok_and(|r| r.status == 200)
    })?;
    let number = generation().context("the stand-in wrote no generation")?;
    let pids = wait_generation_ready(number)?;
    println!("stack: stand-in on http://{}, generation {number}, plugin servers {pids}", opts.addr.listen);
    println!("stack: ground truth in {}", truth_log().display());
    Ok(())
}

/// The configuration generation the master is on (bumped at each start and reload).
fn generation() -> Option<u64> {
    std::fs::read_to_string(prefix().join("generation")).ok()?.trim().parse().ok()
}

/// Every ground-truth event so far (lines that do not parse are skipped).
pub fn truth_events() -> Vec<Value> {
    std::fs::read_to_string(truth_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The plugin servers the stand-in runs, from its standin.json (Go only where it was built).
fn server_names() -> Vec<String> {
    let config: Value = std::fs::read_to_string(prefix().join("standin.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    config["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Waits for a `server_ready` event of generation `number` for each plugin server; returns
/// "name pid, …" for the message.
fn wait_generation_ready(number: u64) -> Result<String> {
    let names = server_names();
    let mut ready = Vec::new();
    wait_for(&format!("generation {number}'s plugin servers to bind their sockets"), READY_TIMEOUT, || {
        let events = truth_events();
        ready = names
            .iter()
            .filter_map(|name| {
                events.iter().find(|e| {
                    e["ev"] == "server_ready"
                        && e["gen"].as_u64() == Some(number)
                        && e["plugin"] == name.as_str()
                })
            })
            .map(|e| format!("{} pid {}", e["plugin"].as_str().unwrap_or("?"), e["server_pid"]))
            .collect();
        ready.len() == names.len()
    })?;
    Ok(ready.join(", "))
}

/// HUP to the master, then waits for the new generation to serve.
pub fn reload() -> Result<()> {
    let master = procs::read_pid_file(&pid_file())
        .filter(|&p| procs::alive(p))
        .context("the stand-in is not running: `cargo xtask up` first")?;
    let old = generation().unwrap_or(0);
    println!("stack: reload: SIGHUP to nginx master {master} (generation {old})");
    if !procs::signal(master, libc::SIGHUP) {
        bail!("cannot signal nginx master {master}");
    }
    wait_for("the master to load the new configuration", Duration::from_secs(30), || {
        generation().is_some_and(|g| g > old)
    })?;
    let number = generation().unwrap_or(old + 1);
    let pids = wait_generation_ready(number)?;
    println!("stack: reload: generation {number} serves, plugin servers {pids}");
    Ok(())
}

/// Every process of ours still alive: master and workers, reflection, all plugin-server
/// generations (also orphans), found by pid files, the ground truth and /proc.
fn our_processes() -> BTreeSet<i32> {
    let prefix = prefix();
    let prefix_str = prefix.display().to_string();
    // Only nginx's and the plugin servers' own flags: a shell that merely names the prefix
    // (e.g. `cat <prefix>/… && cargo xtask down`) is not ours to kill.
    let mut roots = procs::with_cmdline_containing(&format!("--kong-prefix {prefix_str}"));
    roots.extend(procs::with_cmdline_containing(&format!("-p {prefix_str} ")));
    if let Some(master) = procs::read_pid_file(&pid_file())
        && procs::cmdline(master).starts_with("nginx")
    {
        roots.insert(master);
    }
    for e in truth_events() {
        let candidates = [e["pid"].as_i64(), e["server_pid"].as_i64()];
        for pid in candidates.into_iter().flatten() {
            let pid = pid as i32;
            let cmd = procs::cmdline(pid);
            // A recycled pid belongs to someone else: only nginx or a process naming our prefix.
            if procs::alive(pid) && (cmd.starts_with("nginx") || cmd.contains(&prefix_str)) {
                roots.insert(pid);
            }
        }
    }
    if let Some(pid) = procs::read_pid_file(&reflection_pid_file())
        && procs::cmdline(pid).contains("reflection")
    {
        roots.insert(pid);
    }
    procs::with_descendants(&roots)
}

/// Stops every process of ours: graceful (QUIT) first, then TERM, then KILL.
pub fn down() -> Result<()> {
    if let Some(master) = procs::read_pid_file(&pid_file()).filter(|&p| procs::alive(p)) {
        // QUIT lets old workers run exit_worker, which logs the end of their generation.
        procs::signal(master, libc::SIGQUIT);
        if !procs::wait_gone(&BTreeSet::from([master]), Duration::from_secs(3)).is_empty() {
            // Worker 0's plugin-server pumps hold it up to 10 s after the quit, and a worker
            // spinning on a leaked claim never finishes a graceful shutdown.
            println!(
                "stack: nginx did not quit gracefully in 3 s (worker 0's plugin-server pumps, or a spinning worker); terminating"
            );
            procs::signal(master, libc::SIGTERM);
            procs::wait_gone(&BTreeSet::from([master]), Duration::from_secs(3));
        }
    }
    let mut left = our_processes();
    if !left.is_empty() {
        for &pid in &left {
            procs::signal(pid, libc::SIGTERM);
        }
        left = procs::wait_gone(&left, Duration::from_secs(2));
    }
    if !left.is_empty() {
        println!("stack: killing {}", procs::describe(&left));
        for &pid in &left {
            procs::signal(pid, libc::SIGKILL);
        }
        procs::wait_gone(&left, Duration::from_secs(3));
    }
    let left = our_processes();
    if !left.is_empty() {
        bail!("processes of ours survived down: {}", procs::describe(&left));
    }
    cgroup::remove();
    Ok(())
}

/// Polls `ready` every 100 ms until it holds or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what} (logs in {})",
                prefix().join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The stand-in's nginx master, when it runs.
pub fn master_pid() -> Option<i32> {
    procs::read_pid_file(&pid_file()).filter(|&p| procs::alive(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_renders_completely() {
        let template = std::fs::read_to_string(standin_dir().join("nginx.conf.tmpl")).unwrap();
        let vars = [
            ("PREFIX", "/p".to_string()),
            ("WORKERS", "4".to_string()),
            ("LUA_DIR", "/l".to_string()),
            ("REFLECTION", "127.0.0.1:9000".to_string()),
            ("LISTEN", "127.0.0.1:8000".to_string()),
            ("WORKER_HEADER", "add_header X-Standin-Worker $pid always;".to_string()),
        ];
        let conf = render(&template, &vars).unwrap();
        assert!(conf.contains("worker_processes 4;"));
        assert!(conf.contains("listen 127.0.0.1:8000 reuseport"));
        assert!(render(&template, &vars[..2]).is_err());
    }
}
