//! How a decision looks on the wire (SPEC §5) and in the audit log (SPEC §8).
//!
//! Pure formatting: the same decision always renders to the same values. It never decides
//! anything and never reads the clock; the timestamps are handed in.

use crate::audit::{PreparedRecord, RecordWriter};
use crate::canonical::{Map, ObjectWriter, Value};

use super::{Decision, DecisionType, ShadowOutcome};

/// Where a decision's audit record landed (SPEC §5 `audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBlock {
    pub stream: String,
    pub seq: u64,
    pub prev_hash: String,
    pub record_hash: String,
}

/// The moments the audit record reports, as RFC 3339 UTC strings; `logged_at` is the writer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamps {
    pub received_at: String,
    pub decided_at: String,
}

const UNKNOWN: &str = "UNKNOWN";

impl ShadowOutcome {
    /// The audit record's `shadow` member.
    pub fn to_value(&self) -> Value {
        Value::object([
            ("profile_version", self.profile_version.as_str().into()),
            ("decision_type", self.decision_type.as_str().into()),
            ("reason_code", self.reason.as_str().into()),
        ])
    }
}

impl AuditBlock {
    /// The `audit` member of an answer (of a decision, or of a proxied call's outcome).
    pub fn to_value(&self) -> Value {
        Value::object([
            ("stream", self.stream.as_str().into()),
            ("seq", self.seq.into()),
            // The record's leaf in the stream's Merkle tree: the tree spans the stream from
            // seq 0, so it is the seq (what `ecl-gate audit prove --seq` takes).
            ("leaf_index", self.seq.into()),
            ("prev_hash", self.prev_hash.as_str().into()),
            ("record_hash", self.record_hash.as_str().into()),
        ])
    }
}

impl Decision {
    /// The response body; `audit` is `None` only when the record could not be written.
    pub fn body(&self, audit: Option<&AuditBlock>) -> Value {
        let (profile_id, profile_version) = self.profile_ids();
        let mut body = Map::new();
        body.insert("decision_type".into(), self.decision_type.as_str().into());
        body.insert("reason_code".into(), self.reason.as_str().into());
        body.insert("request_hash".into(), self.request_hash.as_str().into());
        body.insert("provenance_id".into(), self.provenance_id.as_str().into());
        body.insert(
            "profile".into(),
            Value::object([
                ("id", profile_id.into()),
                ("version", profile_version.into()),
                ("profile_ref_hash", self.profile_ref_hash.as_str().into()),
            ]),
        );
        body.insert("runtime".into(), self.runtime_value());
        body.insert("approved_call".into(), self.approved_call_value());
        if self.decision_type == DecisionType::Escalate {
            body.insert("escalation".into(), self.escalation_value());
        }
        if let Some(detail) = &self.detail {
            body.insert("detail".into(), detail.as_str().into());
        }
        let audit = audit.map_or(Value::Null, AuditBlock::to_value);
        body.insert("audit".into(), audit);
        Value::Object(body)
    }

    /// The response body's canonical bytes, appended to `out`: byte for byte
    /// The `approved_call` member's value: `{tool_args, tool_name}` for an ALLOW, else `null`;
    /// the answer and the audit record carry the same bytes.
    fn write_approved_call(&self, out: &mut Vec<u8>) {
        match &self.approved_call {
            Some(call_of) => {
                let mut call = ObjectWriter::new(out);
                call.value("tool_args", call_of.args());
                call.str("tool_name", &call_of.tool_name);
                call.finish();
            }
            None => out.extend_from_slice(b"null"),
        }
    }

    /// `to_canonical(&self.body(audit))`, written without building the [`Value`] first (the
    /// hot path answers every request with it).
    pub fn write_body(&self, audit: Option<&AuditBlock>, out: &mut Vec<u8>) {
        let (profile_id, profile_version) = self.profile_ids();
        // INVARIANT: members in canonical (byte) order; `write_body_is_body` checks it.
        let mut body = ObjectWriter::new(out);
        self.write_approved_call(body.key("approved_call"));
        match audit {
            Some(block) => {
                // AuditBlock::to_value, member for member (write_body_is_body checks it).
                let mut audit = ObjectWriter::new(body.key("audit"));
                audit.u64("leaf_index", block.seq);
                audit.str("prev_hash", &block.prev_hash);
                audit.str("record_hash", &block.record_hash);
                audit.u64("seq", block.seq);
                audit.str("stream", &block.stream);
                audit.finish();
            }
            None => body.null("audit"),
        }
        body.str("decision_type", self.decision_type.as_str());
        if let Some(detail) = &self.detail {
            body.str("detail", detail);
        }
        if self.decision_type == DecisionType::Escalate {
            body.value("escalation", &self.escalation_value());
        }
        {
            let mut profile = ObjectWriter::new(body.key("profile"));
            profile.str("id", profile_id);
            profile.str("profile_ref_hash", &self.profile_ref_hash);
            profile.str("version", profile_version);
            profile.finish();
        }
        body.str("provenance_id", &self.provenance_id);
        body.str("reason_code", self.reason.as_str());
        body.str("request_hash", &self.request_hash);
        {
            let mut runtime = ObjectWriter::new(body.key("runtime"));
            runtime.str("build", self.runtime.build);
            runtime.str("name", self.runtime.name);
            runtime.str("version", self.runtime.version);
            runtime.finish();
        }
        body.finish();
    }

    /// The audit record without `seq`, `timestamps.logged_at` and `integrity`, which the
    /// writer adds in chain order.
    pub fn audit_record(&self, timestamps: &Timestamps, include_request: bool) -> Map {
        let (profile_id, profile_version) = self.profile_ids();
        let mut record = Map::new();
        record.insert("record_type".into(), "decision".into());
        record.insert("provenance_id".into(), self.provenance_id.as_str().into());
        record.insert(
            "request_id".into(),
            self.request_id.as_deref().unwrap_or(UNKNOWN).into(),
        );
        record.insert("request_hash".into(), self.request_hash.as_str().into());
        record.insert("decision_type".into(), self.decision_type.as_str().into());
        record.insert("reason_code".into(), self.reason.as_str().into());
        record.insert("approved_call".into(), self.approved_call_value());
        record.insert("caller".into(), self.caller_value());
        record.insert("profile_id".into(), profile_id.into());
        record.insert("profile_version".into(), profile_version.into());
        record.insert(
            "profile_ref_hash".into(),
            self.profile_ref_hash.as_str().into(),
        );
        record.insert("runtime".into(), self.runtime_value());
        record.insert(
            "timestamps".into(),
            Value::object([
                ("received_at", timestamps.received_at.as_str().into()),
                ("decided_at", timestamps.decided_at.as_str().into()),
            ]),
        );
        if self.decision_type == DecisionType::Escalate {
            record.insert("escalation".into(), self.escalation_value());
        }
        if let Some(approval) = &self.approval {
            record.insert(
                "approval".into(),
                Value::object([
                    ("kid", approval.kid.as_str().into()),
                    ("iss", approval.issuer.as_str().into()),
                    ("jti", approval.jti.as_str().into()),
                    ("iat", approval.issued_at.into()),
                    ("exp", approval.expires_at.into()),
                ]),
            );
        }
        if include_request {
            if let Some(request) = &self.normalized_request {
                record.insert("request".into(), Value::clone(request));
            }
        }
        if let Some(shadow) = &self.shadow {
            record.insert("shadow".into(), shadow.to_value());
        }
        if let Some(outcome) = self.single_use {
            record.insert("single_use".into(), outcome.as_str().into());
        }
        record
    }

    /// The audit record, serialized here for the writer thread: byte for byte what the
    /// writer makes of [`Decision::audit_record`], written without building the map (the
    /// writer, which every record passes one at a time, then only copies and chains it).
    pub fn prepared_record(
        &self,
        timestamps: &Timestamps,
        include_request: bool,
    ) -> PreparedRecord {
        let (profile_id, profile_version) = self.profile_ids();
        // INVARIANT: members in canonical (byte) order, as in `audit_record`;
        // `prepared_record_is_audit_record` checks it. The writer's members (integrity, seq,
        // timestamps.logged_at) fall into place by themselves.
        let mut record = RecordWriter::new();
        if let Some(approval) = &self.approval {
            let mut block = ObjectWriter::new(record.key("approval"));
            block.u64("exp", approval.expires_at);
            block.u64("iat", approval.issued_at);
            block.str("iss", &approval.issuer);
            block.str("jti", &approval.jti);
            block.str("kid", &approval.kid);
            block.finish();
        }
        self.write_approved_call(record.key("approved_call"));
        {
            let mut caller = ObjectWriter::new(record.key("caller"));
            caller.str("id", &self.caller.id);
            if let Some(issuer) = &self.caller.issuer {
                caller.str("iss", issuer);
            }
            caller.str("method", self.caller.method.as_str());
            caller.finish();
        }
        record.str("decision_type", self.decision_type.as_str());
        if self.decision_type == DecisionType::Escalate {
            record.value("escalation", &self.escalation_value());
        }
        record.str("profile_id", profile_id);
        record.str("profile_ref_hash", &self.profile_ref_hash);
        record.str("profile_version", profile_version);
        record.str("provenance_id", &self.provenance_id);
        record.str("reason_code", self.reason.as_str());
        record.str("record_type", "decision");
        if include_request {
            if let Some(request) = &self.normalized_request {
                record.value("request", request);
            }
        }
        record.str("request_hash", &self.request_hash);
        record.str("request_id", self.request_id.as_deref().unwrap_or(UNKNOWN));
        {
            let mut runtime = ObjectWriter::new(record.key("runtime"));
            runtime.str("build", self.runtime.build);
            runtime.str("name", self.runtime.name);
            runtime.str("version", self.runtime.version);
            runtime.finish();
        }
        if let Some(shadow) = &self.shadow {
            record.value("shadow", &shadow.to_value());
        }
        if let Some(outcome) = self.single_use {
            record.str("single_use", outcome.as_str());
        }
        let mut moments = record.timestamps();
        moments.str("decided_at", &timestamps.decided_at);
        moments.str("received_at", &timestamps.received_at);
        moments.finish();
        record.finish()
    }

    fn profile_ids(&self) -> (&str, &str) {
        match &self.profile {
            Some((id, version)) => (id, version),
            None => (UNKNOWN, UNKNOWN),
        }
    }

    /// The record's `caller` member: `{id, iss?, method}`.
    fn caller_value(&self) -> Value {
        let mut caller = Map::new();
        caller.insert("method".into(), self.caller.method.as_str().into());
        caller.insert("id".into(), self.caller.id.as_ref().into());
        if let Some(issuer) = &self.caller.issuer {
            caller.insert("iss".into(), issuer.as_ref().into());
        }
        Value::Object(caller)
    }

    fn runtime_value(&self) -> Value {
        Value::object([
            ("name", self.runtime.name.into()),
            ("version", self.runtime.version.into()),
            ("build", self.runtime.build.into()),
        ])
    }

    fn approved_call_value(&self) -> Value {
        match &self.approved_call {
            Some(call) => Value::object([
                ("tool_name", call.tool_name.as_str().into()),
                ("tool_args", call.args().clone()),
            ]),
            None => Value::Null,
        }
    }

    fn escalation_value(&self) -> Value {
        match &self.escalation {
            Some(escalation) => Value::object([
                ("intent_hash", escalation.intent_hash.as_str().into()),
                ("required", Value::Array(vec!["approval_token".into()])),
                (
                    "rules",
                    Value::Array(escalation.rules.iter().map(|r| r.as_str().into()).collect()),
                ),
            ]),
            None => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ApprovedCall, Escalation, ReasonCode, Runtime};
    use super::*;
    use crate::canonical::{parse, to_canonical};
    use std::sync::Arc;

    fn decisions() -> Vec<Decision> {
        let args = parse(
            r#"{"to":"b@example.com","z":[1,2.5,null,{"q":"\"\\\u0001é😀"}],"a":{"decision_type":"x"}}"#
                .as_bytes(),
        )
        .unwrap();
        let allow = Decision {
            decision_type: DecisionType::Allow,
            reason: ReasonCode::Ok,
            request_hash: "sha256:aa".into(),
            provenance_id: "prov_bb".into(),
            request_id: Some("r-1".into()),
            profile: Some(("example".into(), "1.0.0".into())),
            profile_ref_hash: "sha256:cc".into(),
            runtime: Runtime::current(),
            approved_call: Some(ApprovedCall::new(
                "email.send".into(),
                Arc::new(Value::object([(
                    "tool",
                    Value::object([("args", args), ("name", "email.send".into())]),
                )])),
            )),
            escalation: None,
            detail: None,
            normalized_request: None,
            approval: None,
            caller: crate::caller::Caller::anonymous(),
            single_use: None,
            shadow: None,
        };
        let deny = Decision {
            decision_type: DecisionType::Deny,
            reason: ReasonCode::RequestParseError,
            approved_call: None,
            profile: None,
            request_id: None,
            detail: Some("bad \"input\"\n at byte 1".into()),
            ..allow.clone()
        };
        let escalate = Decision {
            decision_type: DecisionType::Escalate,
            reason: ReasonCode::ApprovalRequired,
            approved_call: None,
            escalation: Some(Escalation {
                intent_hash: "sha256:dd".into(),
                rules: vec!["$.amount".into(), "$.to".into()],
            }),
            detail: Some("needs approval".into()),
            ..allow.clone()
        };
        let escalate_without_block = Decision {
            escalation: None,
            ..escalate.clone()
        };
        let jwt_caller = Decision {
            caller: crate::caller::Caller {
                method: crate::caller::CallerMethod::Jwt,
                id: "system:serviceaccount:agents:\"finance\"".into(),
                issuer: Some("https://kubernetes.default.svc".into()),
            },
            ..allow.clone()
        };
        vec![allow, deny, escalate, escalate_without_block, jwt_caller]
    }

    #[test]
    // prepared_record hand-orders its members; the writer's line must be byte for byte the one
    // it made of audit_record() before, for every kind of decision and include_request.
    fn prepared_record_is_audit_record() {
        use crate::approval::Approval;
        use crate::audit::{encode_prepared, encode_via_tree};
        let request = Arc::new(
            parse(
                r#"{"actor":{"attributes":{},"principal_id":"u","principal_type":"user"},"context":{"snapshot":{"x":[1.5]},"snapshot_hash":"sha256:s"},"controls":null,"profile":{"id":"example","version":"1.0.0"},"request_id":"r-1","submitted_at":null,"tool":{"args":{"q":"\u0001é"},"name":"email.send"}}"#
                    .as_bytes(),
            )
            .unwrap(),
        );
        let mut all = decisions();
        let approved = Decision {
            approval: Some(Approval {
                kid: "k-1".into(),
                issuer: "alice@example.com".into(),
                jti: "01J\"x".into(),
                issued_at: 1_767_225_600,
                expires_at: u64::MAX,
            }),
            ..all[0].clone()
        };
        all.push(approved);
        let shadowed = Decision {
            shadow: Some(ShadowOutcome {
                profile_version: "1.1.0".into(),
                decision_type: DecisionType::Deny,
                reason: ReasonCode::ConstraintViolation,
            }),
            ..all[0].clone()
        };
        all.push(shadowed);
        for decision in all {
            for normalized in [None, Some(Arc::clone(&request))] {
                let decision = Decision {
                    normalized_request: normalized,
                    ..decision.clone()
                };
                for include_request in [false, true] {
                    let ts = Timestamps {
                        received_at: "2026-01-01T00:00:00.000001Z".into(),
                        decided_at: "2026-01-01T00:00:00.000002Z".into(),
                    };
                    let logged_at = "2026-01-01T00:00:00.000003Z";
                    let mut old = Vec::new();
                    let old_hash = encode_via_tree(
                        decision.audit_record(&ts, include_request),
                        42,
                        "sha256:prev",
                        logged_at,
                        &mut old,
                    );
                    let mut new = Vec::new();
                    let new_hash = encode_prepared(
                        &decision.prepared_record(&ts, include_request),
                        42,
                        "sha256:prev",
                        logged_at,
                        &mut new,
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&new),
                        String::from_utf8_lossy(&old),
                        "{decision:?} include_request={include_request}"
                    );
                    assert_eq!(new_hash, old_hash);
                }
            }
        }
    }

    #[test]
    // write_body hand-orders its members; it must equal the canonical form of body() exactly.
    fn write_body_is_body() {
        let block = AuditBlock {
            stream: "ecl-audit-1.log".into(),
            seq: 18_446_744_073_709_551_615,
            prev_hash: "sha256:GENESIS".into(),
            record_hash: "sha256:ee".into(),
        };
        for decision in decisions() {
            for audit in [Some(&block), None] {
                let mut out = b"prefix".to_vec();
                decision.write_body(audit, &mut out);
                assert_eq!(
                    &out[6..],
                    to_canonical(&decision.body(audit)).as_slice(),
                    "{decision:?}"
                );
            }
        }
    }
}
