//! The HTTP/1.x bytes the probe copies, parsed at once into the few fields the tool keeps: a
//! request's method, path and request id, a response's status.
//!
//! The bytes are hostile: any client can send anything to a traced gateway. The parser looks at
//! a bounded prefix, never indexes out of bounds, and caps everything it returns.

/// Longest method kept (`OPTIONS` is 7).
const MAX_METHOD: usize = 16;
/// Longest path kept; a longer one is cut.
pub const MAX_PATH: usize = 256;
/// Longest request id kept; a longer one is cut.
pub const MAX_ID: usize = 128;
/// Header lines looked at, at most.
const MAX_HEADERS: usize = 100;

/// The start of a request, as far as the tool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStart {
    /// e.g. `GET`.
    pub method: String,
    /// e.g. `/js`, cut to [`MAX_PATH`] bytes.
    pub path: String,
    /// The request-id header's value, cut to [`MAX_ID`] bytes.
    pub request_id: Option<String>,
}

/// Lines of `bytes` split at `\n`, without their `\r`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Text of at most `max` bytes of `bytes`, printable ASCII only (others become `?`).
fn text(bytes: &[u8], max: usize) -> String {
    bytes.iter().take(max).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect()
}

/// Parses a request's first bytes; `None` when they do not start with an HTTP/1.x request line.
/// `id_header` is matched without regard to case.
pub fn parse_request(bytes: &[u8], id_header: &str) -> Option<RequestStart> {
    let mut it = lines(bytes);
    let first = it.next()?;
    let mut parts = first.splitn(3, |&b| b == b' ');
    let method = parts.next()?;
    let path = parts.next()?;
    let version = parts.next()?;
    let is_token = |m: &[u8]| !m.is_empty() && m.len() <= MAX_METHOD && m.iter().all(u8::is_ascii_uppercase);
    if !is_token(method) || path.is_empty() || !version.starts_with(b"HTTP/1.") {
        return None;
    }
    let mut request_id = None;
    for line in it.take(MAX_HEADERS) {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        if name.eq_ignore_ascii_case(id_header.as_bytes()) {
            let value = value.get(1..).unwrap_or_default().trim_ascii();
            request_id = Some(text(value, MAX_ID));
            break;
        }
    }
    Some(RequestStart { method: text(method, MAX_METHOD), path: text(path, MAX_PATH), request_id })
}

/// True when `bytes` may be the first piece of a request line cut short by the client's writes
/// (`GET /a` before ` HTTP/1.1`): no line end yet, and a method token, or the start of one, first.
pub fn may_start_request(bytes: &[u8]) -> bool {
    let method = bytes.split(|&b| b == b' ').next().unwrap_or_default();
    !bytes.is_empty()
        && !bytes.contains(&b'\n')
        && method.len() <= MAX_METHOD
        && method.iter().all(u8::is_ascii_uppercase)
}

/// The status code of a response's first bytes (`HTTP/1.1 200 OK`).
pub fn parse_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "x-request-id";

    #[test]
    fn reads_method_path_and_the_id_header() {
        let r = parse_request(b"GET /js?a=1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-17\r\n\r\n", ID).unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.request_id.as_deref()),
            ("GET", "/js?a=1", Some("r-17"))
        );
        // Another header name, and no header at all.
        let r = parse_request(b"POST / HTTP/1.0\r\ntrace: t-1\r\n\r\n", "Trace").unwrap();
        assert_eq!(r.request_id.as_deref(), Some("t-1"));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\nx-request-id: late", ID).unwrap().request_id, None);
        // Cut in the middle of the headers: what is there counts.
        let r = parse_request(b"GET /py HTTP/1.1\r\nx-request-id: abc", ID).unwrap();
        assert_eq!(r.request_id.as_deref(), Some("abc"));
    }

    #[test]
    fn refuses_what_is_not_a_request_line() {
        for bad in
            [&b""[..], b"\r\n", b"get / HTTP/1.1", b"GET  HTTP/1.1", b"GET / HTTP/2", b"\x16\x03\x01TLS"]
        {
            assert_eq!(parse_request(bad, ID), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_status_codes() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 502"), Some(502));
        for bad in [&b"HTTP/1.1 20"[..], b"HTTP/2 200", b"HTTP/1.1 2x0", b"", b"HTTP/1.1200 OK"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }

    /// A small deterministic generator (xorshift64*), so the property test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn a_request_line_cut_short_may_start_a_request() {
        for yes in [&b"GET "[..], b"GE", b"GET /alpha", b"POST /x HTTP/1"] {
            assert!(may_start_request(yes), "{yes:?}");
        }
        for no in [&b""[..], b"get /", b"\x16\x03\x01", b"GET /\r\n", b"VERYLONGMETHODNAMEXX /"] {
            assert!(!may_start_request(no), "{no:?}");
        }
    }

    /// A million inputs: random bytes, and valid requests with random bytes spliced in. The
    /// parser must not panic, and what it returns stays within its caps.
    #[test]
    fn a_million_hostile_inputs_neither_panic_nor_grow_the_output() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seed = b"GET /python?q=1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: r-0001\r\nAccept: */*\r\n\r\n";
        let alphabet = b"GET /HTP1.\r\n: x-request-id\x00\xff";
        let mut buf = Vec::with_capacity(probe_common::tcp::HTTP_CHUNK_LEN);
        for case in 0..1_000_000 {
            buf.clear();
            let len = rng.below(probe_common::tcp::HTTP_CHUNK_LEN + 1);
            if case % 2 == 0 {
                // Bytes from a small alphabet, so request-like shapes come up often.
                buf.extend((0..len).map(|_| alphabet[rng.below(alphabet.len())]));
            } else {
                buf.extend_from_slice(&seed[..len.min(seed.len())]);
                for _ in 0..rng.below(4) {
                    let at = rng.below(buf.len().max(1));
                    if let Some(b) = buf.get_mut(at) {
                        *b = rng.next() as u8;
                    }
                }
            }
            if let Some(r) = parse_request(&buf, ID) {
                assert!(r.method.len() <= MAX_METHOD && r.path.len() <= MAX_PATH);
                assert!(r.request_id.is_none_or(|id| id.len() <= MAX_ID));
            }
            let _ = parse_status(&buf);
            let _ = may_start_request(&buf);
        }
    }
}
