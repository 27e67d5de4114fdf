//! `ExecuteService`: one execution attempt, read → decode → decide → audit → respond.
//!
//! Reads as SPEC §6. Its error type is `Infallible`: every outcome, a panic included, becomes
//! a decision with an audit record, and nothing is answered ALLOW before its record is written.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use tokio::sync::OwnedSemaphorePermit;

use crate::approval::Spend;
use crate::caller::Caller;
use crate::canonical;
use crate::decision::{
    no_profile_hash, Attempt, AuditBlock, Decision, ReasonCode, SpendOutcome, Timestamps,
};
use crate::metrics::InFlight;
use crate::request::{self, Rejection};

use super::body::read_body;
use super::{not_an_attempt, Gate};

pub const EXECUTE_PATH: &str = "/v1/execute";

#[derive(Clone)]
pub struct ExecuteService {
    gate: Arc<Gate>,
}

impl ExecuteService {
    pub fn new(gate: Arc<Gate>) -> Self {
        ExecuteService { gate }
    }
}

impl<B> tower::Service<Request<B>> for ExecuteService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let gate = Arc::clone(&self.gate);
        Box::pin(async move { Ok(handle(gate, request).await) })
    }
}

async fn handle<B>(gate: Arc<Gate>, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if request.uri().path() != EXECUTE_PATH {
        return not_an_attempt(
            StatusCode::NOT_FOUND,
            "not found: the only route is POST /v1/execute",
        );
    }
    if request.method() != Method::POST {
        let mut response = not_an_attempt(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use POST /v1/execute",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    let _in_flight = InFlight::enter(&gate.metrics.in_flight);
    let arrival = Arrival {
        wall: SystemTime::now(),
        clock: Instant::now(),
    };
    // Shedding load before reading the body keeps an overload cheap; the refusal is still a
    // decision with its record.
    let Ok(permit) = Arc::clone(&gate.in_flight).try_acquire_owned() else {
        let rejection = Rejection {
            reason: ReasonCode::Overloaded,
            request_hash: canonical::sha256_prefixed(b""),
            request_id: None,
            profile: None,
            detail: format!(
                "the gate is deciding {} requests already; retry later",
                gate.limits.max_in_flight
            ),
            normalized: None,
        };
        let decision = (gate.decide)(
            Attempt::Rejected(&rejection),
            &gate.context,
            &Caller::anonymous(),
            arrival.wall,
        );
        return record_and_respond(&gate, decision, arrival, arrival.wall, None).await;
    };
    // Who is calling, from the head alone: a caller that cannot prove it costs no body read.
    let peer = request
        .extensions()
        .get::<super::PeerCaller>()
        .and_then(|p| p.0.as_ref());
    let caller = match gate
        .auth
        .authenticate(request.uri(), request.headers(), peer)
    {
        Ok(caller) => caller,
        Err(failure) => {
            let rejection = Rejection {
                reason: ReasonCode::CallerUnauthenticated,
                request_hash: canonical::sha256_prefixed(b""),
                request_id: None,
                profile: None,
                detail: failure.description.clone(),
                normalized: None,
            };
            let decision = (gate.decide)(
                Attempt::Rejected(&rejection),
                &gate.context,
                &Caller::anonymous(),
                arrival.wall,
            );
            let mut response =
                record_and_respond(&gate, decision, arrival, arrival.wall, Some(permit)).await;
            // RFC 6750 §3: 401 with a challenge. A 503 (the record failed) stays a 503.
            if response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                if let Some(Ok(challenge)) = failure.challenge().map(|c| HeaderValue::from_str(&c))
                {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
            return response;
        }
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = read_body(
        request.into_body(),
        declared,
        gate.max_body_bytes,
        gate.body_timeout,
    )
    .await;

    let attempt = AssertUnwindSafe(decide_and_record(&gate, &body, arrival, &caller, permit))
        .catch_unwind()
        .await;
    match attempt {
        Ok(response) => response,
        Err(_) => {
            // The decision or its audit panicked: what was decided is unknown, so the answer
            // is an INTERNAL_ERROR of its own, recorded like any other decision.
            tracing::error!("panic while deciding; answering INTERNAL_ERROR");
            let mut decision = internal_error(&gate, body.as_ref().ok());
            decision.caller = caller;
            record_and_respond(&gate, decision, arrival, SystemTime::now(), None).await
        }
    }
}

async fn decide_and_record(
    gate: &Gate,
    body: &Result<Bytes, super::body::BodyFailure>,
    arrival: Arrival,
    caller: &Caller,
    permit: OwnedSemaphorePermit,
) -> Response<Full<Bytes>> {
    // The decision time, at the precision the audit record keeps, so a replay at the recorded
    // `decided_at` sees exactly the instant this decision saw.
    let now = to_micros(SystemTime::now());
    let decision = match body {
        Ok(bytes) => decide_body(gate, bytes, caller, now),
        Err(failure) => {
            let rejection = Rejection {
                reason: failure.reason,
                // The body was not read in full: its hash is that of zero bytes.
                request_hash: canonical::sha256_prefixed(b""),
                request_id: None,
                profile: None,
                detail: failure.detail.clone(),
                normalized: None,
            };
            (gate.decide)(Attempt::Rejected(&rejection), &gate.context, caller, now)
        }
    };
    let decision = spend_approval(gate, decision, now).await;
    record_and_respond(gate, decision, arrival, now, Some(permit)).await
}

/// With `approvals.single_use`, an ALLOW that relied on an approval spends it first; a token
/// spent before (by this gate or, with a shared ledger, any other) turns the ALLOW into a
/// DENY, and a ledger that cannot answer fails closed: DENY, never ALLOW.
async fn spend_approval(gate: &Gate, decision: Decision, now: SystemTime) -> Decision {
    let (Some(ledger), Some(approval)) = (&gate.used_tokens, &decision.approval) else {
        return decision;
    };
    if decision.decision_type != crate::decision::DecisionType::Allow {
        return decision;
    }
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let started = Instant::now();
    let spent = ledger.spend(approval, now_secs).await;
    gate.metrics
        .ledger_spend_duration
        .observe(started.elapsed().as_secs_f64());
    match spent {
        Ok(Spend::Fresh) => decision.after_spend(SpendOutcome::Spent),
        Ok(Spend::AlreadyUsed) => decision.after_spend(SpendOutcome::AlreadyUsed),
        Err(err) => {
            gate.metrics.ledger_failures.inc();
            tracing::error!(error = %err, ledger = ledger.kind(), "approved call denied");
            decision.after_spend(SpendOutcome::LedgerUnavailable)
        }
    }
}

/// Steps 2–9: decode, look the profile up, decide.
fn decide_body(gate: &Gate, bytes: &[u8], caller: &Caller, now: SystemTime) -> Decision {
    match request::decode(bytes) {
        Err(rejection) => (gate.decide)(Attempt::Rejected(&rejection), &gate.context, caller, now),
        Ok(request) => {
            let profile = gate
                .profiles
                .get(&request.profile_id, &request.profile_version);
            let enforced = (gate.decide)(
                Attempt::Request {
                    request: &request,
                    profile: &profile,
                },
                &gate.context,
                caller,
                now,
            );
            if gate.shadow.is_empty() {
                enforced
            } else {
                gate.shadow.annotate(gate, enforced, &request, now)
            }
        }
    }
}

fn internal_error(gate: &Gate, body: Option<&Bytes>) -> Decision {
    let request_hash = canonical::sha256_prefixed(body.map_or(&b""[..], |b| &b[..]));
    Decision::deny(
        ReasonCode::InternalError,
        request_hash,
        None,
        None,
        no_profile_hash(),
        &gate.context.runtime,
        Some("internal error".to_owned()),
    )
}

/// When an execution request arrived: wall time for the record, a monotonic clock for metrics.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    wall: SystemTime,
    clock: Instant,
}

/// Appends the decision's record, then answers. Nothing is answered before its record is
/// written; a record that cannot be written turns the answer into a 503 DENY.
///
/// `deciding` is this request's `max_in_flight` place: it is given back once the decision is
/// recorded, before a call is forwarded, so calls waiting on a tool never crowd out deciding.
async fn record_and_respond(
    gate: &Gate,
    decision: Decision,
    arrival: Arrival,
    decided: SystemTime,
    deciding: Option<OwnedSemaphorePermit>,
) -> Response<Full<Bytes>> {
    let timestamps = Timestamps {
        received_at: rfc3339(arrival.wall),
        decided_at: rfc3339(decided),
    };
    let record = decision.prepared_record(&timestamps, gate.include_request);
    let appending = Instant::now();
    let appended = gate.audit.append_prepared(record).await;
    gate.metrics
        .audit_append_duration
        .observe(appending.elapsed().as_secs_f64());
    let (status, answered, audit) = match appended {
        Ok(receipt) => {
            let block = AuditBlock {
                stream: receipt.stream.to_string(),
                seq: receipt.seq,
                prev_hash: receipt.prev_hash,
                record_hash: receipt.record_hash,
            };
            // The report leaves only once its record exists: the approver can cite it.
            if let Some(notifier) = &gate.notifier {
                notifier.escalated(&decision, &block, decided);
            }
            (StatusCode::OK, decision, Some(block))
        }
        Err(err) => {
            gate.metrics.audit_write_failures.inc();
            tracing::error!(
                provenance_id = %decision.provenance_id,
                error = %err,
                "audit record could not be written; answering AUDIT_WRITE_FAILED"
            );
            let failed = decision.overridden(
                ReasonCode::AuditWriteFailed,
                "the audit record could not be written",
            );
            (StatusCode::SERVICE_UNAVAILABLE, failed, None)
        }
    };
    // Deciding and recording end here; a forwarded call's time is the tool's, measured apart.
    drop(deciding);
    let elapsed = arrival.clock.elapsed();
    gate.metrics.decided(
        answered.decision_type,
        answered.reason,
        elapsed.as_secs_f64(),
    );
    log_decision(gate, &answered, audit.as_ref(), elapsed);
    match (&gate.proxy, &audit) {
        // Proxy mode: only now, with the decision record persisted, may an ALLOW be forwarded;
        // the outcome gets its own record before the answer leaves.
        (Some(proxy), Some(block)) => {
            let mut body = answered.body(audit.as_ref());
            let status = proxy
                .execute(&gate.audit, &gate.metrics, &answered, block, &mut body)
                .await;
            let mut bytes = Vec::with_capacity(BODY_CAPACITY);
            canonical::write_canonical(&body, &mut bytes);
            respond(status, bytes)
        }
        // Decide mode: the decision is the whole answer, written straight to bytes; building
        // it as a `Value` first cost more than the rest of rendering (issue 6).
        _ => {
            let mut bytes = Vec::with_capacity(BODY_CAPACITY);
            answered.write_body(audit.as_ref(), &mut bytes);
            respond(status, bytes)
        }
    }
}

/// One `debug` line per decision, for operators who turn it on
/// (`log.level = "info,ecl_gate::decision=debug"`). Off by default: the audit log already
/// holds every decision, and formatting and writing a second copy to stderr cost the default
/// configuration about a third of its throughput. Tool arguments and snapshots stay out of the
/// line unless `log.include_args` says otherwise: they may hold personal data or secrets.
fn log_decision(gate: &Gate, decision: &Decision, audit: Option<&AuditBlock>, elapsed: Duration) {
    if !tracing::enabled!(target: "ecl_gate::decision", tracing::Level::DEBUG) {
        return;
    }
    let request = decision.normalized_request.as_ref();
    let tool = request
        .and_then(|r| r["tool"]["name"].as_str())
        .unwrap_or("");
    let profile = decision
        .profile
        .as_ref()
        .map(|(id, version)| format!("{id}@{version}"))
        .unwrap_or_default();
    let args = if gate.log_args {
        request.map(|r| {
            String::from_utf8_lossy(&canonical::to_canonical(&r["tool"]["args"])).into_owned()
        })
    } else {
        None
    };
    tracing::debug!(
        target: "ecl_gate::decision",
        provenance_id = %decision.provenance_id,
        decision = decision.decision_type.as_str(),
        reason = decision.reason.as_str(),
        tool,
        profile = %profile,
        caller = %decision.caller.id,
        seq = audit.map(|a| a.seq),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        args,
        "decision"
    );
}

/// Bytes reserved for a response body: a typical decision is 700–900 bytes.
const BODY_CAPACITY: usize = 1024;

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn to_micros(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    crate::rfc3339::micros(t)
}
