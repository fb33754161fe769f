//! The process tree below a root pid, read from /proc.

use std::collections::BTreeMap;

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

/// The comm of a live process, or None when it does not exist.
pub fn comm(pid: u32) -> Option<String> {
    shared::procstat::read(pid).map(|s| s.comm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_whole_subtree_only() {
        let table = [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        let mut d = descendants(10, &table);
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(13, &table).is_empty());
    }
}
