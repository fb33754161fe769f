//! The optional CPU limit of the stand-in gateway: a cgroup with a CFS quota (v2 `cpu.max` or
//! v1 `cpu.cfs_quota_us`), like the reproduction's `cpus: '0.15'` on the Kong container.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const NAME: &str = "reloadscope-standin";
const PERIOD_US: u64 = 100_000;

/// The cgroup's name: one per prefix, so stand-ins under other prefixes keep their own.
fn name() -> String {
    let prefix = super::prefix();
    if prefix == std::path::Path::new(super::DEFAULT_PREFIX) {
        return NAME.to_string();
    }
    // FNV-1a of the path: short, stable across runs, and safe as a directory name.
    let hash = prefix
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{NAME}-{:08x}", hash as u32)
}

/// The cgroup directory on this machine (v2 when unified, else the v1 cpu hierarchy).
fn dir() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        Some(root.join(name()))
    } else if root.join("cpu/cpu.cfs_period_us").exists() {
        Some(root.join("cpu").join(name()))
    } else {
        None
    }
}

/// Creates (or updates) the cgroup with a quota of `cpus` CPUs; returns its cgroup.procs file,
/// where the gateway's first process writes its own pid.
pub fn create(cpus: f64) -> Result<PathBuf> {
    // Written so that NaN fails too.
    if cpus.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        bail!("--cpu-limit must be positive, got {cpus}");
    }
    let dir = dir().context("no cgroup CPU controller found under /sys/fs/cgroup")?;
    if dir.parent() == Some(std::path::Path::new("/sys/fs/cgroup")) {
        // cgroup v2: children get cpu.max only when the root delegates the controller.
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // At least 1 ms per period: the kernel's lower bound.
    let quota = ((cpus * PERIOD_US as f64) as u64).max(1000);
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), &value).with_context(|| format!("cannot write {value:?} to {file}"))
    };
    if dir.join("cpu.max").exists() {
        write("cpu.max", format!("{quota} {PERIOD_US}"))?;
    } else if dir.join("cpu.cfs_quota_us").exists() {
        write("cpu.cfs_period_us", PERIOD_US.to_string())?;
        write("cpu.cfs_quota_us", quota.to_string())?;
    } else {
        bail!("the cpu controller is not enabled for {}", dir.display());
    }
    println!("stack: CPU limit {cpus} (quota {quota} us per {PERIOD_US} us) in {}", dir.display());
    Ok(dir.join("cgroup.procs"))
}

/// How long `remove` waits for the cgroup to empty: a killed process that was orphaned stays
/// in it as a zombie until pid 1 reaps it, which can take a while.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Removes the cgroup once it is empty (after `down`); a missing one is fine.
pub fn remove() {
    let Some(dir) = dir().filter(|d| d.exists()) else { return };
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        match std::fs::remove_dir(&dir) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                eprintln!("stack: cannot remove {}: {e}", dir.display());
                return;
            }
        }
    }
}
