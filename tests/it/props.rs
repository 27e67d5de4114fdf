//! Property tests: the canonical form, `decide`, and the checkpoint and proof checks hold for
//! generated inputs, not only for the cases someone thought of.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ecl_gate::approval::Approvals;
use ecl_gate::canonical::{self, Map, Number, Value};
use ecl_gate::checkpoint::{
    parse_note, parse_verifier, split_notes, verify_checkpoint, Checkpoint, NoteSigner,
};
use ecl_gate::decision::{decide, Attempt, Context, DecisionType};
use ecl_gate::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion, Hash,
};
use ecl_gate::profile::parse_profile;
use ecl_gate::request::decode;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "-?[1-9][0-9]{18,30}".prop_map(|d| Value::Number(Number::Int(d.into_boxed_str()))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::Number(Number::Float(f))),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}é😀]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6).prop_map(Value::Object),
        ]
    })
}

/// Another spelling of the same JSON: members in reverse order, extra whitespace, and (when
/// asked) every non-ASCII or every character written as a `\u` escape.
fn respell(value: &Value, ws: &str, escape_all: bool, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().rev().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                respell_string(key, escape_all, out);
                out.push_str(ws);
                out.push(':');
                out.push_str(ws);
                respell(item, ws, escape_all, out);
            }
            out.push_str(ws);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(ws);
                    out.push(',');
                }
                respell(item, ws, escape_all, out);
            }
            out.push(']');
        }
        Value::String(s) => respell_string(s, escape_all, out),
        other => out.push_str(&String::from_utf8(canonical::to_canonical(other)).unwrap()),
    }
}

fn respell_string(s: &str, escape_all: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if escape_all || !c.is_ascii() || c < ' ' || c == '"' || c == '\\' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn canonical_form_ignores_key_order_whitespace_and_escapes(
        v in value(),
        ws in prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")],
        escape_all in any::<bool>(),
    ) {
        let canonical = canonical::to_canonical(&v);
        let mut other = String::new();
        respell(&v, ws, escape_all, &mut other);
        let reparsed = canonical::parse(other.as_bytes()).unwrap();
        prop_assert_eq!(canonical::to_canonical(&reparsed), canonical);
    }

    #[test]
    fn parse_after_canonicalize_is_the_identity(v in value()) {
        let once = canonical::to_canonical(&v);
        let twice = canonical::to_canonical(&canonical::parse(&once).unwrap());
        prop_assert_eq!(&once, &twice);
        prop_assert_eq!(canonical::hash(&v), canonical::sha256_prefixed(&once));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = canonical::parse(&bytes);
    }
}

fn example_profile() -> ecl_gate::decision::ProfileLookup {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/example/1.0.0.json"
    ))
    .unwrap();
    Ok(Arc::new(parse_profile("example", "1.0.0", &bytes).unwrap()))
}

fn context() -> Context {
    Context::new(Approvals::default())
}

fn valid_request_bytes(to: &str, subject: &str) -> Vec<u8> {
    let snapshot = Value::object([("s", 1i64.into())]);
    canonical::to_canonical(&Value::object([
        ("request_id", "r".into()),
        (
            "actor",
            Value::object([
                ("principal_id", "a".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([
                ("name", "email.send".into()),
                (
                    "args",
                    Value::object([("to", to.into()), ("subject", subject.into())]),
                ),
            ]),
        ),
        (
            "profile",
            Value::object([("id", "example".into()), ("version", "1.0.0".into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
    ]))
}

/// An oracle written apart from the gate: what the example profile allows for `email.send`.
fn example_allows(args: &Value) -> bool {
    let Some(Value::String(to)) = args.get("to") else {
        return false;
    };
    let Some(Value::String(subject)) = args.get("subject") else {
        return false;
    };
    let (local, domain) = match to.split_once('@') {
        Some(parts) => parts,
        None => return false,
    };
    !local.is_empty()
        && !local.contains('@')
        && domain == "example.com"
        && subject.chars().count() <= 120
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_requests_are_allowed_only_when_valid_and_permitted(
        to in prop_oneof![Just("bob@example.com".to_owned()), "[a-z@.\n]{1,24}"],
        subject in "[a-zé]{0,130}",
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = valid_request_bytes(&to, &subject);
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        let profile = example_profile();
        let context = context();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let decision = match decode(&bytes) {
            Err(rejection) => decide(Attempt::Rejected(&rejection), &context, &ecl_gate::caller::Caller::anonymous(), now),
            Ok(request) => decide(Attempt::Request { request: &request, profile: &profile }, &context, &ecl_gate::caller::Caller::anonymous(), now),
        };
        let again = match decode(&bytes) {
            Err(rejection) => decide(Attempt::Rejected(&rejection), &context, &ecl_gate::caller::Caller::anonymous(), now),
            Ok(request) => decide(Attempt::Request { request: &request, profile: &profile }, &context, &ecl_gate::caller::Caller::anonymous(), now),
        };
        prop_assert_eq!(decision.fingerprint(), again.fingerprint());
        if decision.decision_type == DecisionType::Allow {
            let request = decode(&bytes).unwrap();
            prop_assert_eq!(request.tool_name.as_str(), "email.send");
            prop_assert!(example_allows(request.tool_args()), "allowed {:?}", request.tool_args());
        }
    }

    #[test]
    fn decide_is_deterministic_for_generated_profiles_and_args(
        kinds in prop::collection::vec(prop_oneof![Just("string"), Just("number"), Just("integer"), Just("bool"), Just("array"), Just("object"), Just("uuid")], 0..5),
        escalate in prop::collection::vec(any::<bool>(), 5),
        args in prop::collection::btree_map("[a-e]", value(), 0..5),
    ) {
        let rules: Vec<String> = kinds.iter().enumerate().map(|(i, kind)| {
            let key = ["a", "b", "c", "d", "e"][i];
            let severity = if escalate[i] { "ESCALATE" } else { "DENY" };
            format!(r#"{{"path":"$.{key}","type":"{kind}","on_violation":"{severity}"}}"#)
        }).collect();
        let profile_text = format!(
            r#"{{"profile_id":"gen","profile_version":"1","default":"DENY","allowed_tools":[{{"name":"t","constraints":{{"arg_rules":[{}]}}}}]}}"#,
            rules.join(",")
        );
        let profile = Ok(Arc::new(parse_profile("gen", "1", profile_text.as_bytes()).unwrap()));
        let snapshot = Value::Null;
        let body = canonical::to_canonical(&Value::object([
            ("request_id", "r".into()),
            ("actor", Value::object([("principal_id", "a".into()), ("principal_type", "agent".into())])),
            ("tool", Value::object([("name", "t".into()), ("args", Value::Object(args.into_iter().collect::<Map>()))])),
            ("profile", Value::object([("id", "gen".into()), ("version", "1".into())])),
            ("context", Value::object([("snapshot_hash", canonical::hash(&snapshot).into()), ("snapshot", snapshot)])),
        ]));
        let request = decode(&body).unwrap();
        let context = context();
        let first = decide(Attempt::Request { request: &request, profile: &profile }, &context, &ecl_gate::caller::Caller::anonymous(), UNIX_EPOCH);
        let second = decide(Attempt::Request { request: &request, profile: &profile }, &context, &ecl_gate::caller::Caller::anonymous(), UNIX_EPOCH + Duration::from_secs(3600));
        prop_assert_eq!(first.fingerprint(), second.fingerprint());
        // An unknown type anywhere can never end in ALLOW.
        if kinds.contains(&"uuid") {
            prop_assert_ne!(first.decision_type, DecisionType::Allow);
        }
    }
}

/// TEST FIXTURE ONLY: a fixed-seed checkpoint key.
fn note_signer() -> NoteSigner {
    NoteSigner::new(
        "ecl-gate/prop",
        ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
    )
    .unwrap()
}

/// Distinct leaves of a tree of `n` records.
fn tree_leaves(n: usize, seed: u64) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| leaf_hash(&(i ^ seed).to_be_bytes()))
        .collect()
}

fn flip_bit(proof: &mut [Hash], at: prop::sample::Index, bit: u8) {
    let bytes = proof.as_flattened_mut();
    let i = at.index(bytes.len());
    bytes[i] ^= 1 << bit;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Auditors hand these parsers checkpoints and keys from elsewhere: any text is an answer,
    /// never a panic.
    #[test]
    fn checkpoint_parsers_never_panic(text in "(?s)[\u{2014}\n a-zA-Z0-9+/=]{0,300}|(?s).{0,300}") {
        let key = note_signer().verifying_key();
        let (notes, _) = split_notes(&text);
        for note in notes {
            let _ = parse_note(note);
            let _ = verify_checkpoint(note, &key);
        }
        let _ = Checkpoint::parse_body(&text);
        let _ = parse_verifier(&text);
        let _ = verify_checkpoint(&text, &key);
    }

    /// A signed checkpoint verifies as signed, and with any one byte changed it does not.
    #[test]
    fn an_altered_checkpoint_never_verifies(
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let signer = note_signer();
        let checkpoint = Checkpoint { origin: "ecl-gate/prop".into(), size, root };
        let note = signer.sign(&checkpoint.body());
        prop_assert_eq!(verify_checkpoint(&note, &signer.verifying_key()), Ok(checkpoint));
        let mut bytes = note.into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(altered) = String::from_utf8(bytes) {
            prop_assert!(verify_checkpoint(&altered, &signer.verifying_key()).is_err(), "{altered}");
        }
    }

    /// Generated proofs verify; one flipped bit, or another index, and they do not.
    #[test]
    fn proofs_verify_only_as_generated(
        n in 1usize..300,
        seed in any::<u64>(),
        which in any::<prop::sample::Index>(),
        old in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let leaves = tree_leaves(n, seed);
        let size = n as u64;
        let head = root(&leaves);
        let index = which.index(n);
        let mut path = inclusion_proof(index as u64, &leaves).unwrap();
        prop_assert_eq!(verify_inclusion(index as u64, size, &leaves[index], &path, &head), Ok(()));
        if index + 1 < n {
            prop_assert!(verify_inclusion(index as u64 + 1, size, &leaves[index], &path, &head).is_err());
        }
        if !path.is_empty() {
            flip_bit(&mut path, at, bit);
            prop_assert!(verify_inclusion(index as u64, size, &leaves[index], &path, &head).is_err());
        }

        let m = 1 + old.index(n);
        let old_head = root(&leaves[..m]);
        let mut proof = consistency_proof(m as u64, &leaves).unwrap();
        prop_assert_eq!(verify_consistency(m as u64, size, &old_head, &head, &proof), Ok(()));
        if !proof.is_empty() {
            flip_bit(&mut proof, at, bit);
            prop_assert!(verify_consistency(m as u64, size, &old_head, &head, &proof).is_err());
        }
    }
}
