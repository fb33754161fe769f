//! The goose scenarios: one per endpoint, equal weights, each running one transaction that sends
//! a GET with a unique `x-request-id`, validates the answer, logs it, and tells goose about a
//! failure with the same tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use goose::prelude::*;

use crate::endpoint::{Check, Endpoint};
use crate::reqlog::{Record, RecordSender, Stamp};
use crate::validate::{Verdict, check_endpoint, describe_error, worker_pid};

/// The request id header every request carries.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What every transaction shares.
pub struct Shared {
    log: RecordSender,
    /// Distinguishes this run's ids from another run's in a gateway's logs.
    run_tag: String,
    /// One counter for all users, so ids are unique across the run.
    seq: AtomicU64,
    header_check: bool,
}

impl Shared {
    /// State for one run; `header_check` off means only the status is validated.
    pub fn new(log: RecordSender, header_check: bool) -> Arc<Self> {
        let now = Stamp::now().unix_ns;
        let run_tag = format!("{:08x}", (now ^ (u64::from(std::process::id()) << 20)) as u32);
        Arc::new(Shared { log, run_tag, seq: AtomicU64::new(0), header_check })
    }

    /// The next request id: `<run>-<user>-<seq>`.
    fn next_id(&self, user: usize) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{user}-{seq}", self.run_tag)
    }
}

/// The scenario for one endpoint (weight 1, so users are spread evenly).
pub fn scenario(endpoint: Endpoint, shared: Arc<Shared>) -> Result<Scenario, GooseError> {
    let function: TransactionFunction = Arc::new(move |user| {
        let shared = Arc::clone(&shared);
        Box::pin(async move { hit(user, endpoint, &shared).await })
    });
    let name = format!("Loadtest {}", endpoint.path());
    Scenario::new(&name)
        .register_transaction(Transaction::new(function).set_name(endpoint.path()))
        .set_weight(1)
}

async fn hit(user: &mut GooseUser, endpoint: Endpoint, shared: &Shared) -> TransactionResult {
    let path = endpoint.path();
    let request_id = shared.next_id(user.weighted_users_index);
    let builder = user.get_request_builder(&GooseMethod::Get, path)?.header(REQUEST_ID_HEADER, &request_id);
    let request = GooseRequest::builder().path(path).set_request_builder(builder).build();

    let start = Stamp::now();
    let mut goose = user.request(request).await?;
    let (status, worker, verdict) = match goose.response {
        Ok(response) => {
            let status = response.status().as_u16();
            let worker = worker_pid(response.headers());
            let check = if shared.header_check { endpoint.check() } else { Check::Status };
            let has_header = match check {
                Check::Response(h) => response.headers().contains_key(h),
                _ => false,
            };
            let verdict = match response.bytes().await {
                Ok(body) => check_endpoint(status, &body, check, has_header),
                Err(e) => Verdict::failed(describe_error(&e)),
            };
            (Some(status), worker, verdict)
        }
        Err(ref e) => (None, None, Verdict::failed(describe_error(e))),
    };
    let end = Stamp::now();

    shared.log.send(Record {
        start_unix_ns: start.unix_ns,
        end_unix_ns: end.unix_ns,
        start_mono_ns: start.mono_ns,
        end_mono_ns: end.mono_ns,
        endpoint: path,
        request_id,
        user: user.weighted_users_index,
        status,
        failure: verdict.failure.clone(),
        worker_pid: worker,
        echoed_request_id: verdict.echoed_request_id,
    });

    match verdict.failure {
        // goose counts a request it already failed (status, transport) only once.
        Some(failure) => user.set_failure(&failure.to_string(), &mut goose.request, None, None),
        None => Ok(()),
    }
}
