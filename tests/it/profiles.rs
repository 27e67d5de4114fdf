//! The profile store over HTTP: traversal, hot-added versions, immutability, invalid profiles,
//! and every shipped profile.

use std::path::Path;
use std::sync::Arc;

use ecl_gate::canonical::{self, Value};
use ecl_gate::profile::ProfileStore;

use crate::common::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn minimal_profile(id: &str, version: &str) -> String {
    format!(
        r#"{{"profile_id":"{id}","profile_version":"{version}","default":"DENY","allowed_tools":[{{"name":"search"}}]}}"#
    )
}

#[tokio::test]
async fn traversal_attempts_are_not_found_and_touch_nothing_outside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Traps: valid-looking profiles that a traversal would reach. Had the gate read one, the
    // answer would be PROFILE_PARSE_ERROR with that file's hash, not PROFILE_NOT_FOUND.
    write(&dir.path().join("x.json"), &minimal_profile("..", "x"));
    write(
        &dir.path().join("trap/1.json"),
        &minimal_profile("../trap", "1"),
    );
    write(&root.join("a/b.json"), &minimal_profile("a", "b"));
    let gate = TestGate::start_with(Options {
        profiles_root: root,
        ..Options::default()
    })
    .await;
    let long = "a".repeat(10_000);
    let attempts: Vec<(&str, &str)> = vec![
        ("..", "x"),
        ("../trap", "1"),
        ("../x", "1"),
        ("/etc/passwd", "1"),
        ("a", "../a/b"),
        ("a/b", "1"),
        ("a\\b", "1"),
        ("%2e%2e", "x"),
        ("a\0", "b"),
        ("a", "b\0"),
        (&long, "1"),
        ("a", &long),
        (".", "b"),
        ("a", ".b"),
        ("a", "b.json"),
    ];
    let no_profile = canonical::sha256_prefixed(b"NO_PROFILE");
    for (id, version) in attempts {
        let body = request_for(id, version, "r-t", "search", Value::Null);
        let (status, decision) = gate.execute(bytes_of(&body)).await;
        assert_eq!(status, 200);
        assert_eq!(
            decision["reason_code"].str(),
            "PROFILE_NOT_FOUND",
            "{id:?}/{version:?}"
        );
        assert_eq!(
            decision["profile"]["profile_ref_hash"].str(),
            no_profile,
            "{id:?}"
        );
        gate.record_for(&decision);
    }
    // The one legitimate name in that root still works.
    let (_, decision) = gate
        .execute(bytes_of(&request_for(
            "a",
            "b",
            "r-ok",
            "search",
            Value::Null,
        )))
        .await;
    assert_eq!(decision["decision_type"].str(), "ALLOW");
}

#[tokio::test]
async fn new_versions_appear_without_restart_and_loaded_versions_never_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let gate = TestGate::start_with(Options {
        profiles_root: root.clone(),
        ..Options::default()
    })
    .await;
    let body = bytes_of(&request_for("live", "1", "r-1", "search", Value::Null));
    let (_, before) = gate.execute(body.clone()).await;
    assert_eq!(before["reason_code"].str(), "PROFILE_NOT_FOUND");

    let original = minimal_profile("live", "1");
    write(&root.join("live/1.json"), &original);
    let (_, added) = gate.execute(body.clone()).await;
    assert_eq!(added["decision_type"].str(), "ALLOW");
    assert_eq!(
        added["profile"]["profile_ref_hash"].str(),
        canonical::sha256_prefixed(original.as_bytes())
    );

    // Rewriting the file under a running gate changes nothing: the version is immutable.
    write(
        &root.join("live/1.json"),
        r#"{"profile_id":"live","profile_version":"1","default":"DENY","allowed_tools":[]}"#,
    );
    let (_, after) = gate.execute(body).await;
    assert_eq!(after["decision_type"].str(), "ALLOW");
    assert_eq!(
        after["profile"]["profile_ref_hash"],
        added["profile"]["profile_ref_hash"]
    );
}

#[test]
fn invalid_profiles_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tool = r#"{"name":"search"}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        ("header id mismatch", r#"{"profile_id":"other","profile_version":"1","default":"DENY","allowed_tools":[]}"#.into(), "profile_id"),
        ("header version mismatch", r#"{"profile_id":"p","profile_version":"2","default":"DENY","allowed_tools":[]}"#.into(), "profile_version"),
        ("unknown field", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[],"owner":"x"}"#.into(), "unknown field `owner`"),
        ("unknown tool field", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"search","rate":1}]}"#.into(), "unknown field `rate`"),
        ("default ALLOW", r#"{"profile_id":"p","profile_version":"1","default":"ALLOW","allowed_tools":[]}"#.into(), "`default` must be `DENY`"),
        ("bad regex", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.q","type":"string","pattern":"a("}]}}]}"#.into(), "not a valid regex"),
        ("broken json", r#"{"profile_id":"p","#.into(), "not valid JSON"),
        ("duplicate key", r#"{"profile_id":"p","profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[]}"#.into(), "duplicate key"),
        ("tool listed twice", format!(r#"{{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{tool},{tool}]}}"#), "more than once"),
        ("bad path", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"to","type":"string"}]}}]}"#.into(), "must start with `$`"),
        ("string check on a number", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.n","type":"number","max_len":3}]}}]}"#.into(), "strings only"),
        ("negative max_len", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.n","type":"string","max_len":-1}]}}]}"#.into(), "non-negative"),
        ("min above max", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.n","type":"number","min":5,"max":2.5}]}}]}"#.into(), "`allowed_tools[0].constraints.arg_rules[0]` has `min` 5 above `max` 2.5"),
        ("min on a string rule", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.n","type":"string","min":1}]}}]}"#.into(), "`allowed_tools[0].constraints.arg_rules[0]` sets `min` or `max`, which apply to `number` and `integer` rules only"),
        ("max as a string", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","constraints":{"arg_rules":[{"path":"$.n","type":"number","max":"10"}]}}]}"#.into(), "`allowed_tools[0].constraints.arg_rules[0].max` must be a number, found string"),
        ("approval flag as string", r#"{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{"name":"s","required_controls":{"approval_token":"yes"}}]}"#.into(), "must be a boolean"),
    ];
    for (name, text, message) in cases {
        write(&dir.path().join("p/1.json"), &text);
        let store = ProfileStore::new(dir.path());
        let err = store.get("p", "1").unwrap_err();
        assert_eq!(err.reason().as_str(), "PROFILE_PARSE_ERROR", "{name}");
        assert_eq!(
            err.ref_hash(),
            canonical::sha256_prefixed(text.as_bytes()),
            "{name}"
        );
        assert!(
            err.to_string().contains(message),
            "{name}: `{err}` lacks `{message}`"
        );
    }
}

/// Every profile the repository ships must load, so an example never rots.
#[test]
fn every_shipped_profile_is_valid() {
    let store = ProfileStore::new(shipped_profiles());
    let found = store.list().unwrap();
    assert!(found.len() >= 2, "{found:?}");
    for (id, version) in found {
        store
            .get(&id, &version)
            .unwrap_or_else(|err| panic!("shipped profile {id}/{version}: {err}"));
    }
}

/// A store of many versions repeating one pattern compiles it once: 10,000 versions with the
/// same pattern cost 21.5 s and 1.95 GB when each compiled its own.
#[test]
fn identical_patterns_are_compiled_once_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let profile = |version: &str, pattern: &str| {
        format!(
            r#"{{"profile_id":"p","profile_version":"{version}","default":"DENY","allowed_tools":[{{"name":"s","constraints":{{"arg_rules":[{{"path":"$.a","type":"string","pattern":"{pattern}"}},{{"path":"$.b","type":"string","pattern":"{pattern}"}}]}}}}]}}"#
        )
    };
    for version in ["1", "2", "3"] {
        write(
            &dir.path().join(format!("p/{version}.json")),
            &profile(version, "^[a-z]+$"),
        );
    }
    write(&dir.path().join("p/4.json"), &profile("4", "^[0-9]+$"));
    let store = ProfileStore::new(dir.path());
    let pattern_of = |version: &str| {
        let profile = store.get("p", version).unwrap();
        let tool = profile.tool("s").unwrap();
        Arc::clone(tool.arg_rules[1].pattern.as_ref().unwrap())
    };
    let first = pattern_of("1");
    assert!(Arc::ptr_eq(&first, &pattern_of("2")));
    assert!(Arc::ptr_eq(&first, &pattern_of("3")));
    assert!(!Arc::ptr_eq(&first, &pattern_of("4")));
    assert_eq!(store.distinct_patterns(), 2);
    // Shared, and still the rule it was: anchored at the start, `$` at the very end.
    assert!(first.is_match("abc") && !first.is_match("abc\n") && !first.is_match("1abc"));
}
