//! The endpoints under load: one per plugin language, each with the header its plugin adds to
//! the request on the way to the upstream.

/// One gateway route whose plugin must add a header before the request reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Go,
    Python,
    Js,
}

impl Endpoint {
    /// Every endpoint, in the order scenarios are registered.
    pub const ALL: [Endpoint; 3] = [Endpoint::Go, Endpoint::Python, Endpoint::Js];

    /// The short name used by `--endpoints`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Go => "go",
            Endpoint::Python => "python",
            Endpoint::Js => "js",
        }
    }

    /// The request path, also the key in goose's tables and in the summary line.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Go => "/go",
            Endpoint::Python => "/python",
            Endpoint::Js => "/js",
        }
    }

    /// The (lower-case) header the plugin sets on the upstream request.
    pub fn plugin_header(self) -> &'static str {
        match self {
            Endpoint::Go => "x-goplugin",
            Endpoint::Python => "x-pythonplugin",
            Endpoint::Js => "x-jsplugin",
        }
    }

    /// Parses a comma-separated list such as `go,python,js`; duplicates are dropped, order kept.
    pub fn parse_list(list: &str) -> Result<Vec<Endpoint>, String> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let word = word.trim_start_matches('/');
            let endpoint = Endpoint::ALL
                .into_iter()
                .find(|e| e.name().eq_ignore_ascii_case(word))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(Endpoint::parse_list("go,python,js").unwrap(), Endpoint::ALL.to_vec());
        assert_eq!(Endpoint::parse_list("js, /python,js").unwrap(), vec![Endpoint::Js, Endpoint::Python]);
        assert!(Endpoint::parse_list("").is_err());
        assert!(Endpoint::parse_list("go,lua").is_err());
    }
}
