//! Root integration test of debug info by build-id: a C program built with `-g`, split
//! (`objcopy --only-keep-debug`), stripped and debug-linked, spins in three static functions.
//! Without its debug file those are `fn@…`; with the file under a `.build-id` tree, or served by
//! a real `debuginfod` on 127.0.0.1, they are named; with `DEBUGINFOD_URLS` at a dead port the
//! analysis still finishes, in time, and says so.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SOURCE: &str = r#"
#include <stdio.h>
#include <unistd.h>
static volatile unsigned long sink;
static __attribute__((noinline)) void innermost_static(void) { for (int i = 0; i < 1000; i++) sink += i; }
static __attribute__((noinline)) void middle_static(void) { for (int i = 0; i < 100; i++) innermost_static(); }
static __attribute__((noinline)) void outer_static(void) { for (;;) middle_static(); }
int main(void) { printf("ready %d %d\n", getpid(), getpid()); fflush(stdout); outer_static(); }
"#;

const STATICS: [&str; 3] = ["outer_static", "middle_static", "innermost_static"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Builds the program in `dir`: returns the stripped binary, its detached debug file (moved
/// out of the binary's directory, so only a lookup finds it) and its build-id.
fn build(dir: &Path) -> (PathBuf, PathBuf, String) {
    let bin_dir = dir.join("bin");
    let store = dir.join("store");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(bin_dir.join("spin.c"), SOURCE).unwrap();
    let bin = bin_dir.join("spin");
    run(Command::new("gcc").args(["-g", "-O1", "-o"]).arg(&bin).arg(bin_dir.join("spin.c")));
    run(Command::new("objcopy").arg("--only-keep-debug").arg(&bin).arg(bin_dir.join("spin.debug")));
    run(Command::new("strip").arg("--strip-all").arg(&bin));
    run(Command::new("objcopy").arg("--add-gnu-debuglink=spin.debug").arg("spin").current_dir(&bin_dir));
    let debug = store.join("spin.debug");
    std::fs::rename(bin_dir.join("spin.debug"), &debug).unwrap();
    let notes = String::from_utf8(run(Command::new("readelf").arg("-n").arg(&bin)).stdout).unwrap();
    let id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build-id")
        .trim()
        .to_string();
    (bin, debug, id)
}

/// `reloadscope flamegraph` on `trace` with `args` and `env`; returns stdout and the pid's
/// folded stacks.
fn flamegraph(trace: &Path, pid: u32, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = reloadscope();
    cmd.arg("flamegraph").arg(trace).args(args).env_remove("DEBUGINFOD_URLS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let folded = std::fs::read_dir(trace.join("flamegraphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy().contains(&format!("pid{pid}-"))
                && p.extension().is_some_and(|e| e == "folded")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("no folded stacks for pid {pid}"));
    (stdout, folded)
}

/// Samples whose stack names all three static functions, out of all.
fn named_share(folded: &str) -> (u64, u64) {
    let mut named = 0;
    let mut all = 0;
    for (stack, n) in folded.lines().filter_map(|l| l.rsplit_once(' ')) {
        let n: u64 = n.parse().unwrap();
        all += n;
        if STATICS.iter().all(|f| stack.contains(&format!("{f} [spin]"))) {
            named += n;
        }
    }
    (named, all)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A debuginfod server; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn static_functions_are_named_from_a_build_id_tree_and_from_debuginfod() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (bin, debug, id) = build(dir.path());
    let mut spin = Running::start(&mut Command::new(&bin));
    let (pid, _) = ready_ids(&spin.wait_for("ready"));
    let trace = dir.path().join("trace");
    Recording::start(&[pid], "2s", &trace, &["--sample-hz", "99"]).finish();
    let _ = spin.child.kill();

    // Without a debug file the statics are only their .eh_frame starts.
    let (stdout, folded) = flamegraph(&trace, pid, &[], &[]);
    let (named, all) = named_share(&folded);
    assert!(all >= 100, "{all} samples");
    assert_eq!(named, 0, "named without debug info?\n{folded}");
    assert!(folded.contains("fn@0x") && !stdout.contains("`spin`"), "{stdout}\n{folded}");

    // (a) Under a .build-id tree given with --debug-dir.
    let root = dir.path().join("debug-root");
    let at = root.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &at).unwrap();
    let (stdout, folded) = flamegraph(&trace, pid, &["--debug-dir", root.to_str().unwrap()], &[]);
    let (named, all) = named_share(&folded);
    eprintln!("build-id tree: {named} of {all} samples name all three statics");
    assert!(named * 10 >= all * 9, "{named}/{all}\n{folded}");
    assert!(stdout.contains("`spin` (build-id in a debug directory)"), "{stdout}");

    // (b) From a real debuginfod indexing a directory that holds only the debug file.
    let port = free_port();
    let server = Server(
        Command::new("debuginfod")
            .args(["-p", &port.to_string(), "-F"])
            .arg(debug.parent().unwrap())
            .arg("-d")
            .arg(dir.path().join("debuginfod.sqlite"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("debuginfod (run `cargo xtask setup`)"),
    );
    let url = format!("http://127.0.0.1:{port}");
    // Ready once it serves the file. Each ask has a fresh cache: the client remembers a miss,
    // and the tool's own cache must stay empty.
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let probe = Command::new("debuginfod-find")
            .args(["debuginfo", &id])
            .env("DEBUGINFOD_URLS", &url)
            .env("DEBUGINFOD_CACHE_PATH", dir.path().join(format!("probe-cache-{attempt}")))
            .output()
            .unwrap();
        if probe.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "debuginfod never served {id}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let cache = dir.path().join("cache");
    let env = [("DEBUGINFOD_URLS", url.as_str()), ("DEBUGINFOD_CACHE_PATH", cache.to_str().unwrap())];
    let (stdout, folded) = flamegraph(&trace, pid, &[], &env);
    let (named, all) = named_share(&folded);
    eprintln!("debuginfod: {named} of {all} samples name all three statics");
    assert!(named * 10 >= all * 9, "{named}/{all}\n{folded}");
    assert!(stdout.contains("`spin` (debuginfod)"), "{stdout}");
    assert!(cache.join(&id).join("debuginfo").is_file(), "fetched into the cache");
    drop(server);

    // A dead server: the analysis finishes within the time limit and says why names are missing.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let empty = dir.path().join("empty-cache");
    let env = [("DEBUGINFOD_URLS", dead.as_str()), ("DEBUGINFOD_CACHE_PATH", empty.to_str().unwrap())];
    let (stdout, folded) = flamegraph(&trace, pid, &[], &env);
    let took = started.elapsed();
    assert!(took < reloadscope::flame::debuginfo::FETCH_TIMEOUT + Duration::from_secs(10), "took {took:?}");
    assert_eq!(named_share(&folded).0, 0);
    assert!(stdout.contains(&format!("debuginfod ({dead})")), "{stdout}");
}
