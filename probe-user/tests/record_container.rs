//! Root test of a gateway in its own pid and mount namespaces (a container without an engine:
//! `unshare --pid --mount --fork`), its nginx binary at a path that exists only inside. The
//! tool records it from the host, the namespace is torn down, and the analysis still finds the
//! busy worker by host pid, gives its pid inside, and names its frames from the copied binary.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// One master and one worker whose Lua goes around the event loop through a 0-delay timer (a
/// busy-wait, as Kong's stuck claim) and burns interpreted Lua on each turn.
const CONF: &str = r#"
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
user root root;
worker_processes 1;
daemon off;
pid DIR/nginx.pid;
error_log DIR/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    init_worker_by_lua_block {
        local semaphore = require "ngx.semaphore"
        ngx.timer.at(0, function()
            while not ngx.worker.exiting() do
                local x = 0
                for i = 1, 500 do x = x + i % 7 end
                local sema = semaphore.new()
                ngx.timer.at(0, function() sema:post(1) end)
                sema:wait(60)
            end
        end)
    }
}
"#;

/// The first live child of `parent` that `pick` accepts, waiting up to 10 s for one.
fn child_where(parent: u32, what: &str, pick: impl Fn(u32) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| shared::procstat::read(p).is_some_and(|s| s.ppid == parent && s.is_alive()))
            .find(|&p| pick(p));
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "no {what} under {parent}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live child of `parent`.
fn child_of(parent: u32) -> u32 {
    child_where(parent, "child", |_| true)
}

/// The nginx worker of `master`: until the master has exec'ed nginx, its children are the
/// shell's (`mount`, `cp`), not workers.
fn worker_of(master: u32) -> u32 {
    child_where(master, "nginx worker", |p| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx: worker process"))
    })
}

/// `NSpid` of a live process: its pid in each pid namespace, the host's first.
fn nspid(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Records the gateway under `master` for 2 s, then runs `kill` (the teardown) and the analysis.
fn record_and_analyze(master: u32, out: &Path, kill: impl FnOnce()) -> String {
    let rec = Recording::start(&[master], "2s", &out.join("trace"), &["--sample-hz", "99", "--no-http"]);
    rec.finish();
    kill();
    let res = reloadscope().arg("analyze").arg(out.join("trace")).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success());
    stdout
}

/// The worker's folded stacks and the share of its user frames that carry a name (not a raw
/// address, as a frame of a file that cannot be read would be).
fn named_share(trace: &Path, worker: u32) -> (String, f64) {
    let folded = std::fs::read_dir(trace.join("flamegraphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.contains(&format!("pid{worker}-")) && n.ends_with(".folded") && !n.contains("-lua")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("no graph of worker {worker}"));
    let (mut named, mut all) = (0u64, 0u64);
    for (stack, n) in folded.lines().filter_map(|l| l.rsplit_once(' ')) {
        let n: u64 = n.parse().unwrap();
        for f in stack.split(';').skip(1).filter(|f| !f.ends_with("_[k]")) {
            all += n;
            named += n * u64::from(!f.starts_with("0x"));
        }
    }
    (folded, named as f64 / all.max(1) as f64)
}

fn write_conf(dir: &Path) {
    std::fs::write(dir.join("nginx.conf"), CONF.replace("DIR", &dir.display().to_string())).unwrap();
}

/// Stops an nginx master we started with SIGTERM (its fast shutdown ends the workers too).
fn stop(mut master: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let _ = master.wait();
}

#[test]
#[ignore = "root: loads eBPF programs, makes namespaces"]
fn a_gateway_in_its_own_namespaces_is_named_after_it_is_gone() {
    require_root();
    // On the host, for comparison.
    let host = tempfile::tempdir().unwrap();
    write_conf(host.path());
    let nginx = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(host.path())
        .arg("-c")
        .arg(host.path().join("nginx.conf"))
        .spawn()
        .unwrap();
    let (master, worker) = (nginx.id(), worker_of(nginx.id()));
    record_and_analyze(master, host.path(), || stop(nginx));
    let (_, host_share) = named_share(&host.path().join("trace"), worker);

    // In a pid and mount namespace, its binary on a tmpfs mounted only there.
    let ns = tempfile::tempdir().unwrap();
    write_conf(ns.path());
    let bin_dir = ns.path().join("nsbin");
    std::fs::create_dir(&bin_dir).unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs {b} && cp /usr/sbin/nginx {b}/nginx && exec {b}/nginx -p {d} -c {d}/nginx.conf",
        b = bin_dir.display(),
        d = ns.path().display()
    );
    let unshare =
        Command::new("unshare").args(["--pid", "--mount", "--fork", "sh", "-c", &script]).spawn().unwrap();
    let master = child_of(unshare.id());
    let worker = worker_of(master);
    let inner = nspid(worker);
    assert_eq!((inner.len(), inner[0]), (2, worker), "the worker is in a nested pid namespace: {inner:?}");
    assert!(!bin_dir.join("nginx").exists(), "the binary must not be visible from the host");
    let summary = record_and_analyze(master, ns.path(), || {
        // The namespace's init is the master: killing it ends every process inside.
        // SAFETY: a plain kill of a pid we just found; it is ours (unshare's child).
        unsafe { libc::kill(master as i32, libc::SIGKILL) };
        let mut unshare = unshare;
        let _ = unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{worker}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let trace = ns.path().join("trace");

    // The worker by host pid, with its pid inside.
    let processes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trace.join("processes.json")).unwrap()).unwrap();
    let p = processes.as_array().unwrap().iter().find(|p| p["pid"] == worker).expect("the worker");
    assert_eq!(p["ns"]["nspid"], serde_json::json!(inner), "{p}");
    let label = format!("{worker} (pid {} in its container)", inner[1]);
    let report = std::fs::read_to_string(trace.join("report.md")).unwrap();
    assert!(summary.contains(&label) || report.contains(&label), "the report names {label}:\n{summary}");

    // Its frames named from the copy of the in-namespace binary, as well as on the host.
    let (folded, share) = named_share(&trace, worker);
    eprintln!("named frames: {:.1}% in the namespace, {:.1}% on the host", share * 100.0, host_share * 100.0);
    assert!((share - host_share).abs() <= 0.05, "{share} vs {host_share}:\n{folded}");
    assert!(folded.contains("ngx_process_events_and_timers [nginx]"), "{folded}");
    let index = std::fs::read_to_string(trace.join("binaries/index.json")).expect("binaries/index.json");
    assert!(index.contains(&format!("{}/nginx", bin_dir.display())), "{index}");
}

/// A cgroup the test makes (v2, or v1's `pids` hierarchy), removed with its processes moved
/// back to the root group.
struct Group {
    path: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl Group {
    fn new(name: &str) -> Self {
        let base = Path::new("/sys/fs/cgroup");
        let root =
            if base.join("cgroup.controllers").exists() { base.to_path_buf() } else { base.join("pids") };
        let path = root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        Group { path, root }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default().lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `reloadscope record --container NAME` for 1 s with `path_env` as PATH: (success, stderr, trace).
fn record_container(name: &str, path_env: &str, out: &Path) -> (bool, String) {
    let res = reloadscope()
        .args(["record", "--container", name, "--duration", "1s", "--no-http", "--out"])
        .arg(out)
        .env("PATH", path_env)
        .output()
        .unwrap();
    (res.status.success(), String::from_utf8_lossy(&res.stderr).into_owned())
}

#[test]
#[ignore = "root: makes cgroups, loads eBPF programs"]
fn container_finds_the_nginx_master_by_cgroup_or_engine_and_says_why_not() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    write_conf(dir.path());
    let nginx = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .spawn()
        .unwrap();
    let (master, worker) = (nginx.id(), worker_of(nginx.id()));
    let name = format!("reloadscope-test-{}", std::process::id());
    let group = Group::new(&name);
    group.add(worker);
    group.add(master);
    let path = std::env::var("PATH").unwrap_or_default();

    // By cgroup (this machine's docker CLI has no engine to answer).
    let (ok, err) = record_container(&name, &path, &dir.path().join("t1"));
    assert!(ok, "{err}");
    assert!(err.contains(&format!("nginx master is pid {master}")), "{err}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t1/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["options"]["root_pid"], master);

    // By an engine's answer: a fake `docker` that knows the container's init pid.
    let bin = dir.path().join("fakebin");
    std::fs::create_dir(&bin).unwrap();
    let docker = bin.join("docker");
    std::fs::write(&docker, format!("#!/bin/sh\n[ \"$1\" = inspect ] && echo {master}\n")).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&docker).status().unwrap();
    let (ok, err) = record_container("kong", &format!("{}:{path}", bin.display()), &dir.path().join("t2"));
    assert!(ok && err.contains(&format!("nginx master is pid {master}")), "{err}");

    // Absent, and present without nginx: one line each, non-zero exit.
    let (ok, err) = record_container("reloadscope-absent-container", &path, &dir.path().join("t3"));
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("no container"), "{err}");
    let empty = Group::new(&format!("{name}-empty"));
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    empty.add(sleeper.id());
    let (ok, err) = record_container(&format!("{name}-empty"), &path, &dir.path().join("t4"));
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("has no nginx master"), "{err}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(empty);
    drop(group);
    stop(nginx);
}
