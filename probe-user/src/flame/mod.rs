//! Flamegraphs from a trace directory: user stacks unwound from the copied stacks with the binaries'
//! `.eh_frame` (no frame pointers needed), kernel stacks from the stack map, symbolized with blazesym
//! and drawn with inferno.
//!
//! - [`elf`]: each ELF file read once per run, shared by the unwinder and the names;
//! - [`unwind`]: maps parsing and framehop unwinding;
//! - [`symbolize`]: blazesym names for user (ELF) and kernel (kallsyms) addresses;
//! - [`stripped`]: names where a stripped file has no symbol (nginx module tables, LuaJIT's VM,
//!   function starts from `.eh_frame`);
//! - [`fold`]: frames → folded stacks (pure);
//! - `lua`: the kernel-walked Lua frames in place of LuaJIT's interpreter frame.

pub mod debuginfo;
pub mod elf;
pub mod fold;
mod lua;
pub mod stripped;
pub mod symbolize;
pub mod unwind;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::event::CpuSampleEvent;
use fold::{Folded, Frame, fold_stack};
pub use lua::{LuaHot, LuaMerge};
use symbolize::Names;
use unwind::{ProcessUnwinder, parse_maps};

/// Most frames unwound per sample.
const MAX_FRAMES: usize = 128;
/// Most per-process graphs.
const MAX_PROCESSES: usize = 8;

/// What `reloadscope flamegraph` produced.
#[derive(Debug, Default)]
pub struct FlameReport {
    /// CPU samples read.
    pub samples: u64,
    /// Samples with a user stack copy that were unwound.
    pub unwound: u64,
    /// Samples with at least 3 user frames.
    pub deep: u64,
    /// Time spent in the unwinder alone.
    pub unwind_time: Duration,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// The heaviest folded stack of each per-process graph, by pid.
    pub heaviest: Vec<(u32, String, u64)>,
    /// The graphs drawn, in the order written.
    pub graphs: Vec<Graph>,
    /// Modules named from a debug file, and where it came from.
    pub debug_named: Vec<DebugNamed>,
    /// What went wrong while looking for debug files.
    pub debug_notes: Vec<String>,
    /// How the Lua frames went in.
    pub lua: LuaMerge,
}

/// A module whose frames were named from its debug file.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DebugNamed {
    /// The module (file name).
    pub module: String,
    /// Where its debug file came from.
    pub origin: debuginfo::Origin,
}

/// One flamegraph written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Graph {
    /// File stem in the output directory (`<stem>.svg`, `<stem>.folded`).
    pub stem: String,
    /// Its title.
    pub title: String,
    /// Samples in it.
    pub samples: u64,
    /// Whether it is a spinning worker's.
    pub spinning: bool,
    /// Its heaviest folded stack and that stack's samples.
    pub heaviest: Option<(String, u64)>,
    /// Samples inside an epoll wait call (user or kernel side).
    pub in_epoll: u64,
    /// Samples inside LuaJIT's interpreter that carry no Lua frames.
    pub in_lua_vm: u64,
    /// Samples with Lua frames.
    pub in_lua: u64,
    /// Where its Lua samples concentrate (per-process graphs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lua_hot: Option<LuaHot>,
    /// The stem of its Lua-only graph, when one was drawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lua_only: Option<String>,
}

/// What the report keeps of the flamegraphs (`report.json`'s `flamegraphs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FlameSummary {
    /// The directory, relative to the run directory.
    pub dir: String,
    /// CPU samples read.
    pub samples: u64,
    /// Share of samples with at least 3 user frames.
    pub unwound_share: f64,
    /// Mean unwinding cost per sample, µs.
    pub unwind_us_per_sample: f64,
    /// The graphs.
    pub graphs: Vec<Graph>,
    /// Modules named from a debug file.
    pub debug_named: Vec<DebugNamed>,
    /// What went wrong while looking for debug files.
    pub debug_notes: Vec<String>,
    /// How the Lua frames went in.
    pub lua: LuaMerge,
}

impl FlameReport {
    /// Share of samples with at least 3 user frames.
    pub fn success_rate(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.deep as f64 / self.samples as f64 }
    }

    /// Mean unwinding time per unwound sample.
    pub fn cost_per_sample(&self) -> Duration {
        if self.unwound == 0 { Duration::ZERO } else { self.unwind_time / self.unwound as u32 }
    }

    /// The summary for the report; `dir` is where the graphs are, relative to the run directory.
    pub fn summary(&self, dir: &str) -> FlameSummary {
        FlameSummary {
            dir: dir.to_owned(),
            samples: self.samples,
            unwound_share: self.success_rate(),
            unwind_us_per_sample: self.cost_per_sample().as_secs_f64() * 1e6,
            graphs: self.graphs.clone(),
            debug_named: self.debug_named.clone(),
            debug_notes: self.debug_notes.clone(),
            lua: self.lua,
        }
    }
}

/// How frames are named, for the index and the report.
pub const LEGEND: &str = "\
Frame names: `func [module]` for native code, `func_[k]` for the kernel. Where a stripped binary \
has no symbol: `ngx_epoll_module.process_events` is the function an nginx module table points at \
(here the static `ngx_epoll_process_events`), `lj_vm(interpreter)` is LuaJIT's interpreter, \
`fn@0x…` is a function known only by its start in `.eh_frame`, `[vdso]` and `[anonymous code]` \
(JIT output) are code without a file. Debug files name the rest where they are found by \
build-id: install the binaries' `-dbgsym` packages (they land in `/usr/lib/debug`), or export \
`DEBUGINFOD_URLS` (elfutils' `debuginfod-find` fetches them).";

/// One line: which modules were named from debug files, and what went wrong looking.
pub fn debug_info_line(named: &[DebugNamed], notes: &[String]) -> String {
    let mut s = if named.is_empty() {
        "Debug files: none found (every name above comes from the binaries themselves).".to_string()
    } else {
        let v: Vec<String> =
            named.iter().map(|d| format!("`{}` ({})", d.module, d.origin.describe())).collect();
        format!("Named from debug files: {}.", v.join(", "))
    };
    for n in notes {
        s.push_str(&format!(" {n}."));
    }
    s
}

/// Writes `index.md`: what each graph shows and how the frames are named.
fn write_index(out: &Path, r: &FlameReport) -> Result<PathBuf> {
    use std::fmt::Write as _;
    let mut s = String::from("# Flamegraphs\n\n");
    let _ = writeln!(
        s,
        "{} CPU samples; {:.1}% unwound to at least 3 user frames (from the copied stacks and the \
         binaries' `.eh_frame`), {:.1} µs per sample.\n",
        r.samples,
        100.0 * r.success_rate(),
        r.cost_per_sample().as_secs_f64() * 1e6
    );
    s.push_str("| graph | samples | folded stacks |\n|---|---:|---|\n");
    for g in &r.graphs {
        let svg = if g.samples > 0 { format!("[{}]({}.svg)", g.title, g.stem) } else { g.title.clone() };
        let _ = writeln!(s, "| {svg} | {} | [`{}.folded`]({}.folded) |", g.samples, g.stem, g.stem);
    }
    let _ = writeln!(s, "\n{LEGEND}");
    let _ = writeln!(s, "\n{}", debug_info_line(&r.debug_named, &r.debug_notes));
    let path = out.join("index.md");
    fs::write(&path, s)?;
    Ok(path)
}

/// Writes `<stem>.folded` and `<stem>.svg` (the SVG only when there are samples); `spinning`
/// marks a spinning worker's graph.
fn write_graph(
    out: &Path,
    stem: &str,
    title: &str,
    spinning: bool,
    folded: &Folded,
    report: &mut FlameReport,
) -> Result<()> {
    let fpath = out.join(format!("{stem}.folded"));
    folded.write_to(std::io::BufWriter::new(fs::File::create(&fpath)?))?;
    report.files.push(fpath.clone());
    report.graphs.push(Graph {
        stem: stem.to_owned(),
        title: title.to_owned(),
        samples: folded.total(),
        spinning,
        heaviest: folded.heaviest().map(|(s, c)| (s.to_owned(), c)),
        // libc's wrapper (`epoll_wait`, `__GI_epoll_pwait`) or the kernel's (`do_epoll_wait_[k]`).
        in_epoll: folded.samples_with(|f| f.contains("epoll_wait") || f.contains("epoll_pwait")),
        in_lua_vm: folded.samples_with(|f| f.starts_with(stripped::LUAJIT_VM)),
        in_lua: folded.samples_with(|f| f.ends_with(" [lua]")),
        lua_hot: None,
        lua_only: None,
    });
    if folded.is_empty() {
        return Ok(());
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = "samples".to_owned();
    opts.deterministic = true;
    let svg = out.join(format!("{stem}.svg"));
    let w = std::io::BufWriter::new(fs::File::create(&svg)?);
    // From the file just written: no second copy of the lines in memory.
    inferno::flamegraph::from_reader(&mut opts, fs::File::open(&fpath)?, w)
        .with_context(|| format!("drawing {stem}"))?;
    report.files.push(svg);
    Ok(())
}

fn write_diff(out: &Path, before: &Path, after: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let dpath = out.join("diff-before-after.folded");
    inferno::differential::from_readers(
        inferno::differential::Options { normalize: true, ..Default::default() },
        std::io::BufReader::new(fs::File::open(before)?),
        std::io::BufReader::new(fs::File::open(after)?),
        std::io::BufWriter::new(fs::File::create(&dpath)?),
    )?;
    files.push(dpath.clone());
    if fs::metadata(&dpath)?.len() == 0 {
        return Ok(());
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = "before → after the reload (red grew, blue shrank; normalized)".to_owned();
    opts.count_name = "samples".to_owned();
    opts.deterministic = true;
    let svg = out.join("diff-before-after.svg");
    inferno::flamegraph::from_reader(
        &mut opts,
        fs::File::open(&dpath)?,
        std::io::BufWriter::new(fs::File::create(&svg)?),
    )?;
    files.push(svg);
    Ok(())
}

/// What the graphs are drawn from, loaded by the caller.
#[derive(Debug)]
pub struct Input<'a> {
    /// The trace directory: `samples.bin.gz`, `stacks.json` and `maps/` are read from it.
    pub trace: &'a Path,
    /// The CPU samples, in time order.
    pub samples: Vec<&'a CpuSampleEvent>,
    /// Worker generation by pid (one graph per generation).
    pub worker_generations: HashMap<u32, u32>,
    /// When the reload was sent (graphs before and after it).
    pub reload_ns: Option<u64>,
    /// The spinning workers, whose graphs come first.
    pub spinning: Vec<u32>,
    /// Processes whose Lua walks failed the runtime checks (meta.json): no Lua frames.
    pub lua_disabled: Vec<u32>,
}

/// Unwinds, symbolizes and draws `input`'s samples, writing into `out`
/// (default `<trace>/flamegraphs`).
pub fn run(input: &Input<'_>, out: Option<&Path>, debug: debuginfo::Sources) -> Result<FlameReport> {
    let out = out_dir(input.trace, out)?;
    let mut report = FlameReport { samples: input.samples.len() as u64, ..Default::default() };
    let elfs = Rc::new(elf::Elfs::default());
    let mut names = Names::new(debug, elfs.clone());
    let folds = fold_samples(input, &elfs, &mut names, &mut report);
    report.debug_named = names
        .named_from_debug_info()
        .iter()
        .map(|(module, origin)| DebugNamed { module: module.clone(), origin: *origin })
        .collect();
    report.debug_notes = names.debug_notes().to_vec();
    // Every frame is named: the mapped files go before the graphs are drawn.
    drop(names);
    drop(elfs);
    write_graphs(&out, input, &folds, &mut report)?;
    if report.samples > 0 {
        let index = write_index(&out, &report)?;
        report.files.push(index);
    }
    Ok(report)
}

/// The output directory, made; our own default one is emptied of an earlier run's graphs.
fn out_dir(trace: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let out = match out {
        Some(o) => o.to_owned(),
        None => {
            let own = trace.join("flamegraphs");
            for e in fs::read_dir(&own).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "svg" || x == "folded") || p.ends_with("index.md") {
                    fs::remove_file(&p)?;
                }
            }
            own
        }
    };
    fs::create_dir_all(&out)?;
    Ok(out)
}

/// The samples folded every way a graph is drawn.
#[derive(Default)]
struct Folds {
    /// By process: its comm and stacks.
    per_pid: HashMap<u32, (String, Folded)>,
    /// By worker generation.
    per_gen: BTreeMap<u32, Folded>,
    /// Before and after the reload.
    before: Folded,
    after: Folded,
    /// By process: the Lua frames alone, and where they concentrate.
    lua_only: HashMap<u32, Folded>,
    lua_counts: HashMap<u32, lua::LuaCounts>,
}

/// Unwinds and names every sample, and folds it into the graphs it belongs to.
fn fold_samples(
    input: &Input<'_>,
    elfs: &Rc<elf::Elfs>,
    names: &mut Names,
    report: &mut FlameReport,
) -> Folds {
    let trace = input.trace;
    let mut stacks = crate::samples::Reader::open(trace);
    let kstacks = crate::trace::read_stacks(trace);
    let mut unwinders: HashMap<u32, Option<ProcessUnwinder>> = HashMap::new();
    let lua_names =
        crate::luajit::symbols::Index::new(crate::trace::read_lua_symbols(trace), &input.lua_disabled);
    // Files of another mount namespace are read from their copies in the trace.
    let binaries = crate::trace::read_binary_index(trace);
    let copies = binaries.lookup();
    let mut f = Folds::default();
    for &s in &input.samples {
        let pid = s.task.tgid;
        let unwinder = unwinders.entry(pid).or_insert_with(|| {
            let text = crate::trace::read_maps(trace, pid)?;
            let mut maps = parse_maps(&text);
            for m in &mut maps {
                if let Some(copy) = copies.get(&(pid, m.path.as_str())) {
                    m.path = trace.join(copy).to_string_lossy().into_owned();
                }
            }
            Some(ProcessUnwinder::new(&maps, elfs))
        });
        let mut user: Vec<Frame> = Vec::new();
        if let Some(u) = unwinder.as_mut()
            && s.stack_len > 0
            && s.ip != 0
        {
            let stack = stacks.get(s.stack_offset, s.stack_len as usize).unwrap_or(&[]);
            let t = Instant::now();
            let addrs = u.unwind(s.ip, s.sp, s.bp, stack, MAX_FRAMES);
            report.unwind_time += t.elapsed();
            report.unwound += 1;
            for a in addrs {
                user.push(match u.module_of(a) {
                    Some(m) => names.user_frame(Path::new(&m.path), a.wrapping_sub(m.bias)),
                    // Code without a file (vDSO, JIT output) folds by its mapping's name.
                    None => Frame {
                        kind: fold::FrameKind::User,
                        func: u.pseudo_of(a).map_or_else(|| format!("{a:#x}"), str::to_owned),
                        module: String::new(),
                    },
                });
            }
        }
        if user.len() >= 3 {
            report.deep += 1;
        }
        if let Some(ls) = &s.lua {
            let mut c_name = |addr: u64| match unwinder.as_ref().and_then(|u| u.module_of(addr)) {
                Some(m) => names.user_frame(Path::new(&m.path), addr.wrapping_sub(m.bias)).func,
                None => format!("{addr:#x}"),
            };
            let named = lua_names.frames(pid, ls, &mut c_name);
            if let Some(only) = lua::merge(&mut user, &named, ls.trace().is_some(), &mut report.lua) {
                f.lua_counts.entry(pid).or_default().add(&named);
                f.lua_only.entry(pid).or_default().add(&fold_stack(&s.task.comm, &only, &[]).into());
            }
        }
        let kernel: Vec<Frame> = if let Ok(id) = u32::try_from(s.kstack_id) {
            let ips = kstacks.get(&id).cloned().unwrap_or_default();
            names.prefetch_kernel(&ips);
            ips.iter().map(|&a| names.kernel_frame(a)).collect()
        } else {
            Vec::new()
        };
        let stack: Rc<str> = fold_stack(&s.task.comm, &user, &kernel).into();
        f.per_pid.entry(pid).or_insert_with(|| (s.task.comm.clone(), Folded::default())).1.add(&stack);
        if let Some(g) = input.worker_generations.get(&pid) {
            f.per_gen.entry(*g).or_default().add(&stack);
        }
        if let Some(r) = input.reload_ns {
            if s.task.ts_ns < r { f.before.add(&stack) } else { f.after.add(&stack) }
        }
    }
    f
}

/// Writes the graphs: the processes of interest (spinning ones first, then by samples), each
/// worker generation, and before/after the reload with their difference.
fn write_graphs(out: &Path, input: &Input<'_>, f: &Folds, report: &mut FlameReport) -> Result<()> {
    let spinning = &input.spinning;
    let mut by_samples: Vec<(u32, u64)> = f.per_pid.iter().map(|(p, (_, f))| (*p, f.total())).collect();
    by_samples.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<u32> = Vec::new();
    for p in spinning.iter().copied().chain(by_samples.into_iter().map(|(p, _)| p)) {
        if chosen.len() >= MAX_PROCESSES {
            break;
        }
        // A worker spins in several spans, and appears again among the busiest.
        if f.per_pid.contains_key(&p) && !chosen.contains(&p) {
            chosen.push(p);
        }
    }
    for (rank, pid) in chosen.iter().enumerate() {
        let (comm, folded) = &f.per_pid[pid];
        let spins = spinning.contains(pid);
        let spin = if spins { " (spinning)" } else { "" };
        let stem = format!("{:02}-pid{pid}-{}", rank + 1, comm.replace(['/', ' '], "_"));
        write_graph(out, &stem, &format!("{comm} pid {pid}{spin}"), spins, folded, report)?;
        let at = report.graphs.len() - 1;
        report.graphs[at].lua_hot = f.lua_counts.get(pid).and_then(lua::LuaCounts::hottest);
        if spins && let Some(only) = f.lua_only.get(pid) {
            let lua_stem = format!("{stem}-lua");
            report.graphs[at].lua_only = Some(lua_stem.clone());
            write_graph(
                out,
                &lua_stem,
                &format!("{comm} pid {pid}{spin}: Lua frames only"),
                false,
                only,
                report,
            )?;
        }
        if let Some((s, c)) = folded.heaviest() {
            report.heaviest.push((*pid, s.to_owned(), c));
        }
    }
    for (g, folded) in &f.per_gen {
        write_graph(
            out,
            &format!("generation-{g}"),
            &format!("worker generation {g}"),
            false,
            folded,
            report,
        )?;
    }
    if input.reload_ns.is_some() {
        write_graph(out, "before-reload", "before the reload", false, &f.before, report)?;
        write_graph(out, "after-reload", "after the reload", false, &f.after, report)?;
        if !f.before.is_empty() || !f.after.is_empty() {
            write_diff(
                out,
                &out.join("before-reload.folded"),
                &out.join("after-reload.folded"),
                &mut report.files,
            )?;
            report.graphs.push(Graph {
                stem: "diff-before-after".to_owned(),
                title: "before → after the reload (differential)".to_owned(),
                samples: f.before.total() + f.after.total(),
                ..Default::default()
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_profile_writes_folded_but_no_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = FlameReport::default();
        write_graph(dir.path(), "x", "x", false, &Folded::default(), &mut r).unwrap();
        assert_eq!(r.files, vec![dir.path().join("x.folded")]);
        assert!(!dir.path().join("x.svg").exists());
        let mut f = Folded::default();
        f.add(&"p;a;b".into());
        write_graph(dir.path(), "y", "nginx pid 7 (spinning)", true, &f, &mut r).unwrap();
        assert!(dir.path().join("y.svg").exists());
        assert_eq!(r.graphs[1].heaviest, Some(("p;a;b".to_owned(), 1)));
        assert!(r.graphs[1].spinning && !r.graphs[0].spinning);
        write_diff(dir.path(), &dir.path().join("x.folded"), &dir.path().join("y.folded"), &mut r.files)
            .unwrap();
        assert!(dir.path().join("diff-before-after.svg").exists());
    }

    #[test]
    fn trace_without_samples_gives_an_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        let input = Input {
            trace: dir.path(),
            samples: Vec::new(),
            worker_generations: HashMap::new(),
            reload_ns: None,
            spinning: Vec::new(),
            lua_disabled: Vec::new(),
        };
        let r = run(&input, None, debuginfo::Sources::none()).unwrap();
        assert_eq!((r.samples, r.deep, r.success_rate(), r.cost_per_sample()), (0, 0, 0.0, Duration::ZERO));
        assert!(r.files.is_empty());
    }
}
