//! The `reloadscope` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reloadscope::{RecordArgs, footer, record};
use shared::duration;

#[derive(Parser)]
#[command(
    name = "reloadscope",
    version,
    about = "What a gateway reload does to traffic in flight, from the kernel's view"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace a process tree (following forks) and write a trace directory. Needs root.
    ///
    /// SIGUSR1 ends the recording normally before --duration; Ctrl-C ends it early and marks the
    /// trace interrupted. Either way what was collected is written.
    Record {
        /// Root of a process tree to trace (e.g. the nginx master); repeat for more trees.
        #[arg(long = "pid", required_unless_present = "container")]
        pids: Vec<u32>,
        /// Trace the nginx master inside this container (docker or podman name or id, or the
        /// name of its cgroup), found from the host.
        #[arg(long)]
        container: Option<String>,
        /// How long to trace, e.g. 5s, 500ms, 2m.
        #[arg(long, default_value = "5s", value_parser = duration::parse)]
        duration: std::time::Duration,
        /// The trace directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Length of the in-kernel epoll aggregation buckets.
        #[arg(long, default_value = "100ms", value_parser = duration::parse)]
        bucket: std::time::Duration,
        /// Trace only the processes that exist at start, not their new children.
        #[arg(long)]
        no_follow_forks: bool,
        /// CPU sampling frequency in Hz (0 turns sampling off).
        #[arg(long, default_value_t = 99)]
        sample_hz: u64,
        /// Do not trace TCP connections and HTTP requests (no payload byte is then copied).
        #[arg(long)]
        no_http: bool,
        /// Do not walk the Lua stacks of LuaJIT processes at each sample (native stacks only).
        #[arg(long)]
        no_lua: bool,
        /// The request header whose value identifies a request (matched without case).
        #[arg(long, default_value = "x-request-id", value_parser = header_name)]
        request_id_header: String,
        /// Measure the probe's own cost: the kernel's run count and time of each eBPF program
        /// over the window (two clock reads per run while on), and the recorder's CPU time, into
        /// meta.json and as a table.
        #[arg(long)]
        prog_stats: bool,
        /// Load every program as an empty one at the same attach points (nothing is recorded):
        /// with --prog-stats, what the attach points alone cost, the floor under the probe's
        /// own figures (`cargo xtask bench` measures both).
        #[arg(long)]
        floor: bool,
    },
    /// Analyse a run directory: link failed requests to their causes and write report.md,
    /// report.json and timeline.json into it (no root needed).
    Analyze {
        /// A run directory (requests.jsonl, reload.json, trace/), a bare trace directory, or a
        /// bundle (`reloadscope bundle`), which is unpacked next to itself first.
        dir: PathBuf,
        /// A debug directory to search before /usr/lib/debug (`.build-id/xx/…debug` or
        /// debug-link files); debuginfod servers come from DEBUGINFOD_URLS.
        #[arg(long = "debug-dir")]
        debug_dirs: Vec<PathBuf>,
    },
    /// Unwind (from the copied stacks and .eh_frame, no frame pointers needed), symbolize and draw
    /// flamegraphs of a trace directory's CPU samples (no root needed; kernel names need root).
    Flamegraph {
        /// A directory written by `reloadscope record`.
        dir: PathBuf,
        /// Where to write the SVGs and folded stacks (default: DIR/flamegraphs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A debug directory to search before /usr/lib/debug; debuginfod servers come from
        /// DEBUGINFOD_URLS.
        #[arg(long = "debug-dir")]
        debug_dirs: Vec<PathBuf>,
    },
    /// Pack an analysed run directory into one .tar.gz to attach to a GitHub issue: the report,
    /// timeline, flamegraphs, trace and load-test log, leaving the heaviest optional parts out
    /// until it fits --max-size (no root needed).
    Bundle {
        /// An analysed run directory.
        dir: PathBuf,
        /// The archive to write (default: DIR/reloadscope-bundle.tar.gz).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Largest archive, in bytes or with a unit (25MB, 10MiB): GitHub takes 25 MB.
        #[arg(long, default_value = "25MB", value_parser = shared::size::parse)]
        max_size: u64,
        /// Replace the host name, the user's and the run's paths, the plugin sockets' directory
        /// and the request ids' random prefix with placeholders, and leave the raw stack copies
        /// out.
        #[arg(long)]
        redact: bool,
    },
    /// Print the per-thread summary of a trace directory (no root needed).
    Show {
        /// A directory written by `reloadscope record`.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line, without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("reloadscope: {first}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.cmd {
        Cmd::Record {
            mut pids,
            container,
            duration,
            out,
            bucket,
            no_follow_forks,
            sample_hz,
            no_http,
            no_lua,
            request_id_header,
            prog_stats,
            floor,
        } => {
            if let Some(name) = &container {
                match shared::container::find_master(name) {
                    Ok(pid) => {
                        eprintln!("reloadscope: container {name}: nginx master is pid {pid}");
                        pids.push(pid);
                    }
                    Err(e) => {
                        eprintln!("reloadscope: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let args = RecordArgs {
                pids,
                duration,
                out,
                bucket,
                follow_forks: !no_follow_forks,
                sample_hz,
                http: !no_http,
                lua: !no_lua,
                request_id_header,
                prog_stats,
                floor,
            };
            record(&args).map(|r| {
                print!("{}", r.table);
                if let Some(cost) = &r.meta.prog_stats {
                    let table = shared::progstats::table(&cost.rows(), cost.kernel_percent(), cost.recorder_percent());
                    eprint!("reloadscope: the probe's cost over the window:\n{table}");
                }
                eprintln!("reloadscope: {}", footer(&r.meta, &args.out));
                if r.meta.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS }
            })
        }
        Cmd::Analyze { dir, debug_dirs } => analyze(&dir, &debug_dirs),
        Cmd::Bundle { dir, out, max_size, redact } => {
            let out = out.unwrap_or_else(|| dir.join("reloadscope-bundle.tar.gz"));
            reloadscope::bundle::write(&dir, &out, max_size, redact).map(|w| {
                println!("{} ({:.1} MB): attach this file to the issue", w.path.display(), w.bytes as f64 / 1e6);
                for p in &w.dropped {
                    println!("left out: {}", p.loss());
                }
                ExitCode::SUCCESS
            })
        }
        Cmd::Flamegraph { dir, out, debug_dirs } => {
            flamegraph(&dir, out.as_deref(), &debug_dirs).map(|(r, dir_out)| {
                for (pid, stack, n) in &r.heaviest {
                    println!("heaviest pid {pid} ({n} samples): {stack}");
                }
                println!(
                    "samples {}, unwound {}, with >=3 user frames {} ({:.1}%), unwind cost {:.1} us/sample",
                    r.samples,
                    r.unwound,
                    r.deep,
                    100.0 * r.success_rate(),
                    r.cost_per_sample().as_secs_f64() * 1e6
                );
                for g in &r.graphs {
                    if let Some(hot) = &g.lua_hot {
                        println!(
                            "lua {}: {} at {} ({} of {} samples with Lua frames), called from {}",
                            g.title,
                            hot.function,
                            hot.at.as_deref().unwrap_or("unknown line"),
                            hot.samples,
                            hot.lua_samples,
                            hot.caller.as_deref().unwrap_or("-")
                        );
                    }
                }
                let l = r.lua;
                println!(
                    "lua frames: {} samples merged, {} on a JIT trace, {} without an interpreter frame (dropped)",
                    l.merged, l.on_trace, l.no_vm_frame
                );
                println!("{}", reloadscope::flame::debug_info_line(&r.debug_named, &r.debug_notes));
                eprintln!("reloadscope: {} files in {}", r.files.len(), dir_out.display());
                ExitCode::SUCCESS
            })
        }
        Cmd::Show { dir } => reloadscope::read_trace(&dir).map(|t| {
            let threads = reloadscope::by_thread(&t.events);
            print!("{}", reloadscope::table(&threads, t.meta.window_ns()));
            eprintln!("reloadscope: {}", footer(&t.meta, &dir));
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("reloadscope: {e:#}");
        ExitCode::FAILURE
    })
}

/// `reloadscope flamegraph DIR`: the run's analysis names the spinning workers, whose graphs
/// come first. Returns the report and the directory written.
fn flamegraph(
    dir: &std::path::Path,
    out: Option<&std::path::Path>,
    debug_dirs: &[PathBuf],
) -> anyhow::Result<(reloadscope::flame::FlameReport, PathBuf)> {
    let run = reloadscope::load(dir)?;
    let a = reloadscope::analyze(&run);
    let sources = reloadscope::flame::debuginfo::Sources::from_env(debug_dirs);
    let r = reloadscope::flame::run(&reloadscope::flame_input(&run, &a), out, sources)?;
    Ok((r, out.map_or_else(|| run.trace_dir.join("flamegraphs"), PathBuf::from)))
}

/// `reloadscope analyze DIR`: a short summary on stdout, where the files are on stderr.
fn analyze(dir: &std::path::Path, debug_dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let unpacked;
    let dir = if dir.is_file() {
        unpacked = reloadscope::bundle::unpack(dir)?;
        eprintln!("reloadscope: unpacked the bundle into {}", unpacked.display());
        unpacked.as_path()
    } else {
        dir
    };
    let bundle = reloadscope::bundle::is_bundle(dir);
    if bundle && !dir.join("trace/events.jsonl").exists() {
        anyhow::bail!(
            "this bundle left its events out to fit its size limit: its report.md is the run's report"
        );
    }
    let mut run = reloadscope::load(dir)?;
    let mut a = reloadscope::analyze(&run);
    run.keep_for_report(&a);
    let analysed = started.elapsed();
    // Flamegraphs after the detectors, which name the spinning workers that get theirs first.
    // A bundle does not carry the gateway's binaries: its own flamegraphs stay.
    let sources = reloadscope::flame::debuginfo::Sources::from_env(debug_dirs);
    let drawn = if bundle {
        a.flamegraphs = reloadscope::bundle::bundled_flamegraphs(dir);
        Ok(Default::default())
    } else {
        reloadscope::flame::run(&reloadscope::flame_input(&run, &a), None, sources)
    };
    match drawn {
        Ok(r) if r.samples > 0 => {
            let rel = run.trace_dir.join("flamegraphs");
            let rel = rel.strip_prefix(&run.dir).unwrap_or(&rel).display().to_string();
            a.flamegraphs = Some(r.summary(&rel));
        }
        Ok(_) => {}
        Err(e) => eprintln!("reloadscope: no flamegraphs: {e:#}"),
    }
    let written = reloadscope::write_report(&run, &a)?;
    let att = &a.attribution;
    if att.failed == 0 {
        println!("{} requests in the log, none failed: nothing to attribute", att.requests);
    } else {
        println!(
            "{} of {} requests failed, {} of them in ways no reload effect produces; of the other {}: \
             {:.1}% explained exactly ({}), {:.1}% by time window ({}), {:.1}% unexplained ({})",
            att.failed,
            att.requests,
            att.not_reload,
            att.reload_failed,
            100.0 * att.exact_share,
            att.exact,
            100.0 * att.window_share,
            att.window,
            100.0 * att.unexplained_share,
            att.unexplained
        );
    }
    for line in reloadscope::headlines(&a) {
        println!("- {line}");
    }
    eprintln!(
        "reloadscope: wrote {} in {:.2} s (analysis {:.2} s, flamegraphs {:.2} s)",
        reloadscope::location(dir, &written),
        started.elapsed().as_secs_f64(),
        analysed.as_secs_f64(),
        (started.elapsed() - analysed).as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// An HTTP header name: a token of letters, digits and `-`/`_`.
fn header_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("'{s}' is not a header name (letters, digits, - and _)"))
    }
}
