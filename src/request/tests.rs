use super::*;
use crate::canonical::to_canonical;

fn body(extra: &str) -> Vec<u8> {
    let snapshot_hash = canonical::hash(&Value::object([("x", 1i64.into())]));
    format!(
        r#"{{"request_id":"r-1","actor":{{"principal_id":"u","principal_type":"user"}},"tool":{{"name":"t","args":null}},"profile":{{"id":"p","version":"1"}},"context":{{"snapshot":{{"x":1}},"snapshot_hash":"{snapshot_hash}"}}{extra}}}"#
    )
    .into_bytes()
}

#[test]
fn absent_optionals_normalize_to_null_and_empty_attributes() {
    let request = decode(&body("")).unwrap();
    let normalized = String::from_utf8(to_canonical(&request.normalized)).unwrap();
    assert!(normalized.contains(r#""attributes":{}"#), "{normalized}");
    assert!(normalized.contains(r#""controls":null"#), "{normalized}");
    assert!(
        normalized.contains(r#""submitted_at":null"#),
        "{normalized}"
    );
    assert!(normalized.contains(r#""args":null"#), "{normalized}");
}

#[test]
fn an_empty_controls_object_gets_both_keys() {
    let request = decode(&body(r#","controls":{}"#)).unwrap();
    assert_eq!(
        request.normalized["controls"],
        Value::object([("approval_token", Value::Null), ("nonce", Value::Null)])
    );
}

#[test]
fn the_intent_ignores_controls_and_submission_time() {
    let plain = decode(&body("")).unwrap();
    let with_token = decode(&body(
        r#","controls":{"approval_token":"t","nonce":"n"},"submitted_at":"2026-01-01T00:00:00Z""#,
    ))
    .unwrap();
    assert_ne!(plain.request_hash, with_token.request_hash);
    assert_eq!(plain.intent_hash, with_token.intent_hash);
    assert_eq!(with_token.approval_token.as_deref(), Some("t"));
}

#[test]
fn schema_errors_name_the_field() {
    let cases = [
        (r#","extra":1"#, "unknown field `extra`"),
        (
            r#","controls":{"approval_token":5}"#,
            "`controls.approval_token` must be a string or null",
        ),
        (
            r#","controls":{"token":"x"}"#,
            "unknown field `token` in `controls`",
        ),
        (
            r#","submitted_at":1"#,
            "`submitted_at` must be a string or null",
        ),
    ];
    for (extra, want) in cases {
        let rejection = decode(&body(extra)).unwrap_err();
        assert_eq!(
            rejection.reason,
            ReasonCode::RequestSchemaInvalid,
            "{extra}"
        );
        assert!(
            rejection.detail.contains(want),
            "{extra}: {}",
            rejection.detail
        );
    }
}
