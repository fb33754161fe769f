//! The probe's runtime configuration, with every tracepoint field offset taken from the running
//! kernel's tracefs `format` files.

use anyhow::{Result, bail};
use probe_common::ProbeConfig;

use crate::tracefs::Format;

/// Tracepoints whose formats the probe reads its offsets from.
pub struct Formats {
    /// `syscalls:sys_enter_epoll_*` that exist on this kernel (at least one).
    pub epoll_enter: Vec<Format>,
    /// `syscalls:sys_exit_epoll_wait` (every `sys_exit_*` has the same layout).
    pub syscall_exit: Format,
    /// `sched:sched_process_fork`.
    pub fork: Format,
}

/// Builds the configuration, checking that the three epoll entry layouts agree (one program
/// reads them all) and that each field is wide enough for the read the program does.
pub fn probe_config(f: &Formats, bucket_ns: u64, follow_forks: bool) -> Result<ProbeConfig> {
    let Some(first) = f.epoll_enter.first() else {
        bail!(
            "this kernel has none of the epoll_wait/epoll_pwait/epoll_pwait2 syscall tracepoints"
        );
    };
    let mut cfg = ProbeConfig {
        bucket_ns,
        off_epfd: first.field("epfd")?.offset,
        off_maxevents: first.field("maxevents")?.offset,
        off_timeout: first.field("timeout")?.offset,
        off_ret: sized(&f.syscall_exit, "ret", 8)?,
        off_fork_child: sized(&f.fork, "child_pid", 4)?,
        follow_forks: follow_forks as u32,
    };
    for fmt in &f.epoll_enter {
        for (name, off) in [
            ("epfd", cfg.off_epfd),
            ("maxevents", cfg.off_maxevents),
            ("timeout", cfg.off_timeout),
        ] {
            let field = fmt.field(name)?;
            if field.offset != off || field.size < 4 {
                bail!(
                    "{}: field {name} at {}+{} differs from {}'s layout",
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

fn sized(fmt: &Format, name: &str, size: u32) -> Result<u32> {
    let field = fmt.field(name)?;
    if field.size != size {
        bail!(
            "{}: field {name} is {} bytes, the probe reads {size}",
            fmt.name,
            field.size
        );
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
            fields: fields
                .iter()
                .map(|&(n, offset, size)| Field {
                    name: n.into(),
                    offset,
                    size,
                })
                .collect(),
        }
    }

    fn formats(pwait2_epfd: u32) -> Formats {
        let enter = |n, e| {
            fmt(
                n,
                &[("epfd", e, 8), ("maxevents", 32, 8), ("timeout", 40, 8)],
            )
        };
        Formats {
            epoll_enter: vec![
                enter("sys_enter_epoll_wait", 16),
                enter("sys_enter_epoll_pwait2", pwait2_epfd),
            ],
            syscall_exit: fmt("sys_exit_epoll_wait", &[("ret", 16, 8)]),
            fork: fmt(
                "sched_process_fork",
                &[("parent_pid", 12, 4), ("child_pid", 20, 4)],
            ),
        }
    }

    #[test]
    fn takes_offsets_from_the_formats() {
        let cfg = probe_config(&formats(16), 100_000_000, true).unwrap();
        assert_eq!(
            (cfg.off_epfd, cfg.off_maxevents, cfg.off_timeout),
            (16, 32, 40)
        );
        assert_eq!(
            (cfg.off_ret, cfg.off_fork_child, cfg.follow_forks),
            (16, 20, 1)
        );
    }

    #[test]
    fn disagreeing_layouts_are_refused() {
        let err = probe_config(&formats(24), 1, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sys_enter_epoll_pwait2"), "{err}");
    }

    #[test]
    fn no_epoll_tracepoint_is_refused() {
        let mut f = formats(16);
        f.epoll_enter.clear();
        assert!(probe_config(&f, 1, false).is_err());
    }
}
