//! Changing policy safely (issue 17): replay against a candidate profile version, shadow
//! evaluation in the running gate, and `profiles diff`.
//!
//! One recorded mix of decisions under `example@1.0.0`, and a candidate `1.1.0` that tightens
//! one rule (`$.subject` max_len 120 → 10) and adds one tool (`files.read`): the exact
//! transitions are known in advance.

use std::path::{Path, PathBuf};

use ecl_gate::canonical::Value;

use crate::common::*;

/// The candidate: the shipped example with one rule tightened and one tool added.
const CANDIDATE: &str = r#"{
  "profile_id": "example",
  "profile_version": "1.1.0",
  "default": "DENY",
  "allowed_tools": [
    {
      "name": "email.send",
      "required_controls": { "approval_token": false },
      "constraints": {
        "arg_rules": [
          { "path": "$.to", "type": "string", "pattern": "^[^@]+@example\\.com$" },
          { "path": "$.subject", "type": "string", "max_len": 10 }
        ]
      }
    },
    {
      "name": "storage.put",
      "required_controls": { "approval_token": true }
    },
    { "name": "files.read" }
  ]
}
"#;

/// Shipped profiles plus the candidate `example@1.1.0` and a broken `example@1.2.0`.
fn profiles_with_candidate(dir: &Path) -> PathBuf {
    let root = dir.join("profiles");
    for (id, version) in [("example", "1.0.0"), ("ops", "1.0.0")] {
        std::fs::create_dir_all(root.join(id)).unwrap();
        std::fs::copy(
            shipped_profiles().join(format!("{id}/{version}.json")),
            root.join(format!("{id}/{version}.json")),
        )
        .unwrap();
    }
    std::fs::write(root.join("example/1.1.0.json"), CANDIDATE).unwrap();
    std::fs::write(root.join("example/1.2.0.json"), "{\"profile_id\": ").unwrap();
    root
}

/// The recorded mix: (request id, body, enforced decision, candidate decision).
fn traffic() -> Vec<(String, Value, &'static str, &'static str)> {
    let mut all = Vec::new();
    let mut add = |n: usize, prefix: &str, body: &dyn Fn(&str) -> Value, enforced, candidate| {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            all.push((id.clone(), body(&id), enforced, candidate));
        }
    };
    add(
        5,
        "short",
        &|id| request(id, "email.send", email_args("bob@example.com", "hi")),
        "ALLOW OK",
        "ALLOW OK",
    );
    add(
        4,
        "long",
        &|id| {
            request(
                id,
                "email.send",
                email_args("bob@example.com", "quarterly report"),
            )
        },
        "ALLOW OK",
        "DENY CONSTRAINT_VIOLATION",
    );
    add(
        3,
        "evil",
        &|id| request(id, "email.send", email_args("eve@evil.com", "hi")),
        "DENY CONSTRAINT_VIOLATION",
        "DENY CONSTRAINT_VIOLATION",
    );
    add(
        2,
        "read",
        &|id| request(id, "files.read", Value::object([("path", "/tmp/x".into())])),
        "DENY TOOL_NOT_ALLOWED",
        "ALLOW OK",
    );
    add(
        2,
        "shell",
        &|id| request(id, "shell.exec", Value::Null),
        "DENY TOOL_NOT_ALLOWED",
        "DENY TOOL_NOT_ALLOWED",
    );
    add(
        1,
        "put",
        &|id| request(id, "storage.put", Value::Null),
        "DENY CONTROL_REQUIRED",
        "DENY CONTROL_REQUIRED",
    );
    // Another profile: never re-decided, never shadowed.
    add(
        1,
        "ops",
        &|id| {
            request_for(
                "ops",
                "1.0.0",
                id,
                "email.send",
                email_args("carol@partner.org", "q3"),
            )
        },
        "ESCALATE APPROVAL_REQUIRED",
        "ESCALATE APPROVAL_REQUIRED",
    );
    all
}

fn kind(decision: &Value) -> String {
    format!(
        "{} {}",
        decision["decision_type"].str(),
        decision["reason_code"].str()
    )
}

/// Sends the mix (and two bodies that never become requests); checks every enforced answer.
async fn record_traffic(gate: &TestGate) -> Vec<Value> {
    let mut answers = Vec::new();
    for (id, body, enforced, _) in traffic() {
        let (status, decision) = gate.execute(bytes_of(&body)).await;
        assert_eq!(status, 200, "{id}");
        assert_eq!(
            kind(&decision),
            enforced,
            "{id}: the answer is the enforced one"
        );
        answers.push(decision);
    }
    for _ in 0..2 {
        gate.execute(bytes::Bytes::from_static(b"{oops")).await;
    }
    answers
}

fn replay(args: &[&str], profiles: &Path, files: &[&Path]) -> (i32, String, String) {
    let out = gate_command()
        .arg("replay")
        .args(files)
        .arg("--profiles")
        .arg(profiles)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_against_a_candidate_counts_the_exact_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let gate = TestGate::start_with(Options {
        profiles_root: profiles.clone(),
        include_request: true,
        ..Options::default()
    })
    .await;
    record_traffic(&gate).await;
    let log = gate.audit_path.clone();

    let (code, out, err) = replay(&["--candidate", "example@1.1.0"], &profiles, &[&log]);
    assert_eq!(code, 0, "{out}{err}");
    let expected_table = "\
candidate example@* → example@1.1.0
re-decided 17: same 11, changed 6 (1 naming other profiles left as recorded, 2 skipped without a recorded request)
transition                         count  first request ids
ALLOW → DENY CONSTRAINT_VIOLATION      4  long-0, long-1, long-2, long-3
DENY TOOL_NOT_ALLOWED → ALLOW          2  read-0, read-1
";
    assert_eq!(out, expected_table);

    // --json: the same numbers for machines.
    let (code, out, err) = replay(
        &["--candidate", "example@1.0.0=example@1.1.0", "--json"],
        &profiles,
        &[&log],
    );
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report,
        serde_json::json!({
            "candidates": [{"profile_id": "example", "profile_version": "1.0.0", "candidate": "example@1.1.0"}],
            "re_decided": 17, "same": 11, "changed": 6, "other_profiles": 1, "skipped": 2,
            "transitions": [
                {"from": {"decision_type": "ALLOW", "reason_code": "OK"},
                 "to": {"decision_type": "DENY", "reason_code": "CONSTRAINT_VIOLATION"},
                 "count": 4, "request_ids": ["long-0", "long-1", "long-2", "long-3"]},
                {"from": {"decision_type": "DENY", "reason_code": "TOOL_NOT_ALLOWED"},
                 "to": {"decision_type": "ALLOW", "reason_code": "OK"},
                 "count": 2, "request_ids": ["read-0", "read-1"]}
            ]
        })
    );

    // CI gates the change on the transitions it must not make.
    let (code, out, err) = replay(
        &["--candidate", "example@1.1.0", "--fail-on", "DENY→ALLOW"],
        &profiles,
        &[&log],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim(),
        "error: forbidden transition DENY TOOL_NOT_ALLOWED → ALLOW: 2 (--fail-on `DENY→ALLOW`)"
    );
    let (code, _, err) = replay(
        &[
            "--candidate",
            "example@1.1.0",
            "--fail-on",
            "ESCALATE->ALLOW,DENY CONSTRAINT_VIOLATION->ALLOW",
        ],
        &profiles,
        &[&log],
    );
    assert_eq!(code, 0, "{err}");

    // The version in force as its own candidate: nothing changes, whatever is forbidden.
    let (code, out, err) = replay(
        &["--candidate", "example@1.0.0", "--fail-on", "*→*"],
        &profiles,
        &[&log],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("re-decided 17: same 17, changed 0") && out.ends_with("no transitions\n"),
        "{out}"
    );

    // A rotated chain, named out of order: read in seq order, the same table.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let active = dir.path().join("chain.log");
    let rolled = dir.path().join("chain.log.00000000000000000000");
    std::fs::write(&rolled, lines[..7].join("\n") + "\n").unwrap();
    std::fs::write(&active, lines[7..].join("\n") + "\n").unwrap();
    let (code, out, err) = replay(
        &["--candidate", "example@1.1.0"],
        &profiles,
        &[&active, &rolled],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, expected_table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_bad_candidates_and_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let log = dir.path().join("empty.log");
    std::fs::write(&log, "").unwrap();
    for (args, expected) in [
        (
            vec!["--candidate", "example@9.9"],
            "error: candidate `example@9.9` cannot be used: unknown profile `example` at version `9.9`",
        ),
        (
            vec!["--candidate", "example@1.2.0"],
            "error: candidate `example@1.2.0` cannot be used: profile `example` version `1.2.0` is invalid",
        ),
        (
            vec!["--candidate", "example"],
            "error: `example` is not a profile like `example@1.1.0`",
        ),
        (
            vec!["--candidate", "example@1.1.0", "--fail-on", "ALLOW"],
            "error: `ALLOW` is not a transition like `ALLOW→DENY`",
        ),
        (
            vec!["--candidate", "example@1.1.0"],
            "error: no recorded request names a profile the candidates cover",
        ),
    ] {
        let (code, out, err) = replay(&args, &profiles, &[&log]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.starts_with(expected), "{args:?}: {err}");
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_records_and_counts_disagreements_only() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let gate = TestGate::start_with(Options {
        profiles_root: profiles.clone(),
        include_request: true,
        shadow: vec![("example@1.0.0", "1.1.0")],
        ..Options::default()
    })
    .await;
    let answers = record_traffic(&gate).await;
    for answer in &answers {
        assert!(answer.get("shadow").is_none(), "never in the answer");
    }

    // One record per attempt: the shadow never costs a record of its own.
    let records = gate.records();
    assert_eq!(records.len(), traffic().len() + 2);
    let mut shadowed = 0;
    for ((id, _, _, candidate), record) in traffic().iter().zip(&records) {
        assert_eq!(record["request_id"].str(), id);
        let enforced = kind(record);
        if enforced == *candidate {
            assert!(record.get("shadow").is_none(), "{id}: agreement recorded");
            continue;
        }
        shadowed += 1;
        let (decision_type, reason_code) = candidate.split_once(' ').unwrap();
        assert_eq!(
            record["shadow"],
            Value::object([
                ("decision_type", decision_type.into()),
                ("profile_version", "1.1.0".into()),
                ("reason_code", reason_code.into()),
            ]),
            "{id}"
        );
    }
    assert_eq!(shadowed, 6);

    // Every record, shadow member included, matches the published record schema; a shadow
    // member that says more, or something else, does not.
    let schema = crate::schemas::schema_file("schemas/audit-record.schema.json");
    for record in &records {
        crate::schemas::assert_valid(&schema, &crate::schemas::to_json(record), "record");
    }
    let with_shadow = crate::schemas::to_json(&records[5]);
    assert!(with_shadow.get("shadow").is_some());
    for (pointer, bad) in [
        ("/shadow/decision_type", serde_json::json!("MAYBE")),
        ("/shadow/reason_code", serde_json::json!("NOPE")),
        ("/shadow/detail", serde_json::json!("extra")),
        ("/shadow", serde_json::json!({"decision_type": "DENY"})),
    ] {
        let mut record = with_shadow.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        record
            .pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), bad);
        assert!(!schema.is_valid(&record), "{pointer} accepted");
    }

    let text = gate.metrics.encode();
    // 11 agreements: the ops request names another profile and the two bodies no profile.
    assert_eq!(metric(&text, "ecl_shadow_agreements_total "), 11.0);
    assert_eq!(
        metric(
            &text,
            r#"ecl_shadow_disagreements_total{decision="ALLOW",reason="OK",shadow_decision="DENY",shadow_reason="CONSTRAINT_VIOLATION"}"#
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            r#"ecl_shadow_disagreements_total{decision="DENY",reason="TOOL_NOT_ALLOWED",shadow_decision="ALLOW",shadow_reason="OK"}"#
        ),
        2.0
    );
    assert_eq!(metric(&text, "ecl_shadow_unavailable_total "), 0.0);

    // Replay re-decides the enforced decisions identically, and re-checks each recorded
    // disagreement under the version it names.
    let log = gate.audit_path.clone();
    let (code, out, err) = replay(&[], &profiles, &[&log]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("replayed 18, identical 18, differing 0"),
        "{out}"
    );
    // A shadow member edited after the fact (the chain would catch it too) does not replay.
    let text = std::fs::read_to_string(&log).unwrap().replacen(
        r#""shadow":{"decision_type":"DENY""#,
        r#""shadow":{"decision_type":"ESCALATE""#,
        1,
    );
    let edited = dir.path().join("edited.log");
    std::fs::write(&edited, text).unwrap();
    let (code, out, err) = replay(&[], &profiles, &[&edited]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "shadow under version `1.1.0` recorded ESCALATE CONSTRAINT_VIOLATION, replayed DENY CONSTRAINT_VIOLATION"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_candidate_never_changes_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let plain = TestGate::start_with(Options {
        profiles_root: profiles.clone(),
        ..Options::default()
    })
    .await;
    let shadowed = TestGate::start_with(Options {
        profiles_root: profiles.clone(),
        // Invalid JSON, and a version that does not exist.
        shadow: vec![("example@1.0.0", "1.2.0"), ("ops@1.0.0", "9.9")],
        ..Options::default()
    })
    .await;
    let without = record_traffic(&plain).await;
    let with = record_traffic(&shadowed).await;
    for (a, b) in without.iter().zip(&with) {
        let mut a = a.clone();
        let mut b = b.clone();
        // Where each record landed differs between two logs; the decision must not.
        for d in [&mut a, &mut b] {
            if let Value::Object(map) = d {
                map.remove("audit");
            }
        }
        assert_eq!(a, b);
    }
    assert!(shadowed
        .records()
        .iter()
        .all(|record| record.get("shadow").is_none()));
    let text = shadowed.metrics.encode();
    // Every request naming either enforced profile: 17 for example, 1 for ops.
    assert_eq!(metric(&text, "ecl_shadow_unavailable_total "), 18.0);
    assert_eq!(metric(&text, "ecl_shadow_agreements_total "), 0.0);
}

#[test]
fn readyz_reports_each_candidate_without_turning_unready() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        "[shadow]\n\"example@1.0.0\" = \"1.1.0\"\n\"ops@1.0.0\" = \"9.9\"\n",
    )
    .unwrap();
    let (mut child, addr, admin) = crate::cli::spawn_serve_with_admin(
        dir.path(),
        &[
            ("PROFILES_ROOT", profiles.to_str().unwrap()),
            ("ECL_CONFIG", config.to_str().unwrap()),
        ],
    );
    let decision = crate::cli::post(&addr, &bytes_of(&request("r-1", "files.read", Value::Null)));
    assert_eq!(decision["reason_code"].str(), "TOOL_NOT_ALLOWED");
    let (status, body) = crate::cli::get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ready",
            "shadow": [
                {"profile": "example@1.0.0", "candidate": "1.1.0", "state": "evaluated"},
                {"profile": "ops@1.0.0", "candidate": "9.9", "state": "unavailable",
                 "error": "unknown profile `ops` at version `9.9`"}
            ]
        })
    );
    let doc = crate::schemas::openapi();
    let schema = &doc["paths"]["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    crate::schemas::assert_valid(
        &crate::schemas::openapi_validator(&doc, schema),
        &body,
        "/readyz with shadow",
    );
    let (_, metrics) = crate::cli::get(&admin, "/metrics");
    assert!(
        metrics.contains(r#"ecl_shadow_disagreements_total{decision="DENY",reason="TOOL_NOT_ALLOWED",shadow_decision="ALLOW",shadow_reason="OK"} 1"#),
        "{metrics}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn profiles_diff_names_the_tightened_rule_and_the_added_tool() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = profiles_with_candidate(dir.path());
    let out = gate_command()
        .args([
            "profiles",
            "diff",
            "example@1.0.0",
            "example@1.1.0",
            "--profiles",
        ])
        .arg(&profiles)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\
example@1.0.0 → example@1.1.0
  tightened  email.send: rule `$.subject`: max_len 120 → 10
  added      files.read: tool now allowed (no arg rules)
2 changes: 1 added, 1 tightened
"
    );
    let out = gate_command()
        .args([
            "profiles",
            "diff",
            "example@1.0.0",
            "example@1.2.0",
            "--profiles",
        ])
        .arg(&profiles)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("error: profile `example` version `1.2.0` is invalid"));
}
