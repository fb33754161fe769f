//! The report files written into the run directory: `report.md` (one GitHub issue comment),
//! `report.json` (the same as data), `verdict.json` (its counts, for comparing runs) and
//! `timeline.json` (Chrome/Perfetto trace events). This
//! module writes the files; its `markdown` and `perfetto` submodules render them.

pub(super) mod markdown;
mod perfetto;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use markdown::{headlines, markdown};
pub use perfetto::{MAX_SOCKET_INSTANTS, write_trace_events};

use super::{Analysis, Run};

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

/// Writes the three report files, and `requests-linked.jsonl` when there is a request log, into
/// the run directory.
pub fn write(run: &Run, a: &Analysis) -> Result<Written> {
    if let Some(kernel) = &run.kernel
        && run.log.requests > 0
    {
        super::linked::write(
            &run.dir.join("requests-linked.jsonl"),
            &run.dir.join("requests.jsonl"),
            kernel,
            &a.routes,
        )?;
    }
    let md = markdown(run, a);
    let markdown = run.dir.join("report.md");
    std::fs::write(&markdown, &md).with_context(|| format!("cannot write {}", markdown.display()))?;
    // Straight to the files: a long run's report.json is hundreds of MB.
    let json_path = run.dir.join("report.json");
    write_json(&json_path, |w| serde_json::to_writer_pretty(w, a))?;
    shared::verdict::write(&run.dir, &a.verdict)
        .with_context(|| format!("cannot write {}", run.dir.join(shared::verdict::FILE).display()))?;
    let timeline = run.dir.join("timeline.json");
    write_json(&timeline, |w| write_trace_events(run, a, w).map_err(serde_json::Error::io))?;
    Ok(Written { markdown, json: json_path, timeline, markdown_bytes: md.len() })
}

fn write_json(
    path: &Path,
    to: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> serde_json::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let cannot = || format!("cannot write {}", path.display());
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).with_context(cannot)?);
    to(&mut w).with_context(cannot)?;
    w.flush().with_context(cannot)
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
    use serde_json::Value;

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
        assert_eq!(v["schema_version"], crate::analyze::REPORT_SCHEMA_VERSION);
        let t: Value = serde_json::from_str(&std::fs::read_to_string(w.timeline).unwrap()).unwrap();
        assert!(t["traceEvents"].as_array().unwrap().iter().any(|e| e["ph"] == "M"));
    }
}
