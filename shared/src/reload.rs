//! `reload.json`: when and how `xtask run` sent the reload.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// `reload.json`.
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

impl Reload {
    /// Reads `reload.json`; `None` when absent or unreadable.
    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Writes it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_shape_xtask_wrote() {
        let text = r#"{"offset_ms":3005,"monotonic_ns":7,"realtime_ns":9,"pump_phase_s":6.5,"master":42,"how":"SIGHUP to nginx master 42"}"#;
        let r: Reload = serde_json::from_str(text).unwrap();
        assert_eq!((r.offset_ms, r.master, r.pump_phase_s), (3005, 42, Some(6.5)));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
    }
}
