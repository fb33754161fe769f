//! Root integration tests of process lifecycle and CPU sampling on real processes.

mod common;

use std::time::Duration;

use common::*;
use reloadscope::Process;
use shared::clock::monotonic_ns;

fn processes(dir: &std::path::Path) -> Vec<Process> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("processes.json")).unwrap()).unwrap()
}

fn pids(line: &str) -> Vec<u32> {
    line.split_whitespace().skip(2).map(|p| p.parse().unwrap()).collect()
}

/// A master with two workers gets SIGHUP: it forks and execs a new generation, then SIGTERMs the
/// old one. The trace has the HUP with its sender, the forks and execs with correct parents,
/// the old workers' exits by SIGTERM from the master, and the two worker generations.
#[test]
#[ignore = "root: loads eBPF programs"]
fn hup_driven_respawn_is_recorded_with_parents_and_generations() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace");
    let mut master = Running::start(std::process::Command::new(fixture("reload_tree")).args(["master", "2"]));
    let mpid = ready_ids(&format!("{} 0", master.wait_for("ready"))).0;
    let gen1 = pids(&master.wait_for("generation 1"));
    let rec = Recording::start(&[mpid], "2s", &out, &["--sample-hz", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mpid as i32, libc::SIGHUP) };
    let gen2 = pids(&master.wait_for("generation 2"));
    let trace = rec.finish();
    unsafe { libc::kill(mpid as i32, libc::SIGTERM) };
    let me = std::process::id();

    let hup = events_of!(trace, Signal).into_iter().find(|s| s.sig == 1).expect("the HUP");
    assert_eq!((hup.target, hup.task.tgid), (mpid, me));
    let procs = processes(&out);
    let p = |pid: u32| {
        procs.iter().find(|p| p.pid == pid).unwrap_or_else(|| panic!("pid {pid} missing: {procs:#?}"))
    };
    for &w in &gen1 {
        assert_eq!((p(w).parent, p(w).worker_generation), (mpid, None), "gen 1 existed before the trace");
        assert_eq!(p(w).exit_signal.as_deref(), Some("SIGTERM"), "{:?}", p(w));
        assert!(p(w).signals.iter().any(|s| s.sig == "SIGTERM" && s.from == mpid));
        assert_eq!(p(w).parent_at_exit, Some(mpid));
        assert!(!p(w).orphaned);
        assert!(p(w).exit_ns.unwrap() > hup.task.ts_ns);
    }
    let exe = fixture("reload_tree");
    for &w in &gen2 {
        let w = p(w);
        assert_eq!((w.parent, w.worker_generation), (mpid, Some(2)));
        assert!(w.forked_ns.unwrap() > hup.task.ts_ns);
        assert_eq!(w.exec.as_deref(), Some(exe.to_str().unwrap()));
        assert_eq!(w.argv, vec![exe.to_str().unwrap().to_string(), "worker".to_string()]);
        assert_eq!(w.exit_ns, None, "gen 2 still runs");
    }
    assert!(events_of!(trace, ProcExec).iter().all(|e| e.parent == mpid));
}

/// A busy thread sampled at 99 Hz gets about 99 samples per second of CPU it used (the clock
/// samples each CPU; on a shared machine the burner gets less than a whole CPU), all on its pid,
/// each with user registers and a copy of its stack.
#[test]
#[ignore = "root: loads eBPF programs"]
fn cpu_samples_land_on_the_busy_pid_at_the_configured_rate() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace");
    let mut burn = Running::start(std::process::Command::new(fixture("burn")).arg("4"));
    let (pid, tid) = ready_ids(&burn.wait_for("ready"));
    // The thread's CPU time, read every 10 ms with the monotonic clock the trace uses, so the
    // CPU it used inside the recording's window can be interpolated.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut points = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                points.push((monotonic_ns(), cpu_ns(pid, tid)));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            points
        }
    });
    let rec = Recording::start(&[pid], "2s", &out, &["--sample-hz", "99"]);
    let trace = rec.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let points = watcher.join().unwrap();
    let cpu = (at(&points, trace.meta.ended_ns) - at(&points, trace.meta.started_ns)) / 1e9;
    let samples = events_of!(trace, CpuSample);
    let seconds = trace.meta.window_ns() as f64 / 1e9;
    let rate = samples.len() as f64 / cpu;
    eprintln!(
        "{} samples in a {seconds:.3} s window, {cpu:.3} s of CPU: {rate:.1} per CPU second (configured 99 Hz)",
        samples.len()
    );
    assert!(cpu >= 0.5 && (85.0..=110.0).contains(&rate), "rate {rate}");
    assert!(samples.iter().all(|s| s.task.tgid == pid && s.task.tid == tid));
    let user = samples.iter().filter(|s| s.user_mode).count();
    assert!(user * 10 >= samples.len() * 8, "a CPU burner runs in user mode: {user}/{}", samples.len());
    assert!(samples.iter().all(|s| s.sp != 0 && s.ip != 0 && s.stack_len >= 256));
    // The copies are one gzip stream, their lengths end to end.
    let plain =
        std::process::Command::new("gzip").arg("-dc").arg(out.join("samples.bin.gz")).output().unwrap();
    assert!(plain.status.success());
    assert_eq!(plain.stdout.len() as u64, samples.iter().map(|s| s.stack_len as u64).sum::<u64>());
    assert_eq!(trace.meta.drops.get("cpu_sample"), None);
    // Its memory map was kept for symbolizing later: the burner's own code is in it, mapped
    // executable, and every sampled user-mode ip falls in one of its executable ranges.
    let maps = std::fs::read_to_string(out.join(format!("maps/{pid}.maps"))).unwrap();
    let exe = std::fs::canonicalize(fixture("burn")).unwrap();
    let code: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|perms| perms.contains('x')))
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?))
        })
        .collect();
    assert!(
        maps.lines().any(|l| l.ends_with(&*exe.to_string_lossy()) && l.contains("r-xp")),
        "{} is not mapped executable in:\n{maps}",
        exe.display()
    );
    let outside =
        samples.iter().filter(|s| s.user_mode && !code.iter().any(|&(lo, hi)| (lo..hi).contains(&s.ip)));
    assert_eq!(outside.count(), 0, "user-mode samples outside the executable mappings");
}

/// CPU time thread `tid` of `pid` has spent running, in ns (procfs schedstat).
fn cpu_ns(pid: u32, tid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// The CPU time at `t`, interpolated between the readings around it.
fn at(points: &[(u64, u64)], t: u64) -> f64 {
    let after = points.partition_point(|&(ts, _)| ts < t).clamp(1, points.len() - 1);
    let ((t0, c0), (t1, c1)) = (points[after - 1], points[after]);
    c0 as f64 + (c1 as f64 - c0 as f64) * (t as f64 - t0 as f64) / (t1 - t0).max(1) as f64
}
