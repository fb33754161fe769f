//! Hand-built events for the detectors' tests.

pub use crate::event::UnixOp;
use crate::event::*;
use crate::model::Process;

pub fn task(ts: u64, pid: u32, comm: &str) -> Task {
    Task { ts_ns: ts, cpu: 0, tgid: pid, tid: pid, comm: comm.into() }
}

pub fn sock(ts: u64, pid: u32, op: UnixOp, ret: i64, inode: u64, peer_pid: u32, path: &str) -> Event {
    Event::UnixSock(UnixSockEvent {
        task: task(ts, pid, "x"),
        op,
        fd: 5,
        ret,
        id: SockId { inode, peer_inode: 0, peer_pid },
        path: path.into(),
    })
}

pub fn io(ts: u64, pid: u32, op: UnixOp, ret: i64, inode: u64, peer_pid: u32) -> Event {
    Event::UnixIo(UnixIoEvent {
        task: task(ts, pid, ""),
        op,
        ret,
        id: SockId { inode, peer_inode: 0, peer_pid },
    })
}

pub fn flow(start: u64, end: u64, pid: u32, inode: u64, peer_pid: u32) -> Event {
    Event::UnixFlow(UnixFlowEvent {
        task: task(end, pid, ""),
        id: SockId { inode, peer_inode: 0, peer_pid },
        start_ns: start,
        end_ns: end,
        sends: 3,
        send_bytes: 30,
        recvs: 3,
        recv_bytes: 30,
        eagain: 0,
    })
}

pub fn signal(ts: u64, from: u32, to: u32, sig: u32) -> Event {
    Event::Signal(SignalEvent {
        task: task(ts, from, "nginx"),
        sig,
        name: signal_name(sig),
        target: to,
        result: 0,
        code: 0,
    })
}

pub fn fork(ts: u64, parent: u32, child: u32) -> Event {
    Event::ProcFork(ProcForkEvent { task: task(ts, parent, "nginx"), child })
}

pub fn exit(ts: u64, pid: u32, code: i32, parent: u32) -> Event {
    Event::ProcExit(ProcExitEvent { task: task(ts, pid, "x"), exit_code: code, parent })
}

pub fn worker(pid: u32, root: u32, generation: Option<u32>) -> Process {
    Process { pid, parent: root, comm: "nginx".into(), worker_generation: generation, ..Process::default() }
}

/// One 100 ms epoll bucket of `pid` starting at `start_ms`: `calls` calls, `zero` of them
/// zero-timeout calls that returned nothing.
pub fn bucket(pid: u32, start_ms: u64, calls: u64, zero: u64) -> Event {
    Event::EpollBucket(EpollBucketEvent {
        task: Task { ts_ns: ms(start_ms + 100), cpu: 0, tgid: pid, tid: pid, comm: "nginx".into() },
        start_ns: ms(start_ms),
        end_ns: ms(start_ms + 100),
        calls,
        zero_timeout: zero,
        zero_events: zero,
        events: calls - zero,
        errors: 0,
        blocked_ns: ms(5),
        epfd: 20,
        maxevents: 512,
        timeout_ns: 0,
        syscalls: vec![probe_common::Syscall::EpollWait],
    })
}

/// A line of the stand-in's log.
pub fn truth(v: serde_json::Value) -> shared::truth::TruthLine {
    serde_json::from_value(v).expect("a ground-truth line")
}

/// Milliseconds to ns, for readable test times.
pub fn ms(v: u64) -> u64 {
    v * 1_000_000
}

/// A request worker `pid` read at `ts` on connection `1000 + pid`: its answer (time, status) or
/// the close that left it unanswered, and the plugin socket its handler wrote first.
pub fn http(
    ts: u64,
    pid: u32,
    path: &str,
    id: &str,
    answer: Option<(u64, u16)>,
    closed: Option<u64>,
    plugin_inode: Option<u64>,
) -> Event {
    Event::HttpRequest(HttpRequestEvent {
        task: task(ts, pid, ""),
        fd: 7,
        conn: 1000 + u64::from(pid),
        method: "GET".into(),
        path: path.into(),
        request_id: Some(id.into()),
        response_ns: answer.map(|a| a.0),
        status: answer.map(|a| a.1),
        closed_ns: closed,
        plugin_inode,
    })
}

/// A request answered `status` 1 ns after `ts` (or never), its handler having called
/// `plugin_inode`.
pub fn http_req(ts: u64, pid: u32, path: &str, status: Option<u16>, plugin_inode: Option<u64>) -> Event {
    http(ts, pid, path, &format!("r-{ts}"), status.map(|s| (ts + 1, s)), None, plugin_inode)
}
