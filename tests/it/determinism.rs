//! Determinism (SPEC preamble): equal requests get equal decisions, whatever their spelling.

use bytes::Bytes;
use ecl_gate::canonical::{Map, Value};

use crate::common::*;

/// Everything but `audit`, which differs per record by design.
fn fingerprint(decision: &Value) -> Value {
    let mut map: Map = decision.as_object().unwrap().clone();
    map.remove("audit");
    Value::Object(map)
}

#[tokio::test]
async fn equal_requests_in_any_spelling_get_identical_decisions() {
    let gate = TestGate::start().await;
    let canonical = bytes_of(&request(
        "r-d",
        "email.send",
        email_args("bob@example.com", "héllo"),
    ));
    let text = String::from_utf8(canonical.to_vec()).unwrap();
    // Keys reordered, whitespace added, characters written as \u escapes.
    let reordered = {
        let value = ecl_gate::canonical::parse(text.as_bytes()).unwrap();
        let obj = value.as_object().unwrap();
        let mut parts: Vec<String> = obj
            .iter()
            .rev()
            .map(|(k, v)| {
                format!(
                    "\n  \"{k}\" :  {}",
                    String::from_utf8(ecl_gate::canonical::to_canonical(v)).unwrap()
                )
            })
            .collect();
        parts.rotate_left(1);
        format!("{{{}\n}}", parts.join(" ,"))
    };
    let escaped = text
        .replace("héllo", "h\\u00e9llo")
        .replace("\"bob@", "\"\\u0062ob@");
    assert_ne!(reordered, text);
    assert_ne!(escaped, text);

    let mut fingerprints = Vec::new();
    for body in [text.clone(), text, reordered, escaped] {
        let (status, decision) = gate.execute(Bytes::from(body)).await;
        assert_eq!(status, 200);
        assert_eq!(decision["decision_type"].str(), "ALLOW");
        fingerprints.push(fingerprint(&decision));
    }
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:#?}"
    );

    // The same holds for a DENY.
    let deny = bytes_of(&request(
        "r-e",
        "email.send",
        email_args("eve@evil.com", "x"),
    ));
    let (_, first) = gate.execute(deny.clone()).await;
    let (_, second) = gate.execute(deny).await;
    assert_eq!(first["reason_code"].str(), "CONSTRAINT_VIOLATION");
    assert_eq!(fingerprint(&first), fingerprint(&second));
    assert_ne!(first["audit"]["seq"], second["audit"]["seq"]);
}
