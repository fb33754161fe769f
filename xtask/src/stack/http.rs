//! A minimal HTTP/1.0 GET over std's TcpStream, enough for health checks (no client crate).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result};

/// A response; only the status matters to health checks.
pub struct Response {
    /// The status code.
    pub status: u16,
}

/// GET `path` from `addr` (host:port) with one connection and a timeout for each step.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response> {
    let sock = addr.to_socket_addrs()?.next().with_context(|| format!("no address for {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, _body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok(Response { status })
}
