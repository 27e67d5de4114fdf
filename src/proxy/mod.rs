//! Proxy mode: an ALLOWed call is forwarded to its tool, with a grant, and its outcome audited.
//!
//! Owns everything after a decision record is persisted: signing the grant, calling the
//! upstream, appending the `outcome` record (same chain, same `provenance_id`) and adding
//! `execution` to the answer. The order is the guarantee, per call:
//! decide → persist the decision record → forward → persist the outcome record → answer.
//! It must never contact a tool for anything but an ALLOW whose decision record is written
//! (the caller invokes [`Proxy::execute`] only then, and `execute` checks the type again),
//! never send bytes other than the canonical `approved_call.tool_args` the grant hashes, and
//! never return a tool's answer whose outcome record could not be written.
//!
//! - `config`: the `[upstreams]`, `[grants]`, `[tls]` keys and their validation.
//! - `client`: the pooled HTTP/1.1 + HTTP/2 client over rustls.

pub mod client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;

use crate::audit::AuditLog;
use crate::canonical::{self, Map, Value};
use crate::decision::{AuditBlock, Decision, DecisionType};
use crate::grant::{GrantClaims, GrantSigner, GrantedCall};
use crate::profile::ProfileStore;

pub use crate::config::proxy::{ProxyConfig, Upstream};
pub use client::{Answer, ClientError, UpstreamClient, UpstreamError};

/// The forwarding half of the gate in proxy mode.
#[derive(Debug)]
pub struct Proxy {
    upstreams: BTreeMap<String, Upstream>,
    signer: GrantSigner,
    client: UpstreamClient,
}

impl Proxy {
    pub fn new(config: &ProxyConfig) -> Result<Proxy, ClientError> {
        Ok(Proxy {
            upstreams: config.upstreams.clone(),
            signer: config.signer.clone(),
            client: UpstreamClient::new(config)?,
        })
    }

    pub fn upstream(&self, tool: &str) -> Option<&Upstream> {
        self.upstreams.get(tool)
    }

    pub fn signer(&self) -> &GrantSigner {
        &self.signer
    }

    /// Runs an ALLOWed call whose decision record is persisted at `decision_record`: forwards
    /// it, appends its outcome record and adds `execution` to `answer`. Returns the HTTP status
    /// of the answer: 200, or 503 when the outcome record could not be written (the tool's
    /// answer is then withheld). Anything but an ALLOW is left untouched.
    pub async fn execute(
        self: &Arc<Self>,
        audit: &AuditLog,
        decision: &Decision,
        decision_record: &AuditBlock,
        answer: &mut Value,
    ) -> StatusCode {
        // INVARIANT: only an ALLOW, with its approved call, ever reaches a tool.
        if decision.decision_type != DecisionType::Allow || decision.approved_call.is_none() {
            return StatusCode::OK;
        }
        let proxy = Arc::clone(self);
        let (audit, decision, decision_record) =
            (audit.clone(), decision.clone(), decision_record.clone());
        // A task of its own: an agent that hangs up mid-call drops this future, and must not
        // cancel the call half-way and lose its outcome record with it.
        let task =
            tokio::spawn(async move { proxy.forward(&audit, &decision, &decision_record).await });
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
                match self.signer.sign(&call, started_at) {
                    Err(err) => (Err(UpstreamError::Grant(err.to_string())), Duration::ZERO),
                    Ok((token, claims)) => {
                        grant = Some(claims);
                        self.client.call(upstream, sent.clone(), &token).await
                    }
                }
            }
        };
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
                    ("url", url_without_query(upstream).into()),
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

/// The URL for the record: a query string may hold a token, so it is left out.
fn url_without_query(upstream: &Upstream) -> String {
    let url = &upstream.url;
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
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

/// Proxy mode's start-time rule: every tool that a profile under `profiles_root` allows needs
/// an upstream. Returns the first gap as `(tool, profile id, version)`.
///
/// Checked over the profiles loaded at start; a profile version added later that names a tool
/// without an upstream is still decided as written, and its ALLOWs are recorded with an
/// `outcome` error `no_upstream`, never forwarded anywhere.
pub fn missing_upstream(
    profiles: &ProfileStore,
    upstreams: &BTreeMap<String, Upstream>,
) -> Option<(String, String, String)> {
    let listed = profiles.list().ok()?;
    for (id, version) in listed {
        let Ok(profile) = profiles.get(&id, &version) else {
            continue;
        };
        for tool in profile.tools() {
            if !upstreams.contains_key(&tool.name) {
                return Some((tool.name.clone(), id, version));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
