//! `--endpoint PATH[=HEADER]`, an operator's own route: the path to load and, optionally, the
//! response header whose presence shows that the route's plugin ran. Parsed once, for the load
//! test and for `cargo xtask run`, with one-line errors.

/// One route to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The request path (with its query, if any), starting with `/`.
    pub path: String,
    /// The response header (lower case) a good response carries; `None`: the status alone.
    pub header: Option<String>,
}

/// Whether `b` may appear in a header name (RFC 9110 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `PATH[=HEADER]`.
pub fn parse(spec: &str) -> Result<EndpointSpec, String> {
    let (path, header) = match spec.split_once('=') {
        Some((p, h)) => (p, Some(h)),
        None => (spec, None),
    };
    if !path.starts_with('/') {
        return Err(format!("--endpoint {spec:?}: the path must start with \"/\""));
    }
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!("--endpoint {spec:?}: the path has a space or control character"));
    }
    let header = match header {
        None => None,
        Some("") => return Err(format!("--endpoint {spec:?}: an empty header name after \"=\"")),
        Some(h) if !h.bytes().all(is_tchar) => {
            return Err(format!("--endpoint {spec:?}: {h:?} is not a header name"));
        }
        Some(h) => Some(h.to_ascii_lowercase()),
    };
    Ok(EndpointSpec { path: path.to_string(), header })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_and_without_a_header() {
        assert_eq!(parse("/ok").unwrap(), EndpointSpec { path: "/ok".into(), header: None });
        assert_eq!(
            parse("/api/v1/orders?x=1=X-My-Plugin").unwrap_err(),
            "--endpoint \"/api/v1/orders?x=1=X-My-Plugin\": \"1=X-My-Plugin\" is not a header name"
        );
        assert_eq!(
            parse("/orders=X-My-Plugin").unwrap(),
            EndpointSpec { path: "/orders".into(), header: Some("x-my-plugin".into()) }
        );
    }

    #[test]
    fn bad_input_is_one_clear_line() {
        for (spec, why) in [
            ("", "the path must start with"),
            ("ok", "the path must start with"),
            ("=x-h", "the path must start with"),
            ("/a b", "space or control"),
            ("/ok=", "an empty header name"),
            ("/ok=bad header", "is not a header name"),
            ("/ok=x:y", "is not a header name"),
        ] {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(why) && !err.contains('\n'), "{spec:?}: {err}");
        }
    }
}
