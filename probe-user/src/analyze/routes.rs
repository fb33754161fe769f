//! Which plugin sockets each route uses, learned from the trace alone.
//!
//! The probe names, for each request a worker read, the unix socket its handler wrote first in
//! the same event-loop turn ([`HttpRequestEvent::plugin_inode`]). Over the answered requests of a
//! route those votes give the route's plugin sockets; a socket counts when it has at least
//! [`MIN_VOTES`] votes and [`MIN_SHARE`] of the route's votes. Another handler that happens to
//! write in the same turn casts a stray vote, which the share keeps out.
//!
//! A failure is then explained only by trouble on a socket its route uses, or on the one its own
//! handler called: never a `/python` failure by a `jsplugin.socket` event.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::{Event, HttpRequestEvent};

/// Fewest votes for a socket to count as a route's.
pub const MIN_VOTES: u64 = 3;
/// Smallest share of a route's votes for a socket to count as the route's.
pub const MIN_SHARE: f64 = 0.2;
/// Highest status of a request that counts as answered normally.
const LAST_NORMAL_STATUS: u16 = 499;
/// Most routes learned: paths with ids in them (`/orders/17`) would otherwise make one route
/// per request; the rest are counted under [`OTHER_ROUTES`].
const MAX_ROUTES: usize = 1000;
/// Where the routes past [`MAX_ROUTES`] are counted.
pub const OTHER_ROUTES: &str = "(other routes)";

/// The votes of the answered requests, gathered one request at a time (memory grows with the
/// routes and sockets, not with the requests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Votes {
    /// Route → (answered requests, plugin socket inode → requests that named it).
    by_route: BTreeMap<String, (u64, BTreeMap<u64, u64>)>,
}

impl Votes {
    /// Counts one request the probe read.
    pub fn add(&mut self, h: &HttpRequestEvent) {
        if h.status.is_none_or(|s| s > LAST_NORMAL_STATUS) {
            return;
        }
        let mut route = route_of(&h.path);
        if self.by_route.len() >= MAX_ROUTES && !self.by_route.contains_key(route) {
            route = OTHER_ROUTES;
        }
        let (answered, votes) = self.by_route.entry(route.to_owned()).or_default();
        *answered += 1;
        if let Some(i) = h.plugin_inode {
            *votes.entry(i).or_default() += 1;
        }
    }

    /// The votes of every request among `events`.
    pub fn of(events: &[Event]) -> Votes {
        let mut v = Votes::default();
        for e in events {
            if let Event::HttpRequest(h) = e {
                v.add(h);
            }
        }
        v
    }
}

/// A socket and the requests of a route whose handler wrote it first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SocketVotes {
    /// The socket's path.
    pub path: String,
    /// Requests that named it.
    pub votes: u64,
    /// It counts as the route's.
    pub used: bool,
}

/// One route's plugin sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteSockets {
    /// The request path without its query.
    pub route: String,
    /// Requests of it answered with a status below 500.
    pub answered: u64,
    /// Those whose handler wrote a unix socket in the turn that read them.
    pub with_socket: u64,
    /// Votes per socket, most first.
    pub sockets: Vec<SocketVotes>,
}

impl RouteSockets {
    /// True when `path` is one of its plugin sockets.
    pub fn uses(&self, path: &str) -> bool {
        self.sockets.iter().any(|s| s.used && s.path == path)
    }
}

/// Every route's plugin sockets, and the paths of the unix sockets seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Routes {
    /// Routes in path order.
    pub routes: Vec<RouteSockets>,
    /// Unix socket inode → path.
    #[serde(skip)]
    paths: BTreeMap<u64, String>,
}

/// The route of a request path: the path without its query.
pub fn route_of(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The unix sockets' paths by inode, from their lifecycle records.
pub fn socket_paths(events: &[Event]) -> BTreeMap<u64, &str> {
    let mut paths = BTreeMap::new();
    for ev in events {
        if let Event::UnixSock(u) = ev
            && !u.path.is_empty()
            && u.id.inode != 0
        {
            paths.entry(u.id.inode).or_insert(u.path.as_str());
        }
    }
    paths
}

impl Routes {
    /// The routes the votes say, with the unix sockets' paths ([`socket_paths`]).
    pub fn learn(votes: &Votes, paths: &BTreeMap<u64, &str>) -> Routes {
        let paths: BTreeMap<u64, String> = paths.iter().map(|(i, p)| (*i, (*p).to_owned())).collect();
        let routes = votes
            .by_route
            .iter()
            .map(|(route, (answered, by_inode))| {
                let mut by_path: BTreeMap<&str, u64> = BTreeMap::new();
                for (inode, n) in by_inode {
                    if let Some(p) = paths.get(inode) {
                        *by_path.entry(p.as_str()).or_default() += n;
                    }
                }
                let with_socket: u64 = by_path.values().sum();
                let mut sockets: Vec<SocketVotes> = by_path
                    .into_iter()
                    .map(|(path, n)| SocketVotes {
                        path: path.to_owned(),
                        votes: n,
                        used: n >= MIN_VOTES && n as f64 >= MIN_SHARE * with_socket as f64,
                    })
                    .collect();
                sockets.sort_by(|a, b| b.votes.cmp(&a.votes).then_with(|| a.path.cmp(&b.path)));
                RouteSockets { route: route.clone(), answered: *answered, with_socket, sockets }
            })
            .collect();
        Routes { routes, paths }
    }

    /// The learned sockets of a route (by a request path or a load-test endpoint).
    pub fn route(&self, path: &str) -> Option<&RouteSockets> {
        let r = route_of(path);
        self.routes.iter().find(|x| x.route == r)
    }

    /// The path of a unix socket seen in the trace.
    pub fn socket_path(&self, inode: u64) -> Option<&str> {
        self.paths.get(&inode).map(String::as_str)
    }

    /// What may fail a request: its route's plugin sockets and the one its own handler called
    /// (`own_inode`, from the kernel's read).
    pub fn allowed<'a>(&'a self, endpoint: &str, own_inode: Option<u64>) -> Allowed<'a> {
        Allowed { route: self.route(endpoint), own: own_inode.and_then(|i| self.socket_path(i)) }
    }
}

/// The plugin sockets whose trouble can fail one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowed<'a> {
    route: Option<&'a RouteSockets>,
    own: Option<&'a str>,
}

impl Allowed<'_> {
    /// True when trouble on `path` can fail the request.
    pub fn admits(&self, path: &str) -> bool {
        self.own == Some(path) || self.route.is_some_and(|r| r.uses(path))
    }

    /// True when nothing is known of the request's plugin sockets.
    pub fn unknown(&self) -> bool {
        self.own.is_none() && !self.route.is_some_and(|r| r.sockets.iter().any(|s| s.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testkit::*;

    #[test]
    fn each_route_gets_the_sockets_its_handlers_call_and_stray_votes_stay_out() {
        let (js, py) = (50, 60);
        let mut events = vec![
            sock(1, 11, crate::event::UnixOp::Connect, 0, js, 0, "/p/jsplugin.socket"),
            sock(2, 11, crate::event::UnixOp::Connect, 0, py, 0, "/p/pythonplugin.socket"),
        ];
        for i in 0..40 {
            events.push(http_req(100 + i, 11, "/js?x=1", Some(200), Some(js)));
            events.push(http_req(200 + i, 11, "/python", Some(200), Some(py)));
        }
        // Stray: a python write in a /js request's turn, twice; failures and unanswered reads
        // teach nothing; a route that calls no plugin.
        events.push(http_req(300, 11, "/js", Some(200), Some(py)));
        events.push(http_req(301, 11, "/js", Some(200), Some(py)));
        events.push(http_req(302, 11, "/python", Some(502), Some(js)));
        events.push(http_req(303, 11, "/python", None, Some(js)));
        for i in 0..10 {
            events.push(http_req(400 + i, 11, "/plain", Some(200), None));
        }
        let r = Routes::learn(&Votes::of(&events), &socket_paths(&events));
        let js_route = r.route("/js").unwrap();
        assert_eq!((js_route.answered, js_route.with_socket), (42, 42));
        assert!(js_route.uses("/p/jsplugin.socket") && !js_route.uses("/p/pythonplugin.socket"));
        let py_route = r.route("/python?a").unwrap();
        assert!(py_route.uses("/p/pythonplugin.socket") && !py_route.uses("/p/jsplugin.socket"));
        assert_eq!(py_route.answered, 40, "the 502 and the unanswered read do not count");
        let plain = r.route("/plain").unwrap();
        assert_eq!((plain.answered, plain.with_socket), (10, 0));
        assert!(r.allowed("/plain", None).unknown());
        assert!(r.route("/go").is_none());
        let a = r.allowed("/python", None);
        assert!(a.admits("/p/pythonplugin.socket") && !a.admits("/p/jsplugin.socket"));
    }

    #[test]
    fn a_request_s_own_socket_is_admitted_even_on_an_unknown_route() {
        let events = vec![
            sock(1, 11, crate::event::UnixOp::Connect, 0, 70, 0, "/p/go.socket"),
            http_req(2, 11, "/go", None, Some(70)),
        ];
        let r = Routes::learn(&Votes::of(&events), &socket_paths(&events));
        let Event::HttpRequest(own) = &events[1] else { unreachable!() };
        let a = r.allowed("/go", own.plugin_inode);
        assert!(!a.unknown() && a.admits("/p/go.socket") && !a.admits("/p/js.socket"));
        assert!(r.allowed("/go", None).unknown());
    }

    #[test]
    fn paths_with_ids_in_them_cannot_grow_the_routes_without_bound() {
        let mut v = Votes::default();
        for i in 0..(MAX_ROUTES as u64 + 500) {
            let Event::HttpRequest(h) = http_req(i, 11, &format!("/orders/{i}"), Some(200), None) else {
                unreachable!()
            };
            v.add(&h);
        }
        let r = Routes::learn(&v, &BTreeMap::new());
        assert_eq!(r.routes.len(), MAX_ROUTES + 1);
        assert_eq!(r.route(OTHER_ROUTES).map(|o| o.answered), Some(500));
    }

    #[test]
    fn routes_drop_the_query() {
        assert_eq!(route_of("/js?a=1#f"), "/js");
        assert_eq!(route_of("/"), "/");
        assert_eq!(route_of(""), "");
    }
}
