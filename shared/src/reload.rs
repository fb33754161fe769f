//! `reload.json`: when and how `xtask run` sent each reload, in order.
//!
//! The file is `{"reloads": [...]}`; a run from before repeated reloads wrote one bare
//! [`Reload`], which [`read_all`] still reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One reload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// Offset into the load in ms.
    #[serde(default)]
    pub offset_ms: u64,
    /// CLOCK_MONOTONIC ns when it was sent: the analysis' time zero.
    pub monotonic_ns: u64,
    /// CLOCK_REALTIME ns when it was sent.
    #[serde(default)]
    pub realtime_ns: u64,
    /// Stand-in only: where in old worker 0's plugin-server pump window it landed (s).
    #[serde(default)]
    pub pump_phase_s: Option<f64>,
    /// The gateway's master pid.
    #[serde(default)]
    pub master: u32,
    /// How it was sent, e.g. `SIGHUP to nginx master 4711`.
    #[serde(default)]
    pub how: String,
}

/// The file's two shapes.
#[derive(Deserialize)]
#[serde(untagged)]
enum File {
    All { reloads: Vec<Reload> },
    One(Reload),
}

/// Every reload in `reload.json`, in the order sent; empty when absent or unreadable.
pub fn read_all(path: &Path) -> Vec<Reload> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    match serde_json::from_str(&text) {
        Ok(File::All { reloads }) => reloads,
        Ok(File::One(r)) => vec![r],
        Err(_) => Vec::new(),
    }
}

/// Writes `reload.json` with every reload so far.
pub fn write_all(path: &Path, reloads: &[Reload]) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        reloads: &'a [Reload],
    }
    std::fs::write(path, serde_json::to_string_pretty(&Out { reloads })? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_shapes_and_writes_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reload.json");
        let one = r#"{"offset_ms":3005,"monotonic_ns":7,"realtime_ns":9,"pump_phase_s":6.5,"master":42,"how":"SIGHUP to nginx master 42"}"#;
        std::fs::write(&path, one).unwrap();
        let r = read_all(&path);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].offset_ms, r[0].master, r[0].pump_phase_s), (3005, 42, Some(6.5)));
        let second = Reload { offset_ms: 9000, monotonic_ns: 11, ..r[0].clone() };
        write_all(&path, &[r[0].clone(), second.clone()]).unwrap();
        assert_eq!(read_all(&path), vec![r[0].clone(), second]);
        assert!(read_all(&dir.path().join("absent.json")).is_empty());
        std::fs::write(&path, "{").unwrap();
        assert!(read_all(&path).is_empty());
    }
}
