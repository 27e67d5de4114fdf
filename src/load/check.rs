//! Is an answer a well-formed decision (SPEC §5)? A fast check for every answer; a full parse for
//! a sample and for whatever the fast check cannot read (another implementation's layout).

use memchr::memmem::FinderRev;

use crate::canonical::{self, Value};
use crate::decision::DecisionType;

/// What the fast check read out of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked<'a> {
    pub decision_type: DecisionType,
    pub reason: &'a str,
}

/// The fast check: a few searches from the end of the body, no parse and no allocation.
///
/// Searches go from the end because every member they look for sorts after `approved_call`,
/// the only member that holds caller-controlled objects (its `tool_args`); a key inside those
/// cannot be mistaken for the top-level one.
pub struct Checker {
    decision_type: FinderRev<'static>,
    reason_code: FinderRev<'static>,
    request_hash: FinderRev<'static>,
    provenance_id: FinderRev<'static>,
    audit: FinderRev<'static>,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            decision_type: FinderRev::new(b"\"decision_type\":\""),
            reason_code: FinderRev::new(b"\"reason_code\":\""),
            request_hash: FinderRev::new(b"\"request_hash\":\""),
            provenance_id: FinderRev::new(b"\"provenance_id\":\""),
            audit: FinderRev::new(b"\"audit\":{\""),
        }
    }
}

impl Checker {
    pub fn check<'a>(&self, body: &'a [u8]) -> Result<Checked<'a>, &'static str> {
        if body.first() != Some(&b'{') || body.last() != Some(&b'}') {
            return Err("not a JSON object");
        }
        let decision_type = match string_member(body, &self.decision_type) {
            Some(b"ALLOW") => DecisionType::Allow,
            Some(b"DENY") => DecisionType::Deny,
            Some(b"ESCALATE") => DecisionType::Escalate,
            _ => return Err("no valid decision_type"),
        };
        let reason = string_member(body, &self.reason_code)
            .filter(|r| !r.is_empty() && r.iter().all(|b| b.is_ascii_uppercase() || *b == b'_'))
            .and_then(|r| std::str::from_utf8(r).ok())
            .ok_or("no valid reason_code")?;
        string_member(body, &self.request_hash)
            .filter(|h| is_hex_after(h, b"sha256:", 64))
            .ok_or("no valid request_hash")?;
        string_member(body, &self.provenance_id)
            .filter(|p| is_hex_after(p, b"prov_", 32))
            .ok_or("no valid provenance_id")?;
        self.audit
            .rfind(body)
            .ok_or("no audit block (the record was not written)")?;
        Ok(Checked {
            decision_type,
            reason,
        })
    }
}

/// The raw string value after the last `"key":"`, up to the next quote.
fn string_member<'a>(body: &'a [u8], key: &FinderRev<'_>) -> Option<&'a [u8]> {
    let start = key.rfind(body)? + key.needle().len();
    let rest = body.get(start..)?;
    let end = memchr::memchr(b'"', rest)?;
    rest.get(..end)
}

fn is_hex_after(s: &[u8], prefix: &[u8], digits: usize) -> bool {
    s.len() == prefix.len() + digits
        && s.starts_with(prefix)
        && s[prefix.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The full check: parses the body and checks every member SPEC §5 requires, with its type;
/// returns the decision type and reason code. Unlike [`Checker::check`] it accepts any JSON
/// layout (whitespace, member order), so a decision from another implementation passes too.
pub fn check_full(body: &[u8]) -> Result<(DecisionType, String), String> {
    let value = canonical::parse(body).map_err(|err| format!("not JSON ({err})"))?;
    if value.as_object().is_none() {
        return Err("not a JSON object".to_owned());
    }
    // Members beyond SPEC §5's are extensions (proxy mode's `execution`, say): not checked.
    let object = |v: &Value, what: &str, keys: &[&str]| -> Result<(), String> {
        let Some(map) = v.as_object() else {
            return Err(format!("`{what}` is not an object"));
        };
        match keys.iter().find(|k| !map.contains_key(**k)) {
            Some(missing) => Err(format!("`{what}.{missing}` is missing")),
            None => Ok(()),
        }
    };
    let decision_type = value["decision_type"].as_str().unwrap_or_default();
    let kind = match decision_type {
        "ALLOW" => DecisionType::Allow,
        "DENY" => DecisionType::Deny,
        "ESCALATE" => DecisionType::Escalate,
        _ => return Err("`decision_type` is not ALLOW, DENY or ESCALATE".to_owned()),
    };
    let text = |name: &str| value[name].as_str().unwrap_or_default().as_bytes();
    let reason = text("reason_code");
    if reason.is_empty() || !reason.iter().all(|b| b.is_ascii_uppercase() || *b == b'_') {
        return Err("`reason_code` is not a reason code".to_owned());
    }
    if !is_hex_after(text("request_hash"), b"sha256:", 64) {
        return Err("`request_hash` is not `sha256:` and 64 hex digits".to_owned());
    }
    if !is_hex_after(text("provenance_id"), b"prov_", 32) {
        return Err("`provenance_id` is not `prov_` and 32 hex digits".to_owned());
    }
    object(
        &value["profile"],
        "profile",
        &["id", "version", "profile_ref_hash"],
    )?;
    object(&value["runtime"], "runtime", &["name", "version", "build"])?;
    object(
        &value["audit"],
        "audit",
        &["stream", "seq", "prev_hash", "record_hash"],
    )?;
    match (decision_type, &value["approved_call"]) {
        ("ALLOW", call) => object(call, "approved_call", &["tool_name", "tool_args"])?,
        (_, Value::Null) => {}
        _ => return Err("`approved_call` is set on a decision that is not ALLOW".to_owned()),
    }
    if decision_type == "ESCALATE" {
        object(
            &value["escalation"],
            "escalation",
            &["intent_hash", "required", "rules"],
        )?;
    }
    Ok((kind, String::from_utf8_lossy(reason).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: &str = concat!(
        r#"{"approved_call":{"tool_args":{"decision_type":"DENY","to":"b@example.com"},"tool_name":"email.send"},"#,
        r#""audit":{"prev_hash":"sha256:GENESIS","record_hash":"sha256:00","seq":0,"stream":"a.log"},"#,
        r#""decision_type":"ALLOW","#,
        r#""profile":{"id":"example","profile_ref_hash":"sha256:11","version":"1.0.0"},"#,
        r#""provenance_id":"prov_0123456789abcdef0123456789abcdef","reason_code":"OK","#,
        r#""request_hash":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","#,
        r#""runtime":{"build":"local","name":"ecl-gate","version":"0.1.0"}}"#
    );

    #[test]
    fn a_decision_passes_both_checks() {
        let checked = Checker::default().check(ALLOW.as_bytes()).unwrap();
        // The `decision_type` inside tool_args is not the decision's.
        assert_eq!(checked.decision_type, DecisionType::Allow);
        assert_eq!(checked.reason, "OK");
        let (kind, reason) = check_full(ALLOW.as_bytes()).unwrap();
        assert_eq!((kind, reason.as_str()), (DecisionType::Allow, "OK"));
    }

    #[test]
    // Another implementation's layout (spaces, any member order) fails the fast check only.
    fn the_full_check_accepts_any_layout() {
        let value = crate::canonical::parse(ALLOW.as_bytes()).unwrap();
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_slice::<serde_json::Value>(ALLOW.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(Checker::default().check(pretty.as_bytes()).is_err());
        let (kind, reason) = check_full(pretty.as_bytes()).unwrap();
        assert_eq!((kind, reason.as_str()), (DecisionType::Allow, "OK"));
        assert_eq!(crate::canonical::parse(pretty.as_bytes()).unwrap(), value);
    }

    #[test]
    fn broken_decisions_fail_both_checks() {
        let checker = Checker::default();
        let broken = [
            ALLOW.replace(r#""decision_type":"ALLOW""#, r#""decision_type":"MAYBE""#),
            ALLOW.replace(r#""reason_code":"OK""#, r#""reason_code":"ok""#),
            ALLOW.replace("sha256:0123", "sha256:zz23"),
            ALLOW.replace("prov_0123", "prov_"),
            ALLOW.replace(r#""audit":{"#, r#""audit":null,"x":{"#),
            ALLOW[..ALLOW.len() - 2].to_owned(),
            "not json".to_owned(),
        ];
        for body in broken {
            assert!(checker.check(body.as_bytes()).is_err(), "{body}");
            assert!(check_full(body.as_bytes()).is_err(), "{body}");
        }
    }
}
