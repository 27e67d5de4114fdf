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
//! - `crate::config::proxy`: the `[upstreams]`, `[grants]`, `[tls]` keys and their validation.
//! - `client`: the pooled HTTP/1.1 + HTTP/2 clients over rustls, and the client certificates
//!   presented to upstreams, reloaded when their files change.
//! - `outcome`: the `outcome` record and the answer's `execution` block.
//! - `routes`: which allowed tools have no upstream.

pub mod client;
mod outcome;
mod routes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::{watch, Notify, Semaphore};

use crate::audit::AuditLog;
use crate::canonical::{self, Value};
use crate::decision::{AuditBlock, Decision, DecisionType};
use crate::grant::{GrantSigner, GrantedCall};
use crate::metrics::Metrics;

pub use crate::config::proxy::{url_without_query, ProxyConfig, Upstream};
pub use client::{Answer, ClientError, UpstreamClient, UpstreamError};
pub use outcome::render_body;
pub use routes::{tools_without_upstream, MissingUpstream};

use outcome::{millis, Outcome};

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
    /// How often upstream client certificate files are checked (`tls.reload_interval_ms`).
    reload_interval: Duration,
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
            reload_interval: config.reload_interval,
            stopping: watch::channel(false).0,
            forwarding: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Watches upstream client certificate files for changes; call once, inside the runtime.
    pub fn spawn_reloaders(&self, metrics: &Arc<Metrics>) {
        self.client.spawn_reloaders(self.reload_interval, metrics);
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
        let Some(call) = &decision.approved_call else {
            return (StatusCode::OK, Value::Null);
        };
        let (tool, args) = (&call.tool_name, call.args());
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
                            self.call_unless_stopping(tool, upstream, sent.clone(), &token)
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
        tool: &str,
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
            done = self.client.call(tool, upstream, body, grant) => done,
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

#[cfg(test)]
mod tests;
