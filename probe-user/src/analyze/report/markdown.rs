//! `report.md`: the analysis as one GitHub issue comment, a section per function, and the
//! headline findings shared with the CLI.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::{Align, Table};
use crate::analyze::correlate::LinkClass;
use crate::analyze::text::short_path;
use crate::analyze::{Analysis, Run};

use Align::{Left, Right};

/// Rows shown per list before "and N more".
const TOP: usize = 10;
/// Most frames of a spinning worker's heaviest stack shown in the report (leaf end).
const STACK_FRAMES: usize = 16;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn opt_s(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} s"))
}

/// `1.234` -> `1.23 s`.
fn secs(x: f64) -> String {
    format!("{x:.2} s")
}

/// A generation number, or `–` when unknown.
fn opt_num(x: Option<u32>) -> String {
    x.map_or("–".into(), |g| g.to_string())
}

fn more(s: &mut String, total: usize) {
    if total > TOP {
        let _ = writeln!(s, "\n…and {} more (see `report.json`).", total - TOP);
    }
}

/// The first [`TOP`] of `items` as a table, a row of `cells` each, then how many are left out.
fn top_table<T, const N: usize>(
    s: &mut String,
    columns: [(&str, Align); N],
    items: &[T],
    cells: impl Fn(&T) -> [String; N],
) {
    let mut t = Table::new(&columns);
    for x in items.iter().take(TOP) {
        t.row(cells(x));
    }
    t.render(s);
    more(s, items.len());
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n).collect::<String>())
    }
}

/// The behaviour the stand-in ran, from its ground truth.
fn behaviour(run: &Run) -> Option<String> {
    run.ground_truth.iter().find_map(|l| l.behaviour.clone())
}

/// Characters `report.md` may have at most: below GitHub's 65,536 for a comment, with room for
/// a line of the user's own.
pub const BUDGET: usize = 60_000;
/// Characters of one example sentence at most (a window link can list every spin span).
const SENTENCE: usize = 600;

/// Renders `report.md`, within [`BUDGET`] at any run length: the sections come in order of
/// importance, and one that does not fit is left out with a line saying so (`report.json`
/// keeps everything).
pub fn markdown(run: &Run, a: &Analysis) -> String {
    let sections: [(&str, String); 9] = [
        ("summary", section(|s| summary_md(s, a))),
        ("environment", section(|s| environment_md(s, run, a))),
        ("load test", section(|s| load_test_md(s, run))),
        ("stand-in", section(|s| standin_md(s, a))),
        ("timeline", section(|s| timeline_md(s, a))),
        ("reloads", section(|s| reloads_md(s, a))),
        ("findings", section(|s| findings_md(s, a))),
        ("failure attribution", section(|s| attribution_md(s, a))),
        ("flamegraphs", section(|s| flamegraphs_md(s, a))),
    ];
    let artifacts = section(|s| artifacts_md(s, run));
    let mut s = String::from("# reloadscope report\n\n");
    // What is always kept at the end: the artifacts and one line per section left out.
    let reserve = artifacts.chars().count() + sections.len() * 160;
    let mut used = s.chars().count();
    for (name, text) in sections {
        let n = text.chars().count();
        if used + n + reserve <= BUDGET {
            s.push_str(&text);
            used += n;
        } else {
            let line = format!(
                "\n_The {name} section ({n} characters) is left out to keep this report under {BUDGET} characters; \
                 it is in `report.json`._\n"
            );
            used += line.chars().count();
            s.push_str(&line);
        }
    }
    s.push_str(&artifacts);
    s
}

fn section(render: impl FnOnce(&mut String)) -> String {
    let mut s = String::new();
    render(&mut s);
    s
}

/// The bold first line (how many requests failed, how many are explained) and the headlines.
fn summary_md(s: &mut String, a: &Analysis) {
    let att = &a.attribution;
    if att.failed == 0 {
        let _ = writeln!(s, "**{} requests in the load test's log, none failed.**\n", att.requests);
    } else {
        let _ = writeln!(
            s,
            "**{} of {} requests failed; {} of them in ways a reload can cause, {} in ways it cannot \
             (see Failure attribution). Of the {}, {} are explained: {} exactly (through the worker that \
             served them), {} by time window; {} unexplained.**\n",
            att.failed,
            att.requests,
            att.reload_failed,
            att.not_reload,
            att.reload_failed,
            pct(if att.reload_failed == 0 { 0.0 } else { 1.0 - att.unexplained_share }),
            pct(att.exact_share),
            pct(att.window_share),
            pct(att.unexplained_share)
        );
    }
    for line in headlines(a) {
        let _ = writeln!(s, "- {line}");
    }
}

fn environment_md(s: &mut String, run: &Run, a: &Analysis) {
    s.push_str("\n## Environment\n\n");
    let m = &run.meta;
    let _ = writeln!(s, "- tool: {}; kernel `{}`", m.tool, m.kernel);
    let _ = writeln!(
        s,
        "- trace: root pid {} ({}), {:.2} s window, {} events, {} dropped, {} undecodable{}",
        m.options.root_pid,
        m.root_comm,
        m.window_ns() as f64 / 1e9,
        m.events,
        m.total_drops(),
        m.decode_errors,
        if m.interrupted { ", interrupted" } else { "" }
    );
    let _ = writeln!(
        s,
        "- options: epoll bucket {} ms, CPU sampling {} Hz, follow forks {}",
        m.options.bucket_ms, m.options.sample_hz, m.options.follow_forks
    );
    if !m.degraded.tracepoints.is_empty() || !m.degraded.struct_fields.is_empty() {
        let _ = writeln!(s, "- degraded: {:?} {:?}", m.degraded.tracepoints, m.degraded.struct_fields);
    }
    for note in a.flamegraphs.iter().flat_map(|f| &f.debug_notes) {
        let _ = writeln!(s, "- debug info: {note}");
    }
    if let Some(b) = behaviour(run) {
        let _ = writeln!(s, "- gateway: local stand-in, behaviour `{b}` (from `standin-ground-truth.jsonl`)");
    }
    match run.reloads.as_slice() {
        [] => s.push_str(
            "- reload: no `reload.json`; time 0 is the first HUP of the root, else the trace start\n",
        ),
        [r] => {
            let _ = writeln!(
                s,
                "- reload: {} at {:.2} s into the load; time 0 below is the reload",
                r.how,
                r.offset_ms as f64 / 1e3
            );
        }
        all => {
            let at: Vec<String> = all.iter().map(|r| format!("{:.2} s", r.offset_ms as f64 / 1e3)).collect();
            let _ = writeln!(
                s,
                "- reloads: {} ({}) at {} into the load; time 0 below is the first (see Reloads)",
                all.len(),
                all[0].how,
                at.join(", ")
            );
        }
    }
}

fn load_test_md(s: &mut String, run: &Run) {
    s.push_str("\n## Load test\n\n");
    s.push_str(&run.log.table());
    if run.log.requests == 0 {
        s.push_str("| (no `requests.jsonl`) | | | |\n");
    }
}

/// The findings checked against the stand-in's own log, when there is one.
fn standin_md(s: &mut String, a: &Analysis) {
    if a.ground_truth_check.is_empty() {
        return;
    }
    s.push_str("\n## Checked against the stand-in's own log\n\n");
    let mut t = Table::new(&[("what", Left), ("stand-in", Left), ("reloadscope", Left), ("agrees", Left)]);
    for c in &a.ground_truth_check {
        let ok = if c.agrees { "yes" } else { "**no**" };
        t.row([c.what.clone(), truncate(&c.standin, 300), truncate(&c.found, 300), ok.into()]);
    }
    t.render(s);
}

fn artifacts_md(s: &mut String, run: &Run) {
    s.push_str("\n## Artifacts\n\n");
    for (file, what) in [
        ("report.json", "this report as data (schema_version 2)"),
        (
            "timeline.json",
            "open in ui.perfetto.dev: spins, epoll buckets, socket errors, signals, failed requests",
        ),
        ("requests.jsonl", "every request of the load test"),
        (
            "requests-linked.jsonl",
            "every request beside the worker that read it (by the kernel), the worker the gateway's header named, when the worker read and answered it, and the plugin socket its handler called",
        ),
        ("reload.json", "when the reload was sent"),
        ("trace/meta.json", "the trace's metadata"),
        ("trace/events.jsonl", "every kernel event"),
        ("trace/processes.json", "the process table"),
        (
            "trace/flamegraphs/index.md",
            "flamegraphs (SVG and folded stacks): spinning workers first, per worker generation, before/after the reload",
        ),
        ("standin-ground-truth.jsonl", "the stand-in's own log"),
        ("loadtest.log", "goose's output"),
    ] {
        if file.starts_with("report.json") || file.starts_with("timeline.json") || run.dir.join(file).exists()
        {
            let _ = writeln!(s, "- [`{file}`]({file}): {what}");
        }
    }
}

fn flamegraphs_md(s: &mut String, a: &Analysis) {
    let Some(f) = &a.flamegraphs else { return };
    let _ = writeln!(
        s,
        "\n## Flamegraphs\n\n{} CPU samples, {} unwound to at least 3 user frames ({:.1} µs each); \
         every graph is listed in [`{dir}/index.md`]({dir}/index.md).\n",
        f.samples,
        pct(f.unwound_share),
        f.unwind_us_per_sample,
        dir = f.dir
    );
    for g in f.graphs.iter().take(TOP) {
        let _ = writeln!(s, "- [{}]({}/{}.svg): {} samples", g.title, f.dir, g.stem, g.samples);
    }
    for g in f.graphs.iter().filter(|g| g.spinning) {
        let Some((stack, n)) = &g.heaviest else { continue };
        // The first element is the command name, not a frame.
        let frames: Vec<&str> = stack.split(';').skip(1).collect();
        let shown = &frames[frames.len().saturating_sub(STACK_FRAMES)..];
        let _ = writeln!(
            s,
            "\nHeaviest stack of {} ({n} of {} samples; root at the top{}):\n\n```",
            g.title,
            g.samples,
            if shown.len() < frames.len() { ", outer frames cut" } else { "" }
        );
        for fr in shown {
            let _ = writeln!(s, "{fr}");
        }
        s.push_str("```\n");
        let _ = writeln!(
            s,
            "\nOf its {} samples, {} are in an epoll wait call (the event loop going round) and \
             {} in LuaJIT's interpreter (running Lua code).",
            g.samples,
            g.in_epoll,
            g.in_lua + g.in_lua_vm
        );
        if let Some(hot) = &g.lua_hot {
            let _ = writeln!(s, "\n{}", lua_hot_sentence(hot, g.samples));
        }
        if let Some(stem) = &g.lua_only {
            let _ = writeln!(s, "\nIts Lua frames alone: [{stem}.svg]({}/{stem}.svg).", f.dir);
        }
    }
    let _ = writeln!(s, "\n{}", crate::flame::LEGEND);
    let _ = writeln!(s, "\n{}", crate::flame::debug_info_line(&f.debug_named, &f.debug_notes));
}

/// Where a spinning worker's Lua samples concentrate, as one sentence.
pub fn lua_hot_sentence(hot: &crate::flame::LuaHot, samples: u64) -> String {
    let at = hot.at.as_ref().map(|a| format!(" at `{a}`")).unwrap_or_default();
    let caller = hot.caller.as_ref().map(|c| format!(", called from `{c}`")).unwrap_or_default();
    let mut s = String::new();
    if let Some(d) = &hot.dominant {
        let from = hot.dominant_caller.as_ref().map(|c| format!(" (called from `{c}`)")).unwrap_or_default();
        s = format!(
            "Lua: `{d}`{from} is on the stack of {} of its {} samples with Lua frames: the deepest \
             function most of them share. ",
            pct(hot.dominant_samples as f64 / hot.lua_samples.max(1) as f64),
            hot.lua_samples
        );
    }
    s + &format!(
        "The hottest Lua line: {} of all its samples ({} of {samples}) are in `{}`{at}{caller}.",
        pct(hot.samples as f64 / samples.max(1) as f64),
        hot.samples,
        hot.function,
    )
}

/// `items` joined with commas; past 2 × [`TOP`], the first and last [`TOP`] around an ellipsis.
fn elided(items: &[String]) -> String {
    if items.len() > 2 * TOP {
        format!("{}, …, {}", items[..TOP].join(", "), items[items.len() - TOP..].join(", "))
    } else {
        items.join(", ")
    }
}

/// One line per kind of finding, for the report's top and the CLI.
pub fn headlines(a: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    if a.timeline.hups.len() > 1 {
        let t = &a.timeline;
        let at = elided(&t.hups.iter().map(|h| format!("{:.2} s", h.at_s)).collect::<Vec<_>>());
        let forked = elided(
            &t.generations
                .iter()
                .filter_map(|g| Some(format!("{} from {:.2} s", g.generation, g.first_fork_s?)))
                .collect::<Vec<_>>(),
        );
        out.push(format!(
            "{} reloads: HUPs from {} ({}) at {at}; worker generations {forked}",
            t.hups.len(),
            t.hups[0].from_pid,
            t.hups[0].from_comm
        ));
    } else if let Some(h) = a.timeline.hups.first() {
        let newest = a.timeline.generations.last();
        out.push(format!(
            "Reload: HUP from {} ({}) at {:.2} s; worker generation {} forked {}",
            h.from_pid,
            h.from_comm,
            h.at_s,
            newest.map_or(0, |g| g.generation),
            newest.and_then(|g| g.first_fork_s).map_or("–".into(), |f| format!("from {f:.2} s"))
        ));
    }
    if !a.spins.is_empty() {
        // A worker can spin in several spans; name each pid once.
        let pids: Vec<String> = a
            .spins
            .iter()
            .map(|s| s.pid)
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .map(|&p| a.pid_label(p))
            .collect();
        out.push(format!(
            "{} spinning worker span(s) (pids {}), from {:.2} s (zero-timeout busy-wait since {:.2} s), up to \
             {:.0} calls/s of epoll_wait(…, 0)",
            a.spins.len(),
            pids.join(", "),
            a.spins.iter().map(|s| s.start_s).fold(f64::INFINITY, f64::min),
            a.spins.iter().map(|s| s.zero_timeout_since_s).fold(f64::INFINITY, f64::min),
            a.spins.iter().map(|s| s.rate_per_s).fold(0.0, f64::max)
        ));
    }
    for h in &a.lifecycle.handovers {
        out.push(format!("Hand-over: {}", h.sentence()));
    }
    if a.reloads.len() > 1 {
        let left = elided(&a.reloads.iter().map(|w| w.servers_superseded.to_string()).collect::<Vec<_>>());
        let most = a.reloads.iter().map(|w| w.servers_superseded).max().unwrap_or(0);
        if most > 0 {
            out.push(format!(
                "Plugin servers left running after being replaced, at the end of each of the {} reloads' windows: {} (see Reloads)",
                a.reloads.len(),
                left
            ));
        }
    }
    let closers: Vec<&crate::analyze::timeline::Worker> =
        a.timeline.workers.iter().filter(|w| w.keepalive_closed > 0).collect();
    if !closers.is_empty() {
        let n: u32 = closers.iter().map(|w| w.keepalive_closed).sum();
        let pids: Vec<String> = closers.iter().map(|w| w.pid.to_string()).collect();
        out.push(format!(
            "{n} idle keep-alive connection(s) closed by workers {} after the reload: a client's next request on one fails as \"connection closed\"",
            pids.join(", ")
        ));
    }
    for l in &a.lifecycle.loops {
        out.push(format!(
            "Crash/respawn loop on {}: {} crashes every {:.2} s ({:.2}–{:.2} s){}",
            short_path(&l.path),
            l.crashes,
            l.period_s,
            l.first_s,
            l.last_s,
            if l.last_alive { "; the last generation was still up at the end" } else { "" }
        ));
    }
    let st = &a.stale;
    if st.failed_connects > 0 {
        out.push(format!(
            "{} failed connects to plugin sockets (ECONNREFUSED/ENOENT) by workers",
            st.failed_connects
        ));
    }
    if !st.stale_flows.is_empty() {
        out.push(format!(
            "{} worker socket(s) talking to a superseded server generation",
            st.stale_flows.len()
        ));
    }
    if !st.old_generation_connects.is_empty() {
        out.push(format!(
            "{} new-generation worker/server pair(s) connected to servers of the old worker generation",
            st.old_generation_connects.len()
        ));
    }
    if !st.io_failures.is_empty() {
        out.push(format!("{} worker sends/receives failed or hit a closed peer", st.io_failures.len()));
    }
    if !a.lifecycle.kills.is_empty() {
        out.push(format!("{} SIGKILL(s)", a.lifecycle.kills.len()));
    }
    if !a.lifecycle.orphans.is_empty() {
        let alive = a.lifecycle.orphans.iter().filter(|o| o.outlives_run).count();
        out.push(format!("{} orphan(s), {alive} outliving the trace", a.lifecycle.orphans.len()));
    }
    out
}

/// One row per reload, when there was more than one.
fn reloads_md(s: &mut String, a: &Analysis) {
    if a.reloads.len() < 2 {
        return;
    }
    s.push_str("\n## Reloads\n\nEach reload's window runs to the next reload (the last to the end of the trace). Servers: plugin servers that bound their path in the window, SIGKILLs to servers in it, and those running at its end, of which replaced on their path (left running) and orphaned. Failed: load-test failures that started in the window, by explanation.\n\n");
    let mut t = Table::new(&[
        ("#", Right),
        ("sent", Right),
        ("HUP", Right),
        ("new workers", Left),
        ("older workers gone", Left),
        ("servers bound", Right),
        ("killed", Right),
        ("running at end", Right),
        ("left running", Right),
        ("orphaned", Right),
        ("failed", Left),
    ]);
    for w in a.reloads.iter().take(TOP) {
        let mut kinds: Vec<(&String, &u64)> = w.failed_by_kind.iter().collect();
        kinds.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
        let kinds: Vec<String> = kinds.iter().take(3).map(|(k, n)| format!("{k} {n}")).collect();
        let failed =
            if w.failed == 0 { "0".to_string() } else { format!("{} ({})", w.failed, kinds.join(", ")) };
        t.row([
            w.index.to_string(),
            secs(w.at_s),
            opt_s(w.hup_s),
            w.generation.map_or("–".into(), |g| format!("generation {g} from {}", opt_s(w.forked_s))),
            match w.older_workers_gone_s {
                Some(t) => secs(t),
                None if w.generation.is_some() => "still running".into(),
                None => "–".into(),
            },
            w.servers_bound.to_string(),
            w.servers_killed.to_string(),
            w.servers_alive.to_string(),
            w.servers_superseded.to_string(),
            w.servers_orphaned.to_string(),
            failed,
        ]);
    }
    t.render(s);
    more(s, a.reloads.len());
    for w in a.reloads.iter().take(TOP) {
        for h in &w.handovers {
            let _ = writeln!(s, "- reload {}: {}", w.index, truncate(&h.sentence(), SENTENCE));
        }
    }
}

fn timeline_md(s: &mut String, a: &Analysis) {
    let t = &a.timeline;
    s.push_str("\n## Reload timeline\n\n");
    for h in &t.hups {
        let _ = writeln!(
            s,
            "- {:.3} s: SIGHUP to the master {} from {} ({})",
            h.at_s, t.root, h.from_pid, h.from_comm
        );
    }
    for h in t.helpers.iter().take(TOP) {
        let _ = writeln!(
            s,
            "- {}: master ran `{}` (pid {})",
            opt_s(h.forked_s),
            truncate(&h.command, 100),
            h.pid
        );
    }
    s.push('\n');
    let mut gens = Table::new(&[
        ("generation", Right),
        ("workers", Left),
        ("forked", Left),
        ("exited", Right),
        ("all gone", Left),
    ]);
    for g in &t.generations {
        let pids: Vec<String> = g.workers.iter().map(u32::to_string).collect();
        gens.row([
            g.generation.to_string(),
            pids.join(", "),
            g.first_fork_s.map_or("before the trace".into(), secs),
            format!("{}/{}", g.exited, g.workers.len()),
            opt_s(g.all_exited_s),
        ]);
    }
    gens.render(s);
    s.push('\n');
    let mut workers = Table::new(&[
        ("worker", Right),
        ("generation", Right),
        ("forked", Left),
        ("exit", Left),
        ("end", Left),
        ("idle keep-alives closed after the reload", Left),
    ]);
    for w in t.workers.iter().take(4 * TOP) {
        let closed = match w.keepalive_closed_s {
            Some(first) => format!("{} from {first:.2} s", w.keepalive_closed),
            None => "–".into(),
        };
        workers.row([
            w.pid.to_string(),
            w.generation.to_string(),
            opt_s(w.forked_s),
            opt_s(w.exit_s),
            w.end.to_string(),
            closed,
        ]);
    }
    workers.render(s);
    if t.workers.len() > 4 * TOP {
        let _ = writeln!(s, "\n…and {} more workers (see `report.json`).", t.workers.len() - 4 * TOP);
    }
}

fn findings_md(s: &mut String, a: &Analysis) {
    s.push_str("\n## Findings\n");
    spins_md(s, a);
    servers_md(s, a);
    stale_md(s, a);
}

fn spins_md(s: &mut String, a: &Analysis) {
    s.push_str("\n### Spinning workers\n\n");
    if a.spins.is_empty() {
        s.push_str(
            "None: no thread made ≥1000 epoll calls/s with ≥90% zero timeouts and zero events for ≥0.5 s.\n",
        );
        return;
    }
    s.push_str("Evidence: `epoll_bucket` events (≥90% zero-timeout, ≥90% zero-event calls, ≥1000 calls/s, ≥0.5 s); one row per episode, which lasts through starved stretches of up to 2 s whose calls still have zero timeouts and ends at a call with a real timeout; CPU from `cpu_sample` events.\n\n");
    let columns = [
        ("pid", Right),
        ("tid", Right),
        ("comm", Left),
        ("generation", Right),
        ("onset", Left),
        ("zero timeouts since", Left),
        ("duration", Right),
        ("calls/s", Right),
        ("zero-timeout", Right),
        ("zero-events", Right),
        ("CPU", Right),
        ("epfd", Right),
        ("ended", Left),
    ];
    top_table(s, columns, &a.spins, |x| {
        [
            a.pid_label(x.pid),
            x.tid.to_string(),
            x.comm.clone(),
            opt_num(x.generation),
            secs(x.start_s),
            secs(x.zero_timeout_since_s),
            secs(x.duration_s),
            format!("{:.0}", x.rate_per_s),
            pct(x.zero_timeout_share),
            pct(x.zero_event_share),
            format!("{} ({})", pct(x.cpu_share), x.cpu_source),
            x.epfd.to_string(),
            if x.ended { "yes".into() } else { "no: still spinning when the trace ended".into() },
        ]
    });
}

/// Plugin-server generations, the hand-over, SIGKILLs, crash loops and orphans.
fn servers_md(s: &mut String, a: &Analysis) {
    let l = &a.lifecycle;
    s.push_str("\n### Plugin-server generations\n\nEvidence: `unix_sock` events. Servers that bound before the trace (they accept on the path, or connects to it reach them as peer) come first, then each `bind` of the path is the next generation.\n\n");
    if l.servers.is_empty() {
        s.push_str("No plugin server seen.\n");
    } else {
        let mut t = Table::new(&[
            ("path", Left),
            ("generation", Right),
            ("pid", Right),
            ("parent", Right),
            ("bound", Left),
            ("exit", Left),
            ("end", Left),
            ("found by", Left),
        ]);
        // The first TOP generations of each path.
        let mut per_path: BTreeMap<&str, usize> = BTreeMap::new();
        let mut hidden = 0;
        for g in &l.servers {
            let n = per_path.entry(&g.path).or_default();
            *n += 1;
            if *n > TOP {
                hidden += 1;
                continue;
            }
            let orphan = if g.orphaned { ", orphaned" } else { "" };
            t.row([
                short_path(&g.path).to_string(),
                g.generation.to_string(),
                g.pid.to_string(),
                g.parent.to_string(),
                g.bound_s.map_or("before the trace".into(), secs),
                opt_s(g.exit_s),
                format!("{}{orphan}", g.end),
                g.found_by.to_string(),
            ]);
        }
        t.render(s);
        if hidden > 0 {
            let _ = writeln!(s, "\n…and {hidden} more (see `report.json`).");
        }
    }
    if !l.handovers.is_empty() {
        s.push_str("\n**Hand-over at the reload** (the server holding each path at time 0 against the next to bind it):\n\n");
        for h in &l.handovers {
            let _ = writeln!(s, "- {}", h.sentence());
        }
    }
    s.push_str("\n**SIGKILLs** (`signal` events):\n\n");
    if l.kills.is_empty() {
        s.push_str("none\n");
    }
    for k in l.kills.iter().take(TOP) {
        let role = if k.target_role.is_empty() { String::new() } else { format!(" ({})", k.target_role) };
        let _ = writeln!(s, "- {:.3} s: {} ({}) killed {}{role}", k.at_s, k.from_pid, k.from_comm, k.target);
    }
    more(s, l.kills.len());
    s.push_str("\n**Crash/respawn loops**:\n\n");
    if l.loops.is_empty() {
        s.push_str("none\n");
    }
    for c in &l.loops {
        let pids: Vec<String> = c.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            s,
            "- {}: {} crashes from {:.2} s to {:.2} s, one every {:.2} s (pids {}){}",
            c.path,
            c.crashes,
            c.first_s,
            c.last_s,
            c.period_s,
            pids.join(", "),
            if c.last_alive { "; the last generation was still running at the end" } else { "" }
        );
    }
    s.push_str("\n**Orphans** (reparented, or parent gone):\n\n");
    if l.orphans.is_empty() {
        s.push_str("none\n");
    }
    for o in l.orphans.iter().take(TOP) {
        let _ = writeln!(
            s,
            "- {} ({}), parent {} → {}: {}",
            o.pid,
            o.comm,
            o.parent,
            o.parent_at_exit.map_or("?".into(), |p| p.to_string()),
            if o.outlives_run {
                "still alive at the end of the trace".to_string()
            } else {
                format!("exited at {}", opt_s(o.exit_s))
            }
        );
    }
    more(s, l.orphans.len());
}

/// Stale server generations, old-generation connects, failed connects and failed sends/receives.
fn stale_md(s: &mut String, a: &Analysis) {
    let st = &a.stale;
    s.push_str("\n### Stale sockets\n\n**Traffic with a superseded server generation** (`unix_flow`/`unix_io` peer pid vs. the path's owner by `bind`):\n\n");
    if st.stale_flows.is_empty() {
        s.push_str("none\n");
    } else {
        let columns = [
            ("worker", Right),
            ("path", Left),
            ("peer (gen)", Left),
            ("owner (gen)", Left),
            ("first", Left),
            ("last", Left),
            ("messages", Right),
        ];
        top_table(s, columns, &st.stale_flows, |f| {
            [
                f.pid.to_string(),
                short_path(&f.path).to_string(),
                format!("{} ({})", f.peer_pid, f.peer_generation),
                format!("{} ({})", f.owner_pid, f.owner_generation),
                secs(f.first_s),
                secs(f.last_s),
                f.messages.to_string(),
            ]
        });
    }
    s.push_str("\n**New workers connected to a server of the old worker generation** (instance ids obtained there go stale when it dies):\n\n");
    if st.old_generation_connects.is_empty() {
        s.push_str("none\n");
    } else {
        let columns = [
            ("worker (gen)", Left),
            ("path", Left),
            ("server (gen)", Left),
            ("spawned by worker gen", Right),
            ("connects", Right),
            ("first", Left),
            ("last", Left),
        ];
        top_table(s, columns, &st.old_generation_connects, |c| {
            [
                format!("{} ({})", c.pid, c.worker_generation),
                short_path(&c.path).to_string(),
                format!("{} ({})", c.peer_pid, c.peer_generation),
                c.peer_worker_generation.to_string(),
                c.count.to_string(),
                secs(c.first_s),
                secs(c.last_s),
            ]
        });
    }
    let _ = writeln!(
        s,
        "\n**Failed connects** (`unix_sock` connect with ret < 0): {} in all.\n",
        st.failed_connects
    );
    if !st.connect_episodes.is_empty() {
        let mut eps: Vec<_> = st.connect_episodes.iter().collect();
        eps.sort_by_key(|e| std::cmp::Reverse(e.count));
        let columns = [
            ("worker", Right),
            ("path", Left),
            ("error", Left),
            ("count", Right),
            ("first", Left),
            ("last", Left),
            ("the path then", Left),
        ];
        top_table(s, columns, &eps, |e| {
            [
                e.pid.to_string(),
                short_path(&e.path).to_string(),
                e.error.clone(),
                e.count.to_string(),
                secs(e.first_s),
                secs(e.last_s),
                e.state.clause(),
            ]
        });
    }
    let _ = writeln!(
        s,
        "\n**Failed or closed sends/receives of workers** (`unix_io`): {}.\n",
        st.io_failures.len()
    );
    if !st.io_failures.is_empty() {
        let columns = [
            ("at", Left),
            ("worker", Right),
            ("op", Left),
            ("result", Left),
            ("path", Left),
            ("peer (gen)", Left),
            ("peer's end", Left),
        ];
        top_table(s, columns, &st.io_failures, |i| {
            [
                format!("{:.3} s", i.at_s),
                i.pid.to_string(),
                i.op.to_string(),
                i.error.clone(),
                short_path(&i.path).to_string(),
                format!("{} ({})", i.peer_pid, opt_num(i.peer_generation)),
                i.peer_end.clone(),
            ]
        });
    }
}

/// The plugin sockets each route uses, as learned from the trace.
fn routes_md(s: &mut String, a: &Analysis) {
    use crate::analyze::routes;
    let all = &a.routes.routes;
    if all.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "Plugin sockets per route, learned from the trace: the unix socket each answered request's handler wrote first, in the event-loop turn that read it. A socket counts for a route with at least {} such requests and {:.0}% of the route's; the rest are other handlers' writes in the same turn.\n",
        routes::MIN_VOTES,
        routes::MIN_SHARE * 100.0
    );
    let mut routes: Vec<&routes::RouteSockets> = all.iter().collect();
    routes.sort_by(|x, y| y.answered.cmp(&x.answered).then_with(|| x.route.cmp(&y.route)));
    let mut t = Table::new(&[
        ("route", Left),
        ("answered", Right),
        ("called a plugin", Right),
        ("plugin sockets", Left),
        ("not counted", Left),
    ]);
    let list = |used: bool, r: &routes::RouteSockets| {
        let v: Vec<String> = r
            .sockets
            .iter()
            .filter(|x| x.used == used)
            .map(|x| format!("{} ({})", short_path(&x.path), x.votes))
            .collect();
        if v.is_empty() { "–".to_string() } else { v.join(", ") }
    };
    for r in routes.iter().take(TOP) {
        t.row([
            r.route.clone(),
            r.answered.to_string(),
            r.with_socket.to_string(),
            list(true, r),
            list(false, r),
        ]);
    }
    t.render(s);
    more(s, routes.len());
    s.push('\n');
}

fn attribution_md(s: &mut String, a: &Analysis) {
    let att = &a.attribution;
    s.push_str("\n## Failure attribution\n\n");
    let _ = writeln!(
        s,
        "{} failed requests. Their worker was named by the kernel for {} (the request id read from the worker's own socket), by the gateway's worker header alone for {} (`x-standin-worker`, the stand-in only), by neither for {}, which were linked by time window. A cause is blamed only for failures it can produce: an old worker's exit, or the worker closing the request's own connection, for a closed or reset connection, a spin for a timeout, a plugin socket's trouble (failed connect or I/O, a stale server generation) for a missing header or a 5xx of a route that uses that socket (learned from the trace, below) or of a request whose own handler called it. {} failed in ways no reload effect produces (`not_reload`: a foreign body, a 4xx) and count apart. Of the other {}: **{} exact, {} window, {} unexplained**.\n",
        att.failed,
        att.by_kernel,
        att.by_header,
        att.by_window,
        att.not_reload,
        att.reload_failed,
        pct(att.exact_share),
        pct(att.window_share),
        pct(att.unexplained_share)
    );
    routes_md(s, a);
    if att.table.is_empty() {
        return;
    }
    let mut t =
        Table::new(&[("link", Left), ("explanation", Left), ("endpoint", Left), ("failed requests", Right)]);
    for r in &att.table {
        let kind = if r.kind.is_empty() { "–" } else { &r.kind };
        t.row([r.link.clone(), kind.to_string(), r.endpoint.clone(), r.count.to_string()]);
    }
    t.render(s);
    for (class, count, title) in [
        (LinkClass::Exact, att.exact, "Examples (exact)"),
        (LinkClass::Window, att.window, "Linked by time window"),
        (LinkClass::Unexplained, att.unexplained, "Unexplained"),
        (LinkClass::NotReload, att.not_reload, "Unexplained (not a reload effect)"),
    ] {
        let shown = att.links.examples(class);
        if shown.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title}:\n");
        for r in &shown {
            let _ = writeln!(s, "- {}", truncate(&r.sentence, SENTENCE));
        }
        more(s, (count as usize).max(shown.len()));
    }
}
