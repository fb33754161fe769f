//! Pairs what the probe copies of each traced connection, a request's start and then its
//! response's start, into one `http_request` event. Only the parsed fields are kept: the bytes
//! themselves go no further than this module.

use std::collections::HashMap;

use crate::event::{ConnOp, Event, HttpChunkView, HttpRequestEvent, Task, TcpConnEvent};
use crate::http::{may_start_request, parse_request, parse_status};

/// Most bytes of one request's start kept while its header block comes in.
const MAX_HEAD: usize = probe_common::tcp::HTTP_CHUNK_LEN * probe_common::tcp::REQUEST_CHUNKS as usize;

/// A request read and not yet answered.
#[derive(Debug)]
struct Open {
    req: HttpRequestEvent,
    /// Its bytes so far, while the header block is incomplete (bounded by [`MAX_HEAD`]).
    head: Vec<u8>,
    /// The header block is all there (or as much as is kept): its bytes are dropped.
    complete: bool,
    /// Its request line was parsed: until then the bytes are only a possible request's start.
    parsed: bool,
}

impl Open {
    /// Parses what has come so far; notes whether the header block is now complete, and drops
    /// the bytes if so.
    fn settle(&mut self, id_header: &str) {
        if let Some(start) = parse_request(&self.head, id_header) {
            self.req.method = start.method;
            self.req.path = start.path;
            self.req.request_id = start.request_id;
            self.parsed = true;
        }
        if self.head.len() >= MAX_HEAD || self.head.windows(4).any(|w| w == b"\r\n\r\n") {
            self.complete = true;
            self.head = Vec::new();
        }
    }

    /// The request, when its bytes were one.
    fn event(self) -> Option<Event> {
        self.parsed.then_some(Event::HttpRequest(self.req))
    }
}

/// Requests read and not yet answered, per (process, connection).
#[derive(Debug)]
pub struct Pairing {
    id_header: String,
    open: HashMap<(u32, u64), Open>,
}

impl Pairing {
    /// Pairs requests whose id is in the header `id_header`.
    pub fn new(id_header: &str) -> Self {
        Pairing { id_header: id_header.to_owned(), open: HashMap::new() }
    }

    /// Takes a chunk; returns the requests it completes or supersedes.
    pub fn chunk(&mut self, c: &HttpChunkView<'_>) -> Vec<Event> {
        let key = (c.hdr.tgid, c.conn);
        let mut done = Vec::new();
        if !c.request {
            if let Some(mut open) = self.open.remove(&key) {
                open.req.response_ns = Some(c.hdr.ts_ns);
                open.req.status = parse_status(c.data);
                open.req.plugin_inode = Some(c.plugin_inode).filter(|&i| i != 0);
                done.extend(open.event());
            }
            return done;
        }
        // More of a header block, or of a request line, that came in pieces.
        if let Some(open) = self.open.get_mut(&key).filter(|o| !o.complete) {
            let room = MAX_HEAD - open.head.len();
            open.head.extend_from_slice(&c.data[..c.data.len().min(room)]);
            open.settle(&self.id_header);
            if open.complete && !open.parsed {
                self.open.remove(&key); // a whole header block that is no HTTP request
            }
            return done;
        }
        if !may_start_request(c.data) && parse_request(c.data, &self.id_header).is_none() {
            return done;
        }
        let req = HttpRequestEvent {
            task: Task {
                ts_ns: c.hdr.ts_ns,
                cpu: c.hdr.cpu,
                tgid: c.hdr.tgid,
                tid: c.hdr.tid,
                comm: String::new(),
            },
            fd: c.fd,
            conn: c.conn,
            method: String::new(),
            path: String::new(),
            request_id: None,
            response_ns: None,
            status: None,
            closed_ns: None,
            plugin_inode: None,
        };
        let mut open = Open { req, head: c.data.to_vec(), complete: false, parsed: false };
        open.settle(&self.id_header);
        // A request whose response was never seen goes out as it is.
        done.extend(self.open.insert(key, open).and_then(Open::event));
        done
    }

    /// Takes a connection's close: the request it left unanswered, if any.
    pub fn closed(&mut self, c: &TcpConnEvent) -> Option<Event> {
        if c.op != ConnOp::Close {
            return None;
        }
        let mut open = self.open.remove(&(c.task.tgid, c.conn))?;
        open.req.closed_ns = Some(c.task.ts_ns);
        open.req.plugin_inode = c.plugin_inode;
        open.event()
    }

    /// The requests still unanswered when the trace ends, in arrival order.
    pub fn finish(self) -> Vec<Event> {
        let mut left: Vec<HttpRequestEvent> =
            self.open.into_values().filter(|o| o.parsed).map(|o| o.req).collect();
        left.sort_by_key(|r| r.task.ts_ns);
        left.into_iter().map(Event::HttpRequest).collect()
    }
}

#[cfg(test)]
mod tests {
    use probe_common::EventHeader;

    use super::*;

    fn chunk(ts: u64, conn: u64, request: bool, data: &[u8]) -> HttpChunkView<'_> {
        let hdr = EventHeader { kind: probe_common::kind::HTTP_CHUNK, cpu: 0, ts_ns: ts, tgid: 7, tid: 7 };
        HttpChunkView { hdr, request, fd: 9, conn, plugin_inode: if request { 0 } else { 77 }, data }
    }

    fn only(evs: Vec<Event>) -> HttpRequestEvent {
        match evs.as_slice() {
            [Event::HttpRequest(r)] => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_and_its_response_make_one_event() {
        let mut p = Pairing::new("x-request-id");
        assert!(p.chunk(&chunk(10, 1, true, b"GET /js HTTP/1.1\r\nx-request-id: a\r\n\r\n")).is_empty());
        // A response on another connection pairs with nothing.
        assert!(p.chunk(&chunk(11, 2, false, b"HTTP/1.1 200 OK")).is_empty());
        let r = only(p.chunk(&chunk(12, 1, false, b"HTTP/1.1 502 Bad Gateway")));
        assert_eq!(
            (r.task.ts_ns, r.request_id.as_deref(), r.response_ns, r.status, r.plugin_inode),
            (10, Some("a"), Some(12), Some(502), Some(77))
        );
        assert!(p.finish().is_empty());
    }

    #[test]
    fn unanswered_requests_end_at_the_close_or_the_trace_end() {
        let mut p = Pairing::new("x-request-id");
        p.chunk(&chunk(10, 1, true, b"GET /a HTTP/1.1\r\n\r\n"));
        p.chunk(&chunk(11, 2, true, b"GET /b HTTP/1.1\r\n\r\n"));
        let close = TcpConnEvent {
            task: Task { ts_ns: 20, cpu: 0, tgid: 7, tid: 7, comm: String::new() },
            op: ConnOp::Close,
            fd: 9,
            conn: 1,
            local: String::new(),
            peer: String::new(),
            requests: 1,
            unanswered: true,
            plugin_inode: Some(55),
        };
        let Some(Event::HttpRequest(r)) = p.closed(&close) else { panic!("the close ends /a") };
        assert_eq!(
            (r.path.as_str(), r.closed_ns, r.status, r.plugin_inode),
            ("/a", Some(20), None, Some(55))
        );
        let left = p.finish();
        assert!(
            matches!(left.as_slice(), [Event::HttpRequest(r)] if r.path == "/b" && r.closed_ns.is_none())
        );
    }

    #[test]
    fn a_header_block_in_pieces_is_put_together() {
        let mut p = Pairing::new("x-request-id");
        p.chunk(&chunk(10, 1, true, b"GET /js HTTP/1.1\r\nx-request-"));
        p.chunk(&chunk(11, 1, true, b"id: "));
        p.chunk(&chunk(12, 1, true, b"r-9\r\n\r\n"));
        let r = only(p.chunk(&chunk(13, 1, false, b"HTTP/1.1 200 OK")));
        assert_eq!((r.task.ts_ns, r.request_id.as_deref()), (10, Some("r-9")));
        // Once complete, the next chunk is the next request (pipelined): the first goes out.
        p.chunk(&chunk(20, 1, true, b"GET /a HTTP/1.1\r\n\r\n"));
        let first = only(p.chunk(&chunk(21, 1, true, b"GET /b HTTP/1.1\r\n\r\n")));
        assert_eq!((first.path.as_str(), first.status), ("/a", None));
    }

    #[test]
    fn a_request_line_in_pieces_is_put_together() {
        let mut p = Pairing::new("x-request-id");
        // A client that writes the request in small pieces: nginx reads `GET ` alone.
        assert!(p.chunk(&chunk(10, 1, true, b"GET ")).is_empty());
        p.chunk(&chunk(11, 1, true, b"/alpha HTTP/1.1\r\nx-request-id: c0-7\r\n\r\n"));
        let r = only(p.chunk(&chunk(12, 1, false, b"HTTP/1.1 200 OK")));
        assert_eq!(
            (r.task.ts_ns, r.method.as_str(), r.path.as_str(), r.request_id.as_deref()),
            (10, "GET", "/alpha", Some("c0-7"))
        );
        // A start that never becomes a request line is dropped at its end or its answer.
        p.chunk(&chunk(20, 2, true, b"GE"));
        p.chunk(&chunk(21, 2, true, b"T\r\n\r\n"));
        assert!(p.chunk(&chunk(22, 2, false, b"HTTP/1.1 400 Bad")).is_empty());
        p.chunk(&chunk(30, 3, true, b"POST /x"));
        assert!(p.finish().is_empty());
    }

    #[test]
    fn bytes_that_are_not_http_are_dropped() {
        let mut p = Pairing::new("x-request-id");
        assert!(p.chunk(&chunk(10, 1, true, b"\x16\x03\x01\x02\x00")).is_empty());
        assert!(p.finish().is_empty());
    }
}
