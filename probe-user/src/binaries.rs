//! Executable files that exist only inside a traced process's mount namespace (a container's
//! image), copied into the trace while the process lives, so the flamegraphs can unwind and
//! name its frames after the container is gone.
//!
//! Only code mappings are copied, once per file (named by build-id where there is one), and
//! only for processes whose mount namespace is not ours, and only files that are not the host's
//! own (same device and inode): a host process's files stay on the host.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use object::Object;
use serde::{Deserialize, Serialize};

use crate::flame::unwind::parse_maps;

/// Where the copies go, inside the trace directory.
pub const DIR: &str = "binaries";

/// One file a process mapped, and its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryEntry {
    /// The process.
    pub pid: u32,
    /// The path as the process maps it (inside its namespace).
    pub path: String,
    /// The copy, relative to the trace directory.
    pub file: String,
    /// Its GNU build-id (hex), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// `binaries/index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryIndex {
    /// Every (process, path) whose file was copied.
    pub entries: Vec<BinaryEntry>,
    /// Bytes copied in all.
    pub bytes: u64,
    /// Files that could not be copied, and why.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
}

impl BinaryIndex {
    /// (pid, path) → the copy's path relative to the trace.
    pub fn lookup(&self) -> HashMap<(u32, &str), &str> {
        self.entries.iter().map(|e| ((e.pid, e.path.as_str()), e.file.as_str())).collect()
    }
}

/// A file copied: its copy relative to the trace, and its build-id.
type Copy = (String, Option<String>);

/// Copies the code files of processes in other mount namespaces.
pub struct Binaries {
    own_mnt_ns: u64,
    /// (mount namespace, path) → the copy (`None`: it failed).
    copied: HashMap<(u64, String), Option<Copy>>,
    /// (pid, path) pairs already looked at.
    kept: std::collections::HashSet<(u32, String)>,
    index: BinaryIndex,
}

impl Binaries {
    /// For a recorder in its own mount namespace.
    pub fn new() -> Self {
        let own_mnt_ns = std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).unwrap_or(0);
        Binaries {
            own_mnt_ns,
            copied: HashMap::new(),
            kept: Default::default(),
            index: BinaryIndex::default(),
        }
    }

    /// Copies what `pid` (in mount namespace `mnt_ns`) maps as code, per its maps text, into
    /// `trace/binaries/`, unless its namespace is ours.
    pub fn keep(&mut self, trace: &Path, pid: u32, mnt_ns: u64, maps: &str) {
        if mnt_ns == self.own_mnt_ns || mnt_ns == 0 {
            return;
        }
        for m in parse_maps(maps) {
            if !m.perms.contains('x') || !m.path.starts_with('/') {
                continue;
            }
            if !self.kept.insert((pid, m.path.clone())) {
                continue;
            }
            // The same file as the host's (a namespace that shares the host's files): nothing to keep.
            if same_file(&format!("/proc/{pid}/root{}", m.path), &m.path) {
                continue;
            }
            let key = (mnt_ns, m.path.clone());
            if !self.copied.contains_key(&key) {
                let copy = copy_one(trace, pid, &m.path);
                match copy {
                    Ok((file, build_id, bytes)) => {
                        self.index.bytes += bytes;
                        self.copied.insert(key.clone(), Some((file, build_id)));
                    }
                    Err(why) => {
                        self.index.failed.insert(m.path.clone(), why);
                        self.copied.insert(key.clone(), None);
                    }
                }
            }
            if let Some(Some((file, build_id))) = self.copied.get(&key) {
                self.index.entries.push(BinaryEntry {
                    pid,
                    path: m.path.clone(),
                    file: file.clone(),
                    build_id: build_id.clone(),
                });
            }
        }
    }

    /// What was copied.
    pub fn finish(self) -> BinaryIndex {
        self.index
    }
}

/// Whether two paths name the same file (device and inode).
fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Copies `path` as `pid` sees it; returns (copy relative to the trace, build-id, bytes copied,
/// 0 when an identical build was already there).
fn copy_one(trace: &Path, pid: u32, path: &str) -> Result<(String, Option<String>, u64), String> {
    let src = format!("/proc/{pid}/root{path}");
    let data = std::fs::read(&src).map_err(|e| format!("{src}: {e}"))?;
    let build_id = object::File::parse(&*data).ok().and_then(|o| {
        o.build_id().ok().flatten().map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>())
    });
    // Same build, same bytes: one copy. Without a build-id, the content's checksum names it.
    let id =
        build_id.clone().unwrap_or_else(|| format!("crc32-{:08x}-{}", crc32fast::hash(&data), data.len()));
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let rel = format!("{DIR}/{id}/{name}");
    let dst = trace.join(&rel);
    if dst.exists() {
        return Ok((rel, build_id, 0));
    }
    std::fs::create_dir_all(dst.parent().unwrap_or(trace)).map_err(|e| e.to_string())?;
    std::fs::write(&dst, &data).map_err(|e| format!("{}: {e}", dst.display()))?;
    Ok((rel, build_id, data.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_copies_nothing_and_another_copies_code_once() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut b = Binaries::new();
        b.keep(dir.path(), me, b.own_mnt_ns, &maps);
        assert!(b.finish().entries.is_empty());
        // Another namespace that sees the host's own files (our own, here): nothing to copy.
        let mut b = Binaries::new();
        b.keep(dir.path(), me, b.own_mnt_ns + 1, &maps);
        assert!(b.finish().entries.is_empty());
        // A file that is not the host's is copied once, by build-id, byte for byte.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let (file, build_id, bytes) = copy_one(dir.path(), me, &exe.to_string_lossy()).unwrap();
        assert_eq!(std::fs::read(dir.path().join(&file)).unwrap(), std::fs::read(&exe).unwrap());
        assert!(bytes > 0 && file.starts_with("binaries/"), "{file}");
        assert_eq!(copy_one(dir.path(), me, &exe.to_string_lossy()).unwrap(), (file, build_id, 0));
    }
}
