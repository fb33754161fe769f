//! Processes by pid, from /proc: liveness (a zombie counts as gone), command lines, parents,
//! signals, and waiting for processes to end.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    u32::try_from(pid).ok().and_then(shared::procstat::read).is_some_and(|s| s.is_alive())
}

/// The process state letter and parent pid, from /proc/<pid>/stat.
fn state_and_ppid(pid: i32) -> Option<(char, i32)> {
    let stat = shared::procstat::read(u32::try_from(pid).ok()?)?;
    Some((stat.state, stat.ppid as i32))
}

/// The command line with NULs turned into spaces (empty for kernel threads or gone pids).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

/// Every live pid on the machine.
fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&p| alive(p)).collect()
}

/// Live processes whose command line mentions `needle` (e.g. the prefix directory).
pub fn with_cmdline_containing(needle: &str) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    all_pids().into_iter().filter(|&p| p != me && cmdline(p).contains(needle)).collect()
}

/// The live children of `pid`.
pub fn children(pid: i32) -> BTreeSet<i32> {
    all_pids().into_iter().filter(|&p| state_and_ppid(p).is_some_and(|(_, pp)| pp == pid)).collect()
}

/// The given pids plus all their live descendants.
pub fn with_descendants(roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let parents: Vec<(i32, i32)> =
        all_pids().into_iter().filter_map(|p| state_and_ppid(p).map(|(_, pp)| (p, pp))).collect();
    let mut found: BTreeSet<i32> = roots.iter().copied().filter(|&p| alive(p)).collect();
    loop {
        let before = found.len();
        for &(pid, ppid) in &parents {
            if found.contains(&ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Sends a signal; false when the process is gone.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Reaps `pid` if it happens to be our child (a no-op otherwise), so it leaves no zombie.
pub fn reap_if_child(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only writes the status int we pass.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Waits until none of `pids` is alive; returns those still alive at the deadline.
pub fn wait_gone(pids: &BTreeSet<i32>, timeout: Duration) -> BTreeSet<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        for &p in pids {
            reap_if_child(p);
        }
        let left: BTreeSet<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid written in a pid file, if the file holds one.
pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One line per pid: "pid command", for error messages.
pub fn describe(pids: &BTreeSet<i32>) -> String {
    pids.iter().map(|&p| format!("{p} {}", cmdline(p))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_and_not_a_free_pid() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(cmdline(me).contains("xtask"));
        assert!(!alive(i32::MAX));
        let roots = BTreeSet::from([std::os::unix::process::parent_id() as i32]);
        assert!(with_descendants(&roots).contains(&me));
    }
}
