//! Checks before loading anything into the kernel, each failing with one clear line.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Where the running kernel publishes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root, kernel BTF and tracefs; returns the tracefs root.
pub fn check() -> Result<PathBuf> {
    if !is_root() {
        bail!("needs root to load eBPF programs into the kernel (CAP_BPF and CAP_PERFMON); run it as root");
    }
    if !Path::new(KERNEL_BTF).exists() {
        bail!("this kernel has no BTF ({KERNEL_BTF} is missing); reloadscope needs CONFIG_DEBUG_INFO_BTF=y");
    }
    let tracefs = crate::tracefs::root()?;
    if let Some(tp) = missing_event(&tracefs, &UNIX_IO_EVENTS) {
        bail!(
            "this kernel ({}) has no {}:{} tracepoint, where reloadscope sees unix sends and receives; \
             it needs Linux 6.5 or later",
            kernel_release(),
            tp.0,
            tp.1
        );
    }
    Ok(tracefs)
}

/// The tracepoints the unix send and receive programs attach to: the newest thing the probe
/// needs (Linux 6.2 lacks them, 6.5 has them).
const UNIX_IO_EVENTS: [(&str, &str); 2] = [("sock", "sock_send_length"), ("sock", "sock_recv_length")];

/// The first of `events` (category, name) that `tracefs` does not list.
fn missing_event<'a>(tracefs: &Path, events: &[(&'a str, &'a str)]) -> Option<(&'a str, &'a str)> {
    events
        .iter()
        .copied()
        .find(|&(category, name)| !crate::tracefs::event_dir(tracefs, category, name).is_dir())
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracepoint_tracefs_does_not_list_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events/sock/sock_send_length")).unwrap();
        assert_eq!(missing_event(dir.path(), &UNIX_IO_EVENTS), Some(("sock", "sock_recv_length")));
        std::fs::create_dir_all(dir.path().join("events/sock/sock_recv_length")).unwrap();
        assert_eq!(missing_event(dir.path(), &UNIX_IO_EVENTS), None);
    }
}
