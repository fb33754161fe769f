//! `--container NAME|ID`: the nginx master inside a container, found from the host. Docker or
//! podman answer when their engine runs (`inspect` gives the container's init pid); otherwise
//! the cgroup tree is searched for a group named like the container (`docker-<id>.scope`,
//! `libpod-<id>.scope`, a Kubernetes pod's container id, or a plain name).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How deep the cgroup search goes (Kubernetes nests pods about 5 deep).
const MAX_DEPTH: usize = 8;

/// The host pid of the nginx master in container `name`, or why there is none (one line).
pub fn find_master(name: &str) -> Result<u32, String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("--container {name:?}: expected a container name or id"));
    }
    let (candidates, source) = match engine_init_pid(name) {
        Some((pid, engine)) => (same_cgroup(pid), engine),
        None => {
            let groups = find_groups(Path::new(CGROUP_ROOT), name);
            if groups.is_empty() {
                return Err(format!(
                    "no container {name:?}: docker and podman do not know it, and no cgroup under {CGROUP_ROOT} is named like it"
                ));
            }
            (groups.iter().flat_map(|g| procs(g)).collect(), "its cgroup")
        }
    };
    match candidates.iter().copied().find(|&p| is_nginx_master(p)) {
        Some(pid) => Ok(pid),
        None => Err(format!("container {name:?} (found through {source}) has no nginx master process")),
    }
}

/// The container's init pid from docker or podman, and which answered.
fn engine_init_pid(name: &str) -> Option<(u32, &'static str)> {
    ["docker", "podman"].into_iter().find_map(|cli| {
        let out = Command::new(cli).args(["inspect", "--format", "{{.State.Pid}}", name]).output().ok()?;
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        (out.status.success() && pid > 0).then_some((pid, cli))
    })
}

/// Every process in `pid`'s cgroups (any hierarchy), `pid` first.
fn same_cgroup(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in text.lines() {
        // `id:controllers:path`; v2 has an empty controller list.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let mount = match controllers {
            "" => ["unified", ""]
                .iter()
                .map(|m| Path::new(CGROUP_ROOT).join(m))
                .find(|p| p.join("cgroup.procs").exists()),
            c => Some(Path::new(CGROUP_ROOT).join(c.trim_start_matches("name="))),
        };
        if let Some(m) = mount
            && path != "/"
        {
            out.extend(procs(&m.join(path.trim_start_matches('/'))).into_iter().filter(|p| *p != pid));
        }
    }
    out
}

/// Cgroup directories under `root` whose name contains `name`.
fn find_groups(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() || ft.is_symlink() {
                continue;
            }
            let path = e.path();
            if e.file_name().to_string_lossy().contains(name) && path.join("cgroup.procs").exists() {
                out.push(path.clone());
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// The pids in a cgroup.
fn procs(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is an nginx master (its title says so; Kong's and OpenResty's say the same).
fn is_nginx_master(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx: master process"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_groups_by_name_and_bounds_its_depth() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("system.slice/docker-0123abcd.scope");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("cgroup.procs"), "17\n18\n").unwrap();
        let mut too_deep = dir.path().to_path_buf();
        for i in 0..MAX_DEPTH + 1 {
            too_deep = too_deep.join(format!("l{i}"));
        }
        let too_deep = too_deep.join("docker-0123abcd-nested.scope");
        std::fs::create_dir_all(&too_deep).unwrap();
        std::fs::write(too_deep.join("cgroup.procs"), "19\n").unwrap();
        assert_eq!(find_groups(dir.path(), "0123abcd"), vec![deep.clone()]);
        assert_eq!(procs(&deep), vec![17, 18]);
        assert!(find_groups(dir.path(), "nothere").is_empty());
    }

    #[test]
    fn bad_names_are_one_line() {
        for name in ["", "a/b"] {
            let err = find_master(name).unwrap_err();
            assert!(err.contains("expected a container name") && !err.contains('\n'), "{err}");
        }
    }
}
