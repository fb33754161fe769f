//! Loading and attaching the eBPF programs, and reading their maps: the thin, kernel-facing part.

mod object;
mod task_storage;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{BtfTracePoint, PerfEvent, TracePoint};
use aya::{Ebpf, EbpfLoader};
use probe_common::lua::LuaConfig;
use probe_common::{
    ConnKey, ConnState, EpollBucket, FlowKey, ProbeConfig, Target, UnixFlow, drop_slot, names,
};

use crate::btf::Btf;
use crate::offsets::{Formats, kernel_offsets, probe_config};
use crate::preflight::KERNEL_BTF;
use crate::tracefs::read_format;

/// epoll entry tracepoints and the programs that handle them.
const EPOLL_ENTER: [(&str, &str); 3] = [
    ("sys_enter_epoll_wait", "epoll_wait_enter"),
    ("sys_enter_epoll_pwait", "epoll_pwait_enter"),
    ("sys_enter_epoll_pwait2", "epoll_pwait2_enter"),
];

/// Every other tracepoint program: (program, category, tracepoints). All are required.
const TRACEPOINTS: [(&str, &str, &[&str]); 9] = [
    ("proc_fork", "sched", &["sched_process_fork"]),
    ("proc_exec", "sched", &["sched_process_exec"]),
    ("proc_exit", "sched", &["sched_process_exit"]),
    ("signal_generate", "signal", &["signal_generate"]),
    ("unix_connect_enter", "syscalls", &["sys_enter_connect"]),
    ("unix_bind_enter", "syscalls", &["sys_enter_bind"]),
    ("unix_addr_exit", "syscalls", &["sys_exit_connect", "sys_exit_bind"]),
    ("unix_accept_exit", "syscalls", &["sys_exit_accept", "sys_exit_accept4"]),
    ("unix_close_enter", "syscalls", &["sys_enter_close"]),
];

/// The HTTP programs, attached unless `--no-http`: (program, tracepoints). The reads take their
/// fd and buffer from the task's registers at the exit. `recvfrom` and `sendto` take their
/// buffer where `read` and `write` do.
const HTTP_TRACEPOINTS: [(&str, &[&str]); 6] = [
    ("http_read_exit", &["sys_exit_read", "sys_exit_recvfrom"]),
    ("http_readv_exit", &["sys_exit_readv"]),
    ("http_recvmsg_exit", &["sys_exit_recvmsg"]),
    ("http_write_enter", &["sys_enter_write", "sys_enter_sendto"]),
    ("http_writev_enter", &["sys_enter_writev"]),
    ("http_sendmsg_enter", &["sys_enter_sendmsg"]),
];

/// BTF tracepoints (program, tracepoint): TP_PROTO arguments as typed pointers, no trace record
/// to build.
const BTF_TRACEPOINTS: [(&str, &str); 2] =
    [("unix_send", "sock_send_length"), ("unix_recv", "sock_recv_length")];

/// How to load the probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// epoll bucket length in ns.
    pub bucket_ns: u64,
    /// Follow forks of targets.
    pub follow_forks: bool,
    /// CPU sampling frequency in Hz; 0 disables sampling.
    pub sample_hz: u64,
    /// Trace accepted TCP connections and the HTTP requests on them.
    pub http: bool,
    /// Every program returns at once: the attach points' own cost, for benchmarks.
    pub floor: bool,
}

/// What the running kernel lacks, so the probe degraded: reported in meta.json.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Degraded {
    /// Tracepoints that do not exist here (their events are absent).
    pub tracepoints: Vec<String>,
    /// Kernel struct members not found in BTF (the fields read from them are zero).
    pub struct_fields: Vec<String>,
    /// Every unix flow was kept in a hash map, none in its thread's state: this kernel's pidfds
    /// cannot name a thread (before Linux 6.9), so user space could not read them at the end.
    #[serde(default)]
    pub hash_flows: bool,
}

/// A loaded and attached probe. Dropping it detaches every program.
pub struct Probe {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    samples: RingBuf<MapData>,
    targets: HashMap<MapData, u32, Target>,
    /// Bumped after every change of `targets`, so threads take their verdict again.
    targets_gen: Array<MapData, u32>,
    generation: u32,
    luajit: HashMap<MapData, u32, LuaConfig>,
    /// What this kernel lacks.
    pub degraded: Degraded,
}

/// Reads the tracepoint formats the probe needs from tracefs; optional epoll variants that are
/// missing are listed instead.
pub fn read_formats(tracefs: &Path) -> Result<(Formats, Vec<String>)> {
    let mut epoll_enter = Vec::new();
    let mut missing = Vec::new();
    for (tp, _) in EPOLL_ENTER {
        match read_format(tracefs, "syscalls", tp) {
            Ok(f) => epoll_enter.push(f),
            Err(_) => missing.push(format!("syscalls:{tp}")),
        }
    }
    let socket_enter = ["sys_enter_connect", "sys_enter_bind", "sys_enter_close"]
        .into_iter()
        .map(|tp| read_format(tracefs, "syscalls", tp))
        .collect::<Result<_>>()?;
    let formats = Formats {
        epoll_enter,
        syscall_exit: read_format(tracefs, "syscalls", "sys_exit_epoll_wait")?,
        fork: read_format(tracefs, "sched", "sched_process_fork")?,
        socket_enter,
        exec: read_format(tracefs, "sched", "sched_process_exec")?,
        signal: read_format(tracefs, "signal", "signal_generate")?,
    };
    Ok((formats, missing))
}

impl Probe {
    /// Loads the programs with offsets from this kernel and attaches them.
    pub fn load(tracefs: &Path, opts: &ProbeOptions) -> Result<Self> {
        if object::BYTES.is_empty() {
            bail!(
                "this reloadscope was built without its eBPF programs (bpf-linker or the nightly's \
                 rust-src was missing); run `cargo xtask build` as root"
            );
        }
        let (formats, missing) = read_formats(tracefs)?;
        let mut config: ProbeConfig = probe_config(&formats, opts.bucket_ns, opts.follow_forks)?;
        config.http = opts.http as u32;
        config.floor = opts.floor as u32;
        let hash_flows = !task_storage::thread_pidfds();
        config.flow_slots = u32::from(!hash_flows);
        let btf = Btf::from_file(Path::new(KERNEL_BTF))?;
        let (offsets, missing_fields) = kernel_offsets(|ty, path| btf.member_offset(ty, path));
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .override_global(names::KOFFSETS, &offsets, true)
            // THREADS is task storage, which aya creates but has no type for: we read it ourselves.
            .allow_unsupported_maps()
            .load(object::BYTES)
            .context("loading the eBPF programs failed")?;

        let present: Vec<&str> = EPOLL_ENTER
            .iter()
            .map(|(tp, _)| *tp)
            .filter(|tp| !missing.iter().any(|m| m.ends_with(tp)))
            .collect();
        for (tp, prog) in EPOLL_ENTER.iter().filter(|(tp, _)| present.contains(tp)) {
            attach(&mut ebpf, prog, "syscalls", &[tp])?;
        }
        let exits: Vec<String> = present.iter().map(|tp| tp.replace("sys_enter_", "sys_exit_")).collect();
        attach(&mut ebpf, "epoll_exit", "syscalls", &exits.iter().map(String::as_str).collect::<Vec<_>>())?;
        for (prog, category, tps) in TRACEPOINTS {
            attach(&mut ebpf, prog, category, tps)?;
        }
        let vmlinux = aya::Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
        for (prog, tp) in BTF_TRACEPOINTS {
            attach_btf(&mut ebpf, &vmlinux, prog, tp)?;
        }
        if opts.http {
            for (prog, tps) in HTTP_TRACEPOINTS {
                attach(&mut ebpf, prog, "syscalls", tps)?;
            }
        }
        if opts.sample_hz > 0 {
            attach_sampler(&mut ebpf, opts.sample_hz)?;
        }

        let events = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("map EVENTS")?)?;
        let samples = RingBuf::try_from(ebpf.take_map(names::SAMPLES).context("map SAMPLES")?)?;
        let targets = HashMap::try_from(ebpf.take_map(names::TARGETS).context("map TARGETS")?)?;
        let targets_gen = Array::try_from(ebpf.take_map(names::TARGETS_GEN).context("map TARGETS_GEN")?)?;
        let luajit = HashMap::try_from(ebpf.take_map(names::LUAJIT).context("map LUAJIT")?)?;
        let degraded = Degraded { tracepoints: missing, struct_fields: missing_fields, hash_flows };
        Ok(Self { ebpf, events, samples, targets, targets_gen, generation: 0, luajit, degraded })
    }

    /// Traces `pid` from now on.
    pub fn add_target(&mut self, pid: u32, target: Target) -> Result<()> {
        self.targets
            .insert(pid, target, 0)
            .with_context(|| format!("cannot add pid {pid} to the targets"))?;
        self.targets_changed()
    }

    /// Tells the threads the probe already saw to look their verdict up again.
    fn targets_changed(&mut self) -> Result<()> {
        self.generation = self.generation.wrapping_add(1);
        self.targets_gen.set(0, self.generation, 0).context("cannot bump TARGETS_GEN")
    }

    /// Walks `pid`'s Lua stack at each sample from now on (its forks inherit it).
    pub fn add_luajit(&mut self, pid: u32, config: LuaConfig) -> Result<()> {
        self.luajit
            .insert(pid, config, 0)
            .with_context(|| format!("cannot describe pid {pid}'s LuaJIT to the probe"))
    }

    /// Stops tracing every process at once: each program returns early for non-targets.
    pub fn clear_targets(&mut self) -> Result<()> {
        for pid in self.target_pids() {
            // A target that exited meanwhile is already gone.
            let _ = self.targets.remove(&pid);
        }
        self.targets_changed()
    }

    /// Waits up to `timeout` for records, then hands each one to `f`; returns how many there were.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let mut pfds = [
            libc::pollfd { fd: self.events.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.samples.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds.
        let rc =
            unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err.into());
            }
        }
        Ok(self.drain(&mut f))
    }

    /// Hands every queued record (events, then samples) to `f` without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        for ring in [&mut self.events, &mut self.samples] {
            while let Some(item) = ring.next() {
                f(&item);
                n += 1;
            }
        }
        n
    }

    /// Records the kernel could not send, summed over CPUs, indexed by record kind.
    pub fn drops(&self) -> Result<Vec<u64>> {
        let map = PerCpuArray::<_, u64>::try_from(self.ebpf.map(names::DROPS).context("map DROPS")?)?;
        (0..drop_slot::COUNT).map(|i| Ok(map.get(&i, 0)?.iter().sum())).collect()
    }

    /// What threads `tids` (those alive) still aggregate in their own state: their open epoll
    /// buckets and the flows in their unix slots. Task storage is read thread by thread.
    pub fn open_thread_work(
        &self,
        tids: impl IntoIterator<Item = u32>,
    ) -> Result<(Vec<EpollBucket>, Vec<UnixFlow>)> {
        let Some(Map::Unsupported(map)) = self.ebpf.map(names::THREADS) else {
            bail!("map THREADS is missing or not task storage");
        };
        let fd = map.fd().as_fd();
        let (mut buckets, mut flows) = (Vec::new(), Vec::new());
        for state in tids.into_iter().filter_map(|tid| task_storage::thread_state(fd, tid)) {
            if state.epoll.bucket.calls != 0 {
                buckets.push(state.epoll.bucket);
            }
            flows.extend(state.flows.open().copied());
        }
        Ok((buckets, flows))
    }

    /// The processes traced now.
    pub fn target_pids(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }

    /// Connections whose last response's start still waits in the kernel for a record to carry
    /// it out (see `probe_common::tcp`).
    pub fn waiting_responses(&self) -> Result<Vec<(ConnKey, ConnState)>> {
        let map = self.ebpf.map(names::CONNS).context("map CONNS")?;
        let map = HashMap::<_, ConnKey, ConnState>::try_from(map)?;
        Ok(map.iter().filter_map(Result::ok).filter(|(_, c)| c.response.ts_ns != 0).collect())
    }

    /// The unix flows still open in the `UNIX_FLOWS` hash (a thread's sockets beyond its slots).
    pub fn open_flows(&self) -> Result<Vec<UnixFlow>> {
        let map = self.ebpf.map(names::UNIX_FLOWS).context("map UNIX_FLOWS")?;
        let map = HashMap::<_, FlowKey, UnixFlow>::try_from(map)?;
        Ok(map.iter().filter_map(|kv| kv.ok().map(|(_, f)| f)).filter(|f| f.start_ns != 0).collect())
    }

    /// How often each loaded program has run and for how long (cumulative; counted only while
    /// run-time statistics are on, see [`enable_run_time_stats`]).
    pub fn program_stats(&self) -> Vec<shared::progstats::ProgStat> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(shared::progstats::ProgStat {
                    name: name.to_string(),
                    runs: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// Every stack in the stack map: id -> instruction pointers, leaf first.
    pub fn stacks(&self) -> Result<BTreeMap<u32, Vec<u64>>> {
        let map = StackTraceMap::try_from(self.ebpf.map(names::STACKS).context("map STACKS")?)?;
        let ids: Vec<u32> = map.stack_ids().filter_map(Result::ok).collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| Some((id, map.get(&id, 0).ok()?.frames().iter().map(|f| f.ip).collect())))
            .collect())
    }
}

/// Turns the kernel's per-program run counts and times on (`BPF_ENABLE_STATS`) for as long as
/// the returned descriptor is open; they cost two clock reads per program run.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time) failed")
}

/// Attaches program `prog` to each tracepoint `category:name` in `names`.
fn attach(ebpf: &mut Ebpf, prog: &str, category: &str, names: &[&str]) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} is missing from the eBPF object"))?
        .try_into()?;
    program.load().with_context(|| format!("the kernel refused program {prog}"))?;
    for name in names {
        program
            .attach(category, name)
            .with_context(|| format!("cannot attach {prog} to {category}:{name}"))?;
    }
    Ok(())
}

/// Attaches BTF tracepoint program `prog` to `tp`.
fn attach_btf(ebpf: &mut Ebpf, vmlinux: &aya::Btf, prog: &str, tp: &str) -> Result<()> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} is missing from the eBPF object"))?
        .try_into()?;
    program.load(tp, vmlinux).with_context(|| format!("the kernel refused program {prog}"))?;
    program.attach().with_context(|| format!("cannot attach {prog} to BTF tracepoint {tp}"))?;
    Ok(())
}

/// Samples every online CPU with the software CPU clock (no hardware PMU is assumed).
fn attach_sampler(ebpf: &mut Ebpf, hz: u64) -> Result<()> {
    let program: &mut PerfEvent =
        ebpf.program_mut("cpu_sample").context("program cpu_sample is missing")?.try_into()?;
    program.load().context("the kernel refused program cpu_sample")?;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .with_context(|| format!("cannot sample CPU {cpu} with the software CPU clock"))?;
    }
    Ok(())
}
