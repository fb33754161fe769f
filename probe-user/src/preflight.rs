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
    crate::tracefs::root()
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
