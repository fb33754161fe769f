//! loadtest: a goose 0.19 load test of the gateway's plugin routes (/go, /python, /js). Every
//! response must be a 200 whose reflection body shows the plugin's header reached the upstream.
//! Besides goose's usual tables and reports it writes its own per-request JSON-lines log
//! (`--request-log-out`) and ends with one `loadtest-summary {json}` line.
//!
//! Usage: `loadtest [--endpoints go,python,js] [--request-log-out PATH] [--no-header-check]
//! GOOSE-OPTIONS…`, e.g. `loadtest --host http://127.0.0.1:8000 -u 8 -t 20s --no-reset-metrics`.

mod cli;
mod endpoint;
mod reqlog;
mod scenarios;
mod signals;
mod summary;
mod validate;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use goose::config::GooseConfiguration;
use goose::prelude::*;

use crate::endpoint::Endpoint;
use crate::reqlog::RequestLog;
use crate::scenarios::Shared;

/// The original reproduction's client timeout, used unless `--timeout` says otherwise.
const DEFAULT_TIMEOUT_SECS: &str = "20";

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let program = std::env::args().next().unwrap_or_else(|| "loadtest".to_string());
    let config = match GooseConfiguration::try_parse_from(std::iter::once(program).chain(opts.goose_args)) {
        Ok(config) => config,
        Err(e) => {
            if opts.help {
                println!("{}", cli::USAGE);
            }
            // Prints goose's help (exit 0) or the parse error (exit 2).
            e.exit()
        }
    };

    let log = match RequestLog::start(opts.request_log_out.as_deref(), &opts.endpoints) {
        Ok(log) => log,
        Err(e) => {
            let path = opts.request_log_out.unwrap_or_default();
            eprintln!("loadtest: cannot create request log {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = signals::stop_on_sigterm() {
        eprintln!("loadtest: cannot handle SIGTERM: {e}");
    }
    let shared = Shared::new(log.sender(), opts.header_check);

    let outcome = run(config, &opts.endpoints, shared).await;

    // Every user has finished by now, so the log holds every request goose counted.
    let (mut summary, written) = log.finish();
    if let Ok(metrics) = &outcome {
        summary.add_goose(metrics);
    }
    summary.stopped_early = signals::stopped_early();
    println!("{}", summary.line());
    let mut code = ExitCode::SUCCESS;
    if let Err(e) = written {
        eprintln!("loadtest: writing the request log failed: {e}");
        code = ExitCode::FAILURE;
    }
    if let Err(e) = outcome {
        eprintln!("loadtest: {e}");
        code = ExitCode::FAILURE;
    }
    code
}

/// Registers one scenario per endpoint and runs goose, which prints its tables at the end and
/// returns the metrics behind them.
async fn run(
    config: GooseConfiguration,
    endpoints: &[Endpoint],
    shared: Arc<Shared>,
) -> Result<GooseMetrics, GooseError> {
    let mut attack = GooseAttack::initialize_with_config(config)?;
    for &endpoint in endpoints {
        attack = attack.register_scenario(scenarios::scenario(endpoint, Arc::clone(&shared))?);
    }
    attack.set_default(GooseDefault::Timeout, DEFAULT_TIMEOUT_SECS)?.execute().await
}
