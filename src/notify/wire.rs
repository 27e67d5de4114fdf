//! The escalation notification on the wire: what the gate signs and the approver verifies.
//!
//! Owns the notification's claims (a compact JWS, EdDSA, `typ` [`NOTIFICATION_TYP`]) in both
//! directions. Pure: no clock, no I/O. It must never hand out a notification whose signature
//! did not verify under a configured gate key, nor one with a field the inbox could not show
//! safely (an intent hash that is not `sha256:` and 64 hex digits, an unbounded string).

use std::collections::BTreeMap;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::caller::{Caller, CallerMethod};
use crate::canonical::{Map, Value};
use crate::jws::{self, JwsError};

/// `typ` of a notification's JWS header: a notification is never mistaken for an approval
/// token or a grant, which are signed by the same kind of key.
pub const NOTIFICATION_TYP: &str = "ecl-escalation+jwt";

/// Larger notifications are refused unread: the gate's own request limit is 64 MiB at most,
/// but an inbox entry beyond a few MiB is not something a person can review.
pub const MAX_NOTIFICATION_BYTES: usize = 4 * 1024 * 1024;

/// Short strings (ids, names, hashes) are capped; a longer one is refused, not cut.
const MAX_SHORT: usize = 1024;

/// Where the ESCALATE decision's record is in the gate's audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRef {
    pub stream: String,
    pub seq: u64,
    pub record_hash: String,
}

/// One escalation, as the gate reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Who sent it (the gate's `kid`); set by [`verify`], ignored by [`sign`].
    pub gate_kid: String,
    pub intent_hash: String,
    pub request_id: String,
    pub provenance_id: String,
    /// `actor` of the request, as normalized by the gate.
    pub actor: Value,
    /// Who called the gate, as its audit record says; `None` from a gate that predates
    /// callers in notifications (the inbox says so rather than guessing `anonymous`).
    pub caller: Option<Caller>,
    pub tool_name: String,
    pub tool_args: Value,
    pub profile_id: String,
    pub profile_version: String,
    pub profile_ref_hash: String,
    /// The rules that escalated (`escalation.rules`).
    pub rules: Vec<String>,
    /// The decision's `detail`: why, in words.
    pub detail: String,
    pub record: RecordRef,
    /// When the gate decided, seconds since 1970.
    pub decided_at: u64,
    /// After this (seconds since 1970) no approval can be useful: decided + `approvals.max_ttl`.
    pub expires_at: u64,
}

/// Why a notification is refused; the message goes back to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("notification is not a valid JWS: {0}")]
    Malformed(String),
    #[error("notification uses algorithm `{0}`; only `EdDSA` is accepted")]
    Algorithm(String),
    #[error("notification is signed with unknown gate key `{0}`")]
    UnknownKey(String),
    #[error("notification signature does not verify")]
    BadSignature,
    #[error("token is not an escalation notification (`typ` must be `{NOTIFICATION_TYP}`)")]
    WrongType,
    #[error("notification claim `{0}` is missing or invalid")]
    Claim(&'static str),
}

impl From<JwsError> for NotificationError {
    fn from(err: JwsError) -> Self {
        match err {
            JwsError::Malformed(why) => NotificationError::Malformed(why),
            JwsError::Algorithm(alg) => NotificationError::Algorithm(alg),
            JwsError::BadSignature => NotificationError::BadSignature,
        }
    }
}

/// Signs `notification` with the gate's key.
pub fn sign(key: &SigningKey, kid: &str, notification: &Notification) -> String {
    let header = Value::object([
        ("alg", "EdDSA".into()),
        ("kid", kid.into()),
        ("typ", NOTIFICATION_TYP.into()),
    ]);
    let n = notification;
    let mut claims = Value::object([
        ("intent_hash", n.intent_hash.as_str().into()),
        ("request_id", n.request_id.as_str().into()),
        ("provenance_id", n.provenance_id.as_str().into()),
        ("actor", n.actor.clone()),
        (
            "tool",
            Value::object([
                ("name", n.tool_name.as_str().into()),
                ("args", n.tool_args.clone()),
            ]),
        ),
        (
            "profile",
            Value::object([
                ("id", n.profile_id.as_str().into()),
                ("version", n.profile_version.as_str().into()),
                ("profile_ref_hash", n.profile_ref_hash.as_str().into()),
            ]),
        ),
        (
            "rules",
            Value::Array(n.rules.iter().map(|r| r.as_str().into()).collect()),
        ),
        ("detail", n.detail.as_str().into()),
        (
            "record",
            Value::object([
                ("stream", n.record.stream.as_str().into()),
                ("seq", n.record.seq.into()),
                ("record_hash", n.record.record_hash.as_str().into()),
            ]),
        ),
        ("iat", n.decided_at.into()),
        ("exp", n.expires_at.into()),
    ]);
    if let (Value::Object(members), Some(caller)) = (&mut claims, &n.caller) {
        members.insert("caller".into(), caller_value(caller));
    }
    jws::sign(key, &header, &claims)
}

/// Verifies a notification against the gate keys the approver trusts.
pub fn verify(
    token: &str,
    gate_keys: &BTreeMap<String, VerifyingKey>,
) -> Result<Notification, NotificationError> {
    let (header, claims) = jws::verify(token, MAX_NOTIFICATION_BYTES, |header| {
        if header.typ.as_deref() != Some(NOTIFICATION_TYP) {
            return Err(NotificationError::WrongType);
        }
        gate_keys
            .get(&header.kid)
            .ok_or_else(|| NotificationError::UnknownKey(header.kid.clone()))
    })?;
    let tool = object(&claims, "tool")?;
    let profile = object(&claims, "profile")?;
    let record = object(&claims, "record")?;
    let intent_hash = short(&claims, "intent_hash")?;
    if !is_hash(&intent_hash) {
        return Err(NotificationError::Claim("intent_hash"));
    }
    let rules = match claims.get("rules") {
        Some(Value::Array(items)) if items.len() <= 256 => items
            .iter()
            .map(|r| match r {
                Value::String(s) if s.len() <= MAX_SHORT => Ok(s.clone()),
                _ => Err(NotificationError::Claim("rules")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(NotificationError::Claim("rules")),
    };
    let actor = claims
        .get("actor")
        .filter(|a| a.as_object().is_some())
        .cloned()
        .ok_or(NotificationError::Claim("actor"))?;
    let caller = match claims.get("caller") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_caller(value)?),
    };
    let decided_at = seconds(&claims, "iat")?;
    let expires_at = seconds(&claims, "exp")?;
    if expires_at <= decided_at {
        return Err(NotificationError::Claim("exp"));
    }
    Ok(Notification {
        gate_kid: header.kid,
        intent_hash,
        request_id: short(&claims, "request_id")?,
        provenance_id: short(&claims, "provenance_id")?,
        actor,
        caller,
        tool_name: short(tool, "name").map_err(|_| NotificationError::Claim("tool.name"))?,
        tool_args: tool
            .get("args")
            .cloned()
            .ok_or(NotificationError::Claim("tool.args"))?,
        profile_id: short(profile, "id").map_err(|_| NotificationError::Claim("profile.id"))?,
        profile_version: short(profile, "version")
            .map_err(|_| NotificationError::Claim("profile.version"))?,
        profile_ref_hash: short(profile, "profile_ref_hash")
            .map_err(|_| NotificationError::Claim("profile.profile_ref_hash"))?,
        rules,
        detail: match claims.get("detail") {
            Some(Value::String(s)) if s.len() <= 64 * 1024 => s.clone(),
            _ => return Err(NotificationError::Claim("detail")),
        },
        record: RecordRef {
            stream: short(record, "stream").map_err(|_| NotificationError::Claim("record"))?,
            seq: seconds(record, "seq").map_err(|_| NotificationError::Claim("record"))?,
            record_hash: short(record, "record_hash")
                .map_err(|_| NotificationError::Claim("record"))?,
        },
        decided_at,
        expires_at,
    })
}

/// `{id, iss?, method}`: the audit record's `caller` member, member for member.
fn caller_value(caller: &Caller) -> Value {
    let mut out = Map::new();
    out.insert("method".into(), caller.method.as_str().into());
    out.insert("id".into(), caller.id.as_ref().into());
    if let Some(issuer) = &caller.issuer {
        out.insert("iss".into(), issuer.as_ref().into());
    }
    Value::Object(out)
}

fn parse_caller(value: &Value) -> Result<Caller, NotificationError> {
    let bad = NotificationError::Claim("caller");
    let members = value.as_object().ok_or(bad.clone())?;
    if members
        .keys()
        .any(|key| !matches!(key.as_str(), "method" | "id" | "iss"))
    {
        return Err(bad);
    }
    let method = members
        .get("method")
        .and_then(Value::as_str)
        .and_then(CallerMethod::parse)
        .ok_or(bad.clone())?;
    let id = short(members, "id").map_err(|_| bad.clone())?;
    let issuer = match members.get("iss") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_SHORT => Some(std::sync::Arc::from(s.as_str())),
        Some(_) => return Err(bad),
    };
    Ok(Caller {
        method,
        id: std::sync::Arc::from(id.as_str()),
        issuer,
    })
}

/// `sha256:` and 64 lowercase hex digits: the only intent hashes the approver stores or
/// puts into a path.
pub fn is_hash(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn object<'a>(claims: &'a Map, name: &'static str) -> Result<&'a Map, NotificationError> {
    claims
        .get(name)
        .and_then(Value::as_object)
        .ok_or(NotificationError::Claim(name))
}

fn short(claims: &Map, name: &'static str) -> Result<String, NotificationError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SHORT => Ok(s.clone()),
        _ => Err(NotificationError::Claim(name)),
    }
}

fn seconds(claims: &Map, name: &'static str) -> Result<u64, NotificationError> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(NotificationError::Claim(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Notification {
        Notification {
            gate_kid: String::new(),
            intent_hash: format!("sha256:{}", "ab".repeat(32)),
            request_id: "r-1".into(),
            provenance_id: "prov_1".into(),
            actor: Value::object([("principal_id", "agent:7".into())]),
            caller: Some(Caller {
                method: CallerMethod::Jwt,
                id: "svc-payments".into(),
                issuer: Some("https://idp.example".into()),
            }),
            tool_name: "payments.transfer".into(),
            tool_args: Value::object([("amount", 5000u64.into())]),
            profile_id: "example".into(),
            profile_version: "1.0.0".into(),
            profile_ref_hash: "sha256:00".into(),
            rules: vec!["$.amount".into()],
            detail: "`$.amount` is above 1000".into(),
            record: RecordRef {
                stream: "ecl-audit.log".into(),
                seq: 3,
                record_hash: "sha256:11".into(),
            },
            decided_at: 1_000,
            expires_at: 4_600,
        }
    }

    fn keys(key: &SigningKey) -> BTreeMap<String, VerifyingKey> {
        BTreeMap::from([("gate-1".to_owned(), key.verifying_key())])
    }

    #[test]
    fn round_trips_under_the_gate_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let token = sign(&key, "gate-1", &sample());
        let got = verify(&token, &keys(&key)).unwrap();
        assert_eq!(got.gate_kid, "gate-1");
        assert_eq!(
            Notification {
                gate_kid: String::new(),
                ..got
            },
            sample()
        );
    }

    #[test]
    fn refuses_another_key_unknown_kid_and_tampering() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = sign(&other, "gate-1", &sample());
        assert_eq!(
            verify(&forged, &keys(&key)),
            Err(NotificationError::BadSignature)
        );
        let unknown = sign(&key, "gate-2", &sample());
        assert_eq!(
            verify(&unknown, &keys(&key)),
            Err(NotificationError::UnknownKey("gate-2".into()))
        );
        assert!(matches!(
            verify("not.a-token", &keys(&key)),
            Err(NotificationError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_an_approval_token_signed_by_the_same_key() {
        // Same key, other purpose: the `typ` keeps the two apart.
        let key = SigningKey::from_bytes(&[7; 32]);
        let token = crate::approval::sign(
            &key,
            "gate-1",
            &crate::approval::Grant {
                issuer: "x",
                intent_hash: &sample().intent_hash,
                issued_at: 1,
                expires_at: 2,
                jti: "j",
            },
        );
        assert_eq!(
            verify(&token, &keys(&key)),
            Err(NotificationError::WrongType)
        );
    }

    #[test]
    fn refuses_an_intent_hash_that_could_name_a_path() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut bad = sample();
        bad.intent_hash = "sha256:../../etc/passwd".into();
        assert_eq!(
            verify(&sign(&key, "gate-1", &bad), &keys(&key)),
            Err(NotificationError::Claim("intent_hash"))
        );
    }

    #[test]
    fn the_caller_travels_as_the_audit_record_writes_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut anonymous = sample();
        anonymous.caller = Some(Caller::anonymous());
        let got = verify(&sign(&key, "gate-1", &anonymous), &keys(&key)).unwrap();
        assert_eq!(got.caller, Some(Caller::anonymous()));

        // A notification from a gate that did not report callers: no caller, not `anonymous`.
        let mut older = sample();
        older.caller = None;
        let got = verify(&sign(&key, "gate-1", &older), &keys(&key)).unwrap();
        assert_eq!(got.caller, None);

        for bad in [
            Value::object([("method", "password".into()), ("id", "x".into())]),
            Value::object([("method", "jwt".into())]),
            Value::object([
                ("method", "jwt".into()),
                ("id", "x".into()),
                ("extra", "y".into()),
            ]),
            Value::String("anonymous".into()),
        ] {
            let header = Value::object([
                ("alg", "EdDSA".into()),
                ("kid", "gate-1".into()),
                ("typ", NOTIFICATION_TYP.into()),
            ]);
            let public = key.verifying_key();
            let (_, claims) = crate::jws::verify(
                &sign(&key, "gate-1", &sample()),
                MAX_NOTIFICATION_BYTES,
                |_| Ok::<_, NotificationError>(&public),
            )
            .unwrap();
            let mut claims = claims;
            claims.insert("caller".into(), bad.clone());
            let token = crate::jws::sign(&key, &header, &Value::Object(claims));
            assert_eq!(
                verify(&token, &keys(&key)),
                Err(NotificationError::Claim("caller")),
                "{bad:?}"
            );
        }
    }
}
