//! The report files written into the run directory: `report.md` (one GitHub issue comment),
//! `report.json` (the same as data) and `timeline.json` (Chrome/Perfetto trace events).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Analysis, Run, rel_s, short_path};
use crate::event::Event;

/// Rows shown per list before "and N more".
const TOP: usize = 10;
/// Failed-request instants in `timeline.json` at most.
const MAX_REQUEST_INSTANTS: usize = 3000;
/// Socket-error instants in `timeline.json` at most.
const MAX_SOCKET_INSTANTS: usize = 20_000;
/// The synthetic track of the load test's failed requests.
const LOADTEST_PID: u32 = 999_999_999;

/// Paths of the files written.
#[derive(Debug, Clone)]
pub struct Written {
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// `timeline.json`.
    pub timeline: PathBuf,
    /// Size of `report.md` in bytes.
    pub markdown_bytes: usize,
}

/// Writes the three report files into the run directory.
pub fn write(run: &Run, a: &Analysis) -> Result<Written> {
    let md = markdown(run, a);
    let markdown = run.dir.join("report.md");
    std::fs::write(&markdown, &md).with_context(|| format!("cannot write {}", markdown.display()))?;
    let json_path = run.dir.join("report.json");
    let text = serde_json::to_string_pretty(a)?;
    std::fs::write(&json_path, text).with_context(|| format!("cannot write {}", json_path.display()))?;
    let timeline = run.dir.join("timeline.json");
    let text = serde_json::to_string(&trace_events(run, a))?;
    std::fs::write(&timeline, text).with_context(|| format!("cannot write {}", timeline.display()))?;
    Ok(Written { markdown, json: json_path, timeline, markdown_bytes: md.len() })
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn opt_s(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} s"))
}

fn more(s: &mut String, total: usize) {
    if total > TOP {
        let _ = writeln!(s, "\n…and {} more (see `report.json`).", total - TOP);
    }
}

/// The behaviour the stand-in ran, from its ground truth.
fn behaviour(run: &Run) -> Option<String> {
    run.ground_truth.iter().find_map(|l| l.behaviour.clone())
}

/// Renders `report.md`.
pub fn markdown(run: &Run, a: &Analysis) -> String {
    let mut s = String::from("# reloadscope report\n\n");
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
    headline_findings(&mut s, a);

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
    match &run.reload {
        Some(r) => {
            let _ = writeln!(
                s,
                "- reload: {} at {:.2} s into the load; time 0 below is the reload",
                r.how,
                r.offset_ms as f64 / 1e3
            );
        }
        None => s.push_str(
            "- reload: no `reload.json`; time 0 is the first HUP of the root, else the trace start\n",
        ),
    }

    s.push_str("\n## Load test\n\n");
    s.push_str(&shared::requests::load_table(&run.requests));
    if run.requests.is_empty() {
        s.push_str("| (no `requests.jsonl`) | | | |\n");
    }

    if !a.ground_truth_check.is_empty() {
        s.push_str("\n## Checked against the stand-in's own log\n\n| what | stand-in | reloadscope | agrees |\n|---|---|---|---|\n");
        for c in &a.ground_truth_check {
            let ok = if c.agrees { "yes" } else { "**no**" };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ok} |",
                c.what,
                truncate(&c.standin, 300),
                truncate(&c.found, 300)
            );
        }
    }
    timeline_md(&mut s, a);
    findings_md(&mut s, a);
    attribution_md(&mut s, a);
    flamegraphs_md(&mut s, a);

    s.push_str("\n## Artifacts\n\n");
    for (file, what) in [
        ("report.json", "this report as data (schema_version 2)"),
        (
            "timeline.json",
            "open in ui.perfetto.dev: spins, epoll buckets, socket errors, signals, failed requests",
        ),
        ("requests.jsonl", "every request of the load test"),
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
    s
}

/// Most frames of a spinning worker's heaviest stack shown in the report (leaf end).
const STACK_FRAMES: usize = 16;

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
            g.samples, g.in_epoll, g.in_lua_vm
        );
    }
    let _ = writeln!(s, "\n{}", crate::flame::LEGEND);
    let _ = writeln!(s, "\n{}", crate::flame::debug_info_line(&f.debug_named, &f.debug_notes));
}

fn headline_findings(s: &mut String, a: &Analysis) {
    for line in headlines(a) {
        let _ = writeln!(s, "- {line}");
    }
}

/// One line per kind of finding, for the report's top and the CLI.
pub fn headlines(a: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = a.timeline.hups.first() {
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
            .map(u32::to_string)
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
    s.push_str("\n| generation | workers | forked | exited | all gone |\n|---:|---|---|---:|---|\n");
    for g in &t.generations {
        let pids: Vec<String> = g.workers.iter().map(u32::to_string).collect();
        let forked = g.first_fork_s.map_or("before the trace".into(), |f| format!("{f:.2} s"));
        let _ = writeln!(
            s,
            "| {} | {} | {forked} | {}/{} | {} |",
            g.generation,
            pids.join(", "),
            g.exited,
            g.workers.len(),
            opt_s(g.all_exited_s)
        );
    }
    s.push_str("\n| worker | generation | forked | exit | end |\n|---:|---:|---|---|---|\n");
    for w in t.workers.iter().take(4 * TOP) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            w.pid,
            w.generation,
            opt_s(w.forked_s),
            opt_s(w.exit_s),
            w.end
        );
    }
    if t.workers.len() > 4 * TOP {
        let _ = writeln!(s, "\n…and {} more workers (see `report.json`).", t.workers.len() - 4 * TOP);
    }
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n).collect::<String>())
    }
}

fn findings_md(s: &mut String, a: &Analysis) {
    s.push_str("\n## Findings\n\n### Spinning workers\n\n");
    if a.spins.is_empty() {
        s.push_str(
            "None: no thread made ≥1000 epoll calls/s with ≥90% zero timeouts and zero events for ≥0.5 s.\n",
        );
    } else {
        s.push_str("Evidence: `epoll_bucket` events (≥90% zero-timeout, ≥90% zero-event calls, ≥1000 calls/s, ≥0.5 s); CPU from `cpu_sample` events.\n\n");
        s.push_str("| pid | tid | comm | generation | onset | zero timeouts since | duration | calls/s | zero-timeout | zero-events | CPU | epfd |\n|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
        for x in a.spins.iter().take(TOP) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.0} | {} | {} | {} ({}) | {} |",
                x.pid,
                x.tid,
                x.comm,
                x.generation.map_or("–".into(), |g| g.to_string()),
                x.start_s,
                x.zero_timeout_since_s,
                x.duration_s,
                x.rate_per_s,
                pct(x.zero_timeout_share),
                pct(x.zero_event_share),
                pct(x.cpu_share),
                x.cpu_source,
                x.epfd
            );
        }
        more(s, a.spins.len());
    }

    let l = &a.lifecycle;
    s.push_str("\n### Plugin-server generations\n\nEvidence: `unix_sock` events. Servers that bound before the trace (they accept on the path, or connects to it reach them as peer) come first, then each `bind` of the path is the next generation.\n\n");
    if l.servers.is_empty() {
        s.push_str("No plugin server seen.\n");
    } else {
        s.push_str("| path | generation | pid | parent | bound | exit | end | found by |\n|---|---:|---:|---:|---|---|---|---|\n");
        let mut per_path: BTreeMap<&str, usize> = BTreeMap::new();
        let mut hidden = 0;
        for g in &l.servers {
            let n = per_path.entry(&g.path).or_default();
            *n += 1;
            if *n > TOP {
                hidden += 1;
                continue;
            }
            let bound = g.bound_s.map_or("before the trace".into(), |b| format!("{b:.2} s"));
            let orphan = if g.orphaned { ", orphaned" } else { "" };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {bound} | {} | {}{orphan} | {} |",
                short_path(&g.path),
                g.generation,
                g.pid,
                g.parent,
                opt_s(g.exit_s),
                g.end,
                g.found_by
            );
        }
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

    let st = &a.stale;
    s.push_str("\n### Stale sockets\n\n**Traffic with a superseded server generation** (`unix_flow`/`unix_io` peer pid vs. the path's owner by `bind`):\n\n");
    if st.stale_flows.is_empty() {
        s.push_str("none\n");
    } else {
        s.push_str("| worker | path | peer (gen) | owner (gen) | first | last | messages |\n|---:|---|---|---|---|---|---:|\n");
        for f in st.stale_flows.iter().take(TOP) {
            let _ = writeln!(
                s,
                "| {} | {} | {} ({}) | {} ({}) | {:.2} s | {:.2} s | {} |",
                f.pid,
                short_path(&f.path),
                f.peer_pid,
                f.peer_generation,
                f.owner_pid,
                f.owner_generation,
                f.first_s,
                f.last_s,
                f.messages
            );
        }
        more(s, st.stale_flows.len());
    }
    s.push_str("\n**New workers connected to a server of the old worker generation** (instance ids obtained there go stale when it dies):\n\n");
    if st.old_generation_connects.is_empty() {
        s.push_str("none\n");
    } else {
        s.push_str("| worker (gen) | path | server (gen) | spawned by worker gen | connects | first | last |\n|---|---|---|---:|---:|---|---|\n");
        for c in st.old_generation_connects.iter().take(TOP) {
            let _ = writeln!(
                s,
                "| {} ({}) | {} | {} ({}) | {} | {} | {:.2} s | {:.2} s |",
                c.pid,
                c.worker_generation,
                short_path(&c.path),
                c.peer_pid,
                c.peer_generation,
                c.peer_worker_generation,
                c.count,
                c.first_s,
                c.last_s
            );
        }
        more(s, st.old_generation_connects.len());
    }
    let _ = writeln!(
        s,
        "\n**Failed connects** (`unix_sock` connect with ret < 0): {} in all.\n",
        st.failed_connects
    );
    if !st.connect_episodes.is_empty() {
        let mut eps: Vec<_> = st.connect_episodes.iter().collect();
        eps.sort_by_key(|e| std::cmp::Reverse(e.count));
        s.push_str("| worker | path | error | count | first | last | the path then |\n|---:|---|---|---:|---|---|---|\n");
        for e in eps.iter().take(TOP) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} s | {:.2} s | {} |",
                e.pid,
                short_path(&e.path),
                e.error,
                e.count,
                e.first_s,
                e.last_s,
                e.state.clause()
            );
        }
        more(s, eps.len());
    }
    let _ = writeln!(
        s,
        "\n**Failed or closed sends/receives of workers** (`unix_io`): {}.\n",
        st.io_failures.len()
    );
    if !st.io_failures.is_empty() {
        s.push_str("| at | worker | op | result | path | peer (gen) | peer's end |\n|---|---:|---|---|---|---|---|\n");
        for i in st.io_failures.iter().take(TOP) {
            let _ = writeln!(
                s,
                "| {:.3} s | {} | {} | {} | {} | {} ({}) | {} |",
                i.at_s,
                i.pid,
                i.op,
                i.error,
                short_path(&i.path),
                i.peer_pid,
                i.peer_generation.map_or("–".into(), |g| g.to_string()),
                i.peer_end
            );
        }
        more(s, st.io_failures.len());
    }
}

fn attribution_md(s: &mut String, a: &Analysis) {
    let att = &a.attribution;
    s.push_str("\n## Failure attribution\n\n");
    let _ = writeln!(
        s,
        "{} failed requests: {} named their worker (`x-standin-worker`), {} did not (timeouts, closed connections) and were linked by time window. A cause is blamed only for failures it can produce: an old worker's exit for a closed or reset connection, a spin for a timeout, a plugin socket's trouble (failed connect or I/O, a stale server generation) for its own endpoint's missing header or a 5xx. {} failed in ways no reload effect produces (`not_reload`: a foreign body, a 4xx) and count apart. Of the other {}: **{} exact, {} window, {} unexplained**.\n",
        att.failed,
        att.with_worker,
        att.without_worker,
        att.not_reload,
        att.reload_failed,
        pct(att.exact_share),
        pct(att.window_share),
        pct(att.unexplained_share)
    );
    if att.table.is_empty() {
        return;
    }
    s.push_str("| link | explanation | endpoint | failed requests |\n|---|---|---|---:|\n");
    for r in &att.table {
        let kind = if r.kind.is_empty() { "–" } else { &r.kind };
        let _ = writeln!(s, "| {} | {kind} | {} | {} |", r.link, r.endpoint, r.count);
    }
    for (link, title) in [
        ("exact", "Examples (exact)"),
        ("window", "Linked by time window"),
        ("unexplained", "Unexplained"),
        (super::correlate::NOT_RELOAD, "Unexplained (not a reload effect)"),
    ] {
        let rows: Vec<_> = att.links.iter().filter(|l| l.link == link).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title}:\n");
        // One example per explanation, endpoint and worker first, then the earliest.
        let mut shown: Vec<&super::correlate::Link> = Vec::new();
        for r in &rows {
            if shown.len() < TOP
                && !shown
                    .iter()
                    .any(|x| x.kind == r.kind && x.endpoint == r.endpoint && x.worker_pid == r.worker_pid)
            {
                shown.push(r);
            }
        }
        for r in &rows {
            if shown.len() >= TOP {
                break;
            }
            if !shown.iter().any(|x| x.request_id == r.request_id) {
                shown.push(r);
            }
        }
        for r in &shown {
            let _ = writeln!(s, "- {}", r.sentence);
        }
        more(s, rows.len().max(shown.len()));
    }
}

/// Builds the Chrome/Perfetto trace-event document.
pub fn trace_events(run: &Run, a: &Analysis) -> Value {
    let t0 = run.meta.started_ns.min(a.zero_ns);
    let us = |ns: u64| ns.saturating_sub(t0) as f64 / 1e3;
    let mut ev: Vec<Value> = Vec::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for p in &run.processes {
        names.insert(p.pid, p.comm.clone());
    }
    names.insert(a.timeline.root, format!("nginx master {}", a.timeline.root));
    for w in &a.timeline.workers {
        names.insert(w.pid, format!("worker {} (gen {})", w.pid, w.generation));
    }
    for g in &a.lifecycle.servers {
        names.insert(g.pid, format!("{} {} gen {} ({})", g.comm, short_path(&g.path), g.generation, g.pid));
        let start = g.bound_ns.unwrap_or(run.meta.started_ns);
        let end = g.exit_ns.unwrap_or(run.meta.ended_ns);
        ev.push(json!({"name": format!("{} gen {}", short_path(&g.path), g.generation), "cat": "server",
            "ph": "X", "pid": g.pid, "tid": g.pid, "ts": us(start), "dur": us(end) - us(start),
            "args": {"end": g.end, "found_by": g.found_by}}));
    }
    names.insert(LOADTEST_PID, "load test: failed requests".into());
    let mut threads: BTreeMap<(u32, u32), String> = BTreeMap::new();
    for s in &a.spins {
        ev.push(
            json!({"name": "spin: epoll_wait(…, 0)", "cat": "spin", "ph": "X", "pid": s.pid, "tid": s.tid,
            "ts": us(s.start_ns), "dur": us(s.end_ns) - us(s.start_ns),
            "args": {"calls_per_s": s.rate_per_s.round(), "cpu_share": s.cpu_share, "epfd": s.epfd}}),
        );
        threads.insert((s.pid, s.tid), s.comm.clone());
    }
    // Every epoll bucket of a thread that spun at some point: the lead-up is part of the story.
    for e in &run.events {
        if let Event::EpollBucket(b) = e
            && threads.contains_key(&(b.task.tgid, b.task.tid))
        {
            ev.push(
                json!({"name": "epoll", "cat": "epoll", "ph": "X", "pid": b.task.tgid, "tid": b.task.tid,
                "ts": us(b.start_ns), "dur": us(b.end_ns) - us(b.start_ns),
                "args": {"calls": b.calls, "zero_timeout": b.zero_timeout, "zero_events": b.zero_events,
                         "blocked_ms": b.blocked_ns as f64 / 1e6, "epfd": b.epfd}}),
            );
        }
    }
    for c in a.stale.connect_failures.iter().take(MAX_SOCKET_INSTANTS) {
        ev.push(json!({"name": format!("connect {}: {}", short_path(&c.path), super::errno_name(c.ret)),
            "cat": "socket", "ph": "i", "s": "t", "pid": c.pid, "tid": c.pid, "ts": us(c.ts_ns)}));
    }
    for i in &a.stale.io_failures {
        ev.push(json!({"name": format!("{} {}: {}", i.op, short_path(&i.path), i.error), "cat": "socket",
            "ph": "i", "s": "t", "pid": i.pid, "tid": i.pid, "ts": us(i.ts_ns),
            "args": {"peer_pid": i.peer_pid, "peer_generation": i.peer_generation}}));
    }
    for e in &run.events {
        if let Event::Signal(sg) = e {
            // On the receiver's track, so a SIGKILL sits where the process ends.
            ev.push(json!({"name": format!("{} from {}", sg.name, sg.task.tgid), "cat": "signal", "ph": "i",
                "s": "p", "pid": sg.target, "tid": sg.target, "ts": us(sg.task.ts_ns),
                "args": {"from": sg.task.tgid, "from_comm": sg.task.comm}}));
        }
    }
    for h in &a.timeline.hups {
        ev.push(json!({"name": "reload (SIGHUP to master)", "cat": "reload", "ph": "i", "s": "g",
            "pid": a.timeline.root, "tid": a.timeline.root, "ts": us(h.ts_ns)}));
    }
    let failed: Vec<&super::Request> = run.requests.iter().filter(|r| r.failed()).collect();
    let by_id: BTreeMap<&str, &super::correlate::Link> =
        a.attribution.links.iter().map(|l| (l.request_id.as_str(), l)).collect();
    for r in failed.iter().take(MAX_REQUEST_INSTANTS) {
        let link = by_id.get(r.request_id.as_str());
        let pid = r.worker_pid.unwrap_or(LOADTEST_PID);
        ev.push(json!({"name": format!("failed {}: {}", r.endpoint, r.reason.as_deref().unwrap_or("?")),
            "cat": "request", "ph": "i", "s": "t", "pid": pid, "tid": LOADTEST_PID, "ts": us(r.start_mono_ns),
            "args": {"request_id": r.request_id, "link": link.map(|l| l.link.as_str()),
                     "kind": link.map(|l| l.kind.as_str()), "explanation": link.map(|l| l.sentence.as_str())}}));
        threads.insert((pid, LOADTEST_PID), "failed requests".into());
    }
    for (pid, name) in &names {
        ev.push(json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}));
    }
    for ((pid, tid), name) in &threads {
        ev.push(json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}));
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms",
           "otherData": {"zero_s_from_trace_start": rel_s(a.zero_ns, t0), "source": "reloadscope analyze",
                         // The instants are capped; a reader must know when some are missing.
                         "failed_requests": failed.len(),
                         "failed_request_instants": failed.len().min(MAX_REQUEST_INSTANTS)}})
}

/// Where the files are, relative to the run directory when possible.
pub fn location(dir: &Path, w: &Written) -> String {
    format!(
        "{} ({} bytes), {}, {}",
        w.markdown.display(),
        w.markdown_bytes,
        w.json.strip_prefix(dir).unwrap_or(&w.json).display(),
        w.timeline.strip_prefix(dir).unwrap_or(&w.timeline).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;

    #[test]
    fn an_empty_run_renders_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = Run { dir: dir.path().to_path_buf(), ..Run::default() };
        let a = analyze(&run);
        let md = markdown(&run, &a);
        assert!(md.contains("none failed") && md.contains("## Reload timeline"), "{md}");
        assert!(md.contains("[`timeline.json`](timeline.json)"));
        let w = write(&run, &a).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(w.json).unwrap()).unwrap();
        assert_eq!(v["schema_version"], super::super::REPORT_SCHEMA_VERSION);
        let t: Value = serde_json::from_str(&std::fs::read_to_string(w.timeline).unwrap()).unwrap();
        assert!(t["traceEvents"].as_array().unwrap().iter().any(|e| e["ph"] == "M"));
    }
}
