//! Request bodies: serialized once into a [`Template`] with a hole for the `request_id` value.

use bytes::{Bytes, BytesMut};

use crate::canonical::{self, Value};
use crate::decision::DecisionType;

/// Stands in for the `request_id` while a template is serialized; never sent.
const MARKER: &str = "ecl-load-request-id-5b1f0c2e";

/// A request body with a hole where the `request_id` string goes.
#[derive(Debug, Clone)]
pub struct Template {
    /// Everything up to and including the opening quote of the `request_id` value.
    prefix: Bytes,
    /// Everything from the closing quote on.
    suffix: Bytes,
    /// The decision a scenario expects for this body; `None` for a user's body.
    pub expect: Option<DecisionType>,
}

impl Template {
    /// Serializes `value` (a request object) canonically with a hole at its `request_id`.
    pub fn from_value(value: &Value, expect: Option<DecisionType>) -> Result<Template, String> {
        let Value::Object(members) = value else {
            return Err(format!(
                "the body must be a JSON object, found {}",
                value.type_name()
            ));
        };
        if !members.contains_key("request_id") {
            return Err("the body has no `request_id` member to make unique".to_owned());
        }
        let mut members = members.clone();
        members.insert("request_id".to_owned(), Value::from(MARKER));
        let bytes = canonical::to_canonical(&Value::Object(members));
        let needle = format!("\"{MARKER}\"");
        let mut hits = memchr::memmem::find_iter(&bytes, needle.as_bytes());
        let (Some(at), None) = (hits.next(), hits.next()) else {
            return Err(format!("the body must not contain the string `{MARKER}`"));
        };
        Ok(Template {
            prefix: Bytes::copy_from_slice(&bytes[..=at]),
            suffix: Bytes::copy_from_slice(&bytes[at + 1 + MARKER.len()..]),
            expect,
        })
    }

    /// A template from a JSON file's bytes; its `request_id` is replaced per request.
    pub fn from_json(bytes: &[u8]) -> Result<Template, String> {
        let value = canonical::parse(bytes)
            .map_err(|err| format!("the body is not JSON the gate accepts ({err})"))?;
        Template::from_value(&value, None)
    }

    /// The body with `id` as its `request_id`. `id` must need no JSON escaping.
    pub fn body(&self, id: &[u8]) -> Bytes {
        let mut body = BytesMut::with_capacity(self.prefix.len() + id.len() + self.suffix.len());
        body.extend_from_slice(&self.prefix);
        body.extend_from_slice(id);
        body.extend_from_slice(&self.suffix);
        body.freeze()
    }
}

/// What `ecl-gate load --scenario` sends, all for the shipped profile `example` 1.0.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `email.send` to a colleague: ALLOW.
    Allow,
    /// `email.send` to a foreign address: DENY `CONSTRAINT_VIOLATION`.
    Deny,
    /// Allow and deny requests, alternating.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Allow => "allow",
            Scenario::Deny => "deny",
            Scenario::Mixed => "mixed",
        }
    }

    pub fn templates(self) -> Result<Vec<Template>, String> {
        let allow = || {
            Template::from_value(
                &example_request("bob@example.com"),
                Some(DecisionType::Allow),
            )
        };
        let deny = || {
            Template::from_value(
                &example_request("mallory@elsewhere.test"),
                Some(DecisionType::Deny),
            )
        };
        Ok(match self {
            Scenario::Allow => vec![allow()?],
            Scenario::Deny => vec![deny()?],
            Scenario::Mixed => vec![allow()?, deny()?],
        })
    }
}

/// A typical request for `email.send` under profile `example` 1.0.0 (about 600 bytes).
pub fn example_request(to: &str) -> Value {
    let snapshot = Value::object([
        ("session", "sess-4f2a".into()),
        ("turn", 7i64.into()),
        ("user", "alice@example.com".into()),
        (
            "summary",
            "Alice asked the agent to send Bob the quarterly figures.".into(),
        ),
    ]);
    Value::object([
        ("request_id", "placeholder".into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:mail-assistant".into()),
                ("principal_type", "agent".into()),
                (
                    "attributes",
                    Value::object([("team", "finance".into()), ("env", "bench".into())]),
                ),
            ]),
        ),
        (
            "tool",
            Value::object([
                ("name", "email.send".into()),
                (
                    "args",
                    Value::object([
                        ("to", to.into()),
                        ("subject", "Quarterly figures".into()),
                        (
                            "body",
                            "Hi Bob, the Q3 figures are attached. Best, Alice".into(),
                        ),
                    ]),
                ),
            ]),
        ),
        (
            "profile",
            Value::object([("id", "example".into()), ("version", "1.0.0".into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
        ("submitted_at", "2026-01-01T00:00:00Z".into()),
    ])
}

/// The bodies a run sends, taken in turn.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub templates: Vec<Template>,
}

impl Workload {
    /// The template for the `n`-th request of a connection.
    pub fn template(&self, n: u64) -> Option<&Template> {
        let len = self.templates.len() as u64;
        if len == 0 {
            return None;
        }
        self.templates.get(usize::try_from(n % len).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request;

    #[test]
    fn a_template_splices_only_the_request_id() {
        let template = Template::from_value(&example_request("bob@example.com"), None).unwrap();
        let body = template.body(b"run-1-2-3");
        let decoded = request::decode(&body).unwrap();
        assert_eq!(decoded.request_id, "run-1-2-3");
        let mut expected = example_request("bob@example.com");
        if let Value::Object(m) = &mut expected {
            m.insert("request_id".into(), "run-1-2-3".into());
        }
        assert_eq!(&body[..], &canonical::to_canonical(&expected)[..]);
    }

    #[test]
    fn scenario_bodies_are_valid_requests_for_the_example_profile() {
        for scenario in [Scenario::Allow, Scenario::Deny, Scenario::Mixed] {
            for template in scenario.templates().unwrap() {
                let decoded = request::decode(&template.body(b"x")).unwrap();
                assert_eq!(decoded.profile_id, "example");
                assert_eq!(decoded.tool_name, "email.send");
            }
        }
    }

    #[test]
    fn a_body_file_must_be_an_object_with_a_request_id() {
        assert!(Template::from_json(b"[1]").is_err());
        assert!(Template::from_json(b"{\"a\":1}").is_err());
        assert!(Template::from_json(b"{\"request_id\":\"a\"").is_err());
        let clash = format!("{{\"request_id\":\"a\",\"x\":\"{MARKER}\"}}");
        assert!(Template::from_json(clash.as_bytes()).is_err());
        let ok = Template::from_json(b"{\"request_id\": 5, \"z\": [1]}").unwrap();
        assert_eq!(&ok.body(b"id")[..], b"{\"request_id\":\"id\",\"z\":[1]}");
    }
}
