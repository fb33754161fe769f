//! `reloadscope bundle`: one `.tar.gz` of a run directory, under GitHub's attachment limit, that a
//! maintainer can open and re-analyse on a machine that never saw the run. This module owns the
//! archive: what goes in, what is dropped first when it is too big, and how it is unpacked.
//!
//! The archive holds the report, the timeline, the flamegraphs and their folded stacks, the
//! trace's metadata and process model, the events, the compressed stack copies, the load test's
//! log, and a `README.md` that lists what is in it and what was left out. When it is over the
//! size limit, the optional parts go in [`DROP_ORDER`]: raw samples first, then what a
//! re-analysis writes anew (`requests-linked.jsonl`, `report.json`, `timeline.json`), then the
//! events away from the reloads, and so on; the report never goes. The flamegraphs' summary
//! travels in `BUNDLE.json`, since their binaries do not.
//!
//! `--redact` ([`Redactor`]) replaces the host name, the user's and the run's paths, the plugin
//! sockets' directory and the load test's random request-id prefix with placeholders in every
//! file, and leaves the raw stack copies out (they are process memory).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// GitHub's limit for a file attached to an issue.
pub const GITHUB_LIMIT: u64 = 25 * 1000 * 1000;
/// The file in an unpacked bundle that marks it as one (what was dropped).
pub const MARKER: &str = "BUNDLE.json";
/// Events this long before the first reload and after the last one are the reloads'
/// neighbourhood, kept when the whole event file is too big.
const BEFORE_NS: u64 = 5_000_000_000;
const AFTER_NS: u64 = 30_000_000_000;

/// The parts that may be left out, heaviest and least needed first.
pub const DROP_ORDER: [Part; 9] = [
    Part::Samples,
    Part::LinkedRequests,
    Part::ReportData,
    Part::Timeline,
    Part::StandinLog,
    Part::EventsAwayFromReloads,
    Part::Events,
    Part::RequestLog,
    Part::FlamegraphSvgs,
];

/// An optional part of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The CPU samples' stack copies, the stack ids and the memory maps (redrawing the
    /// flamegraphs needs them and the binaries).
    Samples,
    /// The events outside the reloads' neighbourhood.
    EventsAwayFromReloads,
    /// All of `events.jsonl`.
    Events,
    /// `requests-linked.jsonl` (a re-analysis writes it anew).
    LinkedRequests,
    /// `report.json` (a re-analysis writes it anew).
    ReportData,
    /// The flamegraphs' SVGs (their folded stacks stay).
    FlamegraphSvgs,
    /// `requests.jsonl` (the attribution needs it).
    RequestLog,
    /// The stand-in's own log.
    StandinLog,
    /// `timeline.json` (a re-analysis writes it anew).
    Timeline,
}

impl Part {
    /// What leaving it out costs the reader.
    pub fn loss(self) -> &'static str {
        match self {
            Part::Samples => "the raw stack copies: flamegraphs cannot be redrawn, the bundled ones stay",
            Part::EventsAwayFromReloads => {
                "events more than 5 s before the first reload or 30 s after the last one"
            }
            Part::Events => "every event: the analysis cannot be re-run",
            Part::LinkedRequests => "requests-linked.jsonl (`reloadscope analyze` writes it anew)",
            Part::ReportData => "report.json (`reloadscope analyze` writes it anew)",
            Part::FlamegraphSvgs => {
                "the flamegraphs' SVGs (their folded stacks are in; inferno or speedscope draws them)"
            }
            Part::RequestLog => "the load test's log: failures cannot be re-attributed",
            Part::StandinLog => "the stand-in's own log: no check against it",
            Part::Timeline => "timeline.json (Perfetto; `reloadscope analyze` writes it anew)",
        }
    }
}

/// What `BUNDLE.json` records.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// The parts left out to fit the limit (or, for the samples, to redact).
    pub dropped: Vec<Part>,
    /// Whether host names, paths and request ids were replaced.
    #[serde(default)]
    pub redacted: bool,
    /// The run's flamegraph summary (`report.json`'s), for a re-analysis that cannot redraw them.
    #[serde(default)]
    pub flamegraphs: Option<crate::flame::FlameSummary>,
}

/// Replaces what identifies the user's machine and run with placeholders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Redactor {
    /// (text, placeholder, whole words only), longest text first.
    pairs: Vec<(String, String, bool)>,
}

impl Redactor {
    /// The host name, the home directory, the run directory and its parent, the plugin
    /// sockets' directories (from `report.json`) and the load test's request-id prefix.
    pub fn for_run(run: &Path) -> Redactor {
        let mut pairs: Vec<(String, String, bool)> = Vec::new();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname")
            && !h.trim().is_empty()
        {
            // A host name can be short (`vm`): only where it stands as a word.
            pairs.push((h.trim().to_owned(), "<host>".into(), true));
        }
        let mut add = |text: String, placeholder: &str| {
            if text.len() >= 3 && !pairs.iter().any(|(t, ..)| *t == text) {
                pairs.push((text, placeholder.to_owned(), false));
            }
        };
        if let Some(home) = std::env::var_os("HOME").filter(|h| h != "/") {
            add(home.to_string_lossy().into_owned(), "<home>");
        }
        if let Ok(abs) = run.canonicalize() {
            if let Some(parent) = abs.parent().filter(|p| p.as_os_str().len() > 1) {
                add(parent.to_string_lossy().into_owned(), "<runs>");
            }
            add(abs.to_string_lossy().into_owned(), "<run>");
        }
        let report = std::fs::read_to_string(run.join("report.json")).ok();
        if let Some(report) = report.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
            for server in report["lifecycle"]["servers"].as_array().into_iter().flatten() {
                if let Some(dir) = server["path"].as_str().and_then(|p| Path::new(p).parent()) {
                    add(dir.to_string_lossy().into_owned(), "<sockets>");
                }
            }
        }
        // The load test's ids are `<random prefix>-<user>-<n>`: the prefix is the run's.
        let mut prefix = None;
        let _ =
            shared::for_each_json_line(&run.join("requests.jsonl"), |r: shared::requests::RequestLine| {
                if prefix.is_none() {
                    prefix = r.request_id.split('-').next().map(str::to_owned);
                }
            });
        if let Some(p) = prefix {
            add(format!("{p}-"), "<rid>-");
        }
        pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Redactor { pairs }
    }

    /// `text` with every redacted string replaced.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (from, to, word) in &self.pairs {
            if !out.contains(from.as_str()) {
                continue;
            }
            out = if *word { replace_word(&out, from, to) } else { out.replace(from.as_str(), to) };
        }
        out
    }
}

/// `text` with `from` replaced where no letter, digit, `-` or `_` touches it.
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let part_of_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let (before, after) = (rest[..i].chars().next_back(), rest[i + from.len()..].chars().next());
        out.push_str(&rest[..i]);
        out.push_str(if part_of_word(before) || part_of_word(after) { from } else { to });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The archive written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What was left out.
    pub dropped: Vec<Part>,
}

/// Run-directory files that always go in when they exist.
const ALWAYS: [&str; 8] = [
    "report.md",
    shared::verdict::FILE,
    "summary.md",
    "reload.json",
    "trace/meta.json",
    "trace/processes.json",
    "trace/summary.txt",
    "trace/lua-symbols.json",
];

/// The files of a part (directories: every file under them).
fn files(part: Part) -> &'static [&'static str] {
    match part {
        Part::Samples => &["trace/samples.bin.gz", "trace/samples.bin", "trace/stacks.json", "trace/maps"],
        Part::EventsAwayFromReloads | Part::Events => &["trace/events.jsonl"],
        Part::LinkedRequests => &["requests-linked.jsonl"],
        Part::RequestLog => &["requests.jsonl"],
        Part::StandinLog => &["standin-ground-truth.jsonl"],
        Part::Timeline => &["timeline.json"],
        Part::ReportData => &["report.json"],
        Part::FlamegraphSvgs => &[],
    }
}

/// Writes the bundle of `run` to `out`, leaving parts out in [`DROP_ORDER`] until it is at most
/// `max` bytes. Fails when even the report alone is over.
pub fn write(run: &Path, out: &Path, max: u64, redact: bool) -> Result<Written> {
    if !run.join("report.md").exists() {
        bail!("{} has no report.md: run `reloadscope analyze {}` first", run.display(), run.display());
    }
    let redactor = redact.then(|| Redactor::for_run(run));
    // Read once: report.json can be hundreds of MB, and each attempt needs the summary.
    let flamegraphs = report_flamegraphs(&run.join("report.json"));
    // Raw stack copies are process memory: they cannot be redacted, so they stay out.
    let mut dropped = if redact { vec![Part::Samples] } else { Vec::new() };
    loop {
        let marker = Marker {
            dropped: dropped.clone(),
            redacted: redactor.is_some(),
            flamegraphs: flamegraphs.clone(),
        };
        let bytes = write_once(run, out, &marker, redactor.as_ref())?;
        if bytes <= max {
            return Ok(Written { path: out.to_path_buf(), bytes, dropped });
        }
        let next = DROP_ORDER.iter().find(|p| !dropped.contains(p) && present(run, **p));
        match next {
            Some(&p) => dropped.push(p),
            None => {
                bail!("{}: {bytes} bytes even with every optional part left out (limit {max})", out.display())
            }
        }
    }
}

fn present(run: &Path, part: Part) -> bool {
    files(part).iter().any(|f| run.join(f).exists())
}

/// One attempt: the archive without the `dropped` parts; returns its size.
fn write_once(run: &Path, out: &Path, marker: &Marker, redactor: Option<&Redactor>) -> Result<u64> {
    let dropped = &marker.dropped;
    let file = File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut tar = tar::Builder::new(GzEncoder::new(std::io::BufWriter::new(file), Compression::default()));
    tar.mode(tar::HeaderMode::Deterministic);
    let add_text = |tar: &mut tar::Builder<_>, name: &str, text: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, text)?;
        Ok(())
    };
    let marker_text = serde_json::to_string_pretty(marker)?;
    let readme = readme(run, marker);
    add_text(&mut tar, "README.md", redactor.map_or(readme.clone(), |r| r.apply(&readme)).as_bytes())?;
    add_text(&mut tar, MARKER, redactor.map_or(marker_text.clone(), |r| r.apply(&marker_text)).as_bytes())?;
    let mut names: Vec<&str> = ALWAYS.to_vec();
    names.push("trace/flamegraphs");
    for part in DROP_ORDER {
        if !dropped.contains(&part) && part != Part::EventsAwayFromReloads {
            names.extend(files(part));
        }
    }
    let near = dropped.contains(&Part::EventsAwayFromReloads);
    let scratch = tempfile::tempdir()?;
    let svgs = dropped.contains(&Part::FlamegraphSvgs);
    for (name, path) in names.into_iter().flat_map(|n| expand(run, n)) {
        if svgs && name.ends_with(".svg") {
            continue;
        }
        let near = near && name == "trace/events.jsonl";
        if !near && redactor.is_none() {
            tar.append_path_with_name(&path, &name)
                .with_context(|| format!("cannot read {}", path.display()))?;
            continue;
        }
        // Filtered or redacted: line by line through a scratch file, whose size the header needs.
        let copy = scratch.path().join("part");
        let window = if near { reload_window(run) } else { None };
        transform(&path, &copy, |line| {
            if window.is_some_and(|(lo, hi)| ts_of(line).is_some_and(|t| t < lo || t > hi)) {
                return None;
            }
            Some(redactor.map_or_else(|| line.to_owned(), |r| r.apply(line)))
        })?;
        tar.append_path_with_name(&copy, &name).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let gz = tar.into_inner()?;
    let mut w = gz.finish()?;
    w.flush()?;
    Ok(std::fs::metadata(out)?.len())
}

/// The files under `name` in `run` (itself when it is a file), with their names in the archive.
fn expand(run: &Path, name: &str) -> Vec<(String, PathBuf)> {
    let path = run.join(name);
    if path.is_file() {
        return vec![(name.to_owned(), path)];
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
        let child = format!("{name}/{}", e.file_name().to_string_lossy());
        out.extend(expand(run, &child));
    }
    out.sort();
    out
}

/// The reloads' neighbourhood in CLOCK_MONOTONIC ns.
fn reload_window(run: &Path) -> Option<(u64, u64)> {
    let reloads = shared::reload::read_all(&run.join("reload.json"));
    Some((reloads.first()?.monotonic_ns.saturating_sub(BEFORE_NS), reloads.last()?.monotonic_ns + AFTER_NS))
}

/// Copies `from` to `to` line by line through `f` (`None` leaves a line out).
fn transform(from: &Path, to: &Path, f: impl Fn(&str) -> Option<String>) -> Result<()> {
    let r = BufReader::new(File::open(from).with_context(|| format!("cannot read {}", from.display()))?);
    let mut w = std::io::BufWriter::new(File::create(to)?);
    for line in r.split(b'\n') {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        if let Some(out) = f(&text) {
            w.write_all(out.as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    Ok(w.flush()?)
}

/// The `ts_ns` of an event line, read without parsing the line.
fn ts_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"ts_ns\":")? + 8..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// The bundle's own README.
fn readme(run: &Path, marker: &Marker) -> String {
    let dropped = &marker.dropped;
    let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = format!(
        "# reloadscope bundle of {name}\n\n\
         The run's report and what it was drawn from. {}\n\n\
         - `report.md`: the report (paste it into the issue); `report.json`: the same as data.\n\
         - `timeline.json`: open in ui.perfetto.dev.\n\
         - `trace/flamegraphs/`: the flamegraphs (`.svg`) and their folded stacks (`.folded`).\n\
         - `trace/meta.json`, `trace/processes.json`, `trace/summary.txt`: the trace's kernel, options, drops, \
         process model and per-thread summary.\n\
         - `trace/events.jsonl`: the probe's events; `trace/samples.bin.gz`, `trace/stacks.json`, \
         `trace/maps/`: the CPU samples' stack copies, stack ids and memory maps.\n\
         - `requests.jsonl`, `requests-linked.jsonl`: the load test's log, and each request beside the worker \
         that read it.\n\
         - `standin-ground-truth.jsonl`: the local stand-in's own log.\n\n\
         Re-run the analysis on any machine (no root): `reloadscope analyze {name}.tar.gz`. It unpacks the \
         bundle next to it and writes the report there; the flamegraphs stay the bundled ones, since the \
         gateway's binaries are not in the bundle.\n",
        if marker.redacted {
            "Redacted: the host name, the user's and the run's paths, the plugin sockets' directory and the \
             request ids' random prefix are placeholders (`<host>`, `<home>`, `<run>`, `<sockets>`, `<rid>`), \
             and the raw stack copies are left out."
        } else {
            "Not redacted: it holds the gateway's paths and the load test's request ids (`--redact` replaces \
             them)."
        }
    );
    if dropped.is_empty() {
        s.push_str("\nNothing was left out.\n");
    } else {
        s.push_str("\nLeft out (to stay under the size limit, or to redact):\n\n");
        for p in dropped {
            s.push_str(&format!("- {}\n", p.loss()));
        }
    }
    s
}

/// Unpacks a bundle next to itself (`x.tar.gz` into `x/`); returns that directory.
pub fn unpack(archive: &Path) -> Result<PathBuf> {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".tar.gz").or_else(|| name.strip_suffix(".tgz")).unwrap_or(&name);
    let dir = archive.with_file_name(format!("{stem}.d"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = File::open(archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    tar.unpack(&dir).with_context(|| format!("{} is not a reloadscope bundle", archive.display()))?;
    if !dir.join(MARKER).exists() {
        bail!("{} is not a reloadscope bundle (no {MARKER})", archive.display());
    }
    Ok(dir)
}

/// True when `dir` is an unpacked bundle.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// The flamegraph summary of a `report.json` (read as a stream: the file can be large).
fn report_flamegraphs(report: &Path) -> Option<crate::flame::FlameSummary> {
    #[derive(serde::Deserialize)]
    struct Only {
        flamegraphs: Option<crate::flame::FlameSummary>,
    }
    let r: Only = serde_json::from_reader(BufReader::new(File::open(report).ok()?)).ok()?;
    r.flamegraphs
}

/// The flamegraph summary an unpacked bundle carries.
pub fn bundled_flamegraphs(dir: &Path) -> Option<crate::flame::FlameSummary> {
    let mut text = String::new();
    File::open(dir.join(MARKER)).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str::<Marker>(&text).ok()?.flamegraphs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory with a report, a big incompressible sample file and some events.
    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("trace/flamegraphs")).unwrap();
        std::fs::write(d.join("report.md"), "# reloadscope report\n").unwrap();
        std::fs::write(d.join("trace/flamegraphs/all.folded"), "a;b 3\n").unwrap();
        let mut noise = vec![0u8; 300_000];
        let mut x: u64 = 7;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(d.join("trace/samples.bin.gz"), &noise).unwrap();
        shared::reload::write_all(
            &d.join("reload.json"),
            &[shared::reload::Reload { monotonic_ns: 100_000_000_000, ..Default::default() }],
        )
        .unwrap();
        // Events every 0.1 s from 0 to 200 s, each with some incompressible bytes.
        let lines: Vec<String> = (0..2000u64)
            .map(|i| {
                format!(
                    r#"{{"type":"signal","ts_ns":{},"pad":"{:x}"}}"#,
                    i * 100_000_000,
                    i * 2_654_435_761 % 1_000_003
                )
            })
            .collect();
        std::fs::write(d.join("trace/events.jsonl"), lines.join("\n") + "\n").unwrap();
        dir
    }

    fn names(archive: &Path) -> Vec<String> {
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(archive).unwrap()));
        tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn everything_goes_in_when_it_fits() {
        let run = run_dir();
        let out = run.path().join("b.tar.gz");
        let w = write(run.path(), &out, GITHUB_LIMIT, false).unwrap();
        assert!(w.dropped.is_empty());
        let n = names(&out);
        for f in
            ["README.md", MARKER, "report.md", "reload.json", "trace/samples.bin.gz", "trace/events.jsonl"]
        {
            assert!(n.iter().any(|x| x == f), "{f} in {n:?}");
        }
        assert!(n.iter().any(|x| x.ends_with("all.folded")), "{n:?}");
    }

    #[test]
    fn the_raw_samples_go_first_then_the_events_away_from_the_reload_and_never_the_report() {
        let run = run_dir();
        let out = run.path().join("b.tar.gz");
        let full = write(run.path(), &out, GITHUB_LIMIT, false).unwrap().bytes;
        // Just under the full size: the samples (300 kB of noise) go, nothing else.
        let w = write(run.path(), &out, full - 1, false).unwrap();
        assert_eq!(w.dropped, vec![Part::Samples]);
        assert!(!names(&out).iter().any(|x| x.contains("samples")));
        // Under the size without samples: the events away from the reload go next (the run has
        // no report.json, timeline or logs to go first), and the events near it stay.
        let w = write(run.path(), &out, w.bytes - 1, false).unwrap();
        assert_eq!(w.dropped, vec![Part::Samples, Part::EventsAwayFromReloads]);
        let dir = unpack(&out).unwrap();
        let events = std::fs::read_to_string(dir.join("trace/events.jsonl")).unwrap();
        let ts: Vec<u64> = events.lines().filter_map(ts_of).collect();
        assert_eq!((ts.first(), ts.last()), (Some(&95_000_000_000), Some(&130_000_000_000)));
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.contains("events more than 5 s before"), "{readme}");
        let m: Marker = serde_json::from_str(&std::fs::read_to_string(dir.join(MARKER)).unwrap()).unwrap();
        assert_eq!(m.dropped, w.dropped);
        // Smaller than the report alone could ever be: every part goes, then it says so.
        let err = write(run.path(), &out, 100, false).unwrap_err().to_string();
        assert!(err.contains("every optional part left out"), "{err}");
    }

    #[test]
    fn a_redacted_bundle_holds_no_path_host_or_request_id_prefix_of_the_run() {
        let run = run_dir();
        let d = run.path().canonicalize().unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
        let sockets = d.join("sock");
        let secrets = [d.display().to_string(), sockets.display().to_string(), "9f3ac2e1-".into()];
        let report = serde_json::json!({"lifecycle": {"servers": [{"path": sockets.join("js.sock")}]}});
        std::fs::write(d.join("report.json"), report.to_string()).unwrap();
        std::fs::write(
            d.join("report.md"),
            format!(
                "# report\nrun {} on {host}, socket {}/js.sock, request 9f3ac2e1-0-7\n",
                d.display(),
                sockets.display()
            ),
        )
        .unwrap();
        let line = shared::requests::RequestLine {
            request_id: "9f3ac2e1-0-7".into(),
            endpoint: "/js".into(),
            ..Default::default()
        };
        std::fs::write(d.join("requests.jsonl"), serde_json::to_string(&line).unwrap() + "\n").unwrap();
        std::fs::write(d.join("trace/flamegraphs/all.folded"), format!("{}/nginx;main 3\n", d.display()))
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        let w = write(&d, &archive, GITHUB_LIMIT, true).unwrap();
        assert_eq!(w.dropped, vec![Part::Samples], "the raw stack copies never go in a redacted bundle");
        let unpacked = unpack(&archive).unwrap();
        let mut checked = 0;
        for (name, path) in expand(&unpacked, ".") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{name} still holds {secret}:\n{text}");
            }
            assert_eq!(replace_word(&text, &host, "<host>"), text, "{name} still names the host {host}");
            checked += 1;
        }
        assert!(checked >= 6, "{checked} files");
        let md = std::fs::read_to_string(unpacked.join("report.md")).unwrap();
        assert!(
            md.contains("<run>")
                && md.contains("<host>")
                && md.contains("<sockets>/js.sock")
                && md.contains("<rid>-0-7"),
            "{md}"
        );
        assert!(std::fs::read_to_string(unpacked.join("README.md")).unwrap().contains("Redacted:"));
    }

    #[test]
    fn a_short_host_name_is_replaced_only_as_a_word() {
        assert_eq!(
            replace_word("vm vmstate (vm) vm-1 on vm", "vm", "<host>"),
            "<host> vmstate (<host>) vm-1 on <host>"
        );
    }

    #[test]
    fn a_run_without_a_report_or_a_file_that_is_not_a_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            write(dir.path(), &dir.path().join("b.tar.gz"), GITHUB_LIMIT, false).unwrap_err().to_string();
        assert!(err.contains("run `reloadscope analyze"), "{err}");
        let bogus = dir.path().join("x.tar.gz");
        std::fs::write(&bogus, b"not gzip").unwrap();
        assert!(unpack(&bogus).unwrap_err().to_string().contains("is not a reloadscope bundle"));
    }
}
