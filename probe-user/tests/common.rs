//! Shared by the root integration tests: fixture processes and running `reloadscope`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The reloadscope binary cargo built for these tests.
pub fn reloadscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reloadscope"))
}

/// A fixture binary from the `fixtures` crate (built by `cargo xtask test` before the tests).
pub fn fixture(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: run `cargo xtask test` (it builds the fixtures)",
        path.display()
    );
    path
}

/// Panics unless running as root: these tests must run, never skip, in CI.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "root integration test: run as root via `cargo xtask test`");
}

/// A running process whose stdout lines arrive on a channel; killed on drop.
pub struct Running {
    /// The child process.
    pub child: Child,
    /// Its stdout, line by line.
    pub lines: mpsc::Receiver<String>,
    /// Lines already read.
    pub seen: Vec<String>,
    /// Lines read but not yet matched by [`Running::wait_for`].
    pending: Vec<String>,
}

impl Running {
    /// Starts `cmd` with piped stdout.
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn fixture");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, seen: Vec::new(), pending: Vec::new() }
    }

    /// Waits for the next line starting with `prefix`; lines from other processes that arrive
    /// first stay pending for later calls (children print in any order).
    pub fn wait_for(&mut self, prefix: &str) -> String {
        if let Some(i) = self.pending.iter().position(|l| l.starts_with(prefix)) {
            return self.pending.remove(i);
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no '{prefix}' line"));
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
            self.pending.push(line);
        }
    }

    /// Waits for a line starting with `prefix` printed after this call: lines already printed,
    /// read or not, are set aside first.
    pub fn wait_for_fresh(&mut self, prefix: &str) -> String {
        self.seen.append(&mut self.pending);
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.wait_for(prefix)
    }

    /// Reads every line until the process closes stdout.
    pub fn finish(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(15)) {
            self.seen.push(line);
        }
        let _ = self.child.wait();
        self.seen.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `reloadscope record` on `pid` and returns its output.
pub fn record(pid: u32, duration: &str, out: &Path) -> Output {
    let output = reloadscope()
        .args(["record", "--pid", &pid.to_string(), "--duration", duration, "--out"])
        .arg(out)
        .output()
        .expect("run reloadscope");
    assert!(
        output.status.success(),
        "reloadscope record failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Parses `ready <pid> <tid>`.
pub fn ready_ids(line: &str) -> (u32, u32) {
    let mut it = line.split_whitespace().skip(1).map(|s| s.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Fixture `pid`'s own call count at monotonic time `t`, interpolated from its `progress` lines.
pub fn calls_at(lines: &[String], pid: u32, t: u64) -> f64 {
    let prefix = format!("progress {pid} ");
    let points: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| {
            let mut it = l.split_whitespace().map(|s| s.parse::<u64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    let after = points
        .iter()
        .position(|&(ts, _)| ts >= t)
        .expect("fixture stopped reporting before the window ended");
    assert!(after > 0, "fixture started reporting after the window began");
    let ((t0, c0), (t1, c1)) = (points[after - 1], points[after]);
    c0 as f64 + (c1 - c0) as f64 * (t - t0) as f64 / (t1 - t0).max(1) as f64
}

/// `reloadscope record` running in the background.
pub struct Recording {
    child: Child,
    out: PathBuf,
}

impl Recording {
    /// Starts recording `pids` and returns once the probe is attached.
    pub fn start(pids: &[u32], duration: &str, out: &Path, extra: &[&str]) -> Self {
        let mut cmd = reloadscope();
        cmd.args(["record", "--duration", duration, "--out"]).arg(out).args(extra);
        for pid in pids {
            cmd.args(["--pid", &pid.to_string()]);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run reloadscope");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("reloadscope exited before attaching: {}", child.wait().unwrap());
            }
            if line.contains("reloadscope: tracing") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Recording { child, out: out.to_path_buf() }
    }

    /// Waits for the recording to end and reads the trace back.
    pub fn finish(mut self) -> reloadscope::Trace {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "reloadscope record failed: {status}");
        reloadscope::read_trace(&self.out).unwrap()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `spawner` fixture driven through stdin.
pub struct Spawner {
    /// Its running process and stdout.
    pub run: Running,
    stdin: std::process::ChildStdin,
}

impl Spawner {
    /// Starts the spawner.
    pub fn start() -> Self {
        let mut cmd = Command::new(fixture("spawner"));
        cmd.stdin(Stdio::piped());
        let mut run = Running::start(&mut cmd);
        let stdin = run.child.stdin.take().unwrap();
        run.wait_for("ready");
        Spawner { run, stdin }
    }

    /// The spawner's pid: the root of everything it starts.
    pub fn pid(&self) -> u32 {
        self.run.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Spawns a fixture and waits for a line starting with `ready_prefix`; returns its pid.
    pub fn spawn(&mut self, args: &str, ready_prefix: &str) -> (u32, String) {
        self.send(&format!("spawn {args}"));
        let pid: u32 = self.run.wait_for("spawned").split_whitespace().nth(1).unwrap().parse().unwrap();
        let line = if ready_prefix.is_empty() { String::new() } else { self.run.wait_for(ready_prefix) };
        (pid, line)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Let it kill and reap what it started before `Running` kills it: no orphan survives.
        use std::io::Write;
        let _ = writeln!(self.stdin, "exit").and_then(|()| self.stdin.flush());
        let _ = self.run.child.wait();
    }
}

/// Starts Debian's nginx on `dir/nginx.conf` in the foreground and waits until it accepts on
/// `port`.
pub fn spawn_nginx(dir: &Path, port: u16) -> Child {
    let master = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("Debian's nginx (`cargo xtask setup` installs it, with its Lua module)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    master
}

/// An nginx.conf for Debian's nginx with everything under `dir`: `workers` workers, its Lua module
/// when `lua` (workers as root, so they reach sockets in the test's directory), and `http`
/// inside the http block (the servers).
pub fn nginx_conf(dir: &Path, workers: u32, lua: bool, http: &str) -> String {
    let d = dir.display();
    let modules = if lua {
        "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
         load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\nuser root root;\n"
    } else {
        ""
    };
    format!(
        "{modules}worker_processes {workers};\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}}}\n"
    )
}

/// Reads one whole HTTP/1.1 response from `s` (a length or chunked body); returns its status.
pub fn read_response(s: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut length = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(v.trim().parse().unwrap());
        }
    }
    match length {
        Some(n) => r.read_exact(&mut vec![0; n]).unwrap(),
        // Chunked (Lua's ngx.say sets no length): up to the last, empty chunk.
        None => {
            let mut body = String::new();
            while r.read_line(&mut body).unwrap() > 0 && !body.ends_with("\r\n0\r\n\r\n") {}
        }
    }
    status.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The events of one type from a trace.
#[macro_export]
macro_rules! events_of {
    ($trace:expr, $variant:ident) => {
        $trace
            .events
            .iter()
            .filter_map(|e| match e {
                reloadscope::Event::$variant(x) => Some(x),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

/// The SVG next to a `.folded` file draws those stacks: its total is their sum of counts, and a
/// frame of the heaviest stack's leaf function is in it.
pub fn assert_svg_draws(folded_path: &std::path::Path) {
    let folded = std::fs::read_to_string(folded_path).unwrap();
    let stacks: Vec<(&str, u64)> = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(s, c)| (s, c.parse::<u64>().unwrap())))
        .collect();
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let svg_path = folded_path.with_extension("svg");
    let svg = std::fs::read_to_string(&svg_path).unwrap_or_else(|e| panic!("{}: {e}", svg_path.display()));
    assert!(
        svg.contains(&format!("total_samples=\"{total}\"")),
        "{} does not draw {total} samples",
        svg_path.display()
    );
    let (heaviest, _) = stacks.iter().max_by_key(|s| s.1).expect("stacks");
    let leaf = heaviest.rsplit(';').next().unwrap();
    // Titles escape XML's specials.
    let leaf = leaf.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(svg.contains(&format!("<title>{leaf} (")), "{} has no frame {leaf}", svg_path.display());
}
