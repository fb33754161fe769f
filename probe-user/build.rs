//! Builds the eBPF programs (`probe-ebpf`) with the nightly and bpf-linker, and hands the object
//! to `src/probe/object.rs` through `OUT_DIR`.
//!
//! Without bpf-linker or the nightly's rust-src, it writes an empty object instead, so that
//! `cargo build`, clippy and the unit tests work on stable alone; the binary then says at run
//! time what is missing. `RELOADSCOPE_REQUIRE_EBPF=1` (set by `cargo xtask`) makes that an error.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.parent().unwrap().join("probe-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = out_dir.join("probe-ebpf.o");
    for path in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml", "rust-toolchain.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", ebpf_dir.parent().unwrap().join("probe-common/src").display());
    println!("cargo:rerun-if-env-changed=RELOADSCOPE_REQUIRE_EBPF");
    let required = env::var("RELOADSCOPE_REQUIRE_EBPF").is_ok_and(|v| v == "1");

    if let Some(missing) = missing_toolchain() {
        if required {
            panic!("cannot build the eBPF programs: {missing} (run `cargo xtask setup`)");
        }
        println!("cargo:warning=eBPF programs not built ({missing}); reloadscope will refuse to trace");
        // Re-run once the linker appears.
        println!("cargo:rerun-if-changed={}", cargo_bin("bpf-linker").display());
        std::fs::write(&object, b"").unwrap();
        return;
    }

    // <target>/<profile>/build/<pkg>/out -> <target>/ebpf, shared by every profile.
    let target_dir = out_dir.ancestors().nth(4).unwrap().join("ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer cargo's settings are for the host build; the inner build has its own.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_") && key != "CARGO_HOME";
        if inherited || key.starts_with("RUSTC") || key.starts_with("RUSTFLAGS") || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().expect("cannot run rustup to build the eBPF programs");
    assert!(status.success(), "building probe-ebpf failed ({status})");
    let built = target_dir.join("bpfel-unknown-none/release/probe-ebpf");
    std::fs::copy(&built, &object).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}

/// What is missing to build eBPF programs, if anything.
fn missing_toolchain() -> Option<String> {
    let linker_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success())
        || cargo_bin("bpf-linker").exists();
    if !linker_ok {
        return Some("bpf-linker is not installed".into());
    }
    let sysroot = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output();
    match sysroot {
        Ok(o) if o.status.success() => {
            let root = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            let src = root.join("lib/rustlib/src/rust/library/core");
            (!Path::new(&src).exists()).then(|| "the nightly toolchain has no rust-src".into())
        }
        _ => Some("the nightly toolchain is not installed".into()),
    }
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join(name)
}
