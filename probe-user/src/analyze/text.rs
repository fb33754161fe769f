//! Text helpers shared by the detectors and the report: relative seconds, errno names, short
//! socket paths, shared copies of repeated strings.

/// Seconds of `ts_ns` relative to `zero_ns` (negative before it).
pub fn rel_s(ts_ns: u64, zero_ns: u64) -> f64 {
    (ts_ns as i128 - zero_ns as i128) as f64 / 1e9
}

/// `-111` -> `ECONNREFUSED`, `0` -> `0 (peer closed)`.
pub fn errno_name(ret: i64) -> String {
    const NAMES: [(i32, &str); 5] = [
        (libc::ENOENT, "ENOENT"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EPIPE, "EPIPE"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
    ];
    if ret == 0 {
        return "0 (peer closed)".into();
    }
    NAMES
        .iter()
        .find(|(e, _)| crate::event::neg_errno(*e) == ret)
        .map_or_else(|| format!("errno {}", -ret), |(_, n)| (*n).to_string())
}

/// The file name of a socket path, for short sentences.
pub fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// One shared copy of each distinct string: a socket path repeats in hundreds of thousands of
/// failed connects.
#[derive(Debug, Default)]
pub struct Interner(std::collections::HashSet<std::sync::Arc<str>>);

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> std::sync::Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: std::sync::Arc<str> = s.into();
        self.0.insert(a.clone());
        a
    }
}
