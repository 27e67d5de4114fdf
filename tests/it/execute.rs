//! `POST /v1/execute` over real HTTP: every reason code this version can produce, each checked
//! in the answer and in the audit record it wrote.

use std::path::Path;

use bytes::Bytes;
use ecl_gate::canonical::{self, Value};

use crate::common::*;

fn assert_decision(decision: &Value, decision_type: &str, reason: &str) {
    assert_eq!(
        (
            decision["decision_type"].str(),
            decision["reason_code"].str()
        ),
        (decision_type, reason),
        "unexpected decision: {decision:?}"
    );
}

/// A profiles root with the shipped profiles plus the broken ones these tests need.
fn fixture_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("profiles");
    for (id, version, text) in [
        (
            "example",
            "1.0.0",
            std::fs::read_to_string(shipped_profiles().join("example/1.0.0.json")).unwrap(),
        ),
        (
            "bad-regex",
            "1",
            profile_text(
                "bad-regex",
                "1",
                r#"{"path":"$.q","type":"string","pattern":"(unclosed"}"#,
            ),
        ),
        (
            "odd-type",
            "1",
            profile_text("odd-type", "1", r#"{"path":"$.q","type":"uuid"}"#),
        ),
    ] {
        std::fs::create_dir_all(root.join(id)).unwrap();
        std::fs::write(root.join(id).join(format!("{version}.json")), text).unwrap();
    }
    root
}

fn profile_text(id: &str, version: &str, rule: &str) -> String {
    format!(
        r#"{{"profile_id":"{id}","profile_version":"{version}","default":"DENY","allowed_tools":[{{"name":"search","constraints":{{"arg_rules":[{rule}]}}}}]}}"#
    )
}

async fn gate_with_fixtures() -> TestGate {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture_root(dir.path());
    let gate = TestGate::start_with(Options {
        profiles_root: root,
        ..Options::default()
    })
    .await;
    // Keep the profiles alive as long as the gate.
    std::mem::forget(dir);
    gate
}

#[tokio::test]
async fn allowed_call_is_answered_with_its_record() {
    let gate = TestGate::start().await;
    let args = email_args("bob@example.com", "quarterly report");
    let (status, decision) = gate
        .execute(bytes_of(&request("r-allow", "email.send", args.clone())))
        .await;
    assert_eq!(status, 200);
    assert_decision(&decision, "ALLOW", "OK");
    assert_eq!(decision["approved_call"]["tool_name"].str(), "email.send");
    assert_eq!(decision["approved_call"]["tool_args"], args);
    assert_eq!(decision["runtime"]["name"].str(), "ecl-gate");
    assert!(decision["provenance_id"].str().starts_with("prov_"));
    assert_eq!(decision["provenance_id"].str().len(), 5 + 32);
    let record = gate.record_for(&decision);
    assert_eq!(record["request_id"].str(), "r-allow");
    assert_eq!(record["record_type"].str(), "decision");
    assert_eq!(record["integrity"]["prev_hash"].str(), "sha256:GENESIS");
    for stamp in ["received_at", "decided_at", "logged_at"] {
        assert!(record["timestamps"][stamp].str().ends_with('Z'), "{stamp}");
    }
    // The shipped profile's hash is over its exact file bytes.
    let bytes = std::fs::read(shipped_profiles().join("example/1.0.0.json")).unwrap();
    assert_eq!(
        decision["profile"]["profile_ref_hash"].str(),
        canonical::sha256_prefixed(&bytes)
    );
}

#[tokio::test]
async fn every_rejection_is_an_audited_deny() {
    let gate = gate_with_fixtures().await;
    let valid = request("r-1", "email.send", email_args("bob@example.com", "hi"));
    let cases: Vec<(&str, Bytes, &str)> = vec![
        (
            "not json",
            Bytes::from_static(b"{not json"),
            "REQUEST_PARSE_ERROR",
        ),
        ("empty body", Bytes::new(), "REQUEST_PARSE_ERROR"),
        (
            "duplicate key",
            Bytes::from_static(br#"{"request_id":"a","request_id":"b"}"#),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "NaN",
            Bytes::from_static(br#"{"x":NaN}"#),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "lone surrogate",
            Bytes::from_static(br#"{"x":"\ud800"}"#),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "overflowing number",
            Bytes::from_static(br#"{"x":1e400}"#),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "nesting of 200",
            Bytes::from(format!("{}{}", "[".repeat(200), "]".repeat(200))),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "trailing content",
            Bytes::from(format!(
                "{} x",
                String::from_utf8(bytes_of(&valid).to_vec()).unwrap()
            )),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "invalid utf-8",
            Bytes::from_static(b"{\"request_id\":\"\xff\"}"),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "unknown top-level field",
            bytes_of(&with(valid.clone(), &["extra"], Some(1i64.into()))),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "unknown nested field",
            bytes_of(&with(
                valid.clone(),
                &["tool", "timeout"],
                Some(5i64.into()),
            )),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "number for a string",
            bytes_of(&with(valid.clone(), &["request_id"], Some(7i64.into()))),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "empty request_id",
            bytes_of(&with(valid.clone(), &["request_id"], Some("".into()))),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "missing args",
            bytes_of(&with(valid.clone(), &["tool", "args"], None)),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "attribute not a string",
            bytes_of(&with(
                valid.clone(),
                &["actor", "attributes"],
                Some(Value::object([("tier", 1i64.into())])),
            )),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "array body",
            Bytes::from_static(b"[]"),
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            "wrong snapshot hash",
            bytes_of(&with(
                valid.clone(),
                &["context", "snapshot"],
                Some(Value::object([("session", "other".into())])),
            )),
            "CTX_HASH_MISMATCH",
        ),
        (
            "unknown profile",
            bytes_of(&with(
                valid.clone(),
                &["profile", "version"],
                Some("9.9".into()),
            )),
            "PROFILE_NOT_FOUND",
        ),
        (
            "bad regex profile",
            bytes_of(&request_for(
                "bad-regex",
                "1",
                "r-2",
                "search",
                Value::object([("q", "x".into())]),
            )),
            "PROFILE_PARSE_ERROR",
        ),
        (
            "tool not listed",
            bytes_of(&request(
                "r-3",
                "shell.exec",
                Value::object([("cmd", "rm -rf /".into())]),
            )),
            "TOOL_NOT_ALLOWED",
        ),
        (
            "approval missing",
            bytes_of(&request(
                "r-4",
                "storage.put",
                Value::object([("key", "k".into())]),
            )),
            "CONTROL_REQUIRED",
        ),
        (
            "approval made up",
            bytes_of(&with(
                request("r-5", "storage.put", Value::Null),
                &["controls"],
                Some(Value::object([("approval_token", "APPROVED".into())])),
            )),
            "APPROVAL_INVALID",
        ),
        (
            "recipient outside the domain",
            bytes_of(&request(
                "r-6",
                "email.send",
                email_args("eve@evil.com", "hi"),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "domain suffix trick",
            bytes_of(&request(
                "r-7",
                "email.send",
                email_args("eve@example.com.evil.io", "hi"),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "trailing newline in address",
            bytes_of(&request(
                "r-8",
                "email.send",
                email_args("bob@example.com\n", "hi"),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "subject too long",
            bytes_of(&request(
                "r-9",
                "email.send",
                email_args("bob@example.com", &"é".repeat(121)),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "missing argument",
            bytes_of(&request(
                "r-10",
                "email.send",
                Value::object([("to", "bob@example.com".into())]),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "null argument",
            bytes_of(&request(
                "r-11",
                "email.send",
                Value::object([("to", "bob@example.com".into()), ("subject", Value::Null)]),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "args not an object",
            bytes_of(&request("r-12", "email.send", Value::Array(vec![]))),
            "CONSTRAINT_EVAL_ERROR",
        ),
        (
            "unknown rule type",
            bytes_of(&request_for(
                "odd-type",
                "1",
                "r-13",
                "search",
                Value::object([("q", "x".into())]),
            )),
            "CONSTRAINT_EVAL_ERROR",
        ),
    ];
    let mut seen = 0;
    for (name, body, reason) in cases {
        let (status, decision) = gate.execute(body.clone()).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            (
                decision["decision_type"].str(),
                decision["reason_code"].str()
            ),
            ("DENY", reason),
            "{name}: {decision:?}"
        );
        assert!(decision["approved_call"].is_null(), "{name}");
        let record = gate.record_for(&decision);
        assert!(record["approved_call"].is_null(), "{name}");
        // The request hash follows SPEC §4 for each kind of failure.
        let expected_hash = match reason {
            "REQUEST_PARSE_ERROR" => canonical::sha256_prefixed(&body),
            "REQUEST_SCHEMA_INVALID" => canonical::hash(&canonical::parse(&body).unwrap()),
            _ => decision["request_hash"].str().to_owned(),
        };
        assert_eq!(decision["request_hash"].str(), expected_hash, "{name}");
        if matches!(reason, "REQUEST_PARSE_ERROR" | "REQUEST_SCHEMA_INVALID") {
            assert_eq!(record["request_id"].str(), "UNKNOWN", "{name}");
            assert_eq!(decision["profile"]["id"].str(), "UNKNOWN", "{name}");
        }
        if matches!(
            reason,
            "REQUEST_PARSE_ERROR"
                | "REQUEST_SCHEMA_INVALID"
                | "CTX_HASH_MISMATCH"
                | "PROFILE_NOT_FOUND"
        ) {
            assert_eq!(
                decision["profile"]["profile_ref_hash"].str(),
                canonical::sha256_prefixed(b"NO_PROFILE"),
                "{name}"
            );
        }
        assert!(
            !decision["detail"].str().is_empty(),
            "{name} explains itself"
        );
        seen += 1;
    }
    assert_eq!(gate.records().len(), seen, "one record per attempt");
    assert_verify_ok(&gate.audit_path, seen as u64);
}

#[tokio::test]
async fn oversized_bodies_are_denied_too_large() {
    let gate = TestGate::start_with(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    let big = request(
        "r-big",
        "email.send",
        email_args("bob@example.com", &"x".repeat(2000)),
    );
    let (status, decision) = gate.execute(bytes_of(&big)).await;
    assert_eq!(status, 200);
    assert_decision(&decision, "DENY", "REQUEST_TOO_LARGE");
    assert_eq!(
        decision["request_hash"].str(),
        canonical::sha256_prefixed(b"")
    );
    gate.record_for(&decision);

    // Without Content-Length (chunked) the limit holds as the bytes arrive.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..10)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b' '; 300]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client
        .request(
            http::Request::post(gate.url("/v1/execute"))
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_some());
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let decision = canonical::parse(&bytes).unwrap();
    assert_decision(&decision, "DENY", "REQUEST_TOO_LARGE");
    gate.record_for(&decision);
    assert_eq!(gate.records().len(), 2);
}

#[tokio::test]
async fn other_routes_are_not_attempts_and_not_audited() {
    let gate = TestGate::start().await;
    let (status, body) = gate.send("GET", "/v1/execute", Bytes::new()).await;
    assert_eq!(status, 405);
    assert!(body["error"].str().contains("POST"));
    let (status, _) = gate
        .send("POST", "/v1/other", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(status, 404);
    let (status, _) = gate.send("GET", "/healthz", Bytes::new()).await;
    assert_eq!(status, 404);
    assert!(gate.records().is_empty());
}

pub fn assert_verify_ok(path: &Path, records: u64) {
    let report = ecl_gate::audit::verify_files(&[path.to_path_buf()])
        .unwrap_or_else(|failure| panic!("audit verify failed: {failure}"));
    assert_eq!(report.records, records);
}

/// A reference profile's amount limit (`min`/`max` on a number rule) over HTTP: refused
/// outside the bounds, with the record saying so, and allowed on the bound.
#[tokio::test]
async fn number_bounds_decide_and_are_recorded() {
    let gate = TestGate::start().await;
    let transfer = |id: &str, amount: Value| {
        request_for(
            "finance-agent",
            "2.2.0",
            id,
            "payments.transfer",
            Value::object([
                ("currency", "EUR".into()),
                ("amount", amount),
                ("memo", "rent".into()),
                (
                    "beneficiary",
                    Value::object([("iban", "DE89370400440532013000".into())]),
                ),
                ("approvers", Value::Array(vec!["ana".into()])),
                ("dry_run", false.into()),
            ]),
        )
    };
    let (_, over) = gate
        .execute(bytes_of(&transfer("bound-1", Value::from(20000i64))))
        .await;
    assert_eq!(
        (over["decision_type"].str(), over["reason_code"].str()),
        ("DENY", "CONSTRAINT_VIOLATION"),
        "{over:?}"
    );
    assert!(
        over["detail"]
            .str()
            .contains("`$.amount` is above the maximum 10000.0"),
        "{over:?}"
    );
    let record = gate.record_for(&over);
    assert_eq!(record["reason_code"].str(), "CONSTRAINT_VIOLATION");
    assert_eq!(record["profile_version"].str(), "2.2.0");

    let (_, at_max) = gate
        .execute(bytes_of(&transfer("bound-2", Value::from(10000i64))))
        .await;
    assert_eq!(at_max["decision_type"].str(), "ALLOW", "{at_max:?}");
    assert_eq!(gate.record_for(&at_max)["decision_type"].str(), "ALLOW");
}
