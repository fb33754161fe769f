//! Root integration test of `reloadscope flamegraph`: a CPU burner spinning in a → b → c, unwound from
//! the copied stacks with `.eh_frame` (framehop; the frame-pointer stack id is not used).

mod common;

use reloadscope::flame::stripped::LUAJIT_VM;

use common::*;

/// The function name of a folded frame `func [module]`, without the module and any crate path.
fn short(frame: &str) -> &str {
    let func = frame.split(" [").next().unwrap_or(frame);
    func.rsplit("::").next().unwrap_or(func)
}

/// The per-process folded file that `reloadscope flamegraph` wrote for `pid` under `trace`.
fn folded_of(trace: &std::path::Path, pid: u32) -> std::path::PathBuf {
    std::fs::read_dir(trace.join("flamegraphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            // Not a spinning worker's Lua-only graph (`…-lua.folded`), which has no native frames.
            name.contains(&format!("pid{pid}-"))
                && name.ends_with(".folded")
                && !name.ends_with("-lua.folded")
        })
        .unwrap_or_else(|| panic!("no folded file for pid {pid}"))
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn burn_heaviest_stack_is_a_b_c() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace");
    let mut burn = Running::start(std::process::Command::new(fixture("burn")).arg("4"));
    let (pid, _) = ready_ids(&burn.wait_for("ready"));
    let rec = Recording::start(&[pid], "2s", &out, &["--sample-hz", "99"]);
    rec.finish();
    let res = reloadscope().arg("flamegraph").arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success());
    let folded_path = folded_of(&out, pid);
    assert_svg_draws(&folded_path);
    let text = std::fs::read_to_string(&folded_path).unwrap();
    let (stack, count) = text
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(s, c)| (s, c.parse::<u64>().unwrap())))
        .max_by_key(|&(_, c)| c)
        .expect("samples");
    let names: Vec<&str> = stack.split(';').map(short).collect();
    eprintln!("heaviest ({count}): {stack}");
    assert!(names.windows(3).any(|w| w == ["a", "b", "c"]), "heaviest stack {stack}");
    // a → b → c sits under main: unwinding went past the leaf without frame pointers.
    let ia = names.iter().position(|n| *n == "a").unwrap();
    assert!(names[..ia].contains(&"main"), "{stack}");
}

/// A Python process exec'ed after the probe attached, which loads OpenSSL (through `hashlib`)
/// only later and then burns CPU in it: the copy of its memory map taken at the exec knows nothing
/// of libcrypto, so its frames name only if the map was copied again while it ran.
const PY_BURN: &str = r#"
import os, time
time.sleep(0.5)
import hashlib
print("ready", os.getpid(), flush=True)
block = b"x" * (1 << 20)
end = time.monotonic() + 2
while time.monotonic() < end:
    hashlib.sha256(block).digest()
"#;

#[test]
#[ignore = "root: loads eBPF programs"]
fn libraries_loaded_after_an_exec_are_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("burn.py");
    std::fs::write(&script, PY_BURN).unwrap();
    let out = dir.path().join("trace");
    let mut root = Spawner::start();
    let rec = Recording::start(&[root.pid()], "4s", &out, &["--sample-hz", "99"]);
    let (pid, _) = root.spawn(&format!("/usr/bin/python3 {}", script.display()), "ready");
    rec.finish();
    let res = reloadscope().arg("flamegraph").arg(&out).output().unwrap();
    assert!(res.status.success());
    let text = std::fs::read_to_string(folded_of(&out, pid)).unwrap();
    let count = |needle: &str| {
        text.lines()
            .filter(|l| l.contains(needle))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let (all, crypto) = (count(""), count("[libcrypto.so.3]"));
    eprintln!("{crypto} of {all} samples in libcrypto");
    assert!(crypto * 2 >= all, "hashing runs in libcrypto, loaded after the exec: {crypto} of {all}");
}

/// nginx's configuration for [`nginx_event_loop_and_luajit_vm_are_named`]: one process whose Lua
/// thread goes around the event loop through a 0-delay timer, the way the stand-in's stuck claim
/// keeps a worker in `epoll_wait(…, 0)`, and burns interpreted Lua on each turn.
const NGINX_CONF: &str = r#"
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process off;
pid DIR/nginx.pid;
error_log DIR/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    init_worker_by_lua_block {
        jit.off()
        local semaphore = require "ngx.semaphore"
        ngx.timer.at(0, function()
            while not ngx.worker.exiting() do
                local x = 0
                for i = 1, 500 do x = x + i % 7 end
                -- Once around the event loop: a 0-delay timer posts, the wait resumes after epoll.
                local sema = semaphore.new()
                ngx.timer.at(0, function() sema:post(1) end)
                sema:wait(60)
            end
        end)
    }
}
"#;

/// Debian's nginx is stripped: its event loop is named from nginx's module tables
/// (`ngx_epoll_module.process_events` is the static `ngx_epoll_process_events`), and the Lua
/// handler's frames go down into LuaJIT's interpreter.
#[test]
#[ignore = "root: loads eBPF programs; needs Debian's nginx with the Lua module (cargo xtask test installs it)"]
fn nginx_event_loop_and_luajit_vm_are_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("nginx.conf"), NGINX_CONF.replace("DIR", &d)).unwrap();
    let nginx = Running::start(
        std::process::Command::new("/usr/sbin/nginx")
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(dir.path().join("nginx.conf")),
    );
    let pid = nginx.child.id();
    let started = std::time::Instant::now();
    while !dir.path().join("nginx.pid").exists() {
        assert!(
            started.elapsed().as_secs() < 10,
            "nginx did not start: {:?}",
            std::fs::read_to_string(dir.path().join("error.log"))
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = dir.path().join("trace");
    // The event loop's trip through epoll_wait is a few percent of the worker's time: at 99 Hz
    // a 2 s recording on a busy machine can miss it (CI run 9 of 10 did, 0 of 190 samples), so
    // sample five times as often (about 25 such samples expected, not 5).
    Recording::start(&[pid], "2s", &out, &["--sample-hz", "499"]).finish();
    let res = reloadscope().arg("flamegraph").arg(&out).output().unwrap();
    eprintln!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success());
    let folded = folded_of(&out, pid);
    let stacks: Vec<(String, u64)> = std::fs::read_to_string(&folded)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(s, c)| (s.to_owned(), c.parse().unwrap())))
        .collect();
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    for (s, c) in stacks.iter().filter(|(_, c)| *c * 50 >= total) {
        eprintln!("{c:5} {s}");
    }
    // The event loop down to the syscall, in the kernel.
    let event_loop = "ngx_process_events_and_timers [nginx];ngx_epoll_module.process_events [nginx];epoll_wait [libc.so.6];";
    let in_kernel =
        stacks.iter().any(|(s, _)| s.split_once(event_loop).is_some_and(|(_, k)| k.contains("_[k]")));
    assert!(in_kernel, "no {event_loop}…_[k] stack in {total} samples");
    // The Lua handler, down into LuaJIT's interpreter (lua_resume jumps there: no frame of its
    // own), including the VM's leaf helpers (`i % 7` calls lj_vm_modi); where the kernel walked
    // the Lua stack, its Lua frames stand in the interpreter's place.
    let handler = "ngx_http_lua_run_thread [ngx_http_lua_module.so];";
    let below_handler = |s: &str| {
        s.split_once(handler).is_some_and(|(_, rest)| {
            rest.starts_with(&format!("{LUAJIT_VM} [libluajit-5.1.so.2"))
                || rest.split(';').next().is_some_and(|f| f.ends_with(" [lua]"))
        })
    };
    let in_luajit = stacks
        .iter()
        .filter(|(s, _)| s.contains("[libluajit-5.1.so.2") || s.contains(" [lua]"))
        .map(|(_, c)| c)
        .sum::<u64>();
    let in_vm = stacks.iter().filter(|(s, _)| below_handler(s)).map(|(_, c)| c).sum::<u64>();
    assert!(
        in_luajit * 10 >= total,
        "the Lua timer burns CPU, yet only {in_luajit} of {total} samples run it"
    );
    assert!(in_vm * 10 >= in_luajit * 9, "{in_vm} of {in_luajit} LuaJIT samples unwind to the Lua handler");
}
