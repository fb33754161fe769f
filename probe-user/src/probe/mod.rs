//! Loading and attaching the eBPF programs, and reading their maps: the thin, kernel-facing part.

mod object;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use probe_common::{EpollBucket, EpollThread, ProbeConfig, Target, drop_slot, names};

use crate::offsets::{Formats, probe_config};
use crate::tracefs::read_format;

/// epoll entry tracepoints and the programs that handle them.
const EPOLL_ENTER: [(&str, &str); 3] = [
    ("sys_enter_epoll_wait", "epoll_wait_enter"),
    ("sys_enter_epoll_pwait", "epoll_pwait_enter"),
    ("sys_enter_epoll_pwait2", "epoll_pwait2_enter"),
];

/// A loaded and attached probe. Dropping it detaches every program.
pub struct Probe {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    targets: HashMap<MapData, u32, Target>,
    /// Tracepoints that do not exist on this kernel, so were not attached.
    pub missing: Vec<String>,
}

/// Reads the tracepoint formats the probe needs from tracefs.
pub fn read_formats(tracefs: &Path) -> Result<(Formats, Vec<String>)> {
    let mut epoll_enter = Vec::new();
    let mut missing = Vec::new();
    for (tp, _) in EPOLL_ENTER {
        match read_format(tracefs, "syscalls", tp) {
            Ok(f) => epoll_enter.push(f),
            Err(_) => missing.push(format!("syscalls:{tp}")),
        }
    }
    let syscall_exit = read_format(tracefs, "syscalls", "sys_exit_epoll_wait")?;
    let fork = read_format(tracefs, "sched", "sched_process_fork")?;
    Ok((
        Formats {
            epoll_enter,
            syscall_exit,
            fork,
        },
        missing,
    ))
}

impl Probe {
    /// Loads the programs with offsets from this kernel and attaches them.
    pub fn load(tracefs: &Path, bucket_ns: u64, follow_forks: bool) -> Result<Self> {
        if object::BYTES.is_empty() {
            bail!(
                "this reloadscope was built without its eBPF programs (bpf-linker or the nightly's \
                 rust-src was missing); run `cargo xtask build` as root"
            );
        }
        let (formats, missing) = read_formats(tracefs)?;
        let config: ProbeConfig = probe_config(&formats, bucket_ns, follow_forks)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .load(object::BYTES)
            .context("loading the eBPF programs failed")?;

        for (tp, prog) in EPOLL_ENTER {
            if !missing.iter().any(|m| m.ends_with(tp)) {
                attach(&mut ebpf, prog, "syscalls", &[tp])?;
            }
        }
        let exits: Vec<String> = EPOLL_ENTER
            .iter()
            .filter(|(tp, _)| !missing.iter().any(|m| m.ends_with(tp)))
            .map(|(tp, _)| tp.replace("sys_enter_", "sys_exit_"))
            .collect();
        let exits: Vec<&str> = exits.iter().map(String::as_str).collect();
        attach(&mut ebpf, "epoll_exit", "syscalls", &exits)?;
        attach(&mut ebpf, "proc_fork", "sched", &["sched_process_fork"])?;
        attach(&mut ebpf, "proc_exit", "sched", &["sched_process_exit"])?;

        let events = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("map EVENTS")?)?;
        let targets = HashMap::try_from(ebpf.take_map(names::TARGETS).context("map TARGETS")?)?;
        Ok(Self {
            ebpf,
            events,
            targets,
            missing,
        })
    }

    /// Traces `pid` from now on.
    pub fn add_target(&mut self, pid: u32, target: Target) -> Result<()> {
        self.targets
            .insert(pid, target, 0)
            .with_context(|| format!("cannot add pid {pid} to the targets"))
    }

    /// Waits up to `timeout` for records, then hands each one to `f`; returns how many there were.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err.into());
            }
        }
        Ok(self.drain(&mut f))
    }

    /// Hands every queued record to `f` without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Records the kernel could not send, summed over CPUs, indexed by record kind.
    pub fn drops(&self) -> Result<Vec<u64>> {
        let map =
            PerCpuArray::<_, u64>::try_from(self.ebpf.map(names::DROPS).context("map DROPS")?)?;
        (0..drop_slot::COUNT)
            .map(|i| Ok(map.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// The epoll buckets still open in the kernel (threads that are alive and not yet due).
    pub fn open_buckets(&self) -> Result<Vec<EpollBucket>> {
        let map = self
            .ebpf
            .map(names::EPOLL_THREADS)
            .context("map EPOLL_THREADS")?;
        let map = HashMap::<_, u32, EpollThread>::try_from(map)?;
        Ok(map
            .iter()
            .filter_map(|kv| kv.ok().map(|(_, t)| t.bucket))
            .filter(|b| b.calls != 0)
            .collect())
    }
}

/// Attaches program `prog` to each tracepoint `category:name` in `names`.
fn attach(ebpf: &mut Ebpf, prog: &str, category: &str, names: &[&str]) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} is missing from the eBPF object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel refused program {prog}"))?;
    for name in names {
        program
            .attach(category, name)
            .with_context(|| format!("cannot attach {prog} to {category}:{name}"))?;
    }
    Ok(())
}

impl Probe {
    /// Stops tracing every process at once: each program returns early for non-targets.
    pub fn clear_targets(&mut self) -> Result<()> {
        let pids: Vec<u32> = self.targets.keys().filter_map(Result::ok).collect();
        for pid in pids {
            // A target that exited meanwhile is already gone.
            let _ = self.targets.remove(&pid);
        }
        Ok(())
    }
}
