//! The process tree below a root pid, read from /proc.

use std::collections::BTreeMap;

/// pid, ppid and comm from the text of `/proc/<pid>/stat` (comm may hold spaces and parens).
pub fn parse_stat(text: &str) -> Option<(u32, u32, String)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((pid, ppid, comm))
}

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
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&text).map(|(p, pp, _)| (p, pp))
        })
        .collect()
}

/// The comm of a live process, or None when it does not exist.
pub fn comm(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, _, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comms() {
        let s = "4711 (nginx: worker) S 4700 4700 4700 0 -1 4194624 0 0";
        assert_eq!(parse_stat(s), Some((4711, 4700, "nginx: worker".into())));
        let s = "12 (a) b)) R 1 12 12";
        assert_eq!(parse_stat(s), Some((12, 1, "a) b)".into())));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_the_whole_subtree_only() {
        let table = [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        let mut d = descendants(10, &table);
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(13, &table).is_empty());
    }
}
