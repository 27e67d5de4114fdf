//! `canonical.jsonl` (SPEC §3): every line must parse, write and hash exactly as the reference,
//! or be refused for the reason it names.

use ecl_gate::canonical::{hash, parse, sha256_prefixed, to_canonical, ParseErrorKind};

const CANONICAL_JSONL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/canonical.jsonl");

/// SPEC §3 states the count; a silently shortened file must not pass.
const EXPECTED_CASES: usize = 372;

/// The refusal kind a vector's `reject` reason names, where the mapping is unambiguous.
fn expected_kind(why: &str) -> Option<fn(&ParseErrorKind) -> bool> {
    Some(match why {
        "non-finite" => |k| *k == ParseErrorKind::NonFinite,
        "overflow" => |k| *k == ParseErrorKind::NumberOverflow,
        "duplicate key" => |k| matches!(k, ParseErrorKind::DuplicateKey(_)),
        "lone surrogate" => |k| *k == ParseErrorKind::LoneSurrogate,
        "trailing content" => |k| *k == ParseErrorKind::TrailingContent,
        "syntax" => |k| *k == ParseErrorKind::Syntax,
        "empty" => |k| *k == ParseErrorKind::Empty,
        "nesting deeper than 128" => |k| *k == ParseErrorKind::TooDeep,
        _ => return None,
    })
}

#[test]
fn canonical_vectors() {
    let text = std::fs::read_to_string(CANONICAL_JSONL)
        .unwrap_or_else(|e| panic!("cannot read {CANONICAL_JSONL}: {e}"));
    let mut failures = Vec::new();
    let (mut total, mut canonical_cases, mut reject_cases) = (0usize, 0usize, 0usize);

    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let case: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("line {n}: unreadable envelope: {e}"));
                continue;
            }
        };
        let Some(input) = case.get("input").and_then(|v| v.as_str()) else {
            failures.push(format!("line {n}: no string `input`"));
            continue;
        };
        let parsed = parse(input.as_bytes());

        if let Some(want) = case.get("canonical").and_then(|v| v.as_str()) {
            canonical_cases += 1;
            let Some(want_hash) = case.get("hash").and_then(|v| v.as_str()) else {
                failures.push(format!("line {n}: canonical case without string `hash`"));
                continue;
            };
            if sha256_prefixed(want.as_bytes()) != want_hash {
                failures.push(format!(
                    "line {n}: vector's hash does not match its canonical"
                ));
            }
            let value = match parsed {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("line {n}: refused {input:?}: {e}"));
                    continue;
                }
            };
            let got = to_canonical(&value);
            if got != want.as_bytes() {
                failures.push(format!(
                    "line {n}: canonical mismatch\n   want {want:?}\n    got {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            let got_hash = hash(&value);
            if got_hash != want_hash {
                failures.push(format!("line {n}: hash {got_hash} != {want_hash}"));
            }
        } else if let Some(why) = case.get("reject").and_then(|v| v.as_str()) {
            reject_cases += 1;
            match parsed {
                Ok(v) => failures.push(format!(
                    "line {n}: accepted {input:?} (should be refused: {why}) as {v:?}"
                )),
                Err(e) => {
                    if let Some(matches) = expected_kind(why) {
                        if !matches(&e.kind) {
                            failures.push(format!(
                                "line {n}: refused for {} ({e}), vector says {why}",
                                e.kind.as_str()
                            ));
                        }
                    }
                }
            }
        } else {
            failures.push(format!("line {n}: neither `canonical` nor `reject`"));
        }
    }

    println!(
        "canonical vectors: {total} cases ({canonical_cases} canonical, {reject_cases} reject)"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        canonical_cases > 0 && reject_cases > 0,
        "vectors lack a kind of case"
    );
    assert_eq!(total, EXPECTED_CASES, "vector count");
}

const REQUEST_HASH_JSONL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/request_hash.jsonl"
);

/// `request_hash.jsonl` (SPEC §4): produced by the reference's own request model, so matching
/// it means requests hash exactly as the reference hashes them.
#[test]
fn request_hash_vectors() {
    let text = std::fs::read_to_string(REQUEST_HASH_JSONL)
        .unwrap_or_else(|e| panic!("cannot read {REQUEST_HASH_JSONL}: {e}"));
    let mut failures = Vec::new();
    let mut total = 0;
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        total += 1;
        let n = index + 1;
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let body = case["request"].as_str().unwrap();
        let want_normalized = case["normalized"].as_str().unwrap();
        let want_hash = case["request_hash"].as_str().unwrap();
        match ecl_gate::request::decode(body.as_bytes()) {
            Ok(request) => {
                let normalized = String::from_utf8(to_canonical(&request.normalized)).unwrap();
                if normalized != want_normalized {
                    failures.push(format!(
                        "line {n}: normalized\n  got  {normalized}\n  want {want_normalized}"
                    ));
                }
                if request.request_hash != want_hash {
                    failures.push(format!(
                        "line {n}: request_hash {} != {want_hash}",
                        request.request_hash
                    ));
                }
                if sha256_prefixed(want_normalized.as_bytes()) != want_hash {
                    failures.push(format!(
                        "line {n}: the vector's own hash does not match its normalized form"
                    ));
                }
            }
            Err(rejection) => failures.push(format!("line {n}: refused: {rejection:?}")),
        }
    }
    assert_eq!(total, 12, "request_hash.jsonl should hold 12 cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
