//! First-use setup: installs what building and testing need, idempotently, saying what it does.
//!
//! A second run installs nothing and says so in one line.

use std::process::Command;

use anyhow::{Result, bail};

use crate::stack::{PyPdk, plugins};
use crate::util::{output, require_root, run, succeeds};

/// Debian packages: LLVM 22 for bpf-linker, and the stand-in gateway's nginx + Lua.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker 0.13 links against Debian's LLVM 22.
    "llvm-22-dev",
    "libclang-22-dev",
    "clang-22",
    "libzstd-dev",
    "zlib1g-dev",
    "pkg-config",
    // The stand-in gateway (kong/standin): nginx + lua-nginx-module, Kong 2.7.1's MessagePack
    // library, cjson; and venv for the Python plugin server's virtualenv.
    "nginx-light",
    "libnginx-mod-http-lua",
    "lua-messagepack",
    "lua-cjson",
    "python3-venv",
    // Validating docker-compose.yml and kong/kong.yml with real parsers (no engine needed).
    "docker-compose",
    "python3-yaml",
    // Debug info by build-id: elfutils' debuginfod server (the root test serves a debug file
    // with it) and its client, which `reloadscope analyze` uses when DEBUGINFOD_URLS is set;
    // gcc and binutils build, split and strip that test's program.
    "debuginfod",
    "gcc",
    "binutils",
    // `cargo xtask bench --gateway` drives the stand-in with wrk.
    "wrk",
];

/// The bpf-linker release that matches the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// One thing that may need installing.
struct Step {
    /// What it is, for the progress line.
    what: String,
    /// True when already there.
    present: bool,
    /// Installs it.
    install: Box<dyn Fn() -> Result<()>>,
}

fn steps() -> Vec<Step> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    let missing_python: Vec<PyPdk> = PyPdk::ALL.into_iter().filter(|&p| !plugins::python_ready(p)).collect();
    vec![
        Step {
            what: format!("apt packages: {}", missing.join(" ")),
            present: missing.is_empty(),
            install: Box::new(move || apt_install(&missing)),
        },
        Step {
            what: "rust-src for the nightly toolchain (build-std for the BPF target)".into(),
            present: nightly_has_rust_src(),
            install: Box::new(|| {
                run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            }),
        },
        Step {
            what: format!("bpf-linker {BPF_LINKER_VERSION} (built against Debian's LLVM 22, ~1.5 min)"),
            present: bpf_linker_ok(),
            install: Box::new(install_bpf_linker),
        },
        Step {
            what: "node and npm (the JS plugin server)".into(),
            present: plugins::which("node").is_some() && plugins::which("npm").is_some(),
            install: Box::new(|| apt_install(&["nodejs", "npm"])),
        },
        Step {
            what: format!(
                "kong-pdk {} from PyPI, one virtualenv each in plugins/python/ (the Python plugin server)",
                missing_python.iter().map(|p| p.version()).collect::<Vec<_>>().join(" and ")
            ),
            present: missing_python.is_empty(),
            install: Box::new(move || missing_python.iter().try_for_each(|&p| install_python_pdk(p))),
        },
        Step {
            what: "kong-pdk 0.5.0 and 0.6.0 from npm in plugins/js/node_modules (the JS plugin server)"
                .into(),
            present: plugins::js_ready(),
            install: Box::new(|| {
                run(Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                    .arg(plugins::js_dir()))
            }),
        },
    ]
}

/// Installs whatever is missing; prints one line when nothing is.
pub fn ensure() -> Result<()> {
    require_root("first-use setup installs Debian packages and the eBPF toolchain")?;
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "the nightly toolchain is missing: the eBPF crate needs the preinstalled nightly \
             (rustc 1.97, 2026-05-19), which matches bpf-linker's LLVM 22"
        );
    }
    let steps = steps();
    let todo: Vec<&Step> = steps.iter().filter(|s| !s.present).collect();
    if todo.is_empty() {
        println!("setup: nothing to install ({} checks passed)", steps.len());
        return Ok(());
    }
    for step in todo {
        println!("setup: installing {}", step.what);
        (step.install)()?;
    }
    println!("setup: done");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_has_rust_src() -> bool {
    output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn bpf_linker_ok() -> bool {
    output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> Result<()> {
    run(Command::new("cargo")
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--force"])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))
}

/// One virtualenv per release. kong-pdk pins neither gevent nor msgpack, so both come at PyPI's
/// newest for this Python (the reproduction had gevent 21.12.0 on Python 3.9).
fn install_python_pdk(pdk: PyPdk) -> Result<()> {
    let venv = plugins::python_venv(pdk);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kong-pdk=={}", pdk.version())))
}
