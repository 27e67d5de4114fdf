//! Table tests from `tests/fixtures/decisions/*.json`, plus the properties `decide` promises.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::approval::{sign, Grant};
use crate::canonical::{parse, to_canonical};
use crate::profile::parse_profile;
use crate::profile::Profile;
use crate::request::decode;

/// The decision time every table case is decided at.
const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Test-fixture approver key (seed 7): never a real key.
fn approver() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn test_context() -> Context {
    Context::new(Approvals {
        keys: [("approver-1".to_owned(), approver().verifying_key())]
            .into_iter()
            .collect(),
        max_ttl: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(30),
    })
}

fn request_value(profile: &Profile, tool: &str, args: &Value) -> Value {
    let snapshot = Value::object([("k", "v".into())]);
    Value::object([
        ("request_id", "req-1".into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:1".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([("name", tool.into()), ("args", args.clone())]),
        ),
        (
            "profile",
            Value::object([
                ("id", profile.id.as_str().into()),
                ("version", profile.version.as_str().into()),
            ]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
    ])
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(to_canonical(value))
}

/// A token of the named kind for `intent`: a valid one, or one broken in exactly one way.
fn token(kind: &str, intent: &str) -> String {
    let grant = |intent_hash: &str, issued_at: u64, expires_at: u64| {
        sign(
            &approver(),
            "approver-1",
            &Grant {
                issuer: "alice",
                intent_hash,
                issued_at,
                expires_at,
                jti: "jti-1",
            },
        )
    };
    let signed = |header: Value, claims: Value| {
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = approver().sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    };
    let claims = Value::object([
        ("iss", "alice".into()),
        ("sub", intent.into()),
        ("iat", NOW.into()),
        ("exp", (NOW + 600).into()),
        ("jti", "jti-1".into()),
    ]);
    match kind {
        "valid" => grant(intent, NOW - 60, NOW + 600),
        "expired" => grant(intent, NOW - 900, NOW - 60),
        "not_yet_valid" => grant(intent, NOW + 120, NOW + 600),
        "too_long" => grant(intent, NOW, NOW + 7200),
        "other_intent" => grant(
            "sha256:1111111111111111111111111111111111111111111111111111111111111111",
            NOW,
            NOW + 600,
        ),
        "unknown_kid" => sign(
            &approver(),
            "approver-9",
            &Grant {
                issuer: "alice",
                intent_hash: intent,
                issued_at: NOW,
                expires_at: NOW + 600,
                jti: "j",
            },
        ),
        "other_key" => sign(
            &SigningKey::from_bytes(&[8u8; 32]),
            "approver-1",
            &Grant {
                issuer: "mallory",
                intent_hash: intent,
                issued_at: NOW,
                expires_at: NOW + 600,
                jti: "j",
            },
        ),
        "alg_none" => format!(
            "{}.{}.",
            b64(&Value::object([
                ("alg", "none".into()),
                ("kid", "approver-1".into())
            ])),
            b64(&claims)
        ),
        "alg_hs256" => format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(&Value::object([
                ("alg", "HS256".into()),
                ("kid", "approver-1".into())
            ])),
            b64(&claims)
        ),
        "alg_rs256" => format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(&Value::object([
                ("alg", "RS256".into()),
                ("kid", "approver-1".into())
            ])),
            b64(&claims)
        ),
        "no_exp" => {
            let Value::Object(mut map) = claims else {
                unreachable!()
            };
            map.remove("exp");
            signed(
                Value::object([("alg", "EdDSA".into()), ("kid", "approver-1".into())]),
                Value::Object(map),
            )
        }
        "tampered" => {
            let valid = grant(intent, NOW, NOW + 600);
            let mut parts: Vec<&str> = valid.split('.').collect();
            let longer = b64(&Value::object([
                ("iss", "alice".into()),
                ("sub", intent.into()),
                ("iat", NOW.into()),
                ("exp", (NOW + 3000).into()),
                ("jti", "jti-1".into()),
            ]));
            parts[1] = &longer;
            parts.join(".")
        }
        "malformed" => "not-a-token".to_owned(),
        "garbage_base64" => "a.b.c".to_owned(),
        other => panic!("unknown token kind `{other}` in fixture"),
    }
}

#[test]
fn decision_table() {
    let dir = manifest().join("tests/fixtures/decisions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let context = test_context();
    let mut checked = 0;
    for file in files {
        let fixture = parse(&std::fs::read(&file).unwrap()).unwrap();
        let profile = match fixture["profile_file"].as_str() {
            Some(relative) => {
                let path = manifest().join(relative);
                let bytes = std::fs::read(&path).unwrap();
                let version = path.file_stem().unwrap().to_str().unwrap();
                let id = path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap();
                parse_profile(id, version, &bytes).unwrap()
            }
            None => {
                let inline = &fixture["profile"];
                parse_profile(
                    inline["profile_id"].as_str().unwrap(),
                    inline["profile_version"].as_str().unwrap(),
                    &to_canonical(inline),
                )
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()))
            }
        };
        let lookup: ProfileLookup = Ok(Arc::new(profile));
        let profile = lookup.as_ref().unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let mut request = request_value(profile, case["tool"].as_str().unwrap(), &case["args"]);
            if let Some(controls) = case.get("controls") {
                let Value::Object(map) = &mut request else {
                    unreachable!()
                };
                map.insert("controls".into(), controls.clone());
            }
            if let Some(kind) = case["token"].as_str() {
                let intent = decode(&to_canonical(&request)).unwrap().intent_hash;
                let Value::Object(map) = &mut request else {
                    unreachable!()
                };
                map.insert(
                    "controls".into(),
                    Value::object([("approval_token", token(kind, &intent).into())]),
                );
            }
            let request = decode(&to_canonical(&request)).unwrap();
            let attempt = Attempt::Request {
                request: &request,
                profile: &lookup,
            };
            let decision = decide(attempt, &context, &Caller::anonymous(), at(NOW));
            let expect = &case["expect"];
            assert_eq!(
                (decision.decision_type.as_str(), decision.reason.as_str()),
                (
                    expect["decision_type"].as_str().unwrap(),
                    expect["reason_code"].as_str().unwrap()
                ),
                "{}: {name}: {:?}",
                file.display(),
                decision.detail
            );
            if let Some(part) = expect["detail_contains"].as_str() {
                let detail = decision.detail.clone().unwrap_or_default();
                assert!(detail.contains(part), "{name}: `{detail}` lacks `{part}`");
            }
            if let Some(rules) = expect["escalation_rules"].as_array() {
                let escalation = decision
                    .escalation
                    .clone()
                    .unwrap_or_else(|| panic!("{name}: no escalation"));
                assert_eq!(escalation.intent_hash, request.intent_hash, "{name}");
                let got: Vec<&str> = escalation.rules.iter().map(String::as_str).collect();
                let want: Vec<&str> = rules.iter().map(|r| r.as_str().unwrap()).collect();
                assert_eq!(got.len(), want.len(), "{name}: {got:?}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        g.starts_with(w),
                        "{name}: rule `{g}` should start with `{w}`"
                    );
                }
            }
            assert_eq!(
                decision.approval.is_some(),
                expect["approved_by"].as_str().is_some(),
                "{name}"
            );
            // Deterministic: the same inputs a second later give the same decision.
            let again = decide(attempt, &context, &Caller::anonymous(), at(NOW + 1));
            assert_eq!(decision.fingerprint(), again.fingerprint(), "{name}");
            assert_eq!(
                decision.approved_call.is_some(),
                decision.decision_type == DecisionType::Allow
            );
            checked += 1;
        }
    }
    assert!(checked >= 55, "only {checked} decision cases ran");
}

#[test]
fn provenance_binds_profile_request_and_runtime() {
    let runtime = Runtime::current();
    let a = provenance_id("sha256:aa", "sha256:bb", &runtime);
    assert_eq!(a.len(), "prov_".len() + 32);
    assert_ne!(a, provenance_id("sha256:ab", "sha256:bb", &runtime));
    assert_ne!(a, provenance_id("sha256:aa", "sha256:bc", &runtime));
    let other = Runtime {
        version: "9.9.9",
        ..runtime.clone()
    };
    assert_ne!(a, provenance_id("sha256:aa", "sha256:bb", &other));
    let expected = canonical::hash(&Value::object([
        ("profile_ref_hash", "sha256:aa".into()),
        ("request_hash", "sha256:bb".into()),
        ("runtime_version", runtime.version.into()),
    ]));
    assert_eq!(&a[5..], &expected[7..39]);
    // Written straight to bytes, the binding must still be the canonical object, escapes
    // included.
    let odd = Runtime {
        version: "1.0\"\\\n\u{1}é",
        ..runtime.clone()
    };
    let expected = canonical::hash(&Value::object([
        ("profile_ref_hash", "sha256:\"a".into()),
        ("request_hash", "sha256:\tb".into()),
        ("runtime_version", odd.version.into()),
    ]));
    assert_eq!(
        provenance_id("sha256:\"a", "sha256:\tb", &odd)[5..],
        expected[7..39]
    );
}

#[test]
fn no_profile_hash_is_the_hash_of_the_marker() {
    assert_eq!(
        no_profile_hash(),
        "sha256:".to_owned() + &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"NO_PROFILE"))
    );
}

fn example_profile() -> Profile {
    let path = manifest().join("profiles/example/1.0.0.json");
    parse_profile("example", "1.0.0", &std::fs::read(path).unwrap()).unwrap()
}

fn caller(id: &str) -> Caller {
    Caller {
        method: crate::caller::CallerMethod::Mtls,
        id: id.into(),
        issuer: None,
    }
}

fn bound_context(principals: &[&str]) -> Context {
    use crate::caller::{Binding, Pattern, PrincipalPattern, ProfilePattern};
    test_context().with_bindings(Some(Bindings {
        bindings: vec![Binding {
            caller: Pattern::new("agent:*"),
            profiles: vec![ProfilePattern::parse("example@1.*").unwrap()],
            principals: principals
                .iter()
                .map(|p| PrincipalPattern::parse(p))
                .collect(),
        }],
    }))
}

#[test]
// Bindings are checked right after the schema step: the profile is not even looked at, and
// the record names the caller; every other step still runs for a permitted caller.
fn bindings_decide_before_the_profile() {
    let profile = example_profile();
    let tool = &profile.tools()[0].name;
    let request = request_value(&profile, tool, &Value::Object(Default::default()));
    let request = decode(&to_canonical(&request)).unwrap();
    // A lookup that failed: a permitted caller gets PROFILE_NOT_FOUND-like reasons from it,
    // an unpermitted one CALLER_NOT_PERMITTED before it matters.
    let missing: ProfileLookup = Err(crate::profile::ProfileError::NotFound {
        id: "example".into(),
        version: "1.0.0".into(),
    });
    let attempt = Attempt::Request {
        request: &request,
        profile: &missing,
    };
    let context = bound_context(&["{caller}"]);
    let refused = decide(attempt, &context, &caller("ops"), at(NOW));
    assert_eq!(refused.reason, ReasonCode::CallerNotPermitted);
    assert_eq!(
        refused.detail.as_deref(),
        Some("caller `ops` has no binding")
    );
    assert_eq!(refused.profile_ref_hash, no_profile_hash());
    assert_eq!(&*refused.caller.id, "ops");
    let permitted = decide(attempt, &context, &caller("agent:1"), at(NOW));
    assert_eq!(permitted.reason, ReasonCode::ProfileNotFound);
    assert_eq!(&*permitted.caller.id, "agent:1");
    // Without bindings anyone may ask.
    let open = decide(attempt, &test_context(), &caller("ops"), at(NOW));
    assert_eq!(open.reason, ReasonCode::ProfileNotFound);
}

#[test]
fn bindings_check_the_claimed_principal() {
    let profile = example_profile();
    let tool = &profile.tools()[0].name;
    let request = decode(&to_canonical(&request_value(
        &profile,
        tool,
        &Value::Object(Default::default()),
    )))
    .unwrap();
    let lookup: ProfileLookup = Ok(Arc::new(example_profile()));
    let attempt = Attempt::Request {
        request: &request,
        profile: &lookup,
    };
    // The request claims principal `agent:1`.
    let own = decide(
        attempt,
        &bound_context(&["{caller}"]),
        &caller("agent:1"),
        at(NOW),
    );
    assert_ne!(
        own.reason,
        ReasonCode::CallerNotPermitted,
        "{:?}",
        own.detail
    );
    let other = decide(
        attempt,
        &bound_context(&["{caller}"]),
        &caller("agent:2"),
        at(NOW),
    );
    assert_eq!(other.reason, ReasonCode::CallerNotPermitted);
    assert_eq!(
        other.detail.as_deref(),
        Some("caller `agent:2` may not act as principal `agent:1` with profile `example` version `1.0.0`")
    );
    let pattern = decide(
        attempt,
        &bound_context(&["agent:*"]),
        &caller("agent:2"),
        at(NOW),
    );
    assert_ne!(pattern.reason, ReasonCode::CallerNotPermitted);
}

#[test]
// A body rejected after the schema step (CTX_HASH_MISMATCH) is still refused to a caller who
// may not use its profile: the caller check comes first.
fn bindings_come_before_the_context_hash() {
    let profile = example_profile();
    let mut request = request_value(
        &profile,
        &profile.tools()[0].name,
        &Value::Object(Default::default()),
    );
    let Value::Object(map) = &mut request else {
        unreachable!()
    };
    let Some(Value::Object(context)) = map.get_mut("context") else {
        unreachable!()
    };
    context.insert("snapshot_hash".into(), "sha256:00".into());
    let rejection = decode(&to_canonical(&request)).unwrap_err();
    assert_eq!(rejection.reason, ReasonCode::CtxHashMismatch);
    let attempt = Attempt::Rejected(&rejection);
    let context = bound_context(&["{caller}"]);
    let refused = decide(attempt, &context, &caller("ops"), at(NOW));
    assert_eq!(refused.reason, ReasonCode::CallerNotPermitted);
    let permitted = decide(attempt, &context, &caller("agent:1"), at(NOW));
    assert_eq!(permitted.reason, ReasonCode::CtxHashMismatch);
}
