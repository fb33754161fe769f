//! JSON-lines files read leniently: a line cut by an abrupt stop must not sink the whole file.

use std::io::{BufRead, BufReader};
use std::path::Path;

/// Parses a JSON-lines file, skipping lines that do not parse; a missing file is empty.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_json_line(path, |v| out.push(v))?;
    Ok(out)
}

/// Calls `f` with each line of `path` that parses as a `T`, one at a time (memory holds one
/// line); a missing file has none.
pub fn for_each_json_line<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut f: impl FnMut(T),
) -> std::io::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(file).lines() {
        if let Ok(v) = serde_json::from_str(&line?) {
            f(v);
        }
    }
    Ok(())
}
