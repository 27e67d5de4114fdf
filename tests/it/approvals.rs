//! Escalation end to end: ESCALATE → `ecl-gate approve` → the same request with the token is
//! ALLOWed; the token never transfers to another request and, single-use, never counts twice.

use std::path::{Path, PathBuf};

use ecl_gate::approval::{parse_public_key, Approvals};
use ecl_gate::canonical::{self, Value};

use crate::common::*;

/// Runs `ecl-gate keygen` into `dir`; returns the kid and the approver config.
pub fn keygen(dir: &Path) -> (String, PathBuf, Approvals) {
    let out = gate_command()
        .args(["keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let private = dir.join(format!("{kid}.key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key must be 0600");
    }
    // PKCS#8 v1, 48 bytes of DER: the form PyJWT/`cryptography` and OpenSSL read (v2, with the
    // public key embedded, is refused by `cryptography` as "extra data").
    let pem = std::fs::read_to_string(&private).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    assert_eq!(der.len(), 48, "PKCS#8 v1 Ed25519 key");
    let public = std::fs::read_to_string(dir.join(format!("{kid}.pub"))).unwrap();
    let approvals = Approvals {
        keys: [(kid.clone(), parse_public_key(&public).unwrap())]
            .into_iter()
            .collect(),
        ..Approvals::default()
    };
    (kid, private, approvals)
}

/// `keygen --kid alice` then `approve --key alice.key`: the token must carry `alice`, the kid
/// the gate's config names the key by (it carried the derived kid, and the gate answered
/// "signed with unknown key").
#[tokio::test]
async fn a_key_made_with_a_kid_signs_with_that_kid() {
    let dir = tempfile::tempdir().unwrap();
    let out = gate_command()
        .args(["keygen", "--kid", "alice", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(dir.path().join("alice.pub")).unwrap();
    let approvals = Approvals {
        keys: [("alice".to_owned(), parse_public_key(&public).unwrap())]
            .into_iter()
            .collect(),
        ..Approvals::default()
    };
    let gate = TestGate::start_with(Options {
        approvals,
        ..Options::default()
    })
    .await;
    let request = deploy("kid-1", "billing");
    let escalated = gate.execute(bytes_of(&request)).await;
    assert_eq!(escalated.1["decision_type"].str(), "ESCALATE");
    let intent = escalated.1["escalation"]["intent_hash"].str().to_owned();
    let token = approve(&dir.path().join("alice.key"), &["--intent-hash", &intent]);
    let header = token.split('.').next().unwrap();
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    assert!(String::from_utf8(header)
        .unwrap()
        .contains(r#""kid":"alice""#));
    let allowed = gate.execute(bytes_of(&with_token(&request, &token))).await;
    assert_eq!(allowed.1["decision_type"].str(), "ALLOW", "{:?}", allowed.1);
}

pub fn approve(key: &Path, what: &[&str]) -> String {
    let out = gate_command()
        .arg("approve")
        .arg("--key")
        .arg(key)
        .args(what)
        .args(["--ttl", "5m", "--approver", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn deploy(request_id: &str, service: &str) -> Value {
    request_for(
        "ops",
        "1.0.0",
        request_id,
        "deploy.run",
        Value::object([("service", service.into()), ("version", "1.4.2".into())]),
    )
}

pub fn with_token(request: &Value, token: &str) -> Value {
    with(
        request.clone(),
        &["controls"],
        Some(Value::object([("approval_token", token.into())])),
    )
}

#[tokio::test]
async fn escalate_approve_allow_and_the_token_binds_one_request() {
    let keys = tempfile::tempdir().unwrap();
    let (kid, private, approvals) = keygen(keys.path());
    let gate = TestGate::start_with(Options {
        approvals,
        ..Options::default()
    })
    .await;

    let request = deploy("deploy-1", "billing");
    let (status, escalated) = gate.execute(bytes_of(&request)).await;
    assert_eq!(status, 200);
    assert_eq!(escalated["decision_type"].str(), "ESCALATE");
    assert_eq!(escalated["reason_code"].str(), "APPROVAL_REQUIRED");
    assert!(escalated["approved_call"].is_null());
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    assert_eq!(
        escalated["escalation"]["required"],
        Value::Array(vec!["approval_token".into()])
    );
    let record = gate.record_for(&escalated);
    assert_eq!(record["escalation"], escalated["escalation"]);

    // The approver signs from the saved ESCALATE answer, or from the intent hash alone.
    let saved = keys.path().join("escalated.json");
    std::fs::write(&saved, canonical::to_canonical(&escalated)).unwrap();
    let token = approve(&private, &["--request", saved.to_str().unwrap()]);
    let by_hash = approve(&private, &["--intent-hash", &intent]);

    for token in [&token, &by_hash] {
        let (status, allowed) = gate.execute(bytes_of(&with_token(&request, token))).await;
        assert_eq!(status, 200);
        assert_eq!(allowed["decision_type"].str(), "ALLOW", "{allowed:?}");
        let record = gate.record_for(&allowed);
        assert_eq!(record["approval"]["kid"].str(), kid);
        assert_eq!(record["approval"]["iss"].str(), "alice");
    }

    // The same token on any other request is refused.
    let others = [
        ("other args", deploy("deploy-1", "payments")),
        ("other request_id", deploy("deploy-2", "billing")),
        (
            "other actor",
            with(
                request.clone(),
                &["actor", "principal_id"],
                Some("agent:666".into()),
            ),
        ),
        (
            "other snapshot",
            with(
                with(request.clone(), &["context", "snapshot"], Some(Value::Null)),
                &["context", "snapshot_hash"],
                Some(canonical::hash(&Value::Null).into()),
            ),
        ),
    ];
    for (name, other) in others {
        let (status, denied) = gate.execute(bytes_of(&with_token(&other, &token))).await;
        assert_eq!(status, 200);
        assert_eq!(
            (denied["decision_type"].str(), denied["reason_code"].str()),
            ("DENY", "APPROVAL_INVALID"),
            "{name}"
        );
        assert!(
            denied["detail"].str().contains("different request"),
            "{name}"
        );
        gate.record_for(&denied);
    }
}

#[tokio::test]
async fn a_single_use_token_is_honoured_once() {
    let keys = tempfile::tempdir().unwrap();
    let (_, private, approvals) = keygen(keys.path());
    let ledger = keys.path().join("used.jsonl");
    let gate = TestGate::start_with(Options {
        approvals: approvals.clone(),
        single_use_ledger: Some(ledger.clone()),
        ..Options::default()
    })
    .await;
    let request = deploy("deploy-9", "billing");
    let (_, escalated) = gate.execute(bytes_of(&request)).await;
    let token = approve(
        &private,
        &[
            "--intent-hash",
            escalated["escalation"]["intent_hash"].str(),
        ],
    );
    let (_, first) = gate.execute(bytes_of(&with_token(&request, &token))).await;
    assert_eq!(first["decision_type"].str(), "ALLOW");
    let (_, second) = gate.execute(bytes_of(&with_token(&request, &token))).await;
    assert_eq!(
        (second["decision_type"].str(), second["reason_code"].str()),
        ("DENY", "APPROVAL_INVALID")
    );
    assert!(
        second["detail"].str().contains("already used"),
        "{second:?}"
    );
    let record = gate.record_for(&second);
    assert!(record["approved_call"].is_null());
    // The ledger outlives the gate: a restarted gate refuses the token too.
    drop(gate);
    let restarted = TestGate::start_with(Options {
        approvals,
        single_use_ledger: Some(ledger),
        ..Options::default()
    })
    .await;
    let (_, third) = restarted
        .execute(bytes_of(&with_token(&request, &token)))
        .await;
    assert_eq!(third["reason_code"].str(), "APPROVAL_INVALID");
    assert!(third["detail"].str().contains("already used"), "{third:?}");
}

#[tokio::test]
async fn a_ledger_that_cannot_be_written_fails_closed() {
    // `/dev/full` takes the ledger's lock and reads as empty, but every write fails (ENOSPC):
    // a valid, unspent approval must then be refused, never ALLOWed unrecorded.
    let keys = tempfile::tempdir().unwrap();
    let (_, private, approvals) = keygen(keys.path());
    let gate = TestGate::start_with(Options {
        approvals,
        single_use_ledger: Some("/dev/full".into()),
        ..Options::default()
    })
    .await;
    let request = deploy("deploy-full", "billing");
    let (_, escalated) = gate.execute(bytes_of(&request)).await;
    let token = approve(
        &private,
        &[
            "--intent-hash",
            escalated["escalation"]["intent_hash"].str(),
        ],
    );
    let (status, denied) = gate.execute(bytes_of(&with_token(&request, &token))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (denied["decision_type"].str(), denied["reason_code"].str()),
        ("DENY", "INTERNAL_ERROR")
    );
    assert!(denied["approved_call"].is_null());
    let record = gate.record_for(&denied);
    assert_eq!(record["reason_code"].str(), "INTERNAL_ERROR");
    assert!(record["approved_call"].is_null());
}

/// The reference treats an empty token as none (`if not token`): CONTROL_REQUIRED, or ESCALATE
/// where `on_missing` says so, and never APPROVAL_INVALID. Each answer has its record.
#[tokio::test]
async fn an_empty_approval_token_is_a_missing_one() {
    let keys = tempfile::tempdir().unwrap();
    let (_, _, approvals) = keygen(keys.path());
    let gate = TestGate::start_with(Options {
        approvals,
        ..Options::default()
    })
    .await;

    let escalating = with_token(&deploy("empty-1", "billing"), "");
    let (status, answer) = gate.execute(bytes_of(&escalating)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["decision_type"].str(), answer["reason_code"].str()),
        ("ESCALATE", "APPROVAL_REQUIRED"),
        "{answer:?}"
    );
    let record = gate.record_for(&answer);
    assert_eq!(record["decision_type"].str(), "ESCALATE");
    assert_eq!(record["reason_code"].str(), "APPROVAL_REQUIRED");

    let refund = request_for(
        "finance-agent",
        "2.1.0",
        "empty-2",
        "payments.refund",
        Value::object([("transfer_id", "TX-0123456789abcdef".into())]),
    );
    let (status, answer) = gate.execute(bytes_of(&with_token(&refund, ""))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["decision_type"].str(), answer["reason_code"].str()),
        ("DENY", "CONTROL_REQUIRED"),
        "{answer:?}"
    );
    let record = gate.record_for(&answer);
    assert_eq!(record["decision_type"].str(), "DENY");
    assert_eq!(record["reason_code"].str(), "CONTROL_REQUIRED");
    assert_eq!(gate.records().len(), 2);
}
