//! One forwarded call written down: its `outcome` audit record and the answer's `execution`
//! block, from the decision, the bytes sent, the grant and the tool's answer or error.
//!
//! Pure rendering, no I/O. It must never write the upstream URL's query or fragment, a header
//! value or the grant token itself: only their hashes and the grant's public claims.

use std::time::{Duration, SystemTime};

use base64::Engine;

use crate::canonical::{self, Map, Value};
use crate::decision::{AuditBlock, Decision};
use crate::grant::GrantClaims;

use super::{url_without_query, Answer, Upstream, UpstreamError};

/// One forwarded call, for its audit record and the answer's `execution` block.
pub(super) struct Outcome<'a> {
    pub decision: &'a Decision,
    pub decision_record: &'a AuditBlock,
    pub tool: &'a str,
    pub upstream: Option<&'a Upstream>,
    pub sent: &'a [u8],
    pub grant: Option<&'a GrantClaims>,
    pub result: &'a Result<Answer, UpstreamError>,
    pub duration: Duration,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

impl Outcome<'_> {
    /// The `outcome` record, without the chain fields the writer adds.
    pub fn record(&self) -> Map {
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
    pub fn execution(&self, audit: Option<&AuditBlock>) -> Value {
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
    crate::rfc3339::micros(t)
}

pub(super) fn millis(duration: Duration) -> u64 {
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
