//! Table tests from `tests/fixtures/decisions/*.json`, plus the properties `decide` promises.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::canonical::{parse, to_canonical};
use crate::profile::parse_profile;
use crate::request::decode;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn request_bytes(profile: &Profile, tool: &str, args: &Value, controls: Option<&Value>) -> Vec<u8> {
    let snapshot = Value::object([("k", "v".into())]);
    let mut request = Value::object([
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
    ]);
    if let (Value::Object(map), Some(controls)) = (&mut request, controls) {
        map.insert("controls".into(), controls.clone());
    }
    to_canonical(&request)
}

#[test]
fn decision_table() {
    let dir = manifest().join("tests/fixtures/decisions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let runtime = Runtime::current();
    let mut checked = 0;
    for file in files {
        let fixture = parse(&std::fs::read(&file).unwrap()).unwrap();
        let profile_path = manifest().join(fixture["profile_file"].as_str().unwrap());
        let bytes = std::fs::read(&profile_path).unwrap();
        let stem = profile_path.file_stem().unwrap().to_str().unwrap();
        let id = profile_path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let profile = Arc::new(parse_profile(id, stem, &bytes).unwrap());
        let lookup: ProfileLookup = Ok(Arc::clone(&profile));
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let controls = case.get("controls");
            let body = request_bytes(
                &profile,
                case["tool"].as_str().unwrap(),
                &case["args"],
                controls,
            );
            let request = decode(&body).unwrap();
            let attempt = Attempt::Request {
                request: &request,
                profile: &lookup,
            };
            let decision = decide(attempt, &runtime, UNIX_EPOCH);
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
            // Deterministic: the same inputs at another time give the same decision.
            let again = decide(attempt, &runtime, UNIX_EPOCH + Duration::from_secs(86_400));
            assert_eq!(decision.fingerprint(), again.fingerprint(), "{name}");
            assert_eq!(
                decision.approved_call.is_some(),
                decision.decision_type == DecisionType::Allow
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} decision cases ran");
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
}

#[test]
fn no_profile_hash_is_the_hash_of_the_marker() {
    assert_eq!(
        no_profile_hash(),
        "sha256:".to_owned() + &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"NO_PROFILE"))
    );
}
