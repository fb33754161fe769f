//! The probe's overhead on a unix-socket ping-pong, with and without the probe in the same run
//! (untraced, traced, untraced again), its drop count, and then, in a window of its own (the
//! counting costs two clock reads per program run), the kernel's cost per program. Writes
//! `target/bench/overhead.json`.
//!
//! The untraced windows end when the recorder is started and begin when it has exited: its
//! loading (BTF, the verifier) and its writing of the trace take a CPU of their own for a second
//! or so, which on two vCPUs slowed the baselines around the traced window, not the traced one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{require_root, workspace_root};

/// Round trips per second over the intervals between `from` and `to` (monotonic ns).
fn rate(points: &[(u64, u64)], from: u64, to: u64) -> f64 {
    let inside: Vec<_> = points.iter().filter(|(t, _)| *t > from + 200_000_000 && *t <= to).collect();
    if inside.len() < 2 {
        return 0.0;
    }
    let trips: u64 = inside[1..].iter().map(|(_, n)| n).sum();
    trips as f64 / ((inside.last().unwrap().0 - inside[0].0) as f64 / 1e9)
}

/// Runs the ping-pong benchmark with `bytes` per message.
pub fn overhead(bytes: usize, sample_hz: u64) -> Result<()> {
    require_root("the benchmark loads the probe")?;
    let target = workspace_root().join("target/release");
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let mut pingpong = Command::new(target.join("unix_pingpong"))
        .args(["20", &bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("run target/release/unix_pingpong (cargo xtask build first)")?;
    let mut lines = BufReader::new(pingpong.stdout.take().unwrap()).lines();
    let ready = lines.next().context("ping-pong said nothing")??;
    let pid = ready.split_whitespace().nth(1).context("no pid")?.to_string();
    let reader = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter_map(|l| {
                let mut w = l.split_whitespace().skip(1).map(|x| x.parse::<u64>().ok());
                Some((w.next()??, w.next()??))
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(3));
    let trace = out.join("pingpong-trace");
    let (spawned, exited) = record(&target, &pid, sample_hz, &trace, false)?;
    std::thread::sleep(Duration::from_secs(3));
    let counted = out.join("pingpong-counted");
    record(&target, &pid, sample_hz, &counted, true)?;
    let points = reader.join().expect("reader thread");
    let _ = pingpong.wait();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(trace.join("meta.json"))?)?;
    let (start, end) = (meta["started_ns"].as_u64().unwrap_or(0), meta["ended_ns"].as_u64().unwrap_or(0));
    let first = points.first().map_or(0, |p| p.0);
    let before = rate(&points, first, spawned);
    let traced = rate(&points, start, end);
    // Up to the counted recording's start, 3 s after this one's exit.
    let after = rate(&points, exited, exited + 2_800_000_000);
    let untraced = (before + after) / 2.0;
    let lost = 100.0 * (1.0 - traced / untraced);
    let drops = super::drops(&trace);
    let events = meta["events"].as_u64().unwrap_or(0);
    println!(
        "unix ping-pong, {bytes}-byte messages, probe sampling at {sample_hz} Hz, round trips per second:"
    );
    println!("  untraced before {before:>10.0}");
    println!("  traced          {traced:>10.0}   ({events} events, {drops} dropped)");
    println!("  untraced after  {after:>10.0}");
    println!("  throughput lost under the probe: {lost:.1}%");
    let cost = super::prog_stats(&counted)?;
    println!("\nthe probe's cost per program in a second traced window (kernel run-time statistics):\n");
    print!("{}", shared::progstats::table(&cost.rows(), cost.kernel_percent(), cost.recorder_percent()));
    let json = serde_json::json!({
        "bytes": bytes, "sample_hz": sample_hz, "before": before, "traced": traced, "after": after,
        "lost_percent": lost, "events": events, "drops": drops, "prog_stats": cost,
    });
    std::fs::write(out.join("overhead.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Traces the ping-pong for 3 s into `trace`, counting the programs' cost when `counted`;
/// returns when the recorder was started and when it had exited (monotonic ns).
fn record(
    target: &std::path::Path,
    pid: &str,
    sample_hz: u64,
    trace: &std::path::Path,
    counted: bool,
) -> Result<(u64, u64)> {
    let mut cmd = Command::new(target.join("reloadscope"));
    cmd.args(["record", "--pid", pid, "--duration", "3s", "--sample-hz", &sample_hz.to_string()]);
    if counted {
        cmd.arg("--prog-stats");
    }
    let spawned = shared::clock::monotonic_ns();
    let status = cmd.arg("--out").arg(trace).stdout(Stdio::null()).status()?;
    let exited = shared::clock::monotonic_ns();
    if !status.success() {
        bail!("reloadscope record failed ({status})");
    }
    Ok((spawned, exited))
}
