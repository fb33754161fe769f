//! A stand-in of the test's own: a fresh prefix directory and two free ports, so a test never
//! shares sockets, pid files, ports or a cgroup with another test, a user's stack or an earlier
//! run that was killed. Dropping it runs `xtask down` before its prefix is removed, so a test
//! that fails leaves nothing running.

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
        let gateway = free_port();
        let reflection = std::iter::repeat_with(free_port).find(|&p| p != gateway).unwrap();
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

    /// `xtask down` on this stand-in (idempotent).
    pub fn down(&self) {
        match self.xtask().arg("down").output() {
            Ok(out) if !out.status.success() => {
                eprintln!("cleanup: xtask down failed: {}", String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => eprintln!("cleanup: xtask down: {e}"),
            Ok(_) => {}
        }
    }

    /// The options that put `up` or `run` on this stand-in's ports.
    pub fn addr_args(&self) -> [&str; 4] {
        ["--listen", &self.listen, "--reflection", &self.reflection]
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        // Only when a stack was brought up here: its state file is in the prefix.
        if self.prefix().join("stack.json").exists() || self.prefix().join("logs/nginx.pid").exists() {
            self.down();
        }
    }
}
