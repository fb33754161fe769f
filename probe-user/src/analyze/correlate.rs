//! Links each failed request of the load test to the worker that served it and to the kernel
//! events that explain it.
//!
//! Exact linking: the worker that read the request is known, and only that worker's events
//! within the request's time window (± a small slack) count. The kernel names it first (the
//! request id the probe read from the worker's TCP socket, [`LinkMethod::Kernel`]), timeouts and
//! closed connections included; else the gateway's own worker header, where it sends one (the
//! stand-in's `x-standin-worker`, [`LinkMethod::GatewayHeader`]). A request neither names falls
//! back to a time window across all workers ([`LinkMethod::Window`]), and says so.
//!
//! Either way a cause is blamed only for failures it can produce ([`fit`]); a failure that no
//! cause can produce (a foreign body, a 4xx) is "not a reload effect" and counts apart. Plugin
//! socket trouble is blamed only on requests whose route uses that socket ([`Routes`], learned
//! from the trace) or whose own handler called it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Request;
use super::fit::{self, CauseKind, FailureClass};
use super::linked::{KernelRead, id_hash};
use super::links::Links;
use super::routes::{Allowed, Routes};
use super::spin::Spin;
use super::stale::{ConnectFailure, IoFailure, Stale};
use super::text::{errno_name, rel_s, short_path};
use super::timeline::Timeline;
use crate::event::HttpRequestEvent;
use crate::event::neg_errno;
use shared::requests::LogSummary;

/// Slack around a request's window for its own worker's events: clocks are the same
/// (CLOCK_MONOTONIC), the slack covers the client's and the kernel's sides of the same call.
pub const EXACT_SLACK_NS: u64 = 10_000_000;
/// Slack for the time-window fallback (e.g. a keep-alive connection closed by an exiting worker).
pub const WINDOW_SLACK_NS: u64 = 50_000_000;

/// How a failed request's worker was known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    /// The probe read the request's id from that worker's socket.
    Kernel,
    /// The gateway's response named its worker (the stand-in only).
    GatewayHeader,
    /// Neither: linked by time window.
    #[default]
    Window,
}

/// The requests the probe read, by the hash of their request id (the first read of each id):
/// a sorted vector, a third of a hash map's size at a quarter of a million failures.
#[derive(Debug, Clone, Default)]
pub struct KernelRequests {
    reads: Vec<KernelRead>,
    sorted: bool,
}

impl KernelRequests {
    /// Adds a read (a later read of the same id does not count).
    pub fn add(&mut self, h: &HttpRequestEvent) {
        if let Some(r) = KernelRead::of(h) {
            self.reads.push(r);
            self.sorted = false;
        }
    }

    /// Sorts the reads for [`KernelRequests::get`]; the first read of an id stays.
    pub fn finish(&mut self) {
        self.reads.sort_by_key(KernelRead::id_hash);
        self.reads.dedup_by_key(|r| r.id_hash());
        self.reads.shrink_to_fit();
        self.sorted = true;
    }

    /// The first read of request `id`.
    pub fn get(&self, id: &str) -> Option<KernelRead> {
        debug_assert!(self.sorted || self.reads.is_empty(), "finish() before get()");
        let h = id_hash(id);
        let i = self.reads.partition_point(|r| r.id_hash() < h);
        self.reads.get(i).filter(|r| r.id_hash() == h).copied()
    }
}

/// The requests the probe read that carried an id; the first read of an id counts (runs built
/// by hand; [`super::load`] adds them as it reads).
#[cfg(test)]
pub fn kernel_requests(events: &[crate::event::Event]) -> KernelRequests {
    let mut out = KernelRequests::default();
    for e in events {
        if let crate::event::Event::HttpRequest(h) = e {
            out.add(h);
        }
    }
    out.finish();
    out
}

/// How a failed request was explained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkClass {
    /// Through its own worker's events.
    Exact,
    /// By the time-window fallback.
    Window,
    /// Nothing that could produce it was found, though a reload could have.
    #[default]
    Unexplained,
    /// No reload effect can produce its reason (a foreign body, a 4xx).
    NotReload,
}

impl LinkClass {
    /// The name written to `report.json` and the tables.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkClass::Exact => "exact",
            LinkClass::Window => "window",
            LinkClass::Unexplained => "unexplained",
            LinkClass::NotReload => "not_reload",
        }
    }
}

/// One failed request and what explains it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The `x-request-id`.
    pub request_id: String,
    /// Endpoint.
    pub endpoint: String,
    /// Start (s from zero).
    pub start_s: f64,
    /// The reload whose window it started in (1 for the first), when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<usize>,
    /// Duration in s.
    pub duration_s: f64,
    /// The load test's failure reason.
    pub reason: String,
    /// The worker that served it, when known.
    pub worker_pid: Option<u32>,
    /// How that worker was known.
    pub method: LinkMethod,
    /// That worker's generation.
    pub worker_generation: Option<u32>,
    /// How it was explained.
    pub link: LinkClass,
    /// What its reason says went wrong.
    pub class: Option<FailureClass>,
    /// What explains it (written as an empty string when nothing does).
    #[serde(with = "kind_or_empty")]
    pub kind: Option<CauseKind>,
    /// The worker whose event explains it.
    pub cause_pid: Option<u32>,
    /// The plugin socket of that event, for socket causes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause_socket: String,
    /// When that event happened (s from zero).
    pub cause_s: Option<f64>,
    /// One sentence for humans.
    pub sentence: String,
}

/// `kind` as `report.json` has always written it: the cause's name, or `""`.
mod kind_or_empty {
    use serde::de::IntoDeserializer;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::CauseKind;

    pub fn serialize<S: Serializer>(k: &Option<CauseKind>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.map_or("", CauseKind::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CauseKind>, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Ok(None);
        }
        CauseKind::deserialize(name.as_str().into_deserializer()).map(Some)
    }
}

/// Failures per (link, kind, endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// `exact`, `window`, `unexplained` or `not_reload`.
    pub link: String,
    /// The explanation kind (empty when unexplained).
    pub kind: String,
    /// Endpoint.
    pub endpoint: String,
    /// Failed requests.
    pub count: u64,
}

/// The attribution of failed requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Attribution {
    /// Requests in the log.
    pub requests: u64,
    /// Failed requests.
    pub failed: u64,
    /// Failed requests whose reason no reload effect can produce (a foreign body, a 4xx).
    pub not_reload: u64,
    /// `failed - not_reload`: the failures a reload could cause, the base of every share.
    pub reload_failed: u64,
    /// Failed requests that named their worker.
    pub with_worker: u64,
    /// Failed requests without a worker (timeouts, closed connections).
    pub without_worker: u64,
    /// Failed requests whose worker the kernel named.
    pub by_kernel: u64,
    /// Failed requests whose worker only the gateway's header named.
    pub by_header: u64,
    /// Failed requests linked by time window.
    pub by_window: u64,
    /// Explained through their own worker's events.
    pub exact: u64,
    /// Explained by the time-window fallback.
    pub window: u64,
    /// Not explained, among the failures a reload could cause.
    pub unexplained: u64,
    /// `exact / reload_failed`.
    pub exact_share: f64,
    /// `window / reload_failed`.
    pub window_share: f64,
    /// `unexplained / reload_failed`.
    pub unexplained_share: f64,
    /// Counts by link, kind and endpoint.
    pub table: Vec<Row>,
    /// Every failed request, in time order.
    pub links: Links,
}

/// What the failures are explained from.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The requests the probe read, by id.
    pub kernel: &'a KernelRequests,
    /// Each route's plugin sockets.
    pub routes: &'a Routes,
    /// The reload's workers.
    pub timeline: &'a Timeline,
    /// Spinning workers.
    pub spins: &'a [Spin],
    /// Failed and stale unix traffic.
    pub stale: &'a Stale,
}

/// Items of a time-sorted slice with `ts` in `[lo, hi]`.
fn in_window<T>(v: &[T], ts: impl Fn(&T) -> u64, lo: u64, hi: u64) -> &[T] {
    let a = v.partition_point(|x| ts(x) < lo);
    let b = v.partition_point(|x| ts(x) <= hi);
    &v[a..b.max(a)]
}

/// The first item on a socket the request may be failed by: another plugin's trouble cannot
/// fail it.
fn pick<'a, T>(items: &'a [T], allowed: &Allowed<'_>, path: impl Fn(&T) -> &str) -> Option<&'a T> {
    items.iter().find(|x| allowed.admits(path(x)))
}

/// Picks inside the request's own window first; the slack only when nothing is inside, since a
/// worker's event just before the start belongs to its previous request.
fn pick_near<'a, T>(
    v: &'a [T],
    ts: impl Fn(&T) -> u64 + Copy,
    r: &Request,
    slack: u64,
    allowed: &Allowed<'_>,
    path: impl Fn(&T) -> &str + Copy,
) -> Option<&'a T> {
    pick(in_window(v, ts, r.start_mono_ns, r.end_mono_ns), allowed, path).or_else(|| {
        pick(in_window(v, ts, r.start_mono_ns.saturating_sub(slack), r.end_mono_ns + slack), allowed, path)
    })
}

struct Index<'a> {
    connects: BTreeMap<u32, Vec<&'a ConnectFailure>>,
    ios: BTreeMap<u32, Vec<&'a IoFailure>>,
    all_connects: Vec<&'a ConnectFailure>,
    all_ios: Vec<&'a IoFailure>,
}

/// Links every failed request. `reloads_ns` are the reload instants in order: each link names
/// the one whose window it started in.
pub fn correlate(log: &LogSummary, ev: &Evidence<'_>, reloads_ns: &[u64], zero_ns: u64) -> Attribution {
    let stale = ev.stale;
    let mut ix = Index {
        connects: BTreeMap::new(),
        ios: BTreeMap::new(),
        all_connects: stale.connect_failures.iter().collect(),
        all_ios: stale.io_failures.iter().collect(),
    };
    for c in &stale.connect_failures {
        ix.connects.entry(c.pid).or_default().push(c);
    }
    for i in &stale.io_failures {
        ix.ios.entry(i.pid).or_default().push(i);
    }
    let mut att = Attribution { requests: log.requests, ..Attribution::default() };
    // By name, as the table is read.
    let mut table: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
    let mut failed: Vec<&Request> = log.failed.iter().collect();
    failed.sort_by_key(|r| r.start_mono_ns);
    for r in failed {
        att.failed += 1;
        let class = fit::classify(r.reason.as_ref());
        let read = ev.kernel.get(&r.request_id);
        let worker = match (read, r.worker_pid) {
            (Some(k), _) => Some((k.tgid, LinkMethod::Kernel)),
            (None, Some(w)) => Some((w, LinkMethod::GatewayHeader)),
            (None, None) => None,
        };
        match worker.map(|(_, m)| m).unwrap_or_default() {
            LinkMethod::Kernel => att.by_kernel += 1,
            LinkMethod::GatewayHeader => att.by_header += 1,
            LinkMethod::Window => att.by_window += 1,
        }
        match worker {
            Some(_) => att.with_worker += 1,
            None => att.without_worker += 1,
        }
        let mut link = match worker {
            _ if !fit::reload_can_cause(class) => not_reload(r, zero_ns),
            Some((w, m)) => explain_exact(r, (w, m, read), class, ev, &ix, zero_ns),
            None => explain_window(r, class, ev, &ix, zero_ns),
        };
        link.method = worker.map(|(_, m)| m).unwrap_or_default();
        if let Some((w, _)) = worker {
            link.worker_pid = Some(w);
        }
        link.reload = reloads_ns.iter().rposition(|&at| r.start_mono_ns >= at).map(|i| i + 1);
        match link.link {
            LinkClass::Exact => att.exact += 1,
            LinkClass::Window => att.window += 1,
            LinkClass::NotReload => att.not_reload += 1,
            LinkClass::Unexplained => att.unexplained += 1,
        }
        *table
            .entry((link.link.as_str(), link.kind.map_or("", CauseKind::as_str), r.endpoint.clone()))
            .or_default() += 1;
        att.links.push(link);
    }
    att.reload_failed = att.failed - att.not_reload;
    let share = |n: u64| if att.reload_failed == 0 { 0.0 } else { n as f64 / att.reload_failed as f64 };
    att.exact_share = share(att.exact);
    att.window_share = share(att.window);
    att.unexplained_share = share(att.unexplained);
    att.table = table
        .into_iter()
        .map(|((link, kind, endpoint), count)| Row { link: link.into(), kind: kind.into(), endpoint, count })
        .collect();
    att
}

fn base(r: &Request, zero_ns: u64) -> Link {
    let reason = r.reason.as_ref().map(ToString::to_string).unwrap_or_default();
    Link {
        request_id: r.request_id.clone(),
        endpoint: r.endpoint.clone(),
        start_s: rel_s(r.start_mono_ns, zero_ns),
        duration_s: r.end_mono_ns.saturating_sub(r.start_mono_ns) as f64 / 1e9,
        class: Some(fit::classify(r.reason.as_ref())),
        reason,
        worker_pid: r.worker_pid,
        link: LinkClass::Unexplained,
        ..Link::default()
    }
}

fn not_reload(r: &Request, zero_ns: u64) -> Link {
    let mut l = base(r, zero_ns);
    l.link = LinkClass::NotReload;
    let reason = if l.reason.is_empty() { "no reason given" } else { l.reason.as_str() };
    l.sentence = format!("{}: {reason}; no reload effect can produce this failure", head(&l));
    l
}

fn head(l: &Link) -> String {
    format!("request {} GET {} at {:.2} s", l.request_id, l.endpoint, l.start_s)
}

fn connect_text(c: &ConnectFailure, stale: &Stale, zero_ns: u64) -> String {
    let what = match c.ret {
        r if r == neg_errno(libc::ECONNREFUSED) => "was refused (ECONNREFUSED)".to_string(),
        r if r == neg_errno(libc::ENOENT) => "found no socket file (ENOENT)".to_string(),
        r => format!("failed with {}", errno_name(r)),
    };
    let clause = stale.connect_episodes.get(c.episode).map(|e| e.state.clause()).unwrap_or_default();
    format!("connect to {} at {:.2} s {what} {clause}", short_path(&c.path), rel_s(c.ts_ns, zero_ns))
}

fn io_text(i: &IoFailure) -> String {
    let peer = match i.peer_generation {
        Some(g) if !i.peer_end.is_empty() => {
            format!("server {} (generation {g}, {})", i.peer_pid, i.peer_end)
        }
        Some(g) => format!("server {} (generation {g})", i.peer_pid),
        None => format!("pid {}", i.peer_pid),
    };
    let path = if i.path.is_empty() { "a unix socket".to_string() } else { short_path(&i.path).to_string() };
    format!("{} on {path} to {peer} at {:.2} s got {}", i.op, i.at_s, i.error)
}

fn spin_text(s: &Spin) -> String {
    let since = if s.zero_timeout_since_s < s.start_s - 0.05 {
        format!(" (zero timeouts since {:.2} s)", s.zero_timeout_since_s)
    } else {
        String::new()
    };
    format!(
        "spinning in epoll_wait(fd {}, timeout 0) from {:.2} s to {:.2} s at {:.0} calls/s{since}",
        s.epfd, s.start_s, s.end_s, s.rate_per_s
    )
}

fn explain_exact(
    r: &Request,
    (w, method, read): (u32, LinkMethod, Option<KernelRead>),
    class: FailureClass,
    ev: &Evidence<'_>,
    ix: &Index,
    zero_ns: u64,
) -> Link {
    let (timeline, spins, stale) = (ev.timeline, ev.spins, ev.stale);
    let allowed = ev.routes.allowed(&r.endpoint, read.and_then(|k| k.plugin_inode()));
    let mut l = base(r, zero_ns);
    l.worker_generation = timeline.worker_generation(w);
    let (lo, hi) = (r.start_mono_ns.saturating_sub(EXACT_SLACK_NS), r.end_mono_ns + EXACT_SLACK_NS);
    let wgen = l.worker_generation.map_or(String::new(), |g| format!(" (generation {g})"));
    let served = match (method, read) {
        (LinkMethod::Kernel, Some(k)) => {
            let answer = match (k.answered_ns(), k.closed_ns()) {
                (Some(t), _) => format!(
                    ", answered {} at {:.2} s",
                    k.status().map_or("?".into(), |s| s.to_string()),
                    rel_s(t, zero_ns)
                ),
                (None, Some(_)) => ", never answered".to_string(),
                (None, None) => ", never answered while traced".to_string(),
            };
            format!("{}: reached worker {w}{wgen} at {:.2} s{answer}", head(&l), rel_s(k.read_ns, zero_ns))
        }
        _ => format!("{}: served by worker {w}{wgen}", head(&l)),
    };
    let can = |k: CauseKind| fit::fits(k, class);
    let mut found = None;
    if can(CauseKind::WorkerClosed)
        && let Some(t) = read.and_then(|k| k.closed_ns())
    {
        found = Some((
            CauseKind::WorkerClosed,
            t,
            format!("{served}; the worker closed its connection at {:.2} s", rel_s(t, zero_ns)),
        ));
    }
    if found.is_none()
        && can(CauseKind::FailedConnect)
        && let Some(v) = ix.connects.get(&w)
        && let Some(c) = pick_near(v, |c| c.ts_ns, r, EXACT_SLACK_NS, &allowed, |c| &*c.path)
    {
        l.cause_socket = c.path.to_string();
        found = Some((
            CauseKind::FailedConnect,
            c.ts_ns,
            format!("{served}; its {}", connect_text(c, stale, zero_ns)),
        ));
    }
    if found.is_none()
        && can(CauseKind::FailedIo)
        && let Some(v) = ix.ios.get(&w)
        && let Some(i) = pick_near(v, |i| i.ts_ns, r, EXACT_SLACK_NS, &allowed, |i| &i.path)
    {
        l.cause_socket = i.path.clone();
        found = Some((CauseKind::FailedIo, i.ts_ns, format!("{served}; its {}", io_text(i))));
    }
    if found.is_none()
        && can(CauseKind::StaleFlow)
        && let Some(s) = stale
            .stale_flows
            .iter()
            .find(|s| s.pid == w && s.first_ns <= hi && s.last_ns >= lo && allowed.admits(&s.path))
    {
        l.cause_socket = s.path.clone();
        found = Some((
            CauseKind::StaleFlow,
            s.first_ns.max(lo),
            format!(
                "{served}; it was still talking to server {} (generation {}) of {} while generation {} \
                 (pid {}) owned the path",
                s.peer_pid,
                s.peer_generation,
                short_path(&s.path),
                s.owner_generation,
                s.owner_pid
            ),
        ));
    }
    if found.is_none()
        && can(CauseKind::Spin)
        && let Some(s) = spins.iter().find(|s| s.pid == w && s.start_ns <= hi && s.end_ns >= lo)
    {
        found = Some((CauseKind::Spin, s.start_ns, format!("{served}; the worker was {}", spin_text(s))));
    }
    match found {
        Some((kind, ts, sentence)) => {
            l.link = LinkClass::Exact;
            l.kind = Some(kind);
            l.cause_pid = Some(w);
            l.cause_s = Some(rel_s(ts, zero_ns));
            l.sentence = sentence;
        }
        None => {
            l.cause_socket.clear();
            l.sentence = format!(
                "{served} ({}); nothing of it in the window that can produce this failure{}",
                l.reason,
                unknown_route(&allowed, &r.endpoint, class)
            )
        }
    }
    l
}

/// A clause saying why no plugin socket could be blamed, when one could have caused the failure
/// and none is known for the route.
fn unknown_route(allowed: &Allowed<'_>, endpoint: &str, class: FailureClass) -> String {
    if allowed.unknown() && fit::fits(CauseKind::FailedConnect, class) {
        format!(" (no plugin socket is known for {endpoint}: no answered request of it called one)")
    } else {
        String::new()
    }
}

fn explain_window(r: &Request, class: FailureClass, ev: &Evidence<'_>, ix: &Index, zero_ns: u64) -> Link {
    let (timeline, spins, stale) = (ev.timeline, ev.spins, ev.stale);
    let allowed = ev.routes.allowed(&r.endpoint, None);
    let mut l = base(r, zero_ns);
    let (lo, hi) = (r.start_mono_ns.saturating_sub(WINDOW_SLACK_NS), r.end_mono_ns + WINDOW_SLACK_NS);
    let what = match &r.reason {
        Some(_) if class == FailureClass::TimedOut => format!("timed out after {:.1} s", l.duration_s),
        Some(f) => f.to_string(),
        None => "failed".into(),
    };
    let lead = format!("{} ({what}; no worker known to have read it, linked by time window)", head(&l));
    let newest = timeline.generations.last().map_or(0, |g| g.generation);
    let start_rel = l.start_s;
    // A long request most likely sat in a busy-waiting worker (its loop began at `since_ns`, before
    // the rate got high); a short one met a closing worker. Every candidate worker is named.
    let mut busy: Vec<&Spin> = spins
        .iter()
        .filter(|s| s.since_ns <= r.start_mono_ns + WINDOW_SLACK_NS && s.end_ns >= r.start_mono_ns)
        .collect();
    if busy.is_empty() {
        busy = spins.iter().filter(|s| s.since_ns <= hi && s.end_ns >= lo).collect();
    }
    busy.sort_by_key(|s| s.since_ns);
    // The old worker whose exit is nearest the request's end closed its connection.
    let end_rel = rel_s(r.end_mono_ns, zero_ns);
    let exit = timeline
        .workers
        .iter()
        .filter(|w| {
            w.generation < newest
                && w.exit_s.is_some_and(|x| x >= rel_s(lo, zero_ns) && x <= rel_s(hi, zero_ns))
        })
        .min_by(|a, b| {
            let d = |w: &&super::timeline::Worker| (w.exit_s.unwrap_or_default() - end_rel).abs();
            d(a).total_cmp(&d(b))
        });
    // An old worker that closed idle keep-alive connections around the request's end: the client
    // sent it on one of them.
    let keepalive = timeline
        .workers
        .iter()
        .filter(|w| {
            w.keepalive_closed_ns.is_some_and(|(a, b)| {
                a.saturating_sub(WINDOW_SLACK_NS) <= r.end_mono_ns && r.start_mono_ns <= b + WINDOW_SLACK_NS
            })
        })
        .min_by_key(|w| w.keepalive_closed_ns.map_or(u64::MAX, |(a, _)| a.abs_diff(r.end_mono_ns)));
    let keepalive_found = keepalive.map(|w| {
        let (a, b) = w.keepalive_closed_ns.unwrap_or_default();
        (
            CauseKind::KeepaliveClosed,
            w.pid,
            rel_s(a, zero_ns),
            format!(
                "{lead}: old worker {} (generation {}) closed {} idle keep-alive connection(s) from {:.2} s to {:.2} s at the reload; a request sent on one finds it closed",
                w.pid,
                w.generation,
                w.keepalive_closed,
                rel_s(a, zero_ns),
                rel_s(b, zero_ns)
            ),
        )
    });
    let connect = pick_near(&ix.all_connects, |c| c.ts_ns, r, WINDOW_SLACK_NS, &allowed, |c| &*c.path);
    let io = pick_near(&ix.all_ios, |i| i.ts_ns, r, WINDOW_SLACK_NS, &allowed, |i| &i.path);
    let spin_found = busy.first().map(|first| {
        let who: Vec<String> = busy
            .iter()
            .map(|s| {
                let g = s.generation.map_or(String::new(), |g| format!(" (generation {g})"));
                format!("{}{g} was {}", s.pid, spin_text(s))
            })
            .collect();
        let lead_in = if busy.len() == 1 {
            "worker".to_string()
        } else {
            format!(
                "{} workers were busy-waiting during it, one of them likely holding it: worker",
                busy.len()
            )
        };
        (
            CauseKind::Spin,
            first.pid,
            rel_s(first.since_ns, zero_ns).max(start_rel),
            format!("{lead}: {lead_in} {}", who.join("; worker ")),
        )
    });
    let exit_found = exit.map(|w| {
        let x = w.exit_s.unwrap_or_default();
        (
            CauseKind::OldWorkerExit,
            w.pid,
            x,
            format!(
                "{lead}: old worker {} (generation {}) exited at {x:.2} s during the reload",
                w.pid, w.generation
            ),
        )
    });
    let connect_found = connect.map(|c| {
        (
            CauseKind::FailedConnect,
            c.pid,
            rel_s(c.ts_ns, zero_ns),
            format!("{lead}: worker {}'s {}", c.pid, connect_text(c, stale, zero_ns)),
        )
    });
    let io_found = io
        .map(|i| (CauseKind::FailedIo, i.pid, i.at_s, format!("{lead}: worker {}'s {}", i.pid, io_text(i))));
    let socket_of = |kind: CauseKind| match kind {
        CauseKind::FailedConnect => connect.map_or(String::new(), |c| c.path.to_string()),
        CauseKind::FailedIo => io.map_or(String::new(), |i| i.path.clone()),
        _ => String::new(),
    };
    let long = l.duration_s >= 1.0;
    let order = if long {
        [spin_found, keepalive_found, exit_found, connect_found, io_found]
    } else {
        [keepalive_found, exit_found, connect_found, io_found, spin_found]
    };
    match order.into_iter().flatten().find(|(kind, ..)| fit::fits(*kind, class)) {
        Some((kind, pid, at, sentence)) => {
            l.link = LinkClass::Window;
            l.kind = Some(kind);
            l.cause_pid = Some(pid);
            l.cause_s = Some(at);
            l.cause_socket = socket_of(kind);
            l.sentence = sentence;
        }
        None => {
            l.sentence = format!(
                "{lead}: nothing in the window can produce this failure{}",
                unknown_route(&allowed, &r.endpoint, class)
            )
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::stale::{ConnectEpisode, PathState};
    use crate::analyze::testkit::*;
    use shared::requests::{Failure, Outcome};

    fn req(id: &str, start: u64, end: u64, worker: Option<u32>, reason: &str) -> Request {
        Request {
            start_mono_ns: start,
            end_mono_ns: end,
            endpoint: "/js".into(),
            request_id: id.into(),
            status: worker.map(|_| 200),
            outcome: if reason.is_empty() { Outcome::Ok } else { Outcome::Failed },
            reason: (!reason.is_empty()).then(|| Failure::parse(reason)),
            worker_pid: worker,
            ..Request::default()
        }
    }

    /// /js calls the JS socket and /python the Python one, as three answered requests each show.
    fn routes() -> Routes {
        let mut events = vec![
            sock(1, 11, UnixOp::Connect, 0, 50, 0, "/p/jsplugin.socket"),
            sock(2, 11, UnixOp::Connect, 0, 60, 0, "/p/pythonplugin.socket"),
        ];
        for i in 0..3 {
            events.push(http_req(10 + i, 11, "/js", Some(200), Some(50)));
            events.push(http_req(20 + i, 11, "/python", Some(200), Some(60)));
            // A route named after no plugin: only the trace says it calls the JS server.
            events.push(http_req(30 + i, 11, "/alpha", Some(200), Some(50)));
        }
        Routes::learn(&super::super::routes::Votes::of(&events), &super::super::routes::socket_paths(&events))
    }

    fn run(
        requests: &[Request],
        timeline: &Timeline,
        spins: &[Spin],
        stale: &Stale,
        zero_ns: u64,
    ) -> Attribution {
        run_with_reloads(requests, timeline, spins, stale, &[], zero_ns)
    }

    fn run_with_reloads(
        requests: &[Request],
        timeline: &Timeline,
        spins: &[Spin],
        stale: &Stale,
        reloads_ns: &[u64],
        zero_ns: u64,
    ) -> Attribution {
        let kernel = KernelRequests::default();
        let routes = routes();
        let mut log = LogSummary::default();
        requests.iter().cloned().for_each(|r| log.add(r));
        correlate(
            &log,
            &Evidence { kernel: &kernel, routes: &routes, timeline, spins, stale },
            reloads_ns,
            zero_ns,
        )
    }

    #[test]
    fn each_link_names_the_reload_it_started_after() {
        let requests = vec![
            req("before", ms(500), ms(510), Some(11), "plugin header missing"),
            req("first", ms(1500), ms(1510), Some(11), "plugin header missing"),
            req("second", ms(2295), ms(2305), Some(11), "plugin header missing"),
        ];
        let a = run_with_reloads(&requests, &timeline(), &[], &stale(), &[ms(1000), ms(2000)], ms(1000));
        let got: Vec<(String, Option<usize>)> = a.links.iter().map(|l| (l.request_id, l.reload)).collect();
        let want = [("before", None), ("first", Some(1)), ("second", Some(2))];
        assert_eq!(got, want.map(|(id, r)| (id.to_string(), r)));
    }

    fn timeline() -> Timeline {
        let procs = vec![worker(11, 1, Some(2)), worker(12, 1, Some(2))];
        super::super::timeline::detect(&[], &procs, 1, 0)
    }

    fn stale() -> Stale {
        let state = PathState {
            owner: Some((3, 40)),
            owner_dead: true,
            owner_end: "exit 1".into(),
            owner_crashed: true,
            owner_bound_s: Some(1.0),
            next: Some((4, 41, 2.5)),
        };
        Stale {
            connect_episodes: vec![ConnectEpisode {
                pid: 11,
                path: "/p/jsplugin.socket".into(),
                error: "ECONNREFUSED".into(),
                count: 1,
                state,
                ..ConnectEpisode::default()
            }],
            failed_connects: 2,
            connect_failures: vec![
                // Just before request a: its worker's previous request, not a's.
                ConnectFailure {
                    ts_ns: ms(2291),
                    pid: 11,
                    path: "/p/jsplugin.socket".into(),
                    ret: -111,
                    episode: 0,
                },
                ConnectFailure {
                    ts_ns: ms(2300),
                    pid: 11,
                    path: "/p/jsplugin.socket".into(),
                    ret: -111,
                    episode: 0,
                },
            ],
            ..Stale::default()
        }
    }

    fn spin() -> Spin {
        Spin {
            pid: 12,
            tid: 12,
            generation: Some(2),
            start_s: 3.0,
            end_s: 9.0,
            rate_per_s: 50_000.0,
            epfd: 20,
            start_ns: ms(4000),
            end_ns: ms(10_000),
            since_ns: ms(4000),
            ..Spin::default()
        }
    }

    #[test]
    fn exact_and_window_links() {
        let requests = vec![
            req("a", ms(2295), ms(2305), Some(11), "plugin header missing"),
            req("b", ms(5000), ms(25_000), None, "operation timed out"),
            req("c", ms(2295), ms(2305), Some(12), "plugin header missing"),
            req("d", ms(2295), ms(2305), Some(11), ""),
        ];
        let a = run(&requests, &timeline(), &[spin()], &stale(), ms(1000));
        assert_eq!((a.requests, a.failed, a.with_worker, a.without_worker), (4, 3, 2, 1));
        assert_eq!((a.exact, a.window, a.unexplained), (1, 1, 1));
        let links = a.links.all();
        let l = &links[0];
        assert_eq!(
            (l.link, l.kind, l.cause_pid),
            (LinkClass::Exact, Some(CauseKind::FailedConnect), Some(11))
        );
        assert_eq!(l.cause_socket, "/p/jsplugin.socket");
        assert!((l.cause_s.unwrap() - 1.3).abs() < 1e-9);
        assert!(
            l.sentence.starts_with(
                "request a GET /js at 1.29 s: served by worker 11 (generation 2); its connect to \
                 jsplugin.socket at 1.30 s was refused (ECONNREFUSED) while server generation 4 \
                 restarted after a crash"
            ),
            "{}",
            l.sentence
        );
        let c = a.links.iter().find(|l| l.request_id == "c").unwrap();
        assert_eq!(c.link, LinkClass::Unexplained, "worker 12 did nothing wrong then");
        let b = a.links.iter().find(|l| l.request_id == "b").unwrap();
        assert_eq!((b.link, b.kind, b.cause_pid), (LinkClass::Window, Some(CauseKind::Spin), Some(12)));
        assert!(
            b.sentence.contains("no worker known to have read it, linked by time window"),
            "{}",
            b.sentence
        );
        assert!((a.exact_share - 1.0 / 3.0).abs() < 1e-9);
    }

    /// Old worker 13 (generation 1) exits at 3 s; worker 11's connect to the JS socket fails.
    fn exit_timeline() -> Timeline {
        let mut procs = vec![worker(11, 1, Some(2)), worker(13, 1, Some(1))];
        procs[1].exit_ns = Some(ms(3000));
        super::super::timeline::detect(&[], &procs, 1, 0)
    }

    fn on(endpoint: &str, mut r: Request) -> Request {
        r.endpoint = endpoint.into();
        r
    }

    #[test]
    fn a_cause_is_blamed_only_for_failures_it_can_produce() {
        let t = exit_timeline();
        let requests = vec![
            // A content check during the worker's exit: no reload effect produces it.
            req("body", ms(2990), ms(3010), Some(11), "response body is not reflection JSON"),
            req("404", ms(2990), ms(3010), None, "status 404"),
            // A closed connection around the exit: the exit closed it.
            req("closed", ms(2990), ms(3010), None, "connection closed before message completed"),
            // A timeout around the exit with no spin: an exit does not make a request time out.
            req("timeout", ms(2990), ms(3010), None, "operation timed out"),
            // A /python request with the JS socket refused under it: not its plugin.
            on("/python", req("py", ms(2295), ms(2305), Some(11), "plugin header missing")),
            // A 500 with its own plugin's connect refused: the plugin's failure.
            req("500", ms(2295), ms(2305), Some(11), "status 500"),
            // A closed connection with a failed plugin connect on its worker: plugins fail open.
            req("closed2", ms(2295), ms(2305), Some(11), "connection reset by peer"),
            // A route whose name says nothing: the trace says it calls the JS server.
            on("/alpha", req("alpha", ms(2295), ms(2305), Some(11), "status 502")),
            // A route no answered request taught anything: no plugin socket can be blamed.
            on("/beta", req("beta", ms(2295), ms(2305), Some(11), "status 502")),
        ];
        let a = run(&requests, &t, &[], &stale(), 0);
        let by = |id: &str| a.links.iter().find(|l| l.request_id == id).unwrap();
        let got = |id: &str| {
            let l = by(id);
            (l.link.as_str().to_string(), l.kind.map_or("", CauseKind::as_str).to_string())
        };
        let pair = |l: &str, k: &str| (l.to_string(), k.to_string());
        assert_eq!(got("body"), pair("not_reload", ""));
        assert!(by("body").sentence.contains("no reload effect can produce"), "{}", by("body").sentence);
        assert_eq!(got("404"), pair("not_reload", ""));
        assert_eq!(got("closed"), pair("window", "old_worker_exit"));
        assert_eq!(by("closed").cause_pid, Some(13));
        assert_eq!(got("timeout"), pair("unexplained", ""));
        assert_eq!(got("py"), pair("unexplained", ""));
        assert_eq!(got("500"), pair("exact", "failed_connect"));
        assert_eq!(got("closed2"), pair("unexplained", ""));
        assert_eq!(got("alpha"), pair("exact", "failed_connect"));
        assert_eq!(by("alpha").cause_socket, "/p/jsplugin.socket");
        assert_eq!(got("beta"), pair("unexplained", ""));
        assert!(
            by("beta").sentence.contains("no plugin socket is known for /beta"),
            "{}",
            by("beta").sentence
        );
        assert!(!by("py").sentence.contains("no plugin socket is known"), "{}", by("py").sentence);
        // No link blames a socket its route does not use.
        for l in a.links.iter().filter(|l| !l.cause_socket.is_empty()) {
            assert!(routes().route(&l.endpoint).is_some_and(|r| r.uses(&l.cause_socket)), "{l:?}");
        }
        // The two that no reload can cause are counted apart and out of every share.
        assert_eq!((a.failed, a.not_reload, a.reload_failed), (9, 2, 7));
        assert_eq!((a.exact, a.window, a.unexplained), (2, 1, 4));
        assert!((a.exact_share - 2.0 / 7.0).abs() < 1e-9 && (a.unexplained_share - 4.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn no_failures_no_links() {
        let a = run(&[req("d", 1, 2, Some(11), "")], &timeline(), &[], &Stale::default(), 0);
        assert_eq!((a.failed, a.links.len(), a.exact_share), (0, 0, 0.0));
    }
}
