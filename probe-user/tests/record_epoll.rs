//! Root integration tests of the epoll probe on real processes and the real kernel.

mod common;

use std::process::Command;

use common::*;
use probe_common::Syscall;
use reloadscope::ThreadSummary;

fn thread(threads: &[ThreadSummary], tid: u32) -> &ThreadSummary {
    threads
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("tid {tid} not in the summary: {threads:?}"))
}

fn summaries(dir: &std::path::Path) -> Vec<ThreadSummary> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// A spinner on epoll_pwait(timeout 0) and a blocker on epoll_wait(timeout 200 ms), children of
/// one shell: the record names both threads with their timeouts, and the spinner's rate matches
/// the rate it counted itself over the same window.
#[test]
#[ignore = "root: loads eBPF programs"]
fn spinner_and_blocker_are_told_apart() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let script =
        format!("{spin} pwait 0 5 & {spin} wait 200 5 & wait", spin = fixture("epoll_loop").display());
    let mut family = Running::start(Command::new("sh").args(["-c", &script]));
    let (a, b) = (family.wait_for("ready"), family.wait_for("ready"));
    // Which line is which is not ordered: ask /proc for each pid's cmdline.
    let is_spinner =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap().contains("pwait");
    let (spin, block) = if is_spinner(ready_ids(&a).0) {
        (ready_ids(&a), ready_ids(&b))
    } else {
        (ready_ids(&b), ready_ids(&a))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));

    let out = dir.path().join("trace");
    let shell = family.child.id();
    let output = record(shell, "2s", &out);
    let lines = family.finish();
    let t = reloadscope::read_trace(&out).unwrap();
    let threads = summaries(&out);
    let window = t.meta.window_ns();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));

    assert_eq!(t.meta.total_drops(), 0, "drops: {:?}", t.meta.drops);
    assert!(t.meta.initial_targets.contains(&spin.0) && t.meta.initial_targets.contains(&block.0));

    let s = thread(&threads, spin.1);
    assert_eq!(s.tgid, spin.0);
    assert_eq!(s.timeout_ns, 0);
    assert!(s.syscalls.contains(&Syscall::EpollPwait), "{:?}", s.syscalls);
    assert!(s.zero_timeout_share() > 0.999, "zero-timeout share {}", s.zero_timeout_share());
    assert!(s.zero_event_share() > 0.999, "zero-event share {}", s.zero_event_share());
    let own = calls_at(&lines, spin.0, t.meta.ended_ns) - calls_at(&lines, spin.0, t.meta.started_ns);
    let ratio = s.calls as f64 / own;
    eprintln!(
        "spinner: probe {:.0} calls/s, spinner's own count {:.0} calls/s over the same {:.3} s (ratio {ratio:.3})",
        s.calls_per_sec(window),
        own * 1e9 / window as f64,
        window as f64 / 1e9
    );
    assert!(s.calls_per_sec(window) > 50_000.0, "a spinner makes far more than 50k calls/s");
    assert!((0.95..=1.05).contains(&ratio), "probe saw {} calls, the spinner made {own:.0}", s.calls);

    let b = thread(&threads, block.1);
    assert_eq!(b.tgid, block.0);
    assert_eq!(b.timeout_ns, 200_000_000);
    assert!(b.syscalls.contains(&Syscall::EpollWait), "{:?}", b.syscalls);
    assert_eq!(b.zero_timeout, 0);
    assert!((8..=11).contains(&b.calls), "about 2 s / 200 ms calls, got {}", b.calls);
    assert!(b.blocked_share(window) > 0.8, "blocked share {}", b.blocked_share(window));
}

/// A child started after tracing began is traced too: the kernel follows the fork.
#[test]
#[ignore = "root: loads eBPF programs"]
fn follows_forks_after_attach() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // The shell forks the fixture only once the probe says it is tracing and the test creates
    // `go`; `; true` keeps it from exec'ing the fixture: it must be a new process.
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.01; done; {} pwait2 0 1; true",
        go.display(),
        fixture("epoll_loop").display()
    );
    let mut parent = Running::start(Command::new("sh").args(["-c", &script]));
    let shell = parent.child.id();
    let out = dir.path().join("trace");
    let rec = Recording::start(&[shell], "2s", &out, &[]);
    std::fs::write(&go, "").unwrap();
    let (pid, tid) = ready_ids(&parent.wait_for("ready"));
    let t = rec.finish();
    assert!(!t.meta.initial_targets.contains(&pid), "the child must not exist at start");
    let threads = summaries(&out);
    let s = thread(&threads, tid);
    assert_eq!(s.tgid, pid);
    assert!(s.syscalls.contains(&Syscall::EpollPwait2), "{:?}", s.syscalls);
    assert_eq!(s.timeout_ns, 0);
    assert!(s.calls > 10_000, "calls {}", s.calls);
    // The fork that made it, seen from its (sub)shell parent.
    let forked = t
        .events
        .iter()
        .any(|e| matches!(e, reloadscope::Event::ProcFork(f) if f.child == pid && f.task.tgid == shell));
    assert!(forked, "no fork event from the shell {shell} to pid {pid}");
}

/// Bad input fails with one clear line and a non-zero exit.
#[test]
#[ignore = "root: checks the non-root path by dropping privileges"]
fn bad_input_gets_one_clear_line() {
    require_root();
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "should fail: {err}");
        assert_eq!(err.lines().count(), 1, "one line expected, got: {err:?}");
        err
    };
    let err = run(reloadscope().args(["record", "--pid", "4000000", "--duration", "1s", "--out", "/tmp/x"]));
    assert!(err.contains("no process with pid 4000000"), "{err}");
    let err = run(reloadscope().args(["record", "--pid", "1", "--duration", "5x", "--out", "/tmp/x"]));
    assert!(err.contains("5x") && err.contains("unit"), "{err}");
    let err = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_reloadscope"))
        .args(["record", "--pid", "1", "--duration", "1s", "--out", "/tmp/x"]));
    assert!(err.contains("needs root"), "{err}");
}

/// `record --floor` attaches the same programs, which then return at once: the kernel counts
/// them running at the spinner's rate, and the trace holds no record of any of them.
#[test]
#[ignore = "root: loads eBPF programs"]
fn the_floor_runs_every_program_and_records_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut spinner = Running::start(Command::new(fixture("epoll_loop")).args(["pwait", "0", "3"]));
    let (pid, _) = ready_ids(&spinner.wait_for("ready"));
    let out = dir.path().join("trace");
    let rec = Recording::start(&[pid], "1s", &out, &["--floor", "--prog-stats", "--sample-hz", "99"]);
    let t = rec.finish();
    let _ = spinner.finish();
    let stats = t.meta.prog_stats.as_ref().expect("--prog-stats writes the programs' counts");
    let runs = |name: &str| stats.programs.iter().find(|p| p.name == name).map_or(0, |p| p.runs);
    assert!(runs("epoll_pwait_enter") > 1_000 && runs("epoll_exit") > 1_000, "{stats:?}");
    assert!(runs("cpu_sample") > 0, "the sampler is attached too: {stats:?}");
    assert!(t.events.is_empty(), "empty programs send nothing: {:?}", &t.events[..t.events.len().min(3)]);
}
