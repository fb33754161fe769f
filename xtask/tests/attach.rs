//! `cargo xtask run --target attach` on a gateway the tool did not start (a plain Debian nginx
//! with an operator's own route): the run loads that route, reloads with SIGHUP, reports no
//! false finding on a clean reload, and leaves the gateway running with the same master.
//! Needs root.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// A plain nginx (two workers) answering `/ok` with a header, on a free port; stopped on drop.
struct Nginx {
    dir: tempfile::TempDir,
    master: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "worker_processes 2;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   server {{ listen 127.0.0.1:{port}; location = /ok {{ add_header X-Own-Plugin on; return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )
        .unwrap();
        let master = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("Debian's nginx (`cargo xtask setup` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { dir, master, port }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM is nginx's fast shutdown.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let _ = self.master.wait();
    }
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn attach_loads_an_operators_route_and_leaves_the_gateway_running() {
    let mut nginx = Nginx::start();
    let master = nginx.master.id();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run", "--target", "attach", "--pid", &master.to_string()])
        .args(["--host", &format!("http://127.0.0.1:{}", nginx.port)])
        .args([
            "--endpoint",
            "/ok=X-Own-Plugin",
            "--reload-at",
            "2s",
            "--duration",
            "6s",
            "--users",
            "4",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    println!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "xtask run failed: {}", output.status);

    // The gateway is still ours, unchanged: the same master, still serving.
    assert!(nginx.master.try_wait().unwrap().is_none(), "the master exited");
    let pid_file = std::fs::read_to_string(nginx.dir.path().join("nginx.pid")).unwrap();
    assert_eq!(pid_file.trim(), master.to_string());
    assert!(std::net::TcpStream::connect(("127.0.0.1", nginx.port)).is_ok());

    // Its route was loaded and checked by its own header; the reload was the master's HUP.
    let requests: Vec<shared::requests::RequestLine> =
        shared::read_json_lines(&run.join("requests.jsonl")).unwrap();
    assert!(requests.len() > 100, "{} requests", requests.len());
    assert!(requests.iter().all(|r| r.endpoint == "/ok"));
    let failed = requests.iter().filter(|r| r.outcome != shared::requests::Outcome::Ok).count();
    let report = json(&run.join("report.json"));
    assert!(report["timeline"]["hups"].as_array().is_some_and(|h| !h.is_empty()), "the HUP is in the trace");
    // A clean reload: no spin, no stale socket, no failure that the tool blames on the reload.
    assert_eq!(report["spins"].as_array().map(Vec::len), Some(0), "{}", report["spins"]);
    for (key, v) in report["stale"].as_object().expect("stale findings") {
        if let Some(items) = v.as_array() {
            assert!(items.is_empty(), "stale.{key}: {v}");
        }
    }
    assert!(failed * 100 <= requests.len(), "{failed} of {} failed", requests.len());
}
