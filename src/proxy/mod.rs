//! Proxy mode: an ALLOWed call is forwarded to its tool, with a grant, and its outcome audited.
//!
//! Owns everything after a decision record is persisted: signing the grant, calling the
//! upstream, appending the `outcome` record (same chain, same `provenance_id`) and adding
//! `execution` to the answer. The order is the guarantee, per call:
//! decide → persist the decision record → forward → persist the outcome record → answer.
//! It must never contact a tool for anything but an ALLOW whose decision record is written
//! (the caller invokes [`Proxy::execute`] only then, and `execute` checks the type again),
//! never send bytes other than the canonical `approved_call.tool_args` the grant hashes, and
//! never return a tool's answer whose outcome record could not be written, and never leave a
//! forwarded call without an outcome record, a stop included (see [`Proxy::stop_forwarding`]).
//!
//! Each upstream has its own bound on calls waiting on it (`max_concurrent`), apart from the
//! gate's `max_in_flight`: a slow tool fills its own slots, never the ones deciding needs.
//!
//! - `config`: the `[upstreams]`, `[grants]`, `[tls]` keys and their validation.
//! - `client`: the pooled HTTP/1.1 + HTTP/2 client over rustls.

pub mod client;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::{watch, Notify, Semaphore};

use crate::audit::AuditLog;
use crate::canonical::{self, Map, Value};
use crate::decision::{AuditBlock, Decision, DecisionType};
use crate::grant::{GrantClaims, GrantSigner, GrantedCall};
use crate::metrics::Metrics;
use crate::profile::ProfileStore;

pub use crate::config::proxy::{url_without_query, ProxyConfig, Upstream};
pub use client::{Answer, ClientError, UpstreamClient, UpstreamError};

/// How long calls cut off at the end of a stop's grace get to write their `shutdown` outcome
/// records and answer their agents (one audit append and one response each): an orchestrator's
/// grace period must exceed `shutdown_grace_ms` plus this.
pub const SHUTDOWN_RECORDING: Duration = Duration::from_secs(5);

/// The forwarding half of the gate in proxy mode.
#[derive(Debug)]
pub struct Proxy {
    upstreams: BTreeMap<String, Upstream>,
    /// Per tool: one permit per call waiting on it (`max_concurrent`).
    slots: BTreeMap<String, Arc<Semaphore>>,
    signer: GrantSigner,
    client: UpstreamClient,
    /// Set once a stop's grace is over: calls still waiting on a tool end as `shutdown`.
    stopping: watch::Sender<bool>,
    forwarding: AtomicUsize,
    idle: Notify,
}

impl Proxy {
    pub fn new(config: &ProxyConfig) -> Result<Proxy, ClientError> {
        let slots = config
            .upstreams
            .iter()
            .map(|(tool, upstream)| {
                (
                    tool.clone(),
                    Arc::new(Semaphore::new(upstream.max_concurrent)),
                )
            })
            .collect();
        Ok(Proxy {
            upstreams: config.upstreams.clone(),
            slots,
            signer: config.signer.clone(),
            client: UpstreamClient::new(config)?,
            stopping: watch::channel(false).0,
            forwarding: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Calls forwarded and not yet recorded.
    pub fn forwarding(&self) -> usize {
        self.forwarding.load(Ordering::Acquire)
    }

    /// Ends the wait on every tool: each call still waiting, and any forwarded from now on,
    /// gets an outcome record with error `shutdown` and its agent an answer saying so. For the
    /// end of a stop's grace period; the tool may or may not have run a call it received.
    pub fn stop_forwarding(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once no forwarded call is left without its outcome record.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a call finishing in between still wakes us.
            notified.as_mut().enable();
            if self.forwarding() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn upstream(&self, tool: &str) -> Option<&Upstream> {
        self.upstreams.get(tool)
    }

    pub fn signer(&self) -> &GrantSigner {
        &self.signer
    }

    pub fn upstreams(&self) -> &BTreeMap<String, Upstream> {
        &self.upstreams
    }

    /// Runs an ALLOWed call whose decision record is persisted at `decision_record`: forwards
    /// it, appends its outcome record and adds `execution` to `answer`. Returns the HTTP status
    /// of the answer: 200, or 503 when the outcome record could not be written (the tool's
    /// answer is then withheld). Anything but an ALLOW is left untouched.
    pub async fn execute(
        self: &Arc<Self>,
        audit: &AuditLog,
        metrics: &Arc<Metrics>,
        decision: &Decision,
        decision_record: &AuditBlock,
        answer: &mut Value,
    ) -> StatusCode {
        // INVARIANT: only an ALLOW, with its approved call, ever reaches a tool.
        if decision.decision_type != DecisionType::Allow || decision.approved_call.is_none() {
            return StatusCode::OK;
        }
        let proxy = Arc::clone(self);
        let (audit, metrics, decision, decision_record) = (
            audit.clone(),
            Arc::clone(metrics),
            decision.clone(),
            decision_record.clone(),
        );
        // Counted from here until its outcome record is written, so a stop can wait for it.
        let counted = Forwarding::enter(self);
        // A task of its own: an agent that hangs up mid-call drops this future, and must not
        // cancel the call half-way and lose its outcome record with it.
        let task = tokio::spawn(async move {
            let _counted = counted;
            proxy
                .forward(&audit, &metrics, &decision, &decision_record)
                .await
        });
        let (status, execution) = match task.await {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "forwarding task failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Value::object([(
                        "error",
                        Value::object([
                            ("kind", "internal".into()),
                            ("message", "internal error".into()),
                        ]),
                    )]),
                )
            }
        };
        if let Value::Object(members) = answer {
            members.insert("execution".into(), execution);
        }
        status
    }

    async fn forward(
        &self,
        audit: &AuditLog,
        metrics: &Metrics,
        decision: &Decision,
        decision_record: &AuditBlock,
    ) -> (StatusCode, Value) {
        let Some((tool, args)) = &decision.approved_call else {
            return (StatusCode::OK, Value::Null);
        };
        let started_at = SystemTime::now();
        // The exact bytes sent, and hashed by the grant: the canonical form of the args.
        let sent = Bytes::from(canonical::to_canonical(args));
        let mut grant = None;
        let (result, duration) = match self.upstreams.get(tool) {
            None => (Err(UpstreamError::NoUpstream(tool.clone())), Duration::ZERO),
            Some(upstream) => {
                let call = GrantedCall {
                    provenance_id: &decision.provenance_id,
                    request_hash: &decision.request_hash,
                    tool,
                    body: &sent,
                    audience: &upstream.audience,
                };
                match self.slot(tool, upstream) {
                    Err(busy) => (Err(busy), Duration::ZERO),
                    Ok(_slot) => match self.signer.sign(&call, started_at) {
                        Err(err) => (Err(UpstreamError::Grant(err.to_string())), Duration::ZERO),
                        Ok((token, claims)) => {
                            grant = Some(claims);
                            let _waiting = metrics.upstream_waiting(tool);
                            self.call_unless_stopping(upstream, sent.clone(), &token)
                                .await
                        }
                    },
                }
            }
        };
        metrics.upstream_called(
            tool,
            outcome_label(&result),
            matches!(
                result,
                Ok(_)
                    | Err(UpstreamError::Timeout(_)
                        | UpstreamError::Connect(_)
                        | UpstreamError::Tls(_)
                        | UpstreamError::Protocol(_)
                        | UpstreamError::BodyTooLarge(_)
                        | UpstreamError::Shutdown)
            )
            .then(|| duration.as_secs_f64()),
        );
        let outcome = Outcome {
            decision,
            decision_record,
            tool,
            upstream: self.upstreams.get(tool),
            sent: &sent,
            grant: grant.as_ref(),
            result: &result,
            duration,
            started_at,
            finished_at: SystemTime::now(),
        };
        match &result {
            Ok(answer) => tracing::info!(
                provenance_id = %decision.provenance_id,
                %tool,
                status = answer.status.as_u16(),
                duration_ms = millis(duration),
                "forwarded"
            ),
            Err(err) => tracing::warn!(
                provenance_id = %decision.provenance_id,
                %tool,
                kind = err.kind(),
                error = %err,
                "forwarding failed"
            ),
        }
        match audit.append(outcome.record()).await {
            Ok(receipt) => (
                StatusCode::OK,
                outcome.execution(Some(&AuditBlock {
                    stream: receipt.stream.to_string(),
                    seq: receipt.seq,
                    prev_hash: receipt.prev_hash,
                    record_hash: receipt.record_hash,
                })),
            ),
            Err(err) => {
                tracing::error!(
                    provenance_id = %decision.provenance_id,
                    error = %err,
                    "outcome record could not be written; withholding the tool's answer"
                );
                (StatusCode::SERVICE_UNAVAILABLE, outcome.execution(None))
            }
        }
    }
}

impl Proxy {
    /// A place among the calls waiting on `tool`, or `upstream_busy` when all are taken: the
    /// call is then never sent, so deciding never queues behind a slow tool.
    fn slot(
        &self,
        tool: &str,
        upstream: &Upstream,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, UpstreamError> {
        let busy = || UpstreamError::Busy(upstream.max_concurrent);
        let slots = self.slots.get(tool).ok_or_else(busy)?;
        Arc::clone(slots).try_acquire_owned().map_err(|_| busy())
    }

    /// The call, unless the gate stops waiting first (then `shutdown`, and the exchange is
    /// dropped: the connection closes, and the tool may or may not have run the call).
    async fn call_unless_stopping(
        &self,
        upstream: &Upstream,
        body: Bytes,
        grant: &str,
    ) -> (Result<Answer, UpstreamError>, Duration) {
        let started = Instant::now();
        let mut stopping = self.stopping.subscribe();
        if *stopping.borrow() {
            return (Err(UpstreamError::Shutdown), Duration::ZERO);
        }
        tokio::select! {
            done = self.client.call(upstream, body, grant) => done,
            _ = stopping.wait_for(|stop| *stop) => (Err(UpstreamError::Shutdown), started.elapsed()),
        }
    }
}

/// Counts one forwarded call until its outcome is recorded (or its task ends otherwise).
struct Forwarding(Arc<Proxy>);

impl Forwarding {
    fn enter(proxy: &Arc<Proxy>) -> Forwarding {
        proxy.forwarding.fetch_add(1, Ordering::AcqRel);
        Forwarding(Arc::clone(proxy))
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if self.0.forwarding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The metrics label for a call's outcome: the status class, or the error kind.
fn outcome_label(result: &Result<Answer, UpstreamError>) -> &'static str {
    match result {
        Ok(answer) => match answer.status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Err(err) => err.kind(),
    }
}

/// One forwarded call, for its audit record and the answer's `execution` block.
struct Outcome<'a> {
    decision: &'a Decision,
    decision_record: &'a AuditBlock,
    tool: &'a str,
    upstream: Option<&'a Upstream>,
    sent: &'a [u8],
    grant: Option<&'a GrantClaims>,
    result: &'a Result<Answer, UpstreamError>,
    duration: Duration,
    started_at: SystemTime,
    finished_at: SystemTime,
}

impl Outcome<'_> {
    /// The `outcome` record, without the chain fields the writer adds.
    fn record(&self) -> Map {
        let mut record = Map::new();
        record.insert("record_type".into(), "outcome".into());
        record.insert(
            "provenance_id".into(),
            self.decision.provenance_id.as_str().into(),
        );
        record.insert(
            "request_id".into(),
            self.decision
                .request_id
                .as_deref()
                .unwrap_or("UNKNOWN")
                .into(),
        );
        record.insert(
            "request_hash".into(),
            self.decision.request_hash.as_str().into(),
        );
        // provenance_id repeats for identical requests; the decision record's hash does not.
        record.insert(
            "decision".into(),
            Value::object([
                ("seq", self.decision_record.seq.into()),
                (
                    "record_hash",
                    self.decision_record.record_hash.as_str().into(),
                ),
            ]),
        );
        record.insert("tool".into(), self.tool.into());
        record.insert(
            "upstream".into(),
            match self.upstream {
                Some(upstream) => Value::object([
                    ("method", upstream.method.as_str().into()),
                    ("url", url_without_query(&upstream.url).into()),
                    ("audience", upstream.audience.as_str().into()),
                ]),
                None => Value::Null,
            },
        );
        record.insert(
            "request_body_sha256".into(),
            crate::grant::body_sha256(self.sent).into(),
        );
        record.insert(
            "grant".into(),
            match self.grant {
                Some(grant) => Value::object([
                    ("kid", grant.kid.as_str().into()),
                    ("jti", grant.jti.as_str().into()),
                    ("iat", grant.iat.into()),
                    ("exp", grant.exp.into()),
                ]),
                None => Value::Null,
            },
        );
        let (status, body_sha256, body_bytes, error) = match self.result {
            Ok(answer) => (
                Value::from(u64::from(answer.status.as_u16())),
                Value::from(crate::grant::body_sha256(&answer.body)),
                Value::from(answer.body.len() as u64),
                Value::Null,
            ),
            Err(err) => (Value::Null, Value::Null, Value::Null, error_value(err)),
        };
        record.insert("status".into(), status);
        record.insert("body_sha256".into(), body_sha256);
        record.insert("body_bytes".into(), body_bytes);
        record.insert("error".into(), error);
        record.insert("duration_ms".into(), millis(self.duration).into());
        record.insert(
            "runtime".into(),
            Value::object([
                ("name", self.decision.runtime.name.into()),
                ("version", self.decision.runtime.version.into()),
                ("build", self.decision.runtime.build.into()),
            ]),
        );
        record.insert(
            "timestamps".into(),
            Value::object([
                ("started_at", rfc3339(self.started_at).into()),
                ("finished_at", rfc3339(self.finished_at).into()),
            ]),
        );
        record
    }

    /// The answer's `execution` block; `audit` is `None` when the outcome record could not be
    /// written, and then the tool's answer is withheld.
    fn execution(&self, audit: Option<&AuditBlock>) -> Value {
        let mut execution = Map::new();
        execution.insert("duration_ms".into(), millis(self.duration).into());
        let Some(block) = audit else {
            execution.insert(
                "error".into(),
                Value::object([
                    ("kind", "audit_write_failed".into()),
                    (
                        "message",
                        "the outcome record could not be written; the tool's answer is withheld"
                            .into(),
                    ),
                ]),
            );
            execution.insert("audit".into(), Value::Null);
            return Value::Object(execution);
        };
        match self.result {
            Ok(answer) => {
                let (body, encoding) = render_body(answer);
                execution.insert("status".into(), u64::from(answer.status.as_u16()).into());
                execution.insert("body".into(), body);
                execution.insert("body_encoding".into(), encoding.into());
            }
            Err(err) => {
                execution.insert("error".into(), error_value(err));
            }
        }
        execution.insert("audit".into(), block.to_value());
        Value::Object(execution)
    }
}

fn error_value(err: &UpstreamError) -> Value {
    Value::object([
        ("kind", err.kind().into()),
        ("message", err.to_string().into()),
    ])
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How a tool's answer appears in `execution.body`: the JSON value when the tool says
/// `application/json` (or `…+json`) and the bytes parse (strictly); otherwise a string when
/// the bytes are UTF-8; otherwise base64. `body_encoding` says which: `json`, `text`, `base64`.
pub fn render_body(answer: &Answer) -> (Value, &'static str) {
    let is_json = answer.content_type.as_deref().is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    });
    if is_json {
        if let Ok(value) = canonical::parse(&answer.body) {
            return (value, "json");
        }
    }
    match std::str::from_utf8(&answer.body) {
        Ok(text) => (text.into(), "text"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD
                .encode(&answer.body)
                .into(),
            "base64",
        ),
    }
}

/// A tool that a profile allows and no upstream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingUpstream {
    pub tool: String,
    pub profile_id: String,
    pub profile_version: String,
}

impl std::fmt::Display for MissingUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tool `{}` (allowed by profile `{}` version `{}`) has no `[upstreams.\"{}\"]`: its \
             ALLOWs are recorded with outcome error `no_upstream` and never forwarded",
            self.tool, self.profile_id, self.profile_version, self.tool
        )
    }
}

/// Every tool that a valid profile under `profiles_root` allows without an upstream, in
/// profile order. Loads the profiles it lists (as deciding would), so a version pushed after
/// start is seen the next time this runs.
pub fn tools_without_upstream(
    profiles: &ProfileStore,
    upstreams: &BTreeMap<String, Upstream>,
) -> Vec<MissingUpstream> {
    let Ok(listed) = profiles.list() else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for (id, version) in listed {
        if !crate::profile::is_valid_ref(&id) || !crate::profile::is_valid_ref(&version) {
            continue;
        }
        let Ok(profile) = profiles.get(&id, &version) else {
            continue;
        };
        for tool in profile.tools() {
            if !upstreams.contains_key(&tool.name) {
                missing.push(MissingUpstream {
                    tool: tool.name.clone(),
                    profile_id: id.clone(),
                    profile_version: version.clone(),
                });
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests;
