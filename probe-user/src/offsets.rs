//! The probe's runtime configuration: every tracepoint field offset from the running kernel's
//! tracefs `format` files, and every kernel struct offset from its BTF. The syscall records'
//! slots are the exception: the programs read them at fixed offsets, without a helper call, so
//! here they are checked against the formats instead of read from them.

use anyhow::{Result, bail};
use probe_common::{
    KernelOffsets, MISSING, ProbeConfig, SYSCALL_ARGS_OFF, SYSCALL_RET_OFF, epoll_arg, sample::USER_STACK_LEN,
};

use crate::tracefs::Format;

/// Tracepoints whose formats the probe reads its offsets from.
pub struct Formats {
    /// `syscalls:sys_enter_epoll_*` that exist on this kernel (at least one).
    pub epoll_enter: Vec<Format>,
    /// `syscalls:sys_exit_epoll_wait` (every `sys_exit_*` has the same layout).
    pub syscall_exit: Format,
    /// `sched:sched_process_fork`.
    pub fork: Format,
    /// `syscalls:sys_enter_connect`, `sys_enter_bind` and `sys_enter_close`.
    pub socket_enter: Vec<Format>,
    /// `sched:sched_process_exec`.
    pub exec: Format,
    /// `signal:signal_generate`.
    pub signal: Format,
}

/// Builds the configuration, checking that the three epoll entry layouts agree (one program
/// reads them all) and that each field is wide enough for the read the program does.
pub fn probe_config(f: &Formats, bucket_ns: u64, follow_forks: bool) -> Result<ProbeConfig> {
    let Some(first) = f.epoll_enter.first() else {
        bail!("this kernel has none of the epoll_wait/epoll_pwait/epoll_pwait2 syscall tracepoints");
    };
    fixed(&f.syscall_exit.name, "ret", sized(&f.syscall_exit, "ret", 8)?, SYSCALL_RET_OFF)?;
    let first_socket = f.socket_enter.first().map_or("", |s| s.name.as_str());
    fixed(first_socket, "the first argument", syscall_args(&f.socket_enter)?, SYSCALL_ARGS_OFF)?;
    let mut cfg = ProbeConfig {
        bucket_ns,
        off_fork_child: sized(&f.fork, "child_pid", 4)?,
        follow_forks: follow_forks as u32,
        off_exec_filename: sized(&f.exec, "filename", 4)?,
        off_signal: [
            sized(&f.signal, "sig", 4)?,
            sized(&f.signal, "pid", 4)?,
            sized(&f.signal, "code", 4)?,
            sized(&f.signal, "result", 4)?,
        ],
        sample_stack_bytes: USER_STACK_LEN as u32,
        http: 1,
        floor: 0,
        flow_slots: 0,
        _pad: 0,
    };
    for fmt in &f.epoll_enter {
        for (name, slot) in
            [("epfd", epoll_arg::EPFD), ("maxevents", epoll_arg::MAXEVENTS), ("timeout", epoll_arg::TIMEOUT)]
        {
            let field = fmt.field(name)?;
            let off = SYSCALL_ARGS_OFF + 8 * slot;
            if field.offset != off || field.size < 4 {
                bail!(
                    "{}: field {name} at {}+{} is not argument {slot} at {off}, as in {}'s layout",
                    fmt.name,
                    field.offset,
                    field.size,
                    first.name
                );
            }
        }
    }
    cfg.bucket_ns = cfg.bucket_ns.max(1_000_000);
    Ok(cfg)
}

/// The offset of the first syscall argument, checking that arguments are 8-byte slots.
fn syscall_args(formats: &[Format]) -> Result<u32> {
    let Some(first) = formats.first() else { bail!("no syscall entry format to read argument offsets from") };
    let base = first.field("__syscall_nr")?.offset;
    let args: Vec<_> = first.fields.iter().filter(|f| f.offset > base).collect();
    let start = args.first().map(|f| f.offset).unwrap_or(base + 8);
    for fmt in formats {
        for (i, field) in fmt.fields.iter().filter(|f| f.offset > base).enumerate() {
            if field.offset != start + 8 * i as u32 || field.size != 8 {
                bail!(
                    "{}: argument {} is at {}+{}, not in 8-byte slots from {start}",
                    fmt.name,
                    field.name,
                    field.offset,
                    field.size
                );
            }
        }
    }
    Ok(start)
}

/// Where in `struct pt_regs` a syscall's first two arguments stay until it returns, as (member,
/// bytes into it): the read programs take a read's fd and buffer at its exit from there, so no
/// entry program is needed.
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: [(&str, u32); 2] = [("di", 0), ("si", 0)];
/// arm64 overwrites `regs[0]` with the return value and keeps the first argument in `orig_x0`.
#[cfg(target_arch = "aarch64")]
const SYSCALL_REGS: [(&str, u32); 2] = [("orig_x0", 0), ("regs", 8)];
/// Elsewhere unknown: the members are reported missing and HTTP reads degrade.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALL_REGS: [(&str, u32); 2] = [("unknown on this architecture", 0); 2];

/// Kernel struct offsets from BTF through `lookup(struct, member path)`. A member the kernel
/// lacks becomes [`MISSING`] and is named in the returned list, so only that field degrades.
pub fn kernel_offsets(lookup: impl Fn(&str, &str) -> Result<u32>) -> (KernelOffsets, Vec<String>) {
    let mut missing = Vec::new();
    let mut get = |ty: &str, path: &str| match lookup(ty, path) {
        Ok(off) => off,
        Err(_) => {
            missing.push(format!("{ty}.{path}"));
            MISSING
        }
    };
    let sum = |a: u32, b: u32| if a == MISSING || b == MISSING { MISSING } else { a + b };
    let k = KernelOffsets {
        task_files: get("task_struct", "files"),
        task_real_parent: get("task_struct", "real_parent"),
        task_tgid: get("task_struct", "tgid"),
        task_exit_code: get("task_struct", "exit_code"),
        files_fdt: get("files_struct", "fdt"),
        fdtable_max_fds: get("fdtable", "max_fds"),
        fdtable_fd: get("fdtable", "fd"),
        file_private_data: get("file", "private_data"),
        file_inode: get("file", "f_inode"),
        inode_mode: get("inode", "i_mode"),
        inode_ino: get("inode", "i_ino"),
        socket_sk: get("socket", "sk"),
        socket_to_inode: {
            let (inode, socket) = (get("socket_alloc", "vfs_inode"), get("socket_alloc", "socket"));
            if inode == MISSING || socket == MISSING { MISSING } else { inode - socket }
        },
        sock_family: get("sock", "__sk_common.skc_family"),
        sock_socket: get("sock", "sk_socket"),
        sock_peer_pid: get("sock", "sk_peer_pid"),
        sock_cookie: get("sock", "__sk_common.skc_cookie"),
        unix_addr: get("unix_sock", "addr"),
        unix_peer: get("unix_sock", "peer"),
        uaddr_len: get("unix_address", "len"),
        uaddr_name: get("unix_address", "name"),
        pid_nr: {
            let (numbers, nr) = (get("pid", "numbers"), get("upid", "nr"));
            sum(numbers, nr)
        },
        sock_daddr: get("sock", "__sk_common.skc_daddr"),
        sock_rcv_saddr: get("sock", "__sk_common.skc_rcv_saddr"),
        sock_dport: get("sock", "__sk_common.skc_dport"),
        sock_num: get("sock", "__sk_common.skc_num"),
        sock_v6_daddr: get("sock", "__sk_common.skc_v6_daddr"),
        sock_v6_rcv_saddr: get("sock", "__sk_common.skc_v6_rcv_saddr"),
        regs_arg0: sum(get("pt_regs", SYSCALL_REGS[0].0), SYSCALL_REGS[0].1),
        regs_arg1: sum(get("pt_regs", SYSCALL_REGS[1].0), SYSCALL_REGS[1].1),
    };
    (k, missing)
}

/// Fails unless a field the programs read at a fixed offset is where they read it.
fn fixed(tracepoint: &str, what: &str, found: u32, expected: u32) -> Result<()> {
    if found != expected {
        bail!(
            "{tracepoint}: {what} is at offset {found}, where the probe reads it at {expected}: this \
             kernel's syscall tracepoints have a layout reloadscope does not know"
        );
    }
    Ok(())
}

fn sized(fmt: &Format, name: &str, size: u32) -> Result<u32> {
    let field = fmt.field(name)?;
    if field.size != size {
        bail!("{}: field {name} is {} bytes, the probe reads {size}", fmt.name, field.size);
    }
    Ok(field.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracefs::Field;

    fn fmt(name: &str, fields: &[(&str, u32, u32)]) -> Format {
        Format {
            name: name.into(),
            fields: fields.iter().map(|&(n, offset, size)| Field { name: n.into(), offset, size }).collect(),
        }
    }

    fn formats(pwait2_epfd: u32) -> Formats {
        let enter = |n, e| fmt(n, &[("epfd", e, 8), ("maxevents", 32, 8), ("timeout", 40, 8)]);
        let connect = [("__syscall_nr", 8, 4), ("fd", 16, 8), ("uservaddr", 24, 8), ("addrlen", 32, 8)];
        Formats {
            epoll_enter: vec![
                enter("sys_enter_epoll_wait", 16),
                enter("sys_enter_epoll_pwait2", pwait2_epfd),
            ],
            syscall_exit: fmt("sys_exit_epoll_wait", &[("ret", 16, 8)]),
            fork: fmt("sched_process_fork", &[("parent_pid", 12, 4), ("child_pid", 20, 4)]),
            socket_enter: vec![fmt("sys_enter_connect", &connect)],
            exec: fmt("sched_process_exec", &[("filename", 8, 4), ("pid", 12, 4)]),
            signal: fmt(
                "signal_generate",
                &[("sig", 8, 4), ("code", 16, 4), ("pid", 36, 4), ("result", 44, 4)],
            ),
        }
    }

    #[test]
    fn takes_offsets_from_the_formats() {
        let cfg = probe_config(&formats(16), 100_000_000, true).unwrap();
        assert_eq!((cfg.off_fork_child, cfg.follow_forks), (20, 1));
    }

    #[test]
    fn syscall_slots_elsewhere_than_the_programs_read_them_are_refused() {
        let mut f = formats(16);
        f.syscall_exit = fmt("sys_exit_epoll_wait", &[("ret", 24, 8)]);
        let err = probe_config(&f, 1, false).unwrap_err().to_string();
        assert!(
            err.contains("sys_exit_epoll_wait: ret is at offset 24") && err.contains("does not know"),
            "{err}"
        );
    }

    #[test]
    fn disagreeing_layouts_are_refused() {
        let err = probe_config(&formats(24), 1, false).unwrap_err().to_string();
        assert!(err.contains("sys_enter_epoll_pwait2"), "{err}");
    }

    #[test]
    fn no_epoll_tracepoint_is_refused() {
        let mut f = formats(16);
        f.epoll_enter.clear();
        assert!(probe_config(&f, 1, false).is_err());
    }

    #[test]
    fn reads_socket_signal_and_exec_offsets() {
        let cfg = probe_config(&formats(16), 1, false).unwrap();
        assert_eq!(cfg.off_exec_filename, 8);
        assert_eq!(cfg.off_signal, [8, 36, 16, 44]);
    }

    #[test]
    fn syscall_arguments_must_be_slots() {
        let mut f = formats(16);
        f.socket_enter[0].fields[2].offset = 28;
        assert!(probe_config(&f, 1, false).unwrap_err().to_string().contains("uservaddr"));
    }

    #[test]
    fn a_missing_struct_member_degrades_alone() {
        let (k, missing) = kernel_offsets(|ty, path| match (ty, path) {
            ("sock", "sk_peer_pid") => anyhow::bail!("no such member"),
            ("pid", "numbers") => Ok(96),
            ("upid", "nr") => Ok(0),
            ("socket_alloc", "vfs_inode") => Ok(128),
            ("socket_alloc", "socket") => Ok(0),
            _ => Ok(8),
        });
        assert_eq!(missing, vec!["sock.sk_peer_pid".to_string()]);
        assert_eq!((k.sock_peer_pid, k.pid_nr, k.socket_to_inode, k.unix_peer), (MISSING, 96, 128, 8));
    }

    #[test]
    fn this_kernels_btf_gives_every_offset() {
        let btf = crate::btf::Btf::from_file(std::path::Path::new(crate::preflight::KERNEL_BTF)).unwrap();
        let (k, missing) = kernel_offsets(|ty, path| btf.member_offset(ty, path));
        assert!(missing.is_empty(), "missing on this kernel: {missing:?}");
        assert_eq!(k.task_tgid, btf.member_offset("task_struct", "pid").unwrap() + 4);
    }
}
