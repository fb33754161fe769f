//! The system under test on real processes: `xtask up|reload|down` with the stand-in gateway,
//! the real Python and JS plugin servers and reflection. Needs root (nginx, signals, /proc) and
//! `cargo xtask setup` done; run with `--include-ignored --test-threads=1`.
//!
//! Each test owns the whole stack for its duration; a guard runs `xtask down` even on failure.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Stand;
use serde_json::Value;
use shared::truth::{TruthEv, TruthLine};

/// Runs `cmd`; panics with its output unless it succeeds. Returns stdout.
fn succeed(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("xtask runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(out.status.success(), "xtask {what} failed: {}\n{stdout}\n{stderr}", out.status);
    stdout
}

/// A stand-in of the test's own, up; `down` runs when it drops (the [`Stand`]'s drop), whatever
/// happened in between, and only then is its prefix removed.
struct Stack {
    stand: Stand,
    up_output: String,
}

impl Stack {
    fn up(extra: &[&str]) -> Stack {
        let stand = Stand::new();
        let mut cmd = stand.xtask();
        cmd.arg("up").args(stand.addr_args()).args(extra);
        let up_output = succeed(cmd, "up");
        Stack { stand, up_output }
    }

    /// Runs `xtask <args>` on this stand-in.
    fn xtask(&self, args: &[&str]) -> String {
        let mut cmd = self.stand.xtask();
        cmd.args(args);
        succeed(cmd, &args.join(" "))
    }

    fn prefix(&self) -> PathBuf {
        self.stand.prefix()
    }

    /// The stand-in's log; every line must read as a [`TruthLine`] (the schema its readers share).
    fn truth(&self) -> Vec<TruthLine> {
        std::fs::read_to_string(self.prefix().join("ground-truth.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ground-truth line {l:?}: {e}")))
            .collect()
    }

    fn master(&self) -> String {
        std::fs::read_to_string(self.prefix().join("logs/nginx.pid")).unwrap()
    }

    /// `xtask down`, keeping the prefix (and its logs) until the stack drops; it is idempotent.
    fn down(&self) {
        self.stand.down();
    }
}

/// One HTTP/1.0 GET to `gateway`: status and body, or an error for transport failures.
fn get(gateway: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&gateway.parse().unwrap(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: reloadscope\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The value of the plugin header that reached reflection, if any.
fn plugin_header(body: &str, header: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["headers"][header].as_str().map(str::to_string)
}

fn events(all: &[TruthLine], ev: TruthEv) -> Vec<&TruthLine> {
    all.iter().filter(|e| e.ev == ev).collect()
}

fn of(e: &TruthLine, plugin: &str, generation: u32) -> bool {
    e.plugin.as_deref() == Some(plugin) && e.r#gen == Some(generation)
}

fn spawned_pids(all: &[TruthLine], plugin: &str, generation: u32) -> BTreeSet<i64> {
    events(all, TruthEv::Spawn)
        .into_iter()
        .filter(|e| of(e, plugin, generation))
        .filter_map(|e| e.server_pid.map(i64::from))
        .collect()
}

fn worker0_pids(all: &[TruthLine], generation: u32) -> BTreeSet<i64> {
    events(all, TruthEv::WorkerStart)
        .into_iter()
        .filter(|e| e.worker == Some(0) && e.r#gen == Some(generation))
        .map(|e| i64::from(e.pid))
        .collect()
}

/// Alive and not a zombie, by /proc.
fn alive(pid: i64) -> bool {
    u32::try_from(pid).ok().and_then(shared::procstat::read).is_some_and(|s| s.is_alive())
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
#[ignore = "root: starts the stand-in gateway"]
fn python_and_js_come_back_with_the_header_their_real_server_set() {
    let stack = Stack::up(&[]);
    let go_reported =
        stack.up_output.contains("Go plugin skipped: ") || stack.up_output.contains("Go plugin: built");
    assert!(go_reported, "up must say what became of the Go plugin");
    let all = stack.truth();
    for (path, plugin, header) in
        [("/python", "pythonplugin", "x-pythonplugin"), ("/js", "jsplugin", "x-jsplugin")]
    {
        let servers = spawned_pids(&all, plugin, 1);
        for _ in 0..4 {
            let (status, body) =
                get(&stack.stand.listen, path, Duration::from_secs(10)).expect("the gateway answers");
            assert_eq!(status, 200, "{path}: {body}");
            let value =
                plugin_header(&body, header).unwrap_or_else(|| panic!("{path}: no {header} in {body}"));
            // The plugin writes its server's pid: the header came from the real server we spawned.
            let pid: i64 = value.parse().expect("the plugin header is a pid");
            assert!(servers.contains(&pid), "{path}: {header}={pid}, spawned {servers:?}");
            println!("{path}: {header}={pid} (a real {plugin} server of generation 1)");
        }
    }
    let (status, body) = get(&stack.stand.listen, "/go", Duration::from_secs(10)).unwrap();
    if stack.up_output.contains("Go plugin skipped: ") {
        assert_eq!(status, 503, "/go: {body}");
        assert!(body.contains("Go plugin skipped"), "/go: {body}");
        println!("/go: 503 {body}");
    } else {
        // Where Go and its module proxy exist, the Go plugin runs like the others.
        let value = plugin_header(&body, "x-goplugin").unwrap_or_else(|| panic!("/go: {status} {body}"));
        let servers = spawned_pids(&all, "goplugin", 1);
        assert!(servers.contains(&value.parse().unwrap()), "/go: x-goplugin={value}, spawned {servers:?}");
        println!("/go: x-goplugin={value}");
    }

    // Idempotent: a second `up` with the same options keeps the same master.
    let master = stack.master();
    let mut up = vec!["up"];
    up.extend(stack.stand.addr_args());
    let again = stack.xtask(&up);
    assert!(again.contains("already up"), "{again}");
    assert_eq!(master, stack.master());
}

/// One request of the burst: when it started, and what came back.
struct Outcome {
    started: f64,
    status: Option<u16>,
    header: bool,
}

impl Outcome {
    /// True unless reflection answered with the plugin's header.
    fn lost(&self) -> bool {
        !(self.status == Some(200) && self.header)
    }
}

/// What a burst across one reload saw, split at the moment generation 2 was up.
struct Burst {
    reload_at: f64,
    ready_at: f64,
    before: Vec<Outcome>,
    after: Vec<Outcome>,
}

impl Burst {
    fn lost_before(&self) -> usize {
        self.before.iter().filter(|o| o.lost()).count()
    }

    /// Positive control: the requests that ended well before the HUP all kept their header, and
    /// there were enough of them to tell a working gateway.
    fn assert_served_before_reload(&self) {
        let early: Vec<&Outcome> = self.before.iter().filter(|o| o.started + 0.5 < self.reload_at).collect();
        assert!(early.len() >= 20, "only {} requests before the reload", early.len());
        let lost = early.iter().filter(|o| o.lost()).count();
        assert_eq!(lost, 0, "{lost} of {} requests lost before the reload", early.len());
    }

    fn lost_after(&self) -> Vec<(Option<u16>, bool)> {
        self.after.iter().filter(|o| o.lost()).map(|o| (o.status, o.header)).collect()
    }

    fn report(&self, name: &str) {
        println!(
            "{name} burst: {} requests; {} started after generation 2 was up ({:.3} s after the HUP): \
             {} without the header; {} started before: {} without the header",
            self.before.len() + self.after.len(),
            self.after.len(),
            self.ready_at - self.reload_at,
            self.lost_after().len(),
            self.before.len(),
            self.lost_before()
        );
    }
}

/// Six clients alternate /python and /js (one connection per request) for 2 s, across
/// `xtask reload`, and for `after` more; `timeout` bounds each request.
fn burst_across_reload(stack: &Stack, after: Duration, timeout: Duration) -> Burst {
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            let gateway = stack.stand.listen.clone();
            std::thread::spawn(move || {
                let routes = [("/python", "x-pythonplugin"), ("/js", "x-jsplugin")];
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let (path, header) = routes[n % 2];
                    n += 1;
                    let started = now();
                    let outcome = match get(&gateway, path, timeout) {
                        Ok((status, body)) => Outcome {
                            started,
                            status: Some(status),
                            header: plugin_header(&body, header).is_some(),
                        },
                        Err(_) => Outcome { started, status: None, header: false },
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let reload_at = now();
    stack.xtask(&["reload"]);
    std::thread::sleep(after);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    // Up = each plugin's first generation-2 server has bound its socket (later ones are respawns).
    let all = stack.truth();
    let ready_at = ["pythonplugin", "jsplugin"]
        .iter()
        .map(|plugin| {
            events(&all, TruthEv::ServerReady)
                .into_iter()
                .filter(|e| of(e, plugin, 2))
                .map(|e| e.ts)
                .fold(f64::MAX, f64::min)
        })
        .fold(f64::MIN, f64::max);
    assert!(ready_at > reload_at && ready_at < f64::MAX, "generation 2 never became ready");
    let (after, before) = std::mem::take(&mut *outcomes.lock().unwrap())
        .into_iter()
        .partition(|o: &Outcome| o.started >= ready_at);
    Burst { reload_at, ready_at, before, after }
}

#[test]
#[ignore = "root: starts the stand-in gateway"]
fn fixed_behaviour_loses_no_header_once_the_new_generation_is_up() {
    let stack = Stack::up(&["--behaviour", "fixed", "--js-pdk", "0.6.0"]);
    let burst = burst_across_reload(&stack, Duration::from_secs(4), Duration::from_secs(15));
    burst.report("fixed");
    burst.assert_served_before_reload();
    assert!(burst.after.len() >= 50, "too few requests after the reload to say anything");
    let lost = burst.lost_after();
    assert!(lost.is_empty(), "lost after the new generation was up (status, header): {lost:?}");
    // fixed stops the old generation gracefully, once old worker 0's pumps let it exit (up to
    // 10 s after the last output of its servers).
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline
        && !events(&stack.truth(), TruthEv::WorkerExit)
            .iter()
            .any(|e| e.r#gen == Some(1) && e.worker == Some(0))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = stack.truth();
    let kills: Vec<_> = events(&all, TruthEv::Kill).into_iter().filter(|e| e.r#gen == Some(1)).collect();
    assert!(!kills.is_empty() && kills.iter().all(|e| e.is_kill_with("SIGTERM")), "{kills:?}");
}

#[test]
#[ignore = "root: starts the stand-in gateway"]
fn kong_27_ground_truth_shows_generations_the_sigkill_and_cache_events() {
    let stack = Stack::up(&["--behaviour", "kong-2.7", "--js-pdk", "0.5.0"]);
    // The same burst as for `fixed`; requests may hang on a leaked claim here: short timeouts.
    // What it loses varies from run to run, so it is reported, not asserted.
    let burst = burst_across_reload(&stack, Duration::from_secs(3), Duration::from_secs(3));
    burst.report("kong-2.7");
    burst.assert_served_before_reload();
    // Down first: the old worker 0 may still be in its pump window, and down makes it exit.
    stack.down();
    let all = stack.truth();

    let gens: BTreeSet<u32> = events(&all, TruthEv::MasterInit).iter().filter_map(|e| e.r#gen).collect();
    assert_eq!(gens, BTreeSet::from([1, 2]), "two configuration generations");
    for generation in [1, 2] {
        let worker0 = worker0_pids(&all, generation);
        assert_eq!(worker0.len(), 1, "one worker 0 in generation {generation}");
        for plugin in ["pythonplugin", "jsplugin"] {
            let pids = spawned_pids(&all, plugin, generation);
            assert!(!pids.is_empty(), "generation {generation} spawned {plugin}");
            for e in events(&all, TruthEv::Spawn).iter().filter(|e| e.r#gen == Some(generation)) {
                let parent = e.parent_pid.map(i64::from).expect("a spawn names its parent");
                assert!(worker0.contains(&parent), "spawned by worker 0: {e:?}");
            }
            println!("generation {generation}: worker 0 pid {worker0:?}, {plugin} pids {pids:?}");
        }
    }
    // The old generation dies by SIGKILL from the old worker 0 as it exits.
    let old_worker0 = worker0_pids(&all, 1);
    for plugin in ["pythonplugin", "jsplugin"] {
        let old = spawned_pids(&all, plugin, 1);
        let killed: Vec<_> = events(&all, TruthEv::Kill)
            .into_iter()
            .filter(|e| e.plugin.as_deref() == Some(plugin) && e.is_kill_with("SIGKILL"))
            .filter(|e| e.server_pid.is_some_and(|p| old.contains(&i64::from(p))))
            .collect();
        assert!(!killed.is_empty(), "SIGKILL of the old {plugin} server {old:?}");
        for k in &killed {
            assert!(old_worker0.contains(&i64::from(k.pid)), "killed by the old worker 0: {k:?}");
            println!("SIGKILL: {plugin} server {:?} by worker 0 pid {}", k.server_pid, k.pid);
        }
    }
    // Instance-id cache: every miss names worker pid and plugin; every start its instance id.
    let misses = events(&all, TruthEv::CacheMiss);
    let started = events(&all, TruthEv::InstanceStarted);
    let resets = events(&all, TruthEv::CacheReset);
    let leaks = events(&all, TruthEv::ClaimLeaked);
    for generation in [1, 2] {
        assert!(
            misses.iter().any(|e| e.r#gen == Some(generation)),
            "a cache miss in generation {generation}"
        );
    }
    for e in &misses {
        assert!(e.pid > 0 && e.plugin.is_some() && e.worker.is_some(), "{e:?}");
    }
    for e in &started {
        assert!(e.pid > 0 && e.plugin.is_some() && e.instance_id.is_some(), "{e:?}");
    }
    for e in &resets {
        assert!(e.pid > 0 && e.plugin.is_some() && e.reason.is_some(), "{e:?}");
    }
    assert!(!started.is_empty());
    println!(
        "instance cache: {} misses, {} instances started, {} resets, {} leaked claims; \
         {} RPC errors failed open; {} claim spins",
        misses.len(),
        started.len(),
        resets.len(),
        leaks.len(),
        events(&all, TruthEv::RpcError).len(),
        events(&all, TruthEv::ClaimSpin).len()
    );
}

#[test]
#[ignore = "root: starts the stand-in gateway"]
fn up_refuses_a_port_in_use() {
    // Another program holds the port (nginx with reuseport would otherwise share it silently).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let guard = Stack { stand: Stand::new(), up_output: String::new() };
    let out = guard
        .stand
        .xtask()
        .args(["up", "--listen", &addr, "--reflection", &guard.stand.reflection])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail on a port in use");
    assert!(stderr.contains(&format!("{addr} (the gateway) is already in use")), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("cargo xtask:")).count(), 1, "{stderr}");
    // Nothing of ours runs: no master (a pid file may remain from an earlier stack).
    let master = std::fs::read_to_string(guard.prefix().join("logs/nginx.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    assert!(master.is_none_or(|p| !alive(p)), "a master {master:?} runs");
}

#[test]
#[ignore = "root: starts the stand-in gateway"]
fn down_leaves_no_nginx_reflection_or_plugin_server_process() {
    // With a CPU limit, so the cgroup's life is checked too.
    let stack = Stack::up(&["--cpu-limit", "0.5"]);
    // `up` says which cgroup it made ("... in /sys/fs/cgroup/<name>"): one per prefix.
    let cgroup = stack
        .up_output
        .lines()
        .find_map(|l| l.strip_prefix("stack: CPU limit ")?.split_once(" in ").map(|(_, d)| PathBuf::from(d)))
        .expect("up names the CPU-limit cgroup");
    assert!(cgroup.starts_with("/sys/fs/cgroup") && cgroup.exists(), "{}", cgroup.display());
    let master = stack.master();
    let members = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(members.lines().any(|l| l == master.trim()), "nginx master {master} in {}", cgroup.display());
    stack.xtask(&["reload"]);
    // Orphan a generation the way a crash would: SIGKILL worker 0, so exit_worker never runs;
    // its servers lose their parent and the master starts a new worker 0 with new servers.
    let before = stack.truth();
    let worker0 = *worker0_pids(&before, 2).iter().next().unwrap();
    let orphans: BTreeSet<i64> =
        ["pythonplugin", "jsplugin"].iter().flat_map(|p| spawned_pids(&before, p, 2)).collect();
    unsafe { libc::kill(worker0 as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // Three sets of servers by then: generation 1, generation 2, and the new worker 0's.
    let servers = events(&before, TruthEv::Spawn).iter().filter(|e| e.r#gen == Some(1)).count();
    while events(&stack.truth(), TruthEv::ServerReady).len() < 3 * servers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &orphans {
        let stat = u32::try_from(pid).ok().and_then(shared::procstat::read);
        println!("orphaned server {pid}: alive {} stat {stat:?}", alive(pid));
    }

    let all = stack.truth();
    let mut ours: BTreeSet<i64> = BTreeSet::new();
    for e in &all {
        ours.insert(i64::from(e.pid));
        ours.extend(e.server_pid.map(i64::from));
    }
    for file in ["logs/nginx.pid", "reflection.pid"] {
        ours.extend(
            std::fs::read_to_string(stack.prefix().join(file))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok()),
        );
    }
    // Only pids that are ours now (the pre-daemon nginx pid may have been recycled).
    let prefix = stack.prefix().display().to_string();
    let alive_before: BTreeSet<i64> = ours
        .into_iter()
        .filter(|&p| alive(p))
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("nginx") || cmd.contains(&prefix) || cmd.contains("reflection")
        })
        .collect();
    // Python's server exits by itself once orphaned (its ppid-1 watchdog); node's has none.
    let js_orphans = spawned_pids(&before, "jsplugin", 2);
    assert!(!js_orphans.is_empty(), "generation 2 spawned a JS server");
    assert!(js_orphans.iter().all(|&p| alive(p)), "the orphaned JS server runs before down");
    assert!(js_orphans.is_subset(&alive_before));
    drop(stack);
    let left: BTreeSet<i64> = alive_before.iter().copied().filter(|&p| alive(p)).collect();
    println!("down: {} of our pids were alive before, {} after", alive_before.len(), left.len());
    assert!(left.is_empty(), "still alive after down: {left:?}");
    assert!(!cgroup.exists(), "down removes {}", cgroup.display());
}
