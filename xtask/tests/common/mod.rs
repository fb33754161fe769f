//! A stand-in of the test's own: a fresh prefix directory and two free ports, so a test never
//! shares sockets, pid files, ports or a cgroup with another test, a user's stack or an earlier
//! run that was killed.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// The prefix and addresses one test's stand-in uses; every `xtask` command it runs gets them.
pub struct Stand {
    dir: tempfile::TempDir,
    pub listen: String,
    pub reflection: String,
}

/// A port nothing listens on now (the kernel's choice for port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Stand {
    pub fn new() -> Self {
        let (gateway, reflection) = (free_port(), free_port());
        assert_ne!(gateway, reflection);
        Stand {
            dir: tempfile::tempdir().unwrap(),
            listen: format!("127.0.0.1:{gateway}"),
            reflection: format!("127.0.0.1:{reflection}"),
        }
    }

    /// The stand-in's prefix (sockets, pid files, logs, ground truth).
    pub fn prefix(&self) -> PathBuf {
        self.dir.path().join("standin")
    }

    /// `xtask` with this stand-in's prefix in its environment.
    pub fn xtask(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.env("RELOADSCOPE_STANDIN_PREFIX", self.prefix());
        cmd
    }

    /// The options that put `up` or `run` on this stand-in's ports.
    pub fn addr_args(&self) -> [&str; 4] {
        ["--listen", &self.listen, "--reflection", &self.reflection]
    }
}
