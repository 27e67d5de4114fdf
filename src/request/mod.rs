//! The execution request (SPEC §2) and the hashes that identify it (SPEC §4).
//!
//! Owns steps 2–4 of the evaluation order: parse, strict schema, snapshot hash. It turns raw
//! body bytes into either a fully checked [`ExecRequest`] or a [`Rejection`] that already
//! carries the `request_hash` the audit record needs. It must never coerce types, accept an
//! unknown field, or do I/O.

use std::sync::Arc;

use crate::canonical::{self, Map, Value};
use crate::reason::ReasonCode;
use crate::strict::Strict;

/// A request that passed parse, schema and snapshot-hash checks.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub request_id: String,
    pub actor: Actor,
    pub tool_name: String,
    pub profile_id: String,
    pub profile_version: String,
    pub approval_token: Option<String>,
    pub nonce: Option<String>,
    pub submitted_at: Option<String>,
    /// Every field of SPEC §2 present, absent optionals as `null` (SPEC §4).
    pub normalized: Arc<Value>,
    pub request_hash: String,
    /// What an approval binds to: the normalized request without `controls` and `submitted_at`.
    pub intent_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub principal_id: String,
    pub principal_type: String,
    // `attributes` are checked (string values only) and stay in the normalized request: nothing
    // decides on them, and copying them out cost two allocations each.
}

/// Why a body never became an [`ExecRequest`], with what the audit record can still say.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: ReasonCode,
    pub request_hash: String,
    /// Known only once the schema held, i.e. for `CTX_HASH_MISMATCH`.
    pub request_id: Option<String>,
    pub profile: Option<(String, String)>,
    /// A human-readable cause for the client; never internal state.
    pub detail: String,
    /// The normalized request, when the schema held (`CTX_HASH_MISMATCH`), so it can be replayed.
    pub normalized: Option<Arc<Value>>,
}

/// Steps 2–4 of SPEC §6 over a complete body.
pub fn decode(body: &[u8]) -> Result<ExecRequest, Box<Rejection>> {
    let mut value = canonical::parse(body).map_err(|err| {
        Box::new(Rejection {
            reason: ReasonCode::RequestParseError,
            request_hash: canonical::sha256_prefixed(body),
            request_id: None,
            profile: None,
            detail: err.to_string(),
            normalized: None,
        })
    })?;
    let fields = match read_fields(&value) {
        Ok(fields) => fields,
        Err(detail) => {
            return Err(Box::new(Rejection {
                reason: ReasonCode::RequestSchemaInvalid,
                request_hash: canonical::hash(&value),
                request_id: None,
                profile: None,
                detail,
                normalized: None,
            }))
        }
    };
    let snapshot_ok = canonical::hash(fields.snapshot) == fields.snapshot_hash;
    let request_id = fields.request_id.to_owned();
    let profile_id = fields.profile_id.to_owned();
    let profile_version = fields.profile_version.to_owned();
    if !snapshot_ok {
        normalize(&mut value);
        return Err(Box::new(Rejection {
            reason: ReasonCode::CtxHashMismatch,
            request_hash: canonical::hash(&value),
            request_id: Some(request_id),
            profile: Some((profile_id, profile_version)),
            detail: "`context.snapshot_hash` is not the hash of `context.snapshot`".to_owned(),
            normalized: Some(Arc::new(value)),
        }));
    }
    let actor = Actor {
        principal_id: fields.principal_id.to_owned(),
        principal_type: fields.principal_type.to_owned(),
    };
    let tool_name = fields.tool_name.to_owned();
    let approval_token = fields.approval_token.map(str::to_owned);
    let nonce = fields.nonce.map(str::to_owned);
    let submitted_at = fields.submitted_at.map(str::to_owned);
    // The parsed body becomes the normalized request itself: copying it into a second tree
    // cost more than everything else `decode` does besides parsing (issue 6).
    normalize(&mut value);
    let (request_hash, intent_hash) = match &value {
        Value::Object(members) => canonical::hash_with_and_without(members, INTENT_OMITS),
        other => (canonical::hash(other), canonical::hash(other)),
    };
    Ok(ExecRequest {
        request_id,
        actor,
        tool_name,
        profile_id,
        profile_version,
        approval_token,
        nonce,
        submitted_at,
        normalized: Arc::new(value),
        request_hash,
        intent_hash,
    })
}

/// What the intent hash leaves out of the normalized request: an approval cannot bind to
/// itself, nor to when the request was sent.
const INTENT_OMITS: &[&str] = &["controls", "submitted_at"];

impl ExecRequest {
    /// The tool's arguments exactly as received: read from the normalized request, which
    /// already holds them, so a request carries one copy.
    pub fn tool_args(&self) -> &Value {
        &self.normalized["tool"]["args"]
    }
}

/// The request's fields, borrowed from the parsed body once the schema held.
struct Fields<'a> {
    request_id: &'a str,
    principal_id: &'a str,
    principal_type: &'a str,
    tool_name: &'a str,
    profile_id: &'a str,
    profile_version: &'a str,
    snapshot: &'a Value,
    snapshot_hash: &'a str,
    approval_token: Option<&'a str>,
    nonce: Option<&'a str>,
    submitted_at: Option<&'a str>,
}

/// Turns a request that passed [`read_fields`] into its normalized form (SPEC §4), in place:
/// absent optional fields become `null`, absent `attributes` becomes `{}`, and a `controls`
/// object gets both of its keys. The schema admits no other members, so what remains is
/// exactly the normalized request.
fn normalize(request: &mut Value) {
    let Value::Object(root) = request else {
        return;
    };
    insert_if_absent(root, "controls", Value::Null);
    if let Some(Value::Object(controls)) = root.get_mut("controls") {
        insert_if_absent(controls, "approval_token", Value::Null);
        insert_if_absent(controls, "nonce", Value::Null);
    }
    insert_if_absent(root, "submitted_at", Value::Null);
    if let Some(Value::Object(actor)) = root.get_mut("actor") {
        insert_if_absent(actor, "attributes", Value::Object(Map::new()));
    }
}

fn insert_if_absent(members: &mut Map, key: &str, value: Value) {
    if !members.contains_key(key) {
        members.insert(key.to_owned(), value);
    }
}

fn read_fields(value: &Value) -> Result<Fields<'_>, String> {
    let root = Strict::new(value, "")?;
    root.only(&[
        "request_id",
        "actor",
        "tool",
        "profile",
        "context",
        "controls",
        "submitted_at",
    ])?;

    let actor = Strict::new(root.required("actor")?, "actor")?;
    actor.only(&["principal_id", "principal_type", "attributes"])?;
    if let Some(value) = actor.members.get("attributes") {
        let attrs = Strict::new(value, "actor.attributes")?;
        if let Some((key, other)) = attrs.members.iter().find(|(_, v)| v.as_str().is_none()) {
            return Err(format!(
                "`actor.attributes.{key}` must be a string, found {}",
                other.type_name()
            ));
        }
    }

    let tool = Strict::new(root.required("tool")?, "tool")?;
    tool.only(&["name", "args"])?;
    let profile = Strict::new(root.required("profile")?, "profile")?;
    profile.only(&["id", "version"])?;
    let context = Strict::new(root.required("context")?, "context")?;
    context.only(&["snapshot", "snapshot_hash"])?;

    let controls = match root.members.get("controls") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let controls = Strict::new(value, "controls")?;
            controls.only(&["approval_token", "nonce"])?;
            Some((
                controls.nullable_str("approval_token")?,
                controls.nullable_str("nonce")?,
            ))
        }
    };

    // Read in this order so that the first of several errors is the one reported.
    let request_id = root.non_empty_str("request_id")?;
    let principal_id = actor.non_empty_str("principal_id")?;
    let principal_type = actor.non_empty_str("principal_type")?;
    let tool_name = tool.non_empty_str("name")?;
    // Any JSON value; read back from the normalized request (`ExecRequest::tool_args`).
    tool.required("args")?;
    Ok(Fields {
        request_id,
        principal_id,
        principal_type,
        tool_name,
        profile_id: profile.non_empty_str("id")?,
        profile_version: profile.non_empty_str("version")?,
        snapshot: context.required("snapshot")?,
        snapshot_hash: context.non_empty_str("snapshot_hash")?,
        approval_token: controls.and_then(|(token, _)| token),
        nonce: controls.and_then(|(_, nonce)| nonce),
        submitted_at: root.nullable_str("submitted_at")?,
    })
}

#[cfg(test)]
mod tests;
