//! Which failures each kind of kernel cause can produce: the one table the correlation consults
//! before it blames a cause, for exact and time-window links alike.
//!
//! | cause | failures it can produce |
//! |---|---|
//! | an old worker's exit (its idle keep-alive closes) | the connection closed or reset |
//! | the worker closed the request's connection unanswered | the connection closed or reset |
//! | an old worker closed its idle keep-alive connections at the reload | the connection closed or reset |
//! | a spinning worker | a timeout |
//! | a failed plugin connect, failed plugin I/O, a stale server generation | the plugin's header missing, a 5xx |
//! | (none) | a body that is not the upstream's, a 4xx or other non-200, an unknown client error |
//!
//! A plugin cause must also be on the plugin socket of the request's own endpoint: a refused
//! connect to `jsplugin.socket` cannot fail a `/python` request.

use serde::{Deserialize, Serialize};
use shared::requests::Failure;

/// What the load test saw go wrong, from its failure reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The upstream's echo lacked the plugin's header: the plugin was skipped (fail-open).
    HeaderMissing,
    /// The gateway answered 5xx.
    ServerError,
    /// The client's timeout ran out.
    TimedOut,
    /// The connection was closed, reset or refused under the request.
    Closed,
    /// Something no reload can cause: a foreign body, a 4xx or other status, an unknown error.
    NotReloadable,
}

/// A kind of kernel evidence that can explain a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// A worker's connect to a plugin socket failed (ECONNREFUSED, ENOENT).
    FailedConnect,
    /// A worker's send or receive on a plugin socket failed or hit a closed peer.
    FailedIo,
    /// A worker still talked to a superseded plugin-server generation.
    StaleFlow,
    /// A worker busy-waited in `epoll_wait(…, 0)`.
    Spin,
    /// An old worker exited during the reload.
    OldWorkerExit,
    /// The worker that read the request closed its connection without answering (kernel).
    WorkerClosed,
    /// An old worker closed its idle keep-alive connections at the reload (kernel): a request
    /// sent on one finds it closed.
    KeepaliveClosed,
}

impl CauseKind {
    /// The name written to `report.json` and the tables.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseKind::FailedConnect => "failed_connect",
            CauseKind::FailedIo => "failed_io",
            CauseKind::StaleFlow => "stale_flow",
            CauseKind::Spin => "spin",
            CauseKind::OldWorkerExit => "old_worker_exit",
            CauseKind::WorkerClosed => "worker_closed",
            CauseKind::KeepaliveClosed => "keepalive_closed",
        }
    }

    /// True when the cause is traffic with a plugin server.
    pub fn is_plugin(self) -> bool {
        matches!(self, CauseKind::FailedConnect | CauseKind::FailedIo | CauseKind::StaleFlow)
    }
}

/// Words of transport errors where the gateway's side of the connection went away.
const CLOSED_WORDS: [&str; 5] = ["closed", "reset", "broken pipe", "incomplete", "eof"];

/// Classifies why a request of `requests.jsonl` failed (`None`: no reason was logged).
pub fn classify(reason: Option<&Failure>) -> FailureClass {
    match reason {
        Some(Failure::HeaderMissing) => FailureClass::HeaderMissing,
        Some(Failure::TimedOut) => FailureClass::TimedOut,
        Some(Failure::Status(code)) if (500..600).contains(code) => FailureClass::ServerError,
        Some(Failure::Connect(_)) => FailureClass::Closed,
        Some(Failure::Transport(cause)) => {
            let c = cause.to_ascii_lowercase();
            if c.contains("timeout") || c.contains("timed out") {
                FailureClass::TimedOut
            } else if CLOSED_WORDS.iter().any(|w| c.contains(w)) {
                FailureClass::Closed
            } else {
                FailureClass::NotReloadable
            }
        }
        Some(Failure::Status(_) | Failure::NotReflection) | None => FailureClass::NotReloadable,
    }
}

/// True when `cause` can produce a failure of `class`.
pub fn fits(cause: CauseKind, class: FailureClass) -> bool {
    use CauseKind::*;
    use FailureClass::*;
    match class {
        HeaderMissing | ServerError => cause.is_plugin(),
        TimedOut => cause == Spin,
        Closed => matches!(cause, OldWorkerExit | WorkerClosed | KeepaliveClosed),
        NotReloadable => false,
    }
}

/// True when any cause can produce a failure of `class`.
pub fn reload_can_cause(class: FailureClass) -> bool {
    class != FailureClass::NotReloadable
}

#[cfg(test)]
mod tests {
    use super::*;
    use CauseKind::*;
    use FailureClass::*;

    const CAUSES: [CauseKind; 7] =
        [FailedConnect, FailedIo, StaleFlow, Spin, OldWorkerExit, WorkerClosed, KeepaliveClosed];

    fn fitting(class: FailureClass) -> Vec<CauseKind> {
        CAUSES.into_iter().filter(|&c| fits(c, class)).collect()
    }

    #[test]
    fn reasons_are_classified_as_the_load_test_words_them() {
        assert_eq!(classify(Some(&Failure::parse("plugin header missing"))), HeaderMissing);
        assert_eq!(classify(Some(&Failure::parse("status 500"))), ServerError);
        assert_eq!(classify(Some(&Failure::parse("status 503"))), ServerError);
        assert_eq!(classify(Some(&Failure::parse("status 404"))), NotReloadable);
        assert_eq!(classify(Some(&Failure::parse("status 204"))), NotReloadable);
        assert_eq!(classify(Some(&Failure::parse("operation timed out"))), TimedOut);
        assert_eq!(classify(Some(&Failure::parse("connection closed before message completed"))), Closed);
        assert_eq!(classify(Some(&Failure::parse("connection reset by peer (os error 104)"))), Closed);
        assert_eq!(
            classify(Some(&Failure::parse("connect error: Connection refused (os error 111)"))),
            Closed
        );
        assert_eq!(classify(Some(&Failure::parse("response body is not reflection JSON"))), NotReloadable);
        assert_eq!(classify(Some(&Failure::parse("response decode error"))), NotReloadable);
        assert_eq!(classify(Some(&Failure::parse(""))), NotReloadable);
    }

    #[test]
    fn each_row_of_the_table() {
        assert_eq!(fitting(Closed), vec![OldWorkerExit, WorkerClosed, KeepaliveClosed]);
        assert_eq!(fitting(TimedOut), vec![Spin]);
        assert_eq!(fitting(HeaderMissing), vec![FailedConnect, FailedIo, StaleFlow]);
        assert_eq!(fitting(ServerError), vec![FailedConnect, FailedIo, StaleFlow]);
        assert_eq!(fitting(NotReloadable), Vec::<CauseKind>::new());
        assert!(!reload_can_cause(NotReloadable) && reload_can_cause(Closed));
    }
}
