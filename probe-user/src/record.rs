//! `reloadscope record`: trace a process tree for a while and write a trace directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use probe_common::{Target, kind, target_flag};

use crate::event::{Event, bucket_event, decode};
use crate::probe::Probe;
use crate::trace::{ClockAnchor, Meta, RecordOptions, TraceWriter};
use crate::{clock, preflight, proctree, summary};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordArgs {
    /// Root of the process tree to trace.
    pub pid: u32,
    /// How long to trace.
    pub duration: Duration,
    /// The trace directory to write.
    pub out: PathBuf,
    /// epoll aggregation bucket.
    pub bucket: Duration,
    /// Follow forks of targets into new targets.
    pub follow_forks: bool,
}

/// The result of a recording.
#[derive(Debug)]
pub struct Recorded {
    /// The trace's metadata as written.
    pub meta: Meta,
    /// The per-thread table as printed.
    pub table: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM end the recording early (what was collected is still written).
fn install_stop_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Names of record kinds, for the drop counters in meta.json.
fn kind_name(k: u32) -> String {
    match k {
        kind::EPOLL_BUCKET => "epoll_bucket".into(),
        kind::EPOLL_CALL => "epoll_call".into(),
        kind::PROC_FORK => "proc_fork".into(),
        kind::PROC_EXIT => "proc_exit".into(),
        other => format!("kind_{other}"),
    }
}

/// Traces `args.pid` and its descendants for `args.duration` and writes `args.out`.
pub fn record(args: &RecordArgs) -> Result<Recorded> {
    let tracefs = preflight::check()?;
    let root_comm =
        proctree::comm(args.pid).ok_or_else(|| anyhow!("no process with pid {}", args.pid))?;
    let mut probe = Probe::load(&tracefs, args.bucket.as_nanos() as u64, args.follow_forks)?;
    for tp in &probe.missing {
        eprintln!("reloadscope: {tp} does not exist on this kernel; that syscall is not traced");
    }
    install_stop_handlers();
    let clock = ClockAnchor {
        monotonic_ns: clock::monotonic_ns(),
        realtime_ns: clock::realtime_ns(),
    };
    let started_ns = clock.monotonic_ns;

    // Root first: from here on the kernel adds its new children itself.
    probe.add_target(
        args.pid,
        Target {
            parent: 0,
            flags: target_flag::FROM_USER,
        },
    )?;
    let mut initial = vec![args.pid];
    for pid in proctree::descendants(args.pid, &proctree::scan()) {
        probe.add_target(
            pid,
            Target {
                parent: 0,
                flags: target_flag::FROM_USER,
            },
        )?;
        initial.push(pid);
    }
    eprintln!(
        "reloadscope: tracing pid {} ({root_comm}) and {} descendant(s) for {:.1?}; writing {}",
        args.pid,
        initial.len() - 1,
        args.duration,
        args.out.display()
    );

    let mut writer = TraceWriter::create(&args.out)?;
    let mut events: Vec<Event> = Vec::new();
    let mut decode_errors = 0u64;
    let mut handle = |bytes: &[u8], writer: &mut TraceWriter| match decode(bytes) {
        Ok(ev) => {
            let r = writer.write(&ev);
            events.push(ev);
            r
        }
        Err(_) => {
            decode_errors += 1;
            Ok(())
        }
    };
    let deadline = Instant::now() + args.duration;
    let mut io_error = None;
    while !STOP.load(Ordering::SeqCst) && Instant::now() < deadline {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        probe.poll(wait, |b| {
            if let Err(e) = handle(b, &mut writer) {
                io_error.get_or_insert(e);
            }
        })?;
    }
    // Stop the kernel side first, so nothing changes while the rest is read. Emptying the
    // targets stops every program at once; detaching takes far longer and happens on drop.
    probe.clear_targets()?;
    let ended_ns = clock::monotonic_ns();
    probe.drain(|b| {
        if let Err(e) = handle(b, &mut writer) {
            io_error.get_or_insert(e);
        }
    });
    for bucket in probe.open_buckets()? {
        let mut ev = bucket_event(&bucket);
        ev.task.ts_ns = ended_ns;
        let ev = Event::EpollBucket(ev);
        writer.write(&ev)?;
        events.push(ev);
    }
    if let Some(e) = io_error {
        return Err(e);
    }
    let drops: BTreeMap<String, u64> = probe
        .drops()?
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .map(|(k, n)| (kind_name(k as u32), n))
        .collect();

    let mut meta = Meta {
        tool: format!("reloadscope {}", env!("CARGO_PKG_VERSION")),
        kernel: preflight::kernel_release(),
        clock,
        started_ns,
        ended_ns,
        options: RecordOptions {
            root_pid: args.pid,
            duration_ms: args.duration.as_millis() as u64,
            bucket_ms: args.bucket.as_millis() as u64,
            follow_forks: args.follow_forks,
        },
        root_comm,
        initial_targets: initial,
        drops,
        decode_errors,
        interrupted: STOP.load(Ordering::SeqCst),
        ..Meta::default()
    };
    let threads = summary::by_thread(&events);
    let table = summary::table(&threads, meta.window_ns());
    writer.finish(&mut meta, &threads, &table)?;
    Ok(Recorded { meta, table })
}

/// One line on what was written and what was lost.
pub fn footer(meta: &Meta, out: &std::path::Path) -> String {
    format!(
        "window {:.2} s, {} events, {} dropped, {} undecodable{}; trace in {}",
        meta.window_ns() as f64 / 1e9,
        meta.events,
        meta.total_drops(),
        meta.decode_errors,
        if meta.interrupted {
            ", interrupted"
        } else {
            ""
        },
        out.display()
    )
}
