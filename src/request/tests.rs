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

/// The normalized request as SPEC §4 words it, built member by member from the parsed body
/// (what `decode` did before it normalized the parsed body in place).
fn normalized_by_the_spec(body: &[u8]) -> Value {
    let parsed = canonical::parse(body).unwrap();
    let or_null = |v: &Value| v.clone();
    let controls = match &parsed["controls"] {
        Value::Object(_) => Value::object([
            (
                "approval_token",
                or_null(&parsed["controls"]["approval_token"]),
            ),
            ("nonce", or_null(&parsed["controls"]["nonce"])),
        ]),
        _ => Value::Null,
    };
    let attributes = match parsed["actor"].get("attributes") {
        Some(attributes) => attributes.clone(),
        None => Value::object::<&str, 0>([]),
    };
    Value::object([
        ("request_id", parsed["request_id"].clone()),
        (
            "actor",
            Value::object([
                ("principal_id", parsed["actor"]["principal_id"].clone()),
                ("principal_type", parsed["actor"]["principal_type"].clone()),
                ("attributes", attributes),
            ]),
        ),
        ("tool", parsed["tool"].clone()),
        ("profile", parsed["profile"].clone()),
        ("context", parsed["context"].clone()),
        ("controls", controls),
        ("submitted_at", or_null(&parsed["submitted_at"])),
    ])
}

// `decode` normalizes the parsed body in place and takes both hashes from one serialization;
// both must equal the SPEC's definitions over a separately built normalized request.
#[test]
fn in_place_normalization_and_single_pass_hashes_match_the_spec() {
    let extras = [
        "",
        r#","controls":null"#,
        r#","controls":{}"#,
        r#","controls":{"nonce":"n"}"#,
        r#","controls":{"approval_token":"t","nonce":null},"submitted_at":"2026-01-01T00:00:00Z""#,
        r#","submitted_at":null"#,
    ];
    for extra in extras {
        for actor in [
            "",
            r#","attributes":{}"#,
            r#","attributes":{"team":"finance","é":"\"x\""}"#,
        ] {
            let text = String::from_utf8(body(extra))
                .unwrap()
                .replace(
                    r#""principal_type":"user""#,
                    &format!(r#""principal_type":"user"{actor}"#),
                )
                .replace(
                    r#""args":null"#,
                    r#""args":{"to":"a@b","n":[1,2.5,{"z":null}]}"#,
                );
            let request = decode(text.as_bytes()).unwrap();
            let expected = normalized_by_the_spec(text.as_bytes());
            assert_eq!(*request.normalized, expected, "{text}");
            assert_eq!(request.request_hash, canonical::hash(&expected), "{text}");
            let mut intent = expected.as_object().unwrap().clone();
            intent.remove("controls");
            intent.remove("submitted_at");
            assert_eq!(
                request.intent_hash,
                canonical::hash(&Value::Object(intent)),
                "{text}"
            );
            assert_eq!(
                request.tool_args()["n"].as_array().unwrap()[1],
                Value::Number(canonical::Number::Float(2.5))
            );
            // A snapshot mismatch keeps the same normalized request and hash for the record.
            let mismatch = text.replace(r#""snapshot":{"x":1}"#, r#""snapshot":{"x":2}"#);
            let rejection = decode(mismatch.as_bytes()).unwrap_err();
            assert_eq!(rejection.reason, ReasonCode::CtxHashMismatch);
            let expected = normalized_by_the_spec(mismatch.as_bytes());
            assert_eq!(rejection.normalized.as_deref(), Some(&expected));
            assert_eq!(rejection.request_hash, canonical::hash(&expected));
        }
    }
}
