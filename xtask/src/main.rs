//! `cargo xtask`: the project's two contract commands (`run`, `test`) and their helpers.
//!
//! Each subcommand installs what it needs on first use (see [`setup`]) and says what it does.

mod bench;
mod matrix;
mod run;
mod setup;
mod stack;
mod summary;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "reloadscope's build, test and run tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent; needs root).
    Setup,
    /// Build the eBPF programs and the reloadscope binary (release).
    Build,
    /// Run every test: unit tests, and the root integration tests on the real kernel.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring the stack up, attach the probe, run the load, reload, analyse, tear down.
    Run(run::RunOptions),
    /// Compare gateway behaviours, PDK releases and CPU limits: one short run per cell and
    /// repeat, summed up in matrix.md and matrix.json.
    Matrix(matrix::MatrixOptions),
    /// Measure the probe's cost: a unix-socket ping-pong (traced vs untraced, one run), or with
    /// --gateway the stand-in under wrk beside bpftrace, perf and strace.
    Bench(bench::BenchOptions),
    /// Bring the system under test up (stand-in gateway or Kong by compose) and wait for health.
    Up(stack::UpOptions),
    /// Reload the gateway and wait until the new plugin-server generation serves.
    Reload,
    /// Stop the gateway, reflection and every plugin-server generation of ours.
    Down,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line: clap's first, without the usage block.
            let text = e.to_string();
            eprintln!(
                "cargo xtask: {}",
                text.lines().next().unwrap_or_default().trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let result: Result<()> = match cli.cmd {
        Cmd::Setup => setup::ensure(),
        Cmd::Build => setup::ensure().and_then(|()| util::build_release()),
        Cmd::Test { args } => setup::ensure().and_then(|()| util::test(&args)),
        Cmd::Run(opts) => run::preflight(&opts).and_then(|()| util::prepare()).and_then(|()| run::run(&opts)),
        Cmd::Matrix(opts) if opts.rewrite.is_some() => matrix::run(&opts),
        Cmd::Matrix(opts) => {
            matrix::preflight(&opts).and_then(|()| util::prepare()).and_then(|()| matrix::run(&opts))
        }
        Cmd::Bench(opts) => {
            setup::ensure().and_then(|()| util::build_release()).and_then(|()| bench::run(&opts))
        }
        Cmd::Up(opts) => stack::up(&opts),
        Cmd::Reload => stack::reload(),
        Cmd::Down => stack::down(),
    };
    if let Err(e) = result {
        eprintln!("cargo xtask: {e:#}");
        std::process::exit(1);
    }
}
