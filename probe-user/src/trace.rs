//! The trace directory: a self-describing record of one tracing session. This module is its one
//! owner: [`TraceWriter`] writes every file, and the readers below read them back typed.
//!
//! - `meta.json`: [`Meta`], with the schema version, kernel, clock anchor, options and drops;
//! - `events.jsonl`: one [`Event`] per line;
//! - `processes.json`: the [`Process`] model;
//! - `stacks.json`: kernel and frame-pointer stacks by stack id;
//! - `samples.bin.gz`: the raw user-stack copies of the CPU samples ([`crate::samples`]);
//! - `maps/<pid>.maps`: copies of `/proc/PID/maps`;
//! - `binaries/`: copies of code files that exist only in another mount namespace;
//! - `lua-symbols.json`: the Lua prototypes, lines and call-site names the samples point at;
//! - `summary.json` / `summary.txt`: the per-thread epoll summary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::binaries::{self, BinaryIndex};
use crate::event::Event;
use crate::luajit::symbols::LuaSymbols;
use crate::model::Process;
use crate::summary::ThreadSummary;

/// Stack id → instruction pointers, leaf first (`stacks.json`).
pub type Stacks = BTreeMap<u32, Vec<u64>>;

const META: &str = "meta.json";
const EVENTS: &str = "events.jsonl";
const PROCESSES: &str = "processes.json";
const STACKS: &str = "stacks.json";
const MAPS: &str = "maps";
const LUA_SYMBOLS: &str = "lua-symbols.json";
const BINARY_INDEX: &str = "binaries/index.json";

/// Version of the trace directory's layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Both clocks read back to back, so monotonic event times can be joined with wall-clock logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockAnchor {
    /// CLOCK_MONOTONIC ns (the clock of every event's `ts_ns`).
    pub monotonic_ns: u64,
    /// CLOCK_REALTIME ns since the Unix epoch, read right after.
    pub realtime_ns: u64,
}

impl ClockAnchor {
    /// Wall-clock ns for a monotonic timestamp.
    pub fn to_realtime(self, monotonic_ns: u64) -> u64 {
        (self.realtime_ns as i128 + monotonic_ns as i128 - self.monotonic_ns as i128) as u64
    }
}

/// Options the trace was recorded with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOptions {
    /// Root of the (first) traced process tree.
    pub root_pid: u32,
    /// Every root given.
    #[serde(default)]
    pub roots: Vec<u32>,
    /// Requested duration in ms.
    pub duration_ms: u64,
    /// epoll bucket length in ms.
    pub bucket_ms: u64,
    /// Whether forks of targets were followed.
    pub follow_forks: bool,
    /// CPU sampling frequency in Hz (0: off).
    #[serde(default)]
    pub sample_hz: u64,
    /// Whether TCP connections and HTTP requests were traced.
    #[serde(default)]
    pub http: bool,
    /// Whether the Lua stacks of LuaJIT processes were walked.
    #[serde(default)]
    pub lua: bool,
    /// The request header whose value identifies a request.
    #[serde(default)]
    pub request_id_header: String,
}

/// `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`SCHEMA_VERSION`] at writing time.
    pub schema_version: u32,
    /// The tool and its version.
    pub tool: String,
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// Clock anchor taken when tracing started.
    pub clock: ClockAnchor,
    /// Monotonic ns when the probe was attached.
    pub started_ns: u64,
    /// Monotonic ns when the probe was detached.
    pub ended_ns: u64,
    /// How it was recorded.
    pub options: RecordOptions,
    /// comm of the root process at start.
    pub root_comm: String,
    /// Processes targeted at start (root and descendants found in /proc).
    pub initial_targets: Vec<u32>,
    /// Events written to events.jsonl.
    pub events: u64,
    /// Records the kernel could not send, by record kind (`cpu_sample` is the SAMPLES ring
    /// buffer, every other kind the EVENTS one). Never silently lost.
    pub drops: BTreeMap<String, u64>,
    /// What the running kernel lacks, so the probe degraded.
    #[serde(default)]
    pub degraded: crate::probe::Degraded,
    /// Records user space could not decode.
    pub decode_errors: u64,
    /// True when the recording was cut short (Ctrl-C, SIGTERM).
    pub interrupted: bool,
    /// What each file of the directory holds.
    pub files: BTreeMap<String, String>,
    /// LuaJIT libraries, their offsets, and which processes' Lua frames were dropped and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lua: Option<crate::luajit::symbols::LuaMeta>,
    /// With `--prog-stats`: what each eBPF program and the recorder cost over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prog_stats: Option<shared::progstats::ProgStats>,
}

impl Meta {
    /// The traced window in ns.
    pub fn window_ns(&self) -> u64 {
        self.ended_ns.saturating_sub(self.started_ns)
    }

    /// Sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Writes a trace directory as events arrive.
pub struct TraceWriter {
    dir: PathBuf,
    events: BufWriter<File>,
    count: u64,
    samples: crate::samples::Writer,
}

/// What only the end of a recording knows.
pub struct Ending<'a> {
    /// The per-thread epoll summary.
    pub threads: &'a [ThreadSummary],
    /// It as the table printed.
    pub table: &'a str,
    /// The stack map's stacks.
    pub stacks: &'a Stacks,
    /// The process model.
    pub processes: &'a [Process],
    /// What the Lua frames point at.
    pub lua_symbols: &'a LuaSymbols,
    /// The files copied out of other mount namespaces.
    pub binaries: &'a BinaryIndex,
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path).with_context(|| format!("cannot write {}", path.display()))?))
}

impl TraceWriter {
    /// Creates `dir` (and parents), `maps/`, and opens `events.jsonl` and `samples.bin.gz`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join(MAPS))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            events: create(&dir.join(EVENTS))?,
            count: 0,
            samples: crate::samples::Writer::create(dir)?,
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        serde_json::to_writer(&mut self.events, event)?;
        self.events.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Appends a CPU sample's user-stack copy; returns its offset in the copies' stream.
    pub fn write_sample_stack(&mut self, stack: &[u8]) -> Result<u64> {
        self.samples.append(stack)
    }

    /// Copies `/proc/PID/maps` into `maps/`, replacing an older copy; returns it, `None` when
    /// the process is gone.
    pub fn save_maps(&self, pid: u32) -> Option<String> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        std::fs::write(self.dir.join(MAPS).join(format!("{pid}.maps")), &maps).ok()?;
        Some(maps)
    }

    /// The directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes the events and samples and writes the other files.
    pub fn finish(mut self, meta: &mut Meta, end: &Ending<'_>) -> Result<()> {
        self.events.flush()?;
        self.samples.finish()?;
        write_json(&self.dir.join(STACKS), end.stacks)?;
        write_json(&self.dir.join(PROCESSES), &end.processes)?;
        write_json(&self.dir.join(LUA_SYMBOLS), end.lua_symbols)?;
        if !end.binaries.entries.is_empty() || !end.binaries.failed.is_empty() {
            std::fs::create_dir_all(self.dir.join(binaries::DIR))?;
            write_json(&self.dir.join(BINARY_INDEX), end.binaries)?;
        }
        meta.schema_version = SCHEMA_VERSION;
        meta.events = self.count;
        meta.files = [
            ("meta.json", "this file: kernel, clock anchor, options, drop counts"),
            ("events.jsonl", "one event per line, tagged by \"type\"; times are CLOCK_MONOTONIC ns"),
            ("summary.json", "per-thread epoll totals over the window"),
            ("summary.txt", "the per-thread table reloadscope printed"),
            ("processes.json", "every process seen: parent, argv, exec, exit, signals, generations"),
            (
                "stacks.json",
                "stack id -> instruction pointers (leaf first) for cpu_sample kstack_id/ustack_id",
            ),
            (
                crate::samples::FILE,
                "raw user-stack copies of cpu_sample events, at their stack_offset, stack_len bytes of the \
                 gunzipped stream (gzip members of 1 MiB each)",
            ),
            ("maps/", "<pid>.maps: /proc/PID/maps of each traced process, copied while it lived"),
            (
                "binaries/",
                "copies of the code files of processes in other mount namespaces (containers), by build-id; index.json maps (pid, path) to them",
            ),
            (
                "lua-symbols.json",
                "Lua prototypes (file, first line), lines and call-site names the cpu_sample lua frames point at",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        write_json(&self.dir.join(META), meta)?;
        write_json(&self.dir.join("summary.json"), &end.threads)?;
        std::fs::write(self.dir.join("summary.txt"), end.table)?;
        Ok(())
    }
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut f = create(path)?;
    serde_json::to_writer_pretty(&mut f, value)?;
    f.write_all(b"\n")?;
    Ok(f.flush()?)
}

/// A trace directory read back.
#[derive(Debug)]
pub struct Trace {
    /// `meta.json`.
    pub meta: Meta,
    /// `events.jsonl`, in order.
    pub events: Vec<Event>,
}

/// Reads `processes.json`; `None` for a trace without one.
pub fn read_processes(dir: &Path) -> Result<Option<Vec<Process>>> {
    match std::fs::read_to_string(dir.join(PROCESSES)) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).context("cannot parse processes.json")?)),
        Err(_) => Ok(None),
    }
}

/// Reads `stacks.json` (empty when absent).
pub fn read_stacks(dir: &Path) -> Stacks {
    std::fs::read_to_string(dir.join(STACKS))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Reads `binaries/index.json` (empty when absent).
pub fn read_binary_index(dir: &Path) -> BinaryIndex {
    std::fs::read_to_string(dir.join(BINARY_INDEX))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Reads `lua-symbols.json` (empty when absent).
pub fn read_lua_symbols(dir: &Path) -> LuaSymbols {
    std::fs::read_to_string(dir.join(LUA_SYMBOLS))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Reads the copy of `pid`'s memory map, when one was taken.
pub fn read_maps(dir: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(dir.join(MAPS).join(format!("{pid}.maps"))).ok()
}

/// Reads a trace directory written by [`TraceWriter`].
pub fn read(dir: &Path) -> Result<Trace> {
    read_with(dir, Some)
}

/// Reads a trace directory, passing each event through `visit` as it is read: only the events
/// it returns are kept, so a caller can fold the bulky kinds into summaries instead.
pub fn read_with(dir: &Path, mut visit: impl FnMut(Event) -> Option<Event>) -> Result<Trace> {
    let meta_path = dir.join(META);
    let meta: Meta = serde_json::from_reader(BufReader::new(
        File::open(&meta_path)
            .with_context(|| format!("{} is not a trace directory (no meta.json)", dir.display()))?,
    ))
    .with_context(|| format!("cannot parse {}", meta_path.display()))?;
    if meta.schema_version != SCHEMA_VERSION {
        bail!(
            "{}: schema version {} (this reloadscope reads {SCHEMA_VERSION})",
            dir.display(),
            meta.schema_version
        );
    }
    let events_path = dir.join(EVENTS);
    let reader = BufReader::new(
        File::open(&events_path).with_context(|| format!("cannot open {}", events_path.display()))?,
    );
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let event =
            serde_json::from_str(&line).with_context(|| format!("{}:{}", events_path.display(), i + 1))?;
        events.extend(visit(event));
    }
    Ok(Trace { meta, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ProcExitEvent, Task};

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TraceWriter::create(&dir.path().join("t")).unwrap();
        let ev = Event::ProcExit(ProcExitEvent {
            task: Task { ts_ns: 9, cpu: 0, tgid: 1, tid: 2, comm: "x".into() },
            exit_code: 9,
            parent: 1,
        });
        w.write(&ev).unwrap();
        let mut meta = Meta { kernel: "6.18".into(), started_ns: 5, ended_ns: 15, ..Meta::default() };
        meta.drops.insert("epoll_bucket".into(), 3);
        let at = w.write_sample_stack(&[1, 2, 3]).unwrap();
        assert_eq!((at, w.write_sample_stack(&[4]).unwrap()), (0, 3));
        let stacks = Stacks::from([(7, vec![0xffff_0001, 0xffff_0002])]);
        let lua = LuaSymbols::default();
        let end = Ending {
            threads: &[],
            table: "table\n",
            stacks: &stacks,
            processes: &[],
            lua_symbols: &lua,
            binaries: &Default::default(),
        };
        w.finish(&mut meta, &end).unwrap();
        let t = read(&dir.path().join("t")).unwrap();
        assert_eq!(t.events, vec![ev]);
        assert_eq!((t.meta.events, t.meta.window_ns(), t.meta.total_drops()), (1, 10, 3));
        assert!(t.meta.files.contains_key("events.jsonl"));
        let dir = dir.path().join("t");
        assert_eq!(read_stacks(&dir), stacks);
        assert_eq!(crate::samples::Reader::open(&dir).get(0, 4), Some(&[1, 2, 3, 4][..]));
        assert_eq!(read_processes(&dir).unwrap(), Some(vec![]));
    }

    #[test]
    fn refuses_a_directory_without_meta() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a trace directory"), "{err}");
    }

    #[test]
    fn anchor_maps_monotonic_to_wall_clock() {
        let a = ClockAnchor { monotonic_ns: 1_000, realtime_ns: 1_700_000_000_000_000_000 };
        assert_eq!(a.to_realtime(1_500), 1_700_000_000_000_000_500);
        assert_eq!(a.to_realtime(500), 1_699_999_999_999_999_500);
    }
}
