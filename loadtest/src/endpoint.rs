//! The endpoints under load: the three plugin routes of the stand-in and the reproduction, each
//! with the header its plugin adds to the request on the way to the echo upstream; or an
//! operator's own routes (`--endpoint PATH[=HEADER]`), checked by a response header or by the
//! status alone.

/// What a good response shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The echo upstream's body lists this (lower-case) request header: the plugin set it.
    Reflected(&'static str),
    /// The response carries this (lower-case) header.
    Response(&'static str),
    /// A 200 is enough.
    Status,
}

/// One gateway route under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    path: &'static str,
    check: Check,
}

impl Endpoint {
    /// The Go plugin's route.
    pub const GO: Endpoint = Endpoint { path: "/go", check: Check::Reflected("x-goplugin") };
    /// The Python plugin's route.
    pub const PYTHON: Endpoint = Endpoint { path: "/python", check: Check::Reflected("x-pythonplugin") };
    /// The JavaScript plugin's route.
    pub const JS: Endpoint = Endpoint { path: "/js", check: Check::Reflected("x-jsplugin") };
    /// Every plugin route, in the order scenarios are registered.
    pub const ALL: [Endpoint; 3] = [Endpoint::GO, Endpoint::PYTHON, Endpoint::JS];

    /// The request path, also the key in goose's tables and in the summary line.
    pub fn path(self) -> &'static str {
        self.path
    }

    /// What a good response shows.
    pub fn check(self) -> Check {
        self.check
    }

    /// Parses a comma-separated list of plugin routes such as `go,python,js`; duplicates are
    /// dropped, order kept.
    pub fn parse_list(list: &str) -> Result<Vec<Endpoint>, String> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let word = word.trim_start_matches('/');
            let endpoint = Endpoint::ALL
                .into_iter()
                .find(|e| e.path[1..].eq_ignore_ascii_case(word))
                .ok_or_else(|| format!("unknown endpoint {word:?} (expected go, python or js)"))?;
            if !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        if out.is_empty() {
            return Err("--endpoints needs at least one of go, python, js".to_string());
        }
        Ok(out)
    }

    /// An operator's route from `--endpoint PATH[=HEADER]`. Its strings live as long as the
    /// program (a few per run), so records can keep borrowing the path.
    pub fn parse_spec(spec: &str) -> Result<Endpoint, String> {
        let s = shared::endpoint::parse(spec)?;
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let check = s.header.map_or(Check::Status, |h| Check::Response(leak(h)));
        Ok(Endpoint { path: leak(s.path), check })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(Endpoint::parse_list("go,python,js").unwrap(), Endpoint::ALL.to_vec());
        assert_eq!(Endpoint::parse_list("js, /python,js").unwrap(), vec![Endpoint::JS, Endpoint::PYTHON]);
        assert!(Endpoint::parse_list("").is_err());
        assert!(Endpoint::parse_list("go,lua").is_err());
    }

    #[test]
    fn parses_an_operators_route() {
        let e = Endpoint::parse_spec("/orders=X-Auth-Plugin").unwrap();
        assert_eq!((e.path(), e.check()), ("/orders", Check::Response("x-auth-plugin")));
        assert_eq!(Endpoint::parse_spec("/ok").unwrap().check(), Check::Status);
        assert!(Endpoint::parse_spec("ok").is_err());
    }
}
