//! `reloadscope record`: trace process trees for a while and write a trace directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use probe_common::lua::LuaConfig;
use probe_common::{Target, target_flag};

use crate::binaries::Binaries;
use crate::event::{
    Event, RecordKind, bucket_event, carried_response, decode, flow_event, http_chunk, response_view,
    sample_stack,
};
use crate::http_events::Pairing;
use crate::luajit::recorder::LuaRecorder;
use crate::model::{self, ProcInfo};
use crate::probe::{Probe, ProbeOptions};
use crate::trace::{ClockAnchor, Ending, Meta, RecordOptions, TraceWriter};
use crate::{preflight, proctree, summary};
use shared::clock;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordArgs {
    /// Roots of the process trees to trace.
    pub pids: Vec<u32>,
    /// How long to trace.
    pub duration: Duration,
    /// The trace directory to write.
    pub out: PathBuf,
    /// epoll aggregation bucket.
    pub bucket: Duration,
    /// Follow forks of targets into new targets.
    pub follow_forks: bool,
    /// CPU sampling frequency (0: off).
    pub sample_hz: u64,
    /// Trace accepted TCP connections and the HTTP requests on them.
    pub http: bool,
    /// Walk the Lua stacks of LuaJIT processes at each sample.
    pub lua: bool,
    /// The request header whose value identifies a request.
    pub request_id_header: String,
    /// Measure the probe's own cost over the window (`meta.json` `prog_stats`).
    pub prog_stats: bool,
    /// Load the programs empty (see `ProbeConfig::floor`).
    pub floor: bool,
}

/// The result of a recording.
#[derive(Debug)]
pub struct Recorded {
    /// The trace's metadata as written.
    pub meta: Meta,
    /// The per-thread table as printed.
    pub table: String,
}

/// Set by SIGINT/SIGTERM: cut short (the trace says "interrupted").
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGUSR1: the driver's window is over; end normally before `--duration`.
static END: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        END.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

/// Makes SIGINT and SIGTERM end the recording early, and SIGUSR1 end it normally; what was
/// collected is written either way.
fn install_stop_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Names of record kinds, for the drop counters in meta.json.
fn kind_name(k: u32) -> String {
    RecordKind::from_raw(k).map_or_else(|| format!("kind_{k}"), RecordKind::name)
}

/// /proc facts about a live process, and a copy of its memory map (and of its code files, when
/// they are a container's) for later symbolization; returns them and the map's text.
fn snapshot(pid: u32, writer: &TraceWriter, binaries: &mut Binaries) -> Option<(ProcInfo, Option<String>)> {
    let shared::procstat::Stat { ppid, comm, .. } = shared::procstat::read(pid)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into())
        .collect();
    let ns = proctree::namespaces(pid);
    let maps = writer.save_maps(pid);
    if let (Some(maps), Some(ns)) = (&maps, &ns) {
        binaries.keep(writer.dir(), pid, ns.mnt_ns, maps);
    }
    Some((ProcInfo { ppid, comm, argv, ns }, maps))
}

/// How often a sampled process's memory map is copied again: at an exec the map holds only the
/// binary and the loader; shared libraries, dlopen'ed modules and JIT code come later.
const MAPS_REFRESH: Duration = Duration::from_millis(500);

/// True when `pid` is a process (a thread's /proc entry reports its process in `Tgid`).
fn is_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| s.lines().any(|l| l == format!("Tgid:\t{pid}")))
}

/// True for the events [`model::processes`] and [`summary::by_thread`] read: process lifecycles,
/// signals, successful unix socket lifecycles with a path, and epoll buckets.
fn for_the_model(ev: &Event) -> bool {
    match ev {
        Event::ProcFork(_) | Event::ProcExec(_) | Event::ProcExit(_) | Event::Signal(_) => true,
        Event::EpollBucket(_) => true,
        Event::UnixSock(u) => u.ret >= 0 && !u.path.is_empty(),
        _ => false,
    }
}

/// One thread's aggregate over one bucket of time: the kernel sends each once, so its thread, its
/// socket and its start name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Aggregate {
    /// An epoll bucket: (tid, start).
    Epoll(u32, u64),
    /// A unix flow: (tid, socket inode, start).
    Unix(u32, u64, u64),
}

impl Aggregate {
    fn of(ev: &Event) -> Option<Self> {
        match ev {
            Event::EpollBucket(b) => Some(Self::Epoll(b.task.tid, b.start_ns)),
            Event::UnixFlow(f) => Some(Self::Unix(f.task.tid, f.id.inode, f.start_ns)),
            _ => None,
        }
    }
}

/// The aggregates read from the kernel when the recording ended, while the records still queued
/// after that are taken.
struct EndRead {
    ended_ns: u64,
    /// Those read, not yet met in a record.
    read: BTreeSet<Aggregate>,
    /// Those a thread's exit sent after they were read: its record stands for the copy.
    superseded: BTreeSet<Aggregate>,
}

/// Dates an aggregate sent after the recording's end at the end.
fn clamp_to_end(ev: &mut Event, ended_ns: u64) {
    match ev {
        Event::EpollBucket(b) => {
            b.task.ts_ns = b.task.ts_ns.min(ended_ns);
            b.end_ns = b.end_ns.min(ended_ns);
        }
        Event::UnixFlow(f) => {
            f.task.ts_ns = f.task.ts_ns.min(ended_ns);
            f.end_ns = f.end_ns.min(ended_ns);
        }
        _ => {}
    }
}

/// Everything the recording loop accumulates.
struct Collector {
    writer: TraceWriter,
    events: Vec<Event>,
    decode_errors: u64,
    known: BTreeMap<u32, ProcInfo>,
    seen: BTreeSet<u32>,
    /// Threads the kernel keeps an epoll bucket for (each one's first call comes as a record),
    /// whose open buckets are read at the end with the threads of the targets still alive.
    epoll_threads: BTreeSet<u32>,
    /// Set once the recording has ended and the kernel's open aggregates were read.
    ending: Option<EndRead>,
    /// When each process's map was last copied.
    maps_at: BTreeMap<u32, Instant>,
    /// HTTP requests read and not yet answered.
    http: Pairing,
    /// Lua frames: the VMs found, and what the walks point at.
    lua: LuaRecorder,
    /// LuaJIT processes found since the last poll, for the kernel's walk.
    lua_new: Vec<(u32, LuaConfig)>,
    /// Code files of processes in other mount namespaces.
    binaries: Binaries,
}

impl Collector {
    fn handle(&mut self, bytes: &[u8]) -> Result<()> {
        // A response waits in the kernel until its connection's next record: it goes first.
        if let Some(response) = carried_response(bytes) {
            for ev in self.http.chunk(&response) {
                self.keep(ev)?;
            }
        }
        if let Some(chunk) = http_chunk(bytes) {
            for ev in self.http.chunk(&chunk) {
                self.keep(ev)?;
            }
            return Ok(());
        }
        let mut ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(_) => {
                self.decode_errors += 1;
                return Ok(());
            }
        };
        if let Some(a) = Aggregate::of(&ev)
            && let Some(end) = self.ending.as_mut()
        {
            // Sent by a thread's exit after the recording ended: it holds at least what was read
            // of it from the thread's state, so it stands for that copy, dated at the end.
            end.superseded.extend(end.read.take(&a));
            clamp_to_end(&mut ev, end.ended_ns);
        }
        if matches!(ev, Event::EpollCall(_) | Event::EpollBucket(_)) {
            self.epoll_threads.insert(ev.task().tid);
        }
        if let Event::CpuSample(s) = &mut ev {
            s.stack_offset = self.writer.write_sample_stack(sample_stack(bytes))?;
            if let Some(lua) = &s.lua {
                self.lua.observe(s.task.tgid, lua);
            }
        }
        // Read /proc for each new process while it lives (argv, memory map), and again after
        // an exec, which replaces both.
        let (pid, fresh) = match &ev {
            Event::ProcFork(f) => (f.child, false),
            Event::ProcExec(e) => (e.task.tgid, true),
            other => (other.task().tgid, false),
        };
        if (self.seen.insert(pid) || fresh)
            && is_process(pid)
            && let Some((info, maps)) = snapshot(pid, &self.writer, &mut self.binaries)
        {
            self.known.insert(pid, info);
            self.maps_at.insert(pid, Instant::now());
            if fresh
                && let Some(maps) = maps
                && let Some(cfg) = self.lua.configure(pid, &maps)
            {
                self.lua_new.push((pid, cfg));
            }
        } else if matches!(ev, Event::CpuSample(_))
            && self.maps_at.get(&pid).is_none_or(|t| t.elapsed() >= MAPS_REFRESH)
        {
            let maps = self.writer.save_maps(pid);
            self.maps_at.insert(pid, Instant::now());
            if let Some(maps) = maps {
                if let Some(ns) = self.known.get(&pid).and_then(|k| k.ns.as_ref()) {
                    self.binaries.keep(self.writer.dir(), pid, ns.mnt_ns, &maps);
                }
                // A process that exec'ed maps its libraries later: look for LuaJIT again.
                if self.lua.lacks(pid)
                    && let Some(cfg) = self.lua.configure(pid, &maps)
                {
                    self.lua_new.push((pid, cfg));
                }
            }
        }
        let unanswered = match &ev {
            Event::TcpConn(c) => self.http.closed(c),
            _ => None,
        };
        self.keep(ev)?;
        unanswered.map_or(Ok(()), |ev| self.keep(ev))
    }

    /// Writes an event, and keeps it when the process model or the summary reads it: a long
    /// run's requests, flows and failed connects go to the file only.
    fn keep(&mut self, ev: Event) -> Result<()> {
        self.writer.write(&ev)?;
        if for_the_model(&ev) {
            self.events.push(ev);
        }
        Ok(())
    }
}

/// Traces `args.pids` and their descendants for `args.duration` and writes `args.out`.
pub fn record(args: &RecordArgs) -> Result<Recorded> {
    let tracefs = preflight::check()?;
    let mut roots = Vec::new();
    for &pid in &args.pids {
        roots.push((pid, proctree::comm(pid).ok_or_else(|| anyhow!("no process with pid {pid}"))?));
    }
    // On before the programs load, so every run is counted; off when this is dropped.
    let _stats_on = args.prog_stats.then(crate::probe::enable_run_time_stats).transpose()?;
    let mut probe = load_probe(&tracefs, args)?;
    install_stop_handlers();
    let mut c = Collector {
        writer: TraceWriter::create(&args.out)?,
        events: Vec::new(),
        decode_errors: 0,
        known: BTreeMap::new(),
        seen: BTreeSet::new(),
        epoll_threads: BTreeSet::new(),
        ending: None,
        maps_at: BTreeMap::new(),
        http: Pairing::new(&args.request_id_header),
        lua: if args.lua { LuaRecorder::new() } else { LuaRecorder::off() },
        lua_new: Vec::new(),
        binaries: Binaries::new(),
    };
    let clock = ClockAnchor { monotonic_ns: clock::monotonic_ns(), realtime_ns: clock::realtime_ns() };
    let initial = c.target_trees(&mut probe, &roots)?;
    let names: Vec<String> = roots.iter().map(|(p, comm)| format!("{p} ({comm})")).collect();
    eprintln!(
        "reloadscope: tracing pid {} and {} descendant(s) for {:.1?}; writing {}",
        names.join(", "),
        initial.len() - roots.len(),
        args.duration,
        args.out.display()
    );
    let cost_start = args.prog_stats.then(|| cost_reading(&probe));
    let ended_ns = c.collect(&mut probe, Instant::now() + args.duration)?;
    let prog_stats = cost_start.map(|start| cost_reading(&probe).since(&start));

    let drops: BTreeMap<String, u64> = probe
        .drops()?
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .map(|(k, n)| (kind_name(k as u32), n))
        .collect();
    let stacks = probe.stacks()?;
    let processes = model::processes(&c.events, roots[0].0, &c.known);
    let mut meta = Meta {
        tool: format!("reloadscope {}", env!("CARGO_PKG_VERSION")),
        kernel: preflight::kernel_release(),
        clock,
        started_ns: clock.monotonic_ns,
        ended_ns,
        options: RecordOptions {
            root_pid: roots[0].0,
            roots: args.pids.clone(),
            duration_ms: args.duration.as_millis() as u64,
            bucket_ms: args.bucket.as_millis() as u64,
            follow_forks: args.follow_forks,
            sample_hz: args.sample_hz,
            http: args.http,
            lua: args.lua,
            request_id_header: args.request_id_header.clone(),
        },
        root_comm: roots[0].1.clone(),
        initial_targets: initial,
        drops,
        decode_errors: c.decode_errors,
        interrupted: STOP.load(Ordering::SeqCst),
        degraded: probe.degraded.clone(),
        prog_stats,
        ..Meta::default()
    };
    drop(probe);
    let threads = summary::by_thread(&c.events);
    let table = summary::table(&threads, meta.window_ns());
    let (lua_symbols, lua_meta) = c.lua.finish();
    meta.lua = lua_meta;
    let binaries = c.binaries.finish();
    if binaries.bytes > 0 {
        eprintln!(
            "reloadscope: copied {} code file(s) of processes in other mount namespaces into the trace ({:.1} MB)",
            binaries.entries.iter().map(|e| &e.file).collect::<BTreeSet<_>>().len(),
            binaries.bytes as f64 / 1e6
        );
    }
    c.writer.finish(
        &mut meta,
        &Ending {
            threads: &threads,
            table: &table,
            stacks: &stacks,
            processes: &processes,
            lua_symbols: &lua_symbols,
            binaries: &binaries,
        },
    )?;
    Ok(Recorded { meta, table })
}

/// The probe's cumulative cost now: its programs' counts and the recorder's CPU time.
fn cost_reading(probe: &Probe) -> shared::progstats::Reading {
    shared::progstats::Reading {
        at_ns: clock::monotonic_ns(),
        recorder_cpu_ns: own_cpu_ns(),
        programs: probe.program_stats(),
    }
}

/// CPU time (user + system) this process has used, in ns.
fn own_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Loads and attaches the programs, saying what this kernel lacks.
fn load_probe(tracefs: &std::path::Path, args: &RecordArgs) -> Result<Probe> {
    let opts = ProbeOptions {
        bucket_ns: args.bucket.as_nanos() as u64,
        follow_forks: args.follow_forks,
        sample_hz: args.sample_hz,
        http: args.http,
        floor: args.floor,
    };
    let probe = Probe::load(tracefs, &opts)?;
    for tp in &probe.degraded.tracepoints {
        eprintln!("reloadscope: {tp} does not exist on this kernel; that syscall is not traced");
    }
    for field in &probe.degraded.struct_fields {
        eprintln!("reloadscope: this kernel's BTF has no {field}; the event fields read from it stay 0");
    }
    Ok(probe)
}

impl Collector {
    /// Targets the roots and their descendants now in /proc (from here on the kernel adds new
    /// children itself), and snapshots each; returns them.
    fn target_trees(&mut self, probe: &mut Probe, roots: &[(u32, String)]) -> Result<Vec<u32>> {
        let table = proctree::scan();
        let mut initial = Vec::new();
        for &(root, _) in roots {
            for pid in std::iter::once(root).chain(proctree::descendants(root, &table)) {
                if !initial.contains(&pid) {
                    probe.add_target(pid, Target { parent: 0, flags: target_flag::FROM_USER })?;
                    initial.push(pid);
                }
            }
        }
        for &pid in &initial {
            if let Some((info, maps)) = snapshot(pid, &self.writer, &mut self.binaries) {
                self.known.insert(pid, info);
                self.seen.insert(pid);
                if let Some(cfg) = maps.and_then(|m| self.lua.configure(pid, &m)) {
                    probe.add_luajit(pid, cfg)?;
                }
            }
        }
        Ok(initial)
    }

    /// Hands every record still queued to [`Self::handle`], without waiting.
    fn take_queued(&mut self, probe: &mut Probe) -> Result<()> {
        let mut io_error = None;
        probe.drain(|b| {
            if let Err(e) = self.handle(b) {
                io_error.get_or_insert(e);
            }
        });
        io_error.map_or(Ok(()), Err)
    }

    /// Takes events until `deadline`, SIGUSR1 or Ctrl-C, then stops the kernel side and takes
    /// what it still holds; returns the monotonic end of the window.
    fn collect(&mut self, probe: &mut Probe, deadline: Instant) -> Result<u64> {
        let mut io_error = None;
        while !STOP.load(Ordering::SeqCst) && !END.load(Ordering::SeqCst) && Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            probe.poll(wait, |b| {
                if let Err(e) = self.handle(b) {
                    io_error.get_or_insert(e);
                }
            })?;
            for (pid, cfg) in self.lua_new.drain(..) {
                // A process that exited meanwhile is no loss.
                let _ = probe.add_luajit(pid, cfg);
            }
        }
        // Stop the kernel side first, so nothing changes while the rest is read. Emptying the
        // targets stops every program at once; detaching takes far longer and happens on drop.
        // The threads whose state is read at the end: every thread of a traced process still
        // alive (its leader may be gone, and its pid out of the targets, while others live on).
        let pids: BTreeSet<u32> = probe.target_pids().into_iter().chain(self.known.keys().copied()).collect();
        let mut threads = self.epoll_threads.clone();
        threads.extend(pids.into_iter().flat_map(proctree::threads));
        probe.clear_targets()?;
        let ended_ns = clock::monotonic_ns();
        if let Some(e) = io_error {
            return Err(e);
        }
        self.take_queued(probe)?;
        // What the kernel still aggregates goes out as if its bucket had ended now.
        let (buckets, thread_flows) = probe.open_thread_work(threads)?;
        let buckets = buckets.iter().map(|b| {
            let mut e = bucket_event(b);
            e.task.ts_ns = ended_ns;
            Event::EpollBucket(e)
        });
        let flows = probe.open_flows()?.into_iter().chain(thread_flows).map(|f| {
            let mut e = flow_event(&f);
            e.task.ts_ns = ended_ns;
            Event::UnixFlow(e)
        });
        let mut open: Vec<Event> = buckets.chain(flows).collect();
        // A thread that exited meanwhile sent what it held itself, maybe just after its state
        // was read: its record replaces the copy.
        self.ending = Some(EndRead {
            ended_ns,
            read: open.iter().filter_map(Aggregate::of).collect(),
            superseded: BTreeSet::new(),
        });
        self.take_queued(probe)?;
        let superseded = self.ending.take().map(|e| e.superseded).unwrap_or_default();
        open.retain(|ev| Aggregate::of(ev).is_none_or(|a| !superseded.contains(&a)));
        // Responses no record carried out yet answer their requests now.
        for (key, state) in probe.waiting_responses()? {
            let r = &state.response;
            let status = &r.status[..(r.len as usize).min(r.status.len())];
            if let Some(response) = response_view(key.tgid, key.fd as i32, state.inode, r, status) {
                for ev in self.http.chunk(&response) {
                    self.keep(ev)?;
                }
            }
        }
        let unanswered = std::mem::replace(&mut self.http, Pairing::new("")).finish();
        for ev in open.into_iter().chain(unanswered) {
            self.keep(ev)?;
        }
        Ok(ended_ns)
    }
}

/// One line on what was written and what was lost.
pub fn footer(meta: &Meta, out: &Path) -> String {
    format!(
        "window {:.2} s, {} events, {} dropped, {} undecodable{}; trace in {}",
        meta.window_ns() as f64 / 1e9,
        meta.events,
        meta.total_drops(),
        meta.decode_errors,
        if meta.interrupted { ", interrupted" } else { "" },
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{EpollBucket, EventHeader, UnixFlow, kind};

    fn hdr(kind: u32) -> EventHeader {
        EventHeader { kind, cpu: 0, ts_ns: 900, tgid: 1, tid: 2 }
    }

    #[test]
    fn an_aggregate_sent_after_the_end_is_dated_at_it_and_keeps_its_key() {
        let mut f = UnixFlow { hdr: hdr(kind::UNIX_FLOW), start_ns: 100, end_ns: 800, ..UnixFlow::default() };
        f.id.inode = 77;
        let mut ev = Event::UnixFlow(flow_event(&f));
        let key = Aggregate::of(&ev);
        assert_eq!(key, Some(Aggregate::Unix(2, 77, 100)));
        clamp_to_end(&mut ev, 500);
        assert_eq!(Aggregate::of(&ev), key, "the key that matches it to the copy read stays");
        let Event::UnixFlow(e) = &ev else { unreachable!() };
        assert_eq!((e.start_ns, e.end_ns, e.task.ts_ns), (100, 500, 500));

        let b = EpollBucket {
            hdr: hdr(kind::EPOLL_BUCKET),
            start_ns: 100,
            end_ns: 400,
            ..EpollBucket::default()
        };
        let mut ev = Event::EpollBucket(bucket_event(&b));
        assert_eq!(Aggregate::of(&ev), Some(Aggregate::Epoll(2, 100)), "a bucket is not that flow");
        clamp_to_end(&mut ev, 500);
        let Event::EpollBucket(e) = &ev else { unreachable!() };
        assert_eq!((e.end_ns, e.task.ts_ns), (400, 500), "only what lies past the end moves");
    }
}
