//! Debug info for binaries that ship stripped, found by build-id as perf, gdb and
//! systemd-coredump find it:
//!
//! 1. `<dir>/.build-id/xx/yyyy.debug` in each debug directory (`/usr/lib/debug`, where
//!    distributions' `-dbgsym` / `-debuginfo` packages install, and any `--debug-dir`);
//! 2. the file named by `.gnu_debuglink`, next to the binary, in its `.debug/` and under each
//!    debug directory, accepted only when its CRC matches;
//! 3. the debuginfod servers of `DEBUGINFOD_URLS` (off unless set), through elfutils'
//!    `debuginfod-find`, which keeps its own cache (`DEBUGINFOD_CACHE_PATH`, else
//!    `~/.cache/debuginfod_client`), with a time limit per file and one progress line per fetch.
//!
//! A server that fails or times out is one note for the report and is not asked again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::Object;
use serde::Serialize;

use super::elf::ElfFile;

/// Where distributions install debug files.
pub const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";
/// The environment variable naming debuginfod servers (space-separated URLs).
pub const URLS_VAR: &str = "DEBUGINFOD_URLS";
/// elfutils' debuginfod client.
const CLIENT: &str = "debuginfod-find";
/// How long one fetch may take before the server is given up for this analysis.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a debug file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A `.build-id` tree of a debug directory.
    BuildIdDir,
    /// The binary's `.gnu_debuglink`, CRC checked.
    DebugLink,
    /// A debuginfod server.
    Debuginfod,
}

impl Origin {
    /// Words for the report's legend.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::BuildIdDir => "build-id in a debug directory",
            Origin::DebugLink => ".gnu_debuglink",
            Origin::Debuginfod => "debuginfod",
        }
    }
}

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Debug directories, in order.
    pub dirs: Vec<PathBuf>,
    /// debuginfod servers (empty: never asked).
    pub urls: Vec<String>,
    /// Limit for one fetch.
    pub timeout: Duration,
}

impl Sources {
    /// `extra` directories first, then `/usr/lib/debug`; servers from `DEBUGINFOD_URLS`.
    pub fn from_env(extra: &[PathBuf]) -> Self {
        let mut dirs = extra.to_vec();
        dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
        let urls = parse_urls(&std::env::var(URLS_VAR).unwrap_or_default());
        Sources { dirs, urls, timeout: FETCH_TIMEOUT }
    }

    /// No lookup at all (tests of the fallbacks).
    pub fn none() -> Self {
        Sources { dirs: Vec::new(), urls: Vec::new(), timeout: FETCH_TIMEOUT }
    }
}

/// The servers of a `DEBUGINFOD_URLS` value.
pub fn parse_urls(value: &str) -> Vec<String> {
    value.split_whitespace().map(|u| u.trim_end_matches('/').to_string()).collect()
}

/// `<dir>/.build-id/xx/rest.debug` for a lowercase hex build-id.
pub fn build_id_path(dir: &Path, id: &str) -> Option<PathBuf> {
    if id.len() < 3 {
        return None;
    }
    Some(dir.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..])))
}

/// Where a `.gnu_debuglink` name may be, in gdb's order.
pub fn debuglink_candidates(binary: &Path, name: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let here = binary.parent().unwrap_or(Path::new("/"));
    let mut out = vec![here.join(name), here.join(".debug").join(name)];
    for d in dirs {
        let rel = here.strip_prefix("/").unwrap_or(here);
        out.push(d.join(rel).join(name));
    }
    // A link naming the binary itself would "find" the stripped file.
    out.retain(|p| p != binary);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies a binary's debug file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ids {
    build_id: Option<String>,
    debuglink: Option<(String, u32)>,
    /// True when the file itself has a symbol table or DWARF (it needs no debug file).
    has_symbols: bool,
}

fn ids(binary: &ElfFile) -> Option<Ids> {
    let file = binary.object()?;
    let build_id = file.build_id().ok().flatten().map(hex);
    let debuglink = file
        .gnu_debuglink()
        .ok()
        .flatten()
        .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc));
    let has_symbols =
        file.section_by_name(".symtab").is_some() || file.section_by_name(".debug_info").is_some();
    Some(Ids { build_id, debuglink, has_symbols })
}

fn crc_of(path: &Path) -> Option<u32> {
    Some(crc32fast::hash(&std::fs::read(path).ok()?))
}

/// Debug files found per binary, with what went wrong on the way.
#[derive(Debug)]
pub struct DebugFiles {
    sources: Sources,
    found: HashMap<PathBuf, Option<(PathBuf, Origin)>>,
    /// One line per problem (a server that failed, no client installed).
    pub notes: Vec<String>,
    servers_given_up: bool,
}

impl DebugFiles {
    /// Looks in `sources`.
    pub fn new(sources: Sources) -> Self {
        DebugFiles { sources, found: HashMap::new(), notes: Vec::new(), servers_given_up: false }
    }

    /// The debug file of `binary`, when one is found (looked up once per binary).
    pub fn lookup(&mut self, binary: &ElfFile) -> Option<(PathBuf, Origin)> {
        if let Some(f) = self.found.get(&binary.path) {
            return f.clone();
        }
        let f = self.search(binary);
        self.found.insert(binary.path.clone(), f.clone());
        f
    }

    fn search(&mut self, elf: &ElfFile) -> Option<(PathBuf, Origin)> {
        let binary = elf.path.as_path();
        let ids = ids(elf)?;
        if ids.has_symbols {
            return None;
        }
        if let Some(id) = &ids.build_id {
            for d in &self.sources.dirs {
                if let Some(p) = build_id_path(d, id).filter(|p| p.is_file()) {
                    return Some((p, Origin::BuildIdDir));
                }
            }
        }
        if let Some((name, crc)) = &ids.debuglink {
            for p in debuglink_candidates(binary, name, &self.sources.dirs) {
                if p.is_file() && crc_of(&p) == Some(*crc) {
                    return Some((p, Origin::DebugLink));
                }
            }
        }
        let id = ids.build_id?;
        self.fetch(binary, &id).map(|p| (p, Origin::Debuginfod))
    }

    /// Asks the debuginfod servers through `debuginfod-find`, within the time limit.
    fn fetch(&mut self, binary: &Path, id: &str) -> Option<PathBuf> {
        if self.sources.urls.is_empty() || self.servers_given_up {
            return None;
        }
        let name =
            binary.file_name().map_or_else(|| binary.display().to_string(), |n| n.to_string_lossy().into());
        eprintln!("reloadscope: fetching debug info for {name} (build-id {id}) from {URLS_VAR}");
        let started = Instant::now();
        let child = Command::new(CLIENT)
            .args(["debuginfo", id])
            .env(URLS_VAR, self.sources.urls.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.give_up(format!(
                    "{URLS_VAR} is set but `{CLIENT}` cannot run ({e}); install elfutils' debuginfod client"
                ));
                return None;
            }
        };
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < self.sources.timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.give_up(format!(
                        "debuginfod ({}) gave no answer for {name} within {} s; not asked again",
                        self.sources.urls.join(" "),
                        self.sources.timeout.as_secs()
                    ));
                    return None;
                }
            }
        }
        let out = child.wait_with_output().ok()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(stdout.trim());
        if out.status.success() && path.is_file() {
            return Some(path);
        }
        let why =
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no answer").trim().to_string();
        // "Not found" is an answer; a failed connection means the server is not there.
        if !why.to_ascii_lowercase().contains("not found") {
            self.give_up(format!(
                "debuginfod ({}) failed for {name}: {why}; not asked again",
                self.sources.urls.join(" ")
            ));
        }
        None
    }

    fn give_up(&mut self, note: String) {
        eprintln!("reloadscope: {note}");
        self.notes.push(note);
        self.servers_given_up = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths_split_the_first_byte() {
        let p = build_id_path(Path::new("/usr/lib/debug"), "6a236b88ef").unwrap();
        assert_eq!(p, PathBuf::from("/usr/lib/debug/.build-id/6a/236b88ef.debug"));
        assert!(build_id_path(Path::new("/x"), "ab").is_none());
    }

    #[test]
    fn debuglink_candidates_follow_gdbs_order() {
        let c = debuglink_candidates(
            Path::new("/usr/sbin/nginx"),
            "nginx.debug",
            &[PathBuf::from("/usr/lib/debug")],
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/usr/sbin/nginx.debug"),
                PathBuf::from("/usr/sbin/.debug/nginx.debug"),
                PathBuf::from("/usr/lib/debug/usr/sbin/nginx.debug"),
            ]
        );
        // Debian links nginx to "nginx" itself in some builds: never the binary itself.
        assert!(!debuglink_candidates(Path::new("/a/b"), "b", &[]).contains(&PathBuf::from("/a/b")));
    }

    #[test]
    fn urls_are_split_on_white_space() {
        assert_eq!(parse_urls(" http://a:1/  https://b "), vec!["http://a:1", "https://b"]);
        assert!(parse_urls("").is_empty());
    }

    #[test]
    fn a_binary_with_symbols_needs_no_debug_file_and_no_server_is_asked_without_urls() {
        // The test binary itself carries its symbol table.
        let me = ElfFile::load(&std::env::current_exe().unwrap()).unwrap();
        let mut d = DebugFiles::new(Sources::from_env(&[]));
        assert_eq!(d.lookup(&me), None);
        assert!(d.notes.is_empty());
    }
}
