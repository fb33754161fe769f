//! Root test of the plugin socket per request: nginx + Lua with routes that call different unix
//! socket servers (as Kong's external plugins do) and one that calls none. The probe must name,
//! for each request a worker read, the socket its handler wrote in the same event-loop turn, and
//! the analysis must learn each route's socket from that alone, the route names saying nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Clients sending at once, and requests each sends on its keep-alive connection.
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 120;
/// The routes, and the socket each one's handler calls (none for the last).
const ROUTES: [(&str, Option<&str>); 3] =
    [("/alpha", Some("one.sock")), ("/beta", Some("two.sock")), ("/plain", None)];

/// A line server on `path`: answers each line with `ok`, one thread per connection.
fn serve(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    if line.is_err() || w.write_all(b"ok\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn location(route: &str, socket: Option<&str>, dir: &Path) -> String {
    let body = match socket {
        Some(s) => format!(
            "local c = assert(ngx.socket.connect(\"unix:{}/{s}\")); assert(c:send(\"call\\n\")); \
             local r = assert(c:receive()); c:setkeepalive(); ngx.say(r)",
            dir.display()
        ),
        None => "ngx.say(\"plain\")".to_string(),
    };
    format!("location = {route} {{ content_by_lua_block {{ {body} }} }}\n")
}

/// Sends `GET route` with an id on `s` in one write and reads the whole response; returns the
/// status.
fn get(s: &mut TcpStream, route: &str, id: &str) -> u16 {
    // One write: a request in pieces waits on Nagle and delayed ACKs (40 ms each).
    s.write_all(format!("GET {route} HTTP/1.1\r\nHost: t\r\nx-request-id: {id}\r\n\r\n").as_bytes()).unwrap();
    read_response(s)
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn each_request_names_the_plugin_socket_its_handler_called_and_routes_are_learned_from_that() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (_, socket) in ROUTES {
        if let Some(s) = socket {
            serve(&d.join(s));
        }
    }
    let port = free_port();
    let locations: String = ROUTES.iter().map(|(r, s)| location(r, *s, d)).collect();
    let conf = nginx_conf(d, 2, true, &format!("  server {{ listen 127.0.0.1:{port};\n{locations}}}\n"));
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let mut master = spawn_nginx(d, port);
    let out = d.join("trace");
    let rec = Recording::start(&[master.id()], "6s", &out, &[]);
    // Every client mixes the three routes on one keep-alive connection; all run at once.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut sent = Vec::new();
                for i in 0..PER_CLIENT {
                    let route = ROUTES[(i + c) % ROUTES.len()].0;
                    let id = format!("c{c}-{i}");
                    assert_eq!(get(&mut s, route, &id), 200, "{route}");
                    sent.push((id, route));
                }
                sent
            })
        })
        .collect();
    let sent: BTreeMap<String, &str> = clients.into_iter().flat_map(|t| t.join().unwrap()).collect();
    rec.finish();
    // SAFETY: signalling our own child; SIGTERM is nginx's fast shutdown.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let _ = master.wait();

    let trace = reloadscope::read_trace(&out).unwrap();
    let events: Vec<&reloadscope::HttpRequestEvent> = events_of!(trace, HttpRequest);
    let run = reloadscope::load(&out).unwrap();
    let analysis = reloadscope::analyze(&run);
    let socket_of = |inode: Option<u64>| {
        inode
            .and_then(|i| analysis.routes.socket_path(i))
            .and_then(|p| Some(Path::new(p).file_name()?.to_str()?.to_owned()))
    };
    // Each request the client sent was read, and its handler's socket is its route's.
    let mut named: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in &events {
        let Some(route) = e.request_id.as_deref().and_then(|id| sent.get(id)) else { continue };
        assert_eq!(e.path, *route);
        let want = ROUTES.iter().find(|r| r.0 == *route).unwrap().1;
        let got = socket_of(e.plugin_inode);
        let entry = named.entry(route).or_default();
        entry.0 += 1;
        if got.as_deref() == want {
            entry.1 += 1;
        } else {
            println!("{route} {:?}: handler's socket {got:?}", e.request_id);
        }
    }
    println!("requests read and rightly named per route: {named:?}");
    for (route, (read, right)) in &named {
        assert_eq!(*read, CLIENTS * PER_CLIENT / ROUTES.len(), "{route}: every request read once");
        assert!(right * 100 >= read * 99, "{route}: {right} of {read} named their handler's socket");
    }
    // The routes learned from the trace are the configured ones, and /plain calls nothing.
    for (route, socket) in ROUTES {
        let learned = analysis.routes.route(route).unwrap_or_else(|| panic!("{route} learned"));
        let used: Vec<String> = learned
            .sockets
            .iter()
            .filter(|s| s.used)
            .filter_map(|s| Some(Path::new(&s.path).file_name()?.to_str()?.to_owned()))
            .collect();
        assert_eq!(used, socket.map(str::to_owned).into_iter().collect::<Vec<_>>(), "{route}: {learned:?}");
    }
}
