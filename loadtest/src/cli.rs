//! Command line: pulls our own flags out of argv and leaves the rest for goose's parser, so every
//! goose option (`--host`, `-u`, `-t`, `--report-file`, …) keeps working unchanged.

use std::path::PathBuf;

use crate::endpoint::Endpoint;

/// Our flags, printed before goose's own help.
pub const USAGE: &str = "\
loadtest: goose load on /go, /python and /js that checks each response for the plugin's header.

loadtest's own options (all other options are goose's, listed below):
      --endpoints LIST         Plugin routes to load, comma-separated [default: go,python,js]
      --endpoint PATH[=HEADER] Your own route instead (repeatable): the path, and the response
                               header that shows its plugin ran (none: the status alone)
      --request-log-out PATH   Write one JSON line per request to PATH
      --no-header-check        Check only the status, not the plugin header (raw throughput)
      --no-task-metrics        Old goose name of --no-transaction-metrics, still accepted
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The endpoints to load, one scenario each.
    pub endpoints: Vec<Endpoint>,
    /// Where our per-request JSON-lines log goes, if anywhere.
    pub request_log_out: Option<PathBuf>,
    /// Whether a response must show the plugin's header reaching the upstream.
    pub header_check: bool,
    /// `-h`/`--help` was given.
    pub help: bool,
    /// Everything else, for goose (without the program name).
    pub goose_args: Vec<String>,
}

/// Splits argv (without the program name) into our options and goose's.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        endpoints: Endpoint::ALL.to_vec(),
        request_log_out: None,
        header_check: true,
        help: false,
        goose_args: Vec::new(),
    };
    let mut own = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--endpoints" => opts.endpoints = Endpoint::parse_list(&value("--endpoints")?)?,
            "--endpoint" => own.push(Endpoint::parse_spec(&value("--endpoint")?)?),
            "--request-log-out" => opts.request_log_out = Some(value("--request-log-out")?.into()),
            "--no-header-check" => opts.header_check = false,
            // The original reproduction ran goose 0.15, where transactions were called tasks.
            "--no-task-metrics" => opts.goose_args.push("--no-transaction-metrics".to_string()),
            "-h" | "--help" => {
                opts.help = true;
                opts.goose_args.push(arg);
            }
            _ => opts.goose_args.push(arg),
        }
    }
    if !own.is_empty() {
        opts.endpoints = own;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn original_command_passes_through() {
        let opts = parse(args(
            "--host http://127.0.0.1:8000 -u 8 -t 20s --no-reset-metrics --no-task-metrics --report-file r.html",
        ))
        .unwrap();
        assert_eq!(opts.endpoints, Endpoint::ALL.to_vec());
        assert!(opts.header_check && !opts.help && opts.request_log_out.is_none());
        assert_eq!(
            opts.goose_args,
            args(
                "--host http://127.0.0.1:8000 -u 8 -t 20s --no-reset-metrics --no-transaction-metrics \
                 --report-file r.html"
            )
        );
    }

    #[test]
    fn own_flags_are_removed() {
        let opts =
            parse(args("-u 2 --endpoints python,js --request-log-out /tmp/l.jsonl -t 2s --no-header-check"))
                .unwrap();
        assert_eq!(opts.endpoints, vec![Endpoint::PYTHON, Endpoint::JS]);
        assert_eq!(opts.request_log_out, Some(PathBuf::from("/tmp/l.jsonl")));
        assert!(!opts.header_check);
        assert_eq!(opts.goose_args, args("-u 2 -t 2s"));

        let opts = parse(args("--endpoints=js --request-log-out=x.jsonl")).unwrap();
        assert_eq!(opts.endpoints, vec![Endpoint::JS]);
        assert_eq!(opts.request_log_out, Some(PathBuf::from("x.jsonl")));
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(args("--endpoints")).is_err());
        assert!(parse(args("--endpoints lua")).is_err());
        let own = parse(args("--endpoint /orders=X-Auth --endpoint=/ok -u 2")).unwrap();
        assert_eq!(own.endpoints.iter().map(|e| e.path()).collect::<Vec<_>>(), ["/orders", "/ok"]);
        assert_eq!(own.goose_args, ["-u", "2"]);
        assert!(parse(args("--endpoint ok")).unwrap_err().contains("must start with"));
        assert!(parse(args("--request-log-out")).is_err());
        assert!(parse(args("--help")).unwrap().help);
    }
}
