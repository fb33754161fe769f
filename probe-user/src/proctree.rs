//! The process tree below a root pid, and each process's namespaces, read from /proc.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use crate::model::Namespaces;

/// All descendants of `root` in a (pid, ppid) table, parents before children.
pub fn descendants(root: u32, table: &[(u32, u32)]) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(pid, ppid) in table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if c != root && !out.contains(&c) {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// (pid, ppid) of every process now in /proc.
pub fn scan() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| shared::procstat::read(pid).map(|s| (s.pid, s.ppid)))
        .collect()
}

/// The thread ids of a live process; empty when it is gone.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// The comm of a live process, or None when it does not exist.
pub fn comm(pid: u32) -> Option<String> {
    shared::procstat::read(pid).map(|s| s.comm)
}

/// `pid`'s pid and mount namespaces and its pid in each nested pid namespace; `None` when it
/// is gone.
pub fn namespaces(pid: u32) -> Option<Namespaces> {
    let ns = |kind: &str| std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok().map(|m| m.ino());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Namespaces { pid_ns: ns("pid")?, mnt_ns: ns("mnt")?, nspid: parse_nspid(&status) })
}

/// The `NSpid:` line of a /proc status file: the pid in each pid namespace, outermost first.
fn parse_nspid(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nspid_lists_every_level() {
        let status = "Name:\tnginx\nTgid:\t16565\nNSpid:\t16565\t7\nPPid:\t1\n";
        assert_eq!(super::parse_nspid(status), vec![16565, 7]);
        assert!(super::parse_nspid("Name:\tx\n").is_empty());
        let me = super::namespaces(std::process::id()).unwrap();
        assert_eq!(me.nspid.first(), Some(&std::process::id()));
        assert!(me.pid_ns != 0 && me.mnt_ns != 0);
    }

    use super::*;

    #[test]
    fn finds_the_whole_subtree_only() {
        let table = [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        let mut d = descendants(10, &table);
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(13, &table).is_empty());
    }

    #[test]
    fn a_process_lists_its_threads_and_a_gone_one_none() {
        let me = std::process::id();
        let before = threads(me);
        assert!(before.contains(&me), "the leader is one of its threads");
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            std::thread::park();
        });
        let tid = rx.recv().unwrap();
        assert!(threads(me).contains(&tid), "a new thread is listed");
        t.thread().unpark();
        t.join().unwrap();
        assert!(threads(u32::MAX).is_empty());
    }

    fn current_tid() -> u32 {
        // SAFETY: gettid takes nothing and cannot fail.
        unsafe { libc::gettid() as u32 }
    }
}
