//! reflection: the upstream behind the gateway. It answers every request with the method, path
//! and request headers it received, as JSON, so a client can see which plugin headers arrived.
//!
//! `GET /health` answers `{"status":"ok"}` (and is not echoed) so the stack can wait for it.
//! Usage: `reflection [--listen 127.0.0.1:9000]`.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// Where reflection listens unless `--listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

fn main() -> Result<()> {
    let listen = parse_listen(std::env::args().skip(1))?;
    // Two threads match the machines this runs on; the gateway, not the echo, is under test.
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_io().build()?.block_on(serve(listen))
}

fn parse_listen(mut args: impl Iterator<Item = String>) -> Result<SocketAddr> {
    let mut listen = DEFAULT_LISTEN.to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "-h" | "--help" => {
                println!("usage: reflection [--listen ADDR]   (default {DEFAULT_LISTEN})");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (usage: reflection [--listen ADDR])"),
        }
    }
    listen.parse().with_context(|| format!("bad --listen address {listen:?}"))
}

async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("reflection: listening on http://{addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Running out of fds under load must not end the service.
            Err(e) => {
                eprintln!("reflection: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Client resets (e.g. during a gateway reload) are normal; nothing to report.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer)).await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/health" { json!({"status": "ok"}) } else { echo(&req) };
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .expect("static response parts are valid"))
}

/// The request as JSON: repeated headers are joined with ", " as HTTP allows.
fn echo(req: &Request<Incoming>) -> Value {
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_defaults_and_parses() {
        assert_eq!(parse_listen(std::iter::empty()).unwrap(), DEFAULT_LISTEN.parse().unwrap());
        let args = ["--listen", "127.0.0.1:9100"].map(String::from);
        assert_eq!(parse_listen(args.into_iter()).unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert!(parse_listen(["--bogus".to_string()].into_iter()).is_err());
    }
}
