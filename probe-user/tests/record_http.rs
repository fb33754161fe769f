//! Root tests of the HTTP probe on Debian's plain nginx (no Lua, no help from the gateway): every
//! request id the client sent is read back from the workers' TCP sockets, once, with the worker
//! that read it; a reload's old worker closing an idle keep-alive connection is seen as such.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reloadscope::Trace;

/// A plain nginx master with two workers on a free local port; stopped on drop.
struct Nginx {
    _dir: tempfile::TempDir,
    master: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = nginx_conf(
            dir.path(),
            2,
            false,
            &format!(
                "  keepalive_timeout 60s;\n  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n"
            ),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let master = spawn_nginx(dir.path(), port);
        Nginx { _dir: dir, master, port }
    }

    fn pid(&self) -> u32 {
        self.master.id()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// The master's worker pids now.
    fn workers(&self) -> BTreeSet<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| shared::procstat::read(p).is_some_and(|s| s.ppid == self.pid() && s.is_alive()))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM is nginx's fast shutdown.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let _ = self.master.wait();
    }
}

/// Sends one request with `header: id` on `s` and reads its whole response; returns the status.
fn request(s: &mut TcpStream, header: &str, id: &str) -> u16 {
    write!(s, "GET /ping HTTP/1.1\r\nHost: t\r\n{header}: {id}\r\n\r\n").unwrap();
    read_response(s)
}

fn record_nginx(nginx: &Nginx, out: &Path, extra: &[&str], load: impl FnOnce()) -> Trace {
    let rec = Recording::start(&[nginx.pid()], "5s", out, extra);
    load();
    rec.finish()
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn every_request_id_is_read_once_by_its_worker_and_a_reload_closes_idle_keep_alives() {
    require_root();
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    let old_workers = nginx.workers();
    let mut sent = Vec::new();
    let mut idle = None;
    let trace = record_nginx(&nginx, &dir.path().join("trace"), &[], || {
        // One keep-alive connection with 20 requests, left open and idle.
        let mut keep = nginx.connect();
        for i in 0..20 {
            let id = format!("keep-{i}");
            assert_eq!(request(&mut keep, "x-request-id", &id), 200);
            sent.push(id);
        }
        // 20 on connections of their own.
        for i in 0..20 {
            let id = format!("single-{i}");
            assert_eq!(request(&mut nginx.connect(), "X-Request-ID", &id), 200);
            sent.push(id);
        }
        idle = Some(keep);
        // The reload: the old workers close their idle keep-alive connections and exit.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(nginx.pid() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !nginx.workers().is_disjoint(&old_workers) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..20 {
            let id = format!("after-{i}");
            assert_eq!(request(&mut nginx.connect(), "x-request-id", &id), 200);
            sent.push(id);
        }
    });
    drop(idle);
    let reqs = events_of!(trace, HttpRequest);
    let mut by_id: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for r in &reqs {
        by_id.entry(r.request_id.as_deref().unwrap_or("")).or_default().push(*r);
    }
    for id in &sent {
        let seen = by_id.get(id.as_str()).map_or(0, Vec::len);
        assert_eq!(
            seen,
            1,
            "request {id} read {seen} times; trace has {:?}",
            reqs.iter()
                .map(|r| (r.request_id.clone(), r.path.clone(), r.fd, r.task.tgid))
                .collect::<Vec<_>>()
        );
        let r = by_id[id.as_str()][0];
        assert_eq!((r.method.as_str(), r.path.as_str(), r.status), ("GET", "/ping", Some(200)), "{r:?}");
        assert!(r.response_ns.is_some_and(|t| t >= r.task.ts_ns), "{r:?}");
    }
    // The keep-alive connection: one worker of the old generation read all 20, and closed it
    // at the reload with nothing unanswered.
    let keep: Vec<_> = sent.iter().filter(|i| i.starts_with("keep")).map(|i| by_id[i.as_str()][0]).collect();
    let (worker, conn) = (keep[0].task.tgid, keep[0].conn);
    assert!(keep.iter().all(|r| (r.task.tgid, r.conn) == (worker, conn)), "one connection, one worker");
    assert!(old_workers.contains(&worker), "worker {worker} of {old_workers:?}");
    let conns = events_of!(trace, TcpConn);
    let close = conns
        .iter()
        .find(|c| c.conn == conn && c.op == reloadscope::ConnOp::Close)
        .expect("the old worker closed the idle keep-alive connection");
    assert_eq!((close.task.tgid, close.requests, close.unanswered), (worker, 20, false));
    let accept = conns.iter().find(|c| c.conn == conn && c.op == reloadscope::ConnOp::Accept).unwrap();
    assert!(
        accept.local.ends_with(&format!(":{}", nginx.port)) && accept.peer.starts_with("127.0.0.1:"),
        "{accept:?}"
    );
    // After the reload only new workers answer.
    for id in sent.iter().filter(|i| i.starts_with("after")) {
        let w = by_id[id.as_str()][0].task.tgid;
        assert!(!old_workers.contains(&w), "{id} read by old worker {w}");
    }
    assert_eq!(trace.meta.drops.values().sum::<u64>(), 0, "{:?}", trace.meta.drops);
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn the_id_header_can_be_renamed_and_no_http_copies_nothing() {
    require_root();
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    let trace =
        record_nginx(&nginx, &dir.path().join("renamed"), &["--request-id-header", "X-Trace"], || {
            for i in 0..5 {
                request(&mut nginx.connect(), "x-trace", &format!("t-{i}"));
            }
        });
    let ids: BTreeSet<String> =
        events_of!(trace, HttpRequest).iter().filter_map(|r| r.request_id.clone()).collect();
    assert_eq!(ids, (0..5).map(|i| format!("t-{i}")).collect());
    assert!(trace.meta.options.http && trace.meta.options.request_id_header == "x-trace");

    let trace = record_nginx(&nginx, &dir.path().join("off"), &["--no-http"], || {
        for i in 0..5 {
            request(&mut nginx.connect(), "x-request-id", &format!("n-{i}"));
        }
    });
    assert!(events_of!(trace, HttpRequest).is_empty() && events_of!(trace, TcpConn).is_empty());
    assert!(!trace.meta.options.http);
}
