//! Small helpers shared by the tasks: running commands loudly, root checks, workspace paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Fails with one line saying why root is needed, unless we are root.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root ({why}); run it again as root, e.g. with sudo -E");
    }
    Ok(())
}

/// Runs a command in the workspace root, echoing it first; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", describe(cmd));
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// True when the command runs and exits 0; its output is discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The command's stdout when it exits 0.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` with the environment every build of ours gets: a missing eBPF toolchain is an error.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("RELOADSCOPE_REQUIRE_EBPF", "1");
    cmd
}

/// Set by `cargo xtask matrix` for the runs it starts: it already set up and built, once.
pub const PREBUILT_ENV: &str = "RELOADSCOPE_XTASK_PREBUILT";

/// First-use setup and the release build, unless the caller already did both
/// ([`PREBUILT_ENV`]).
pub fn prepare() -> Result<()> {
    if std::env::var_os(PREBUILT_ENV).is_some() {
        return Ok(());
    }
    crate::setup::ensure()?;
    build_release()
}

/// Builds the reloadscope binary (with its eBPF object) and the helpers, in release mode.
pub fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))
}

/// Builds the test fixtures, then runs every test including the root ones, one at a time.
pub fn test(extra: &[String]) -> Result<()> {
    require_root("the integration tests load eBPF programs into the running kernel")?;
    run(cargo().args(["build", "--package", "fixtures", "--bins"]))?;
    // The end-to-end run test drives the release binaries, as `cargo xtask run` does.
    build_release()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--", "--include-ignored", "--test-threads=1"]);
    cmd.args(extra);
    run(&mut cmd)
}
