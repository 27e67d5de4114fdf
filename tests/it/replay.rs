//! Replay, the strong form of determinism: a 1,000-decision log re-decides identically, and a
//! profile changed by one byte makes the replay fail loudly. Also `ecl-gate decide`, the dry run.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ecl_gate::approval::{key_id, sign, Approvals, Grant};
use ecl_gate::canonical::{self, Value};
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::SigningKey;

use crate::common::*;

fn copy_profiles(to: &Path) {
    for (id, version) in [("example", "1.0.0"), ("ops", "1.0.0")] {
        std::fs::create_dir_all(to.join(id)).unwrap();
        std::fs::copy(
            shipped_profiles().join(format!("{id}/{version}.json")),
            to.join(format!("{id}/{version}.json")),
        )
        .unwrap();
    }
}

fn replay(config: &Path, profiles: &Path, log: &Path) -> (i32, String, String) {
    let out = gate_command()
        .arg("--config")
        .arg(config)
        .arg("replay")
        .arg(log)
        .arg("--profiles")
        .arg(profiles)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_log_replays_identically_and_a_changed_profile_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    copy_profiles(&profiles);
    // Test-fixture approver key (seed 3), used only here.
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let kid = key_id(&key.verifying_key());
    let public = dir.path().join("approver.pub");
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!("[approvals.keys.{kid}]\nfile = \"{}\"\n", public.display()),
    )
    .unwrap();
    let gate = TestGate::start_with(Options {
        profiles_root: profiles.clone(),
        approvals: Approvals {
            keys: [(kid.clone(), key.verifying_key())].into_iter().collect(),
            ..Approvals::default()
        },
        include_request: true,
        ..Options::default()
    })
    .await;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..1000 {
        let id = format!("r-{i}");
        let body = match i % 8 {
            0 => request(&id, "email.send", email_args("bob@example.com", "hi")),
            1 => request(&id, "email.send", email_args("eve@evil.com", "hi")),
            2 => request(&id, "shell.exec", Value::Null),
            3 => request_for(
                "ops",
                "1.0.0",
                &id,
                "email.send",
                email_args("carol@partner.org", "q3"),
            ),
            4 | 5 => {
                let escalating = request_for(
                    "ops",
                    "1.0.0",
                    &id,
                    "deploy.run",
                    Value::object([
                        ("service", "billing".into()),
                        ("version", format!("1.{i}").into()),
                    ]),
                );
                if i % 8 == 4 {
                    escalating
                } else {
                    let intent = ecl_gate::request::decode(&canonical::to_canonical(&escalating))
                        .unwrap()
                        .intent_hash;
                    let token = sign(
                        &key,
                        &kid,
                        &Grant {
                            issuer: "alice",
                            intent_hash: &intent,
                            issued_at: now,
                            expires_at: now + 600,
                            jti: &id,
                        },
                    );
                    with(
                        escalating,
                        &["controls"],
                        Some(Value::object([("approval_token", token.into())])),
                    )
                }
            }
            6 => request_for("missing", "1", &id, "x", Value::Null),
            _ => with(
                request(&id, "email.send", Value::Null),
                &["context", "snapshot_hash"],
                Some("sha256:00".into()),
            ),
        };
        let (_, decision) = gate.execute(bytes_of(&body)).await;
        *seen
            .entry(format!(
                "{} {}",
                decision["decision_type"].str(),
                decision["reason_code"].str()
            ))
            .or_default() += 1;
    }
    // A few bodies that never became requests: recorded, but nothing to re-decide.
    for _ in 0..3 {
        gate.execute(bytes::Bytes::from_static(b"{oops")).await;
    }
    for kind in [
        "ALLOW OK",
        "DENY CONSTRAINT_VIOLATION",
        "DENY TOOL_NOT_ALLOWED",
        "ESCALATE APPROVAL_REQUIRED",
        "DENY PROFILE_NOT_FOUND",
        "DENY CTX_HASH_MISMATCH",
    ] {
        assert!(seen.contains_key(kind), "{kind} missing from {seen:?}");
    }
    assert!(
        seen["ALLOW OK"] >= 250,
        "approved ALLOWs included: {seen:?}"
    );

    let log = gate.audit_path.clone();
    // Approvals, escalations, rejections: every kind of decision record matches its schema.
    let schema = crate::schemas::schema_file("schemas/audit-record.schema.json");
    for record in read_records(&log) {
        crate::schemas::assert_valid(&schema, &crate::schemas::to_json(&record), "record");
    }
    let (code, out, err) = replay(&config, &profiles, &log);
    assert_eq!(code, 0, "{out}{err}");
    // Bodies that were never JSON carry no request to re-decide.
    assert!(
        out.contains("replayed 1000, identical 1000, differing 0"),
        "{out}"
    );
    assert!(out.contains("skipped 3"), "{out}");

    // One byte more in a profile: every decision under it differs, and replay says why.
    let path = profiles.join("ops/1.0.0.json");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(b' ');
    std::fs::write(&path, bytes).unwrap();
    let (code, out, err) = replay(&config, &profiles, &log);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("profile bytes changed") && err.contains("`ops`"),
        "{err}"
    );
    assert!(!out.contains("differing 0"), "{out}");
}

#[test]
fn decide_dry_run_prints_the_decision_without_auditing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    let body = request("dry-1", "email.send", email_args("eve@evil.com", "hi"));
    std::fs::write(&file, canonical::to_canonical(&body)).unwrap();
    let run = |expect: &str| {
        gate_command()
            .current_dir(dir.path())
            .env("ECL_AUDIT__PATH", dir.path().join("must-not-exist.log"))
            .args(["decide", "--request"])
            .arg(&file)
            .arg("--profiles")
            .arg(shipped_profiles())
            .args(["--expect", expect])
            .output()
            .unwrap()
    };
    let out = run("DENY");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision =
        canonical::parse(String::from_utf8_lossy(&out.stdout).trim().as_bytes()).unwrap();
    assert_eq!(decision["reason_code"].str(), "CONSTRAINT_VIOLATION");
    assert!(decision["audit"].is_null());
    let out = run("ALLOW");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected ALLOW, got DENY"));
    assert!(!dir.path().join("must-not-exist.log").exists());
}
