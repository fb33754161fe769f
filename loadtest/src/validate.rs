//! Response validation: turns a status, a reflection body or a transport error into a verdict
//! with a short failure tag. Tags become keys in goose's error table and in our summary, so
//! they never carry a URL, port or request id.

use serde_json::Value;
use shared::requests::Failure;

use crate::endpoint::Check;

/// What a response tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Why the request failed, or `None` when it passed.
    pub failure: Option<Failure>,
    /// The `x-request-id` the upstream saw, if the body is a reflection echo carrying one.
    pub echoed_request_id: Option<String>,
}

impl Verdict {
    /// A failure with no reflection body to read an echoed id from.
    pub fn failed(failure: Failure) -> Self {
        Verdict { failure: Some(failure), echoed_request_id: None }
    }
}

/// Checks one answered request against what its endpoint requires; `has_response_header` says
/// whether the response carried the header a [`Check::Response`] names.
pub fn check_endpoint(status: u16, body: &[u8], check: Check, has_response_header: bool) -> Verdict {
    match check {
        Check::Reflected(h) => check_response(status, body, Some(h)),
        Check::Status => check_response(status, body, None),
        Check::Response(_) => {
            let mut v = check_response(status, body, None);
            if v.failure.is_none() && !has_response_header {
                v.failure = Some(Failure::HeaderMissing);
            }
            v
        }
    }
}

/// Checks one answered request: status 200 and, when `required_header` is given, that header
/// among the request headers the reflection upstream echoes in `body`.
pub fn check_response(status: u16, body: &[u8], required_header: Option<&str>) -> Verdict {
    let headers = echoed_headers(body);
    let echoed_request_id = headers.as_ref().and_then(|h| header_text(h.get("x-request-id")?));
    let failure = if status != 200 {
        Some(Failure::Status(status))
    } else {
        match (required_header, &headers) {
            (None, _) => None,
            (Some(_), None) => Some(Failure::NotReflection),
            (Some(name), Some(h)) if !h.contains_key(name) => Some(Failure::HeaderMissing),
            (Some(_), Some(_)) => None,
        }
    };
    Verdict { failure, echoed_request_id }
}

/// The `headers` object of a reflection body, or `None` if the body is not one.
fn echoed_headers(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(mut top) => match top.remove("headers")? {
            Value::Object(headers) => Some(headers),
            _ => None,
        },
        _ => None,
    }
}

/// A header value as reflection writes it (a string), or as a list of strings (the original
/// reproduction's reflector).
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items.first().and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// What a transport error was: a timeout, a refused or failed connect, or the innermost cause
/// (e.g. "connection closed before message completed").
pub fn describe_error(err: &reqwest::Error) -> Failure {
    if err.is_timeout() {
        return Failure::TimedOut;
    }
    // reqwest's own message names the URL; without a cause, say only what kind of error it was.
    let cause = match std::error::Error::source(err) {
        None => kind(err).to_string(),
        Some(mut root) => {
            while let Some(source) = root.source() {
                root = source;
            }
            root.to_string()
        }
    };
    if err.is_connect() { Failure::Connect(cause) } else { Failure::Transport(cause) }
}

fn kind(err: &reqwest::Error) -> &'static str {
    if err.is_body() {
        "response body error"
    } else if err.is_decode() {
        "response decode error"
    } else if err.is_redirect() {
        "redirect error"
    } else if err.is_request() {
        "request error"
    } else {
        "http error"
    }
}

/// The stand-in gateway's `x-standin-worker` response header: the nginx worker that answered.
pub fn worker_pid(headers: &reqwest::header::HeaderMap) -> Option<u32> {
    headers.get("x-standin-worker")?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH: &[u8] =
        br#"{"method":"GET","path":"/python","headers":{"x-pythonplugin":"foobar","x-request-id":"r-1"}}"#;
    const WITHOUT: &[u8] = br#"{"method":"GET","path":"/python","headers":{"x-request-id":"r-2"}}"#;

    #[test]
    fn header_present_passes() {
        let v = check_response(200, WITH, Some("x-pythonplugin"));
        assert_eq!(v, Verdict { failure: None, echoed_request_id: Some("r-1".into()) });
    }

    #[test]
    fn header_missing_fails_with_original_tag() {
        let v = check_response(200, WITHOUT, Some("x-pythonplugin"));
        assert_eq!(v.failure, Some(Failure::HeaderMissing));
        assert_eq!(v.failure.unwrap().to_string(), "plugin header missing", "the reproduction's wording");
        assert_eq!(v.echoed_request_id.as_deref(), Some("r-2"));
        // Another plugin's header does not count.
        assert_eq!(check_response(200, WITH, Some("x-jsplugin")).failure, Some(Failure::HeaderMissing));
    }

    #[test]
    fn status_and_body_failures() {
        assert_eq!(check_response(503, WITH, Some("x-pythonplugin")).failure, Some(Failure::Status(503)));
        assert_eq!(check_response(204, b"", None).failure, Some(Failure::Status(204)));
        assert_eq!(
            check_response(200, b"<html>", Some("x-pythonplugin")).failure,
            Some(Failure::NotReflection)
        );
        assert_eq!(check_response(200, br#"{"headers":1}"#, Some("x")).failure, Some(Failure::NotReflection));
    }

    #[test]
    fn no_header_check_only_needs_200() {
        assert_eq!(check_response(200, WITHOUT, None).failure, None);
        // An operator's route: its response header, or the status alone.
        let own = Check::Response("x-auth-plugin");
        assert_eq!(check_endpoint(200, b"ok", own, true).failure, None);
        assert_eq!(check_endpoint(200, b"ok", own, false).failure, Some(Failure::HeaderMissing));
        assert_eq!(check_endpoint(502, b"ok", own, true).failure, Some(Failure::Status(502)));
        assert_eq!(check_endpoint(200, b"ok", Check::Status, false).failure, None);
        assert_eq!(
            check_response(200, b"not json", None),
            Verdict { failure: None, echoed_request_id: None }
        );
    }

    #[test]
    fn list_valued_headers_are_accepted() {
        let body = br#"{"headers":{"x-goplugin":["a"],"x-request-id":["r-3"]}}"#;
        let v = check_response(200, body, Some("x-goplugin"));
        assert_eq!(v, Verdict { failure: None, echoed_request_id: Some("r-3".into()) });
    }

    #[test]
    fn worker_pid_header() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(worker_pid(&h), None);
        h.insert("x-standin-worker", "4242".parse().unwrap());
        assert_eq!(worker_pid(&h), Some(4242));
        h.insert("x-standin-worker", "nope".parse().unwrap());
        assert_eq!(worker_pid(&h), None);
    }

    #[tokio::test]
    async fn refused_connect_is_tagged_without_url() {
        // A port that was just free: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/go")).send().await.unwrap_err();
        let tag = describe_error(&err).to_string();
        assert!(tag.starts_with("connect error: "), "{tag}");
        assert!(!tag.contains("127.0.0.1"), "{tag}");
    }
}
