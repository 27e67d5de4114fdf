//! One audit line: encoding a record with its chain fields, and checking a line read back.
//!
//! Owns the byte layout of a line (canonical JSON + `\n`) and the rule
//! `record_hash = hash(record with integrity.record_hash = "")` (SPEC §8). Both directions
//! serialize once and hash the same bytes with the `record_hash` value spliced in or out, so no
//! record is serialized twice. This module must never do I/O and never trust a byte offset it
//! did not compute while serializing: a substring search for `"record_hash"` could hit a
//! client-controlled nested object.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::canonical::{prefixed, write_canonical, Map, Number, Value};

const INTEGRITY: &str = "integrity";
const HASH_PREFIX: &str = "sha256:";

/// Appends the line of `record` (canonical JSON + `\n`) to `out`, after setting `seq`,
/// `timestamps.logged_at` and `integrity`; returns its `record_hash`.
pub(super) fn encode(
    mut record: Map,
    seq: u64,
    prev_hash: &str,
    logged_at: &str,
    out: &mut Vec<u8>,
) -> String {
    record.insert("seq".to_owned(), Value::from(seq));
    match record.get_mut("timestamps") {
        Some(Value::Object(ts)) => {
            ts.insert("logged_at".to_owned(), Value::from(logged_at));
        }
        other => {
            if other.is_some() {
                tracing::warn!("audit record had a non-object `timestamps`; replaced");
            }
            record.insert(
                "timestamps".to_owned(),
                Value::object([("logged_at", Value::from(logged_at))]),
            );
        }
    }
    record.remove(INTEGRITY);
    // Members before `integrity` stay in `record`, the others move to `after`.
    let after = record.split_off(INTEGRITY);

    let start = out.len();
    out.push(b'{');
    let mut first = true;
    write_members(record, out, &mut first);
    if !first {
        out.push(b',');
    }
    first = false;
    out.extend_from_slice(b"\"integrity\":{\"prev_hash\":");
    write_canonical(&Value::String(prev_hash.to_owned()), out);
    out.extend_from_slice(b",\"record_hash\":");
    // INVARIANT: `hole` is the offset of the `""` written next, the record_hash value.
    let hole = out.len();
    out.extend_from_slice(b"\"\"}");
    write_members(after, out, &mut first);
    out.push(b'}');

    let record_hash = prefixed(&Sha256::digest(&out[start..]));
    out.splice(hole + 1..hole + 1, record_hash.bytes());
    out.push(b'\n');
    record_hash
}

fn write_members(members: Map, out: &mut Vec<u8>, first: &mut bool) {
    for (key, value) in members {
        if !std::mem::take(first) {
            out.push(b',');
        }
        write_canonical(&Value::String(key), out);
        out.push(b':');
        write_canonical(&value, out);
    }
}

/// Why a line is not a valid record; `seq` when the line was readable that far.
#[derive(Debug)]
pub(super) struct LineError {
    pub seq: Option<u64>,
    pub reason: String,
}

/// The chain fields of a line that passed [`check_line`].
pub(super) struct Checked {
    pub seq: u64,
    pub prev_hash: String,
    pub record_hash: String,
}

/// Checks one line (without its `\n`): a JSON object, canonical byte for byte, with a `seq`,
/// an `integrity.prev_hash` and an `integrity.record_hash` that recomputes. `scratch` is a
/// reusable buffer. Links to other lines are the caller's business.
pub(super) fn check_line(line: &[u8], scratch: &mut Vec<u8>) -> Result<Checked, LineError> {
    let bad = |seq, reason: &str| LineError {
        seq,
        reason: reason.to_owned(),
    };
    let value = crate::canonical::parse(line).map_err(|e| LineError {
        seq: None,
        reason: format!("line is not valid JSON ({e})"),
    })?;
    let Value::Object(record) = value else {
        return Err(bad(None, "line is not a JSON object"));
    };
    let seq = match record.get("seq") {
        Some(Value::Number(Number::Int(digits))) => digits.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad(None, "seq is missing or not an unsigned integer"))?;
    let integrity = record.get(INTEGRITY);
    let field = |name| integrity.and_then(|i| i.get(name)).and_then(Value::as_str);
    let prev_hash = field("prev_hash")
        .ok_or_else(|| bad(Some(seq), "integrity.prev_hash is missing or not a string"))?
        .to_owned();
    let record_hash = field("record_hash")
        .ok_or_else(|| {
            bad(
                Some(seq),
                "integrity.record_hash is missing or not a string",
            )
        })?
        .to_owned();

    scratch.clear();
    let hole = write_marked(record, scratch);
    if scratch.as_slice() != line {
        return Err(bad(Some(seq), "line is not canonical JSON"));
    }
    let hole = hole.ok_or_else(|| bad(Some(seq), "integrity.record_hash is missing"))?;
    let mut hasher = Sha256::new();
    hasher.update(&line[..hole.start]);
    hasher.update(b"\"\"");
    hasher.update(&line[hole.end..]);
    let mut hex = [0u8; 64];
    let matches = hex::encode_to_slice(hasher.finalize(), &mut hex).is_ok()
        && record_hash.strip_prefix(HASH_PREFIX).map(str::as_bytes) == Some(&hex[..]);
    if !matches {
        return Err(bad(Some(seq), "record_hash does not match its content"));
    }
    Ok(Checked {
        seq,
        prev_hash,
        record_hash,
    })
}

/// Writes `record` canonically into `out`; returns the byte range of the top-level
/// `integrity.record_hash` value (quotes included), if there is one.
fn write_marked(record: Map, out: &mut Vec<u8>) -> Option<Range<usize>> {
    let mut hole = None;
    out.push(b'{');
    let mut first = true;
    for (key, value) in record {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        let is_integrity = key == INTEGRITY;
        write_canonical(&Value::String(key), out);
        out.push(b':');
        match value {
            Value::Object(members) if is_integrity => {
                out.push(b'{');
                let mut first = true;
                for (key, value) in members {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    let is_hash = key == "record_hash";
                    write_canonical(&Value::String(key), out);
                    out.push(b':');
                    let start = out.len();
                    write_canonical(&value, out);
                    if is_hash {
                        hole = Some(start..out.len());
                    }
                }
                out.push(b'}');
            }
            value => write_canonical(&value, out),
        }
    }
    out.push(b'}');
    hole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{hash, to_canonical};

    fn sample() -> Map {
        let mut m = Map::new();
        m.insert(
            "approved_call".into(),
            Value::object([("tool_name", "x".into())]),
        );
        m.insert("decision_type".into(), "ALLOW".into());
        m.insert(
            "timestamps".into(),
            Value::object([("received_at", "t".into())]),
        );
        m.insert("zz".into(), "after everything".into());
        m
    }

    // Guards the single-serialization shortcut: it must equal the SPEC's definition.
    #[test]
    fn encode_matches_the_spec_definition() {
        let mut out = b"previous line\n".to_vec();
        let rh = encode(
            sample(),
            7,
            "sha256:abc",
            "2024-01-01T00:00:00.000000Z",
            &mut out,
        );
        let line = &out[14..out.len() - 1];
        assert_eq!(out.last(), Some(&b'\n'));

        let mut expected = sample();
        expected.insert("seq".into(), 7u64.into());
        expected.insert(
            "timestamps".into(),
            Value::object([
                ("logged_at", "2024-01-01T00:00:00.000000Z".into()),
                ("received_at", "t".into()),
            ]),
        );
        expected.insert(
            "integrity".into(),
            Value::object([
                ("prev_hash", "sha256:abc".into()),
                ("record_hash", "".into()),
            ]),
        );
        assert_eq!(rh, hash(&Value::Object(expected.clone())));
        expected.insert(
            "integrity".into(),
            Value::object([
                ("prev_hash", "sha256:abc".into()),
                ("record_hash", rh.clone().into()),
            ]),
        );
        assert_eq!(line, to_canonical(&Value::Object(expected)).as_slice());

        let checked = check_line(line, &mut Vec::new()).unwrap();
        assert_eq!((checked.seq, checked.prev_hash.as_str()), (7, "sha256:abc"));
        assert_eq!(checked.record_hash, rh);
    }

    // A nested object that mimics the integrity block must not fool the hash position.
    #[test]
    fn nested_integrity_lookalike_is_ignored() {
        let mut m = sample();
        m.insert(
            "approved_call".into(),
            Value::object([(
                "integrity",
                Value::object([
                    ("prev_hash", GENESIS_STR.into()),
                    ("record_hash", "".into()),
                ]),
            )]),
        );
        let mut out = Vec::new();
        encode(m, 0, GENESIS_STR, "t", &mut out);
        assert!(check_line(&out[..out.len() - 1], &mut Vec::new()).is_ok());
    }
    const GENESIS_STR: &str = super::super::GENESIS;

    #[test]
    fn check_line_reasons() {
        let mut out = Vec::new();
        encode(sample(), 3, "sha256:p", "t", &mut out);
        let line = String::from_utf8(out[..out.len() - 1].to_vec()).unwrap();
        let reason = |l: &str| check_line(l.as_bytes(), &mut Vec::new()).err().unwrap();

        let e = reason(&line.replace("ALLOW", "DENY!"));
        assert_eq!(
            (e.seq, e.reason.as_str()),
            (Some(3), "record_hash does not match its content")
        );
        let e = reason(&line.replacen(':', ": ", 1));
        assert_eq!(
            (e.seq, e.reason.as_str()),
            (Some(3), "line is not canonical JSON")
        );
        assert!(reason("{\"a\":")
            .reason
            .starts_with("line is not valid JSON"));
        assert_eq!(reason("[1]").reason, "line is not a JSON object");
        assert_eq!(
            reason("{\"seq\":-1}").reason,
            "seq is missing or not an unsigned integer"
        );
    }
}
