//! One audit line: encoding a record with its chain fields, and checking a line read back.
//!
//! Owns the byte layout of a line (canonical JSON + `\n`) and the rule
//! `record_hash = hash(record with integrity.record_hash = "")` (SPEC §8). Both directions
//! serialize once and hash the same bytes with the `record_hash` value spliced in or out, so no
//! record is serialized twice. This module must never do I/O and never trust a byte offset it
//! did not compute while serializing: a substring search for `"record_hash"` could hit a
//! client-controlled nested object.

use std::borrow::Cow;
use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::canonical::{prefixed, write_canonical, write_str, write_u64, Map, Number, Value};

mod scan;

const INTEGRITY: &str = "integrity";
const SEQ: &str = "seq";
const TIMESTAMPS: &str = "timestamps";
const LOGGED_AT: &str = "logged_at";
const HASH_PREFIX: &str = "sha256:";

/// A record serialized by the requesting thread: the canonical bytes of every member except
/// the three only the writer knows (`integrity`, `seq`, `timestamps.logged_at`), with a gap
/// where each belongs. The writer thread copies the bytes around the gaps instead of
/// serializing (and freeing) a tree: it is the one serial stage every decision passes.
#[derive(Debug)]
pub struct PreparedRecord {
    bytes: Vec<u8>,
    // INVARIANT: integrity.at <= seq.at <= logged_at.at <= bytes.len(); only
    // `RecordWriter`, which places them in key order, makes them.
    integrity: Gap,
    seq: Gap,
    logged_at: Gap,
}

/// Where a writer member goes: at byte `at`, after a `,` when a member comes before it (a
/// member after it already wrote its own `,`).
#[derive(Debug, Clone, Copy)]
struct Gap {
    at: usize,
    comma: bool,
}

impl PreparedRecord {
    /// The record `record` (a full record object except the writer's members, which are
    /// ignored when given) prepared for the writer: what [`encode`] makes of the same map.
    pub fn from_map(record: &Map) -> PreparedRecord {
        let mut writer = RecordWriter::new();
        for (key, value) in record {
            match (key.as_str(), value) {
                // The writer sets these, overwriting whatever was given.
                (INTEGRITY | SEQ, _) => {}
                (TIMESTAMPS, Value::Object(timestamps)) => {
                    let mut members = writer.timestamps();
                    for (key, value) in timestamps.iter().filter(|(k, _)| *k != LOGGED_AT) {
                        write_canonical(value, members.key(key));
                    }
                    members.finish();
                }
                (TIMESTAMPS, _) => {
                    // Left out: `finish` writes `timestamps` with `logged_at` alone.
                    tracing::warn!("audit record had a non-object `timestamps`; replaced");
                }
                (key, value) => write_canonical(value, writer.key(key)),
            }
        }
        writer.finish()
    }
}

/// Writes a record's members straight to canonical bytes, like
/// [`crate::canonical::ObjectWriter`], and leaves gaps for the writer's members as the keys
/// pass their places; `timestamps` is written through [`RecordWriter::timestamps`] and gets
/// `logged_at`'s gap the same way. A record without `timestamps` gets one holding only
/// `logged_at`.
///
/// INVARIANT: members must come in canonical key order (by UTF-8 bytes), each once, and never
/// be one of the writer's; debug builds check it. The result is then exactly what [`encode`]
/// makes of the same members as a [`Map`].
pub struct RecordWriter {
    out: Vec<u8>,
    empty: bool,
    integrity: Option<Gap>,
    seq: Option<Gap>,
    logged_at: Option<Gap>,
    timestamps_written: bool,
    #[cfg(debug_assertions)]
    last_key: Option<String>,
}

/// A typical decision record is 800–1,000 bytes.
const RECORD_CAPACITY: usize = 1024;

impl Default for RecordWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordWriter {
    pub fn new() -> RecordWriter {
        let mut out = Vec::with_capacity(RECORD_CAPACITY);
        out.push(b'{');
        RecordWriter {
            out,
            empty: true,
            integrity: None,
            seq: None,
            logged_at: None,
            timestamps_written: false,
            #[cfg(debug_assertions)]
            last_key: None,
        }
    }

    /// Writes `"key":` and returns the buffer for the value, which the caller must write next.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(
            ![INTEGRITY, SEQ, TIMESTAMPS].contains(&key),
            "`{key}` is the writer's member (timestamps: use RecordWriter::timestamps)"
        );
        self.place_writer_members(Some(key));
        self.member_key(key);
        &mut self.out
    }

    pub fn str(&mut self, key: &str, value: &str) {
        write_str(value, self.key(key));
    }

    pub fn value(&mut self, key: &str, value: &Value) {
        write_canonical(value, self.key(key));
    }

    pub fn null(&mut self, key: &str) {
        self.key(key).extend_from_slice(b"null");
    }

    /// Opens the `timestamps` member; the writer adds `logged_at` among its members.
    pub fn timestamps(&mut self) -> TimestampsWriter<'_> {
        self.place_writer_members(Some(TIMESTAMPS));
        self.member_key(TIMESTAMPS);
        self.timestamps_written = true;
        self.out.push(b'{');
        TimestampsWriter {
            record: self,
            empty: true,
        }
    }

    /// Closes the record.
    pub fn finish(mut self) -> PreparedRecord {
        self.place_writer_members(None);
        self.out.push(b'}');
        let gap = |gap: Option<Gap>| {
            gap.unwrap_or(Gap {
                at: 0,
                comma: false,
            })
        };
        PreparedRecord {
            // `place_writer_members(None)` placed all three.
            integrity: gap(self.integrity),
            seq: gap(self.seq),
            logged_at: gap(self.logged_at),
            bytes: self.out,
        }
    }

    /// Places the writer's members that sort before `next` (all of them when `None`).
    fn place_writer_members(&mut self, next: Option<&str>) {
        let before = |name: &str| next.is_none_or(|next| name < next);
        if self.integrity.is_none() && before(INTEGRITY) {
            self.integrity = Some(gap(&mut self.out, &mut self.empty));
        }
        if self.seq.is_none() && before(SEQ) {
            self.seq = Some(gap(&mut self.out, &mut self.empty));
        }
        if !self.timestamps_written && next != Some(TIMESTAMPS) && before(TIMESTAMPS) {
            self.timestamps().finish();
        }
    }

    fn member_key(&mut self, key: &str) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last_key.as_deref().is_none_or(|last| last < key),
                "record keys out of canonical order: `{key}` after `{:?}`",
                self.last_key
            );
            self.last_key = Some(key.to_owned());
        }
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        write_str(key, &mut self.out);
        self.out.push(b':');
    }
}

/// The open `timestamps` member of a [`RecordWriter`]; closed by [`TimestampsWriter::finish`]
/// or when dropped.
pub struct TimestampsWriter<'r> {
    record: &'r mut RecordWriter,
    empty: bool,
}

impl TimestampsWriter<'_> {
    /// Writes `"key":` and returns the buffer for the value, which the caller must write next.
    /// Keys in canonical order, never `logged_at`.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(key != LOGGED_AT, "`logged_at` is the writer's member");
        self.place_logged_at(Some(key));
        if !std::mem::take(&mut self.empty) {
            self.record.out.push(b',');
        }
        write_str(key, &mut self.record.out);
        self.record.out.push(b':');
        &mut self.record.out
    }

    pub fn str(&mut self, key: &str, value: &str) {
        write_str(value, self.key(key));
    }

    /// Closes the member.
    pub fn finish(self) {}

    fn place_logged_at(&mut self, next: Option<&str>) {
        if self.record.logged_at.is_none() && next.is_none_or(|next| LOGGED_AT < next) {
            self.record.logged_at = Some(gap(&mut self.record.out, &mut self.empty));
        }
    }
}

impl Drop for TimestampsWriter<'_> {
    fn drop(&mut self) {
        self.place_logged_at(None);
        self.record.out.push(b'}');
    }
}

/// A gap at the end of `out`, counted as a member of the object being written (so the member
/// after it writes its `,`).
fn gap(out: &mut [u8], empty: &mut bool) -> Gap {
    Gap {
        at: out.len(),
        comma: !std::mem::take(empty),
    }
}

/// Appends the line of `record` (canonical JSON + `\n`) to `out`, after setting `seq`,
/// `timestamps.logged_at` and `integrity`; returns its `record_hash`.
#[cfg(test)]
pub(super) fn encode(
    record: Map,
    seq: u64,
    prev_hash: &str,
    logged_at: &str,
    out: &mut Vec<u8>,
) -> String {
    encode_prepared(
        &PreparedRecord::from_map(&record),
        seq,
        prev_hash,
        logged_at,
        out,
    )
}

/// Appends the line of `record` (canonical JSON + `\n`) to `out`, with its `seq`,
/// `timestamps.logged_at` and `integrity` filled in; returns its `record_hash`.
pub(crate) fn encode_prepared(
    record: &PreparedRecord,
    seq: u64,
    prev_hash: &str,
    logged_at: &str,
    out: &mut Vec<u8>,
) -> String {
    let bytes = &record.bytes;
    let (integrity, seq_gap, logged_at_gap) = (record.integrity, record.seq, record.logged_at);
    let start = out.len();
    // INVARIANT (PreparedRecord): the gaps are in order and inside `bytes`.
    out.extend_from_slice(&bytes[..integrity.at]);
    fill(out, integrity, INTEGRITY);
    out.extend_from_slice(b"{\"prev_hash\":");
    write_str(prev_hash, out);
    out.extend_from_slice(b",\"record_hash\":");
    // INVARIANT: `hole` is the offset of the `""` written next, the record_hash value.
    let hole = out.len();
    out.extend_from_slice(b"\"\"}");
    out.extend_from_slice(&bytes[integrity.at..seq_gap.at]);
    fill(out, seq_gap, SEQ);
    write_u64(seq, out);
    out.extend_from_slice(&bytes[seq_gap.at..logged_at_gap.at]);
    fill(out, logged_at_gap, LOGGED_AT);
    write_str(logged_at, out);
    out.extend_from_slice(&bytes[logged_at_gap.at..]);

    let record_hash = prefixed(&Sha256::digest(&out[start..]));
    out.splice(hole + 1..hole + 1, record_hash.bytes());
    out.push(b'\n');
    record_hash
}

/// The tree-based encoder the writer used before records were prepared on the requesting
/// thread, kept as the reference the prepared path is pinned to, byte for byte.
#[cfg(test)]
pub(crate) fn encode_via_tree(
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
        _ => {
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
    let write_members = |members: Map, out: &mut Vec<u8>, first: &mut bool| {
        for (key, value) in members {
            if !std::mem::take(first) {
                out.push(b',');
            }
            write_canonical(&Value::String(key), out);
            out.push(b':');
            write_canonical(&value, out);
        }
    };
    write_members(record, out, &mut first);
    if !first {
        out.push(b',');
    }
    first = false;
    out.extend_from_slice(b"\"integrity\":{\"prev_hash\":");
    write_canonical(&Value::String(prev_hash.to_owned()), out);
    out.extend_from_slice(b",\"record_hash\":");
    let hole = out.len();
    out.extend_from_slice(b"\"\"}");
    write_members(after, out, &mut first);
    out.push(b'}');

    let record_hash = prefixed(&Sha256::digest(&out[start..]));
    out.splice(hole + 1..hole + 1, record_hash.bytes());
    out.push(b'\n');
    record_hash
}

/// Writes the `,` (when due) and `"key":` of the member that goes into `gap`.
fn fill(out: &mut Vec<u8>, gap: Gap, key: &str) {
    if gap.comma {
        out.push(b',');
    }
    write_str(key, out);
    out.push(b':');
}

/// Why a line is not a valid record; `seq` when the line was readable that far.
#[derive(Debug)]
pub(super) struct LineError {
    pub seq: Option<u64>,
    pub reason: String,
}

/// The chain fields of a line that passed [`check_line`], borrowed from the line when they
/// could be (verification checks millions of lines; two allocations each would show).
pub(super) struct Checked<'a> {
    pub seq: u64,
    pub prev_hash: Cow<'a, str>,
    pub record_hash: Cow<'a, str>,
}

/// Checks one line (without its `\n`): a JSON object, canonical byte for byte, with a `seq`,
/// an `integrity.prev_hash` and an `integrity.record_hash` that recomputes. `scratch` is a
/// reusable buffer. Links to other lines are the caller's business.
pub(super) fn check_line<'a>(
    line: &'a [u8],
    scratch: &mut Vec<u8>,
) -> Result<Checked<'a>, LineError> {
    // Nearly every line is plain canonical JSON that the byte-level scan proves canonical
    // without building a tree; anything it is unsure about takes the full path below, which
    // also words the error.
    if let Some(fields) = scan::scan(line) {
        let quoted_hash = &line[fields.record_hash.clone()];
        // The scan proved the line UTF-8, so both conversions succeed.
        if let (true, Ok(prev_hash), Ok(record_hash)) = (
            hash_matches(line, fields.record_hash.clone(), quoted_hash),
            std::str::from_utf8(&line[fields.prev_hash]),
            std::str::from_utf8(unquote(quoted_hash)),
        ) {
            return Ok(Checked {
                seq: fields.seq,
                prev_hash: Cow::Borrowed(prev_hash),
                record_hash: Cow::Borrowed(record_hash),
            });
        }
    }
    check_line_full(line, scratch)
}

/// `bytes` without its first and last byte (the quotes of a string token).
fn unquote(bytes: &[u8]) -> &[u8] {
    bytes
        .get(1..bytes.len().saturating_sub(1))
        .unwrap_or_default()
}

/// Whether `quoted_hash` (the token at `hole`, quotes included) is `"sha256:<hex>"` of `line`
/// with that token replaced by `""`.
fn hash_matches(line: &[u8], hole: Range<usize>, quoted_hash: &[u8]) -> bool {
    let mut hasher = Sha256::new();
    hasher.update(&line[..hole.start]);
    hasher.update(b"\"\"");
    hasher.update(&line[hole.end..]);
    let mut hex = [0u8; 64];
    hex::encode_to_slice(hasher.finalize(), &mut hex).is_ok()
        && unquote(quoted_hash).strip_prefix(HASH_PREFIX.as_bytes()) == Some(&hex[..])
}

/// [`check_line`] through the full parser: parse, re-serialize, compare, hash.
fn check_line_full<'a>(line: &'a [u8], scratch: &mut Vec<u8>) -> Result<Checked<'a>, LineError> {
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
    if !hash_matches(line, hole.clone(), &line[hole]) {
        return Err(bad(Some(seq), "record_hash does not match its content"));
    }
    Ok(Checked {
        seq,
        prev_hash: Cow::Owned(prev_hash),
        record_hash: Cow::Owned(record_hash),
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
        assert_eq!((checked.seq, checked.prev_hash.as_ref()), (7, "sha256:abc"));
        assert_eq!(checked.record_hash, rh);
    }

    // The prepared path (what the writer does now) must give the very bytes of the tree
    // encoder it replaced, wherever the record's members fall around the writer's three.
    #[test]
    fn prepared_records_encode_like_the_tree_encoder() {
        let pool = [
            "",
            "a",
            "in",
            "integrity",
            "integrityz",
            "r",
            "s",
            "sep",
            "seq",
            "seq0",
            "t",
            "timestamp",
            "timestamps",
            "timestampsz",
            "zz",
            "é",
        ];
        let timestamp_variants: [Option<Value>; 5] = [
            None,
            Some(Value::object::<&str, 0>([])),
            Some(Value::object([
                ("a", "1".into()),
                ("logged", "2".into()),
                ("logged_at", "given".into()),
                ("logged_atz", Value::Null),
                ("z", 7i64.into()),
            ])),
            Some(Value::object([
                ("started_at", "s".into()),
                ("finished_at", "f".into()),
            ])),
            Some("not an object".into()),
        ];
        let mut checked = 0;
        for mask in 0u32..(1 << pool.len()) {
            // Every subset of the first 8 keys, and a spread of the others.
            if mask >= 1 << 8 && mask % 37 != 0 {
                continue;
            }
            let mut record = Map::new();
            for (i, key) in pool.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    record.insert((*key).to_owned(), Value::from(format!("v{i}\n\"")));
                }
            }
            let timestamps = &timestamp_variants[mask as usize % timestamp_variants.len()];
            match timestamps {
                Some(ts) => record.insert("timestamps".into(), ts.clone()),
                None => record.remove("timestamps"),
            };
            for seq in [0, 7, u64::MAX] {
                let (mut old, mut new) = (b"line\n".to_vec(), b"line\n".to_vec());
                let old_hash = encode_via_tree(record.clone(), seq, "sha256:p", "L", &mut old);
                let new_hash = encode(record.clone(), seq, "sha256:p", "L", &mut new);
                assert_eq!(
                    String::from_utf8_lossy(&new),
                    String::from_utf8_lossy(&old),
                    "{record:?}"
                );
                assert_eq!(new_hash, old_hash);
                checked += 1;
            }
        }
        assert!(checked > 3 * 256, "{checked}");
    }

    // The members written by hand through RecordWriter, as Decision::prepared_record does.
    #[test]
    fn record_writer_places_the_writer_members_between_hand_written_ones() {
        let mut writer = RecordWriter::new();
        writer.str("approved_call", "x");
        writer.null("escalation");
        writer.value("request", &Value::object([("seq", 1i64.into())]));
        {
            let mut ts = writer.timestamps();
            ts.str("decided_at", "d");
            ts.str("received_at", "r");
        }
        writer.str("z", "last");
        let mut new = Vec::new();
        encode_prepared(&writer.finish(), 3, "sha256:p", "L", &mut new);

        let mut map = Map::new();
        map.insert("approved_call".into(), "x".into());
        map.insert("escalation".into(), Value::Null);
        map.insert("request".into(), Value::object([("seq", 1i64.into())]));
        map.insert(
            "timestamps".into(),
            Value::object([("decided_at", "d".into()), ("received_at", "r".into())]),
        );
        map.insert("z".into(), "last".into());
        let mut old = Vec::new();
        encode_via_tree(map, 3, "sha256:p", "L", &mut old);
        assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
        // And a record with no member at all.
        let mut new = Vec::new();
        encode_prepared(&RecordWriter::new().finish(), 0, "g", "L", &mut new);
        let mut old = Vec::new();
        encode_via_tree(Map::new(), 0, "g", "L", &mut old);
        assert_eq!(new, old);
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

    /// Records that exercise every branch of the fast scan, and some it leaves to the parser.
    fn varied() -> Vec<Map> {
        let weird = [
            Value::from(
                "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 😀 \u{2028}",
            ),
            Value::from(-12i64),
            Value::Number(crate::canonical::Number::Float(1.5e-7)),
            Value::from(u64::MAX),
            Value::Number(crate::canonical::Number::Int(
                "123456789012345678901234567890".into(),
            )),
            Value::Array(vec![
                Value::Null,
                true.into(),
                false.into(),
                Value::Array(vec![]),
            ]),
            Value::object([
                ("", Value::object::<&str, 0>([])),
                ("é", 1i64.into()),
                ("a\"b", 2i64.into()),
            ]),
            Value::from("\u{1}\u{8}\u{c}\r\u{1f}"),
        ];
        weird
            .into_iter()
            .map(|v| {
                let mut m = sample();
                m.insert("args".into(), v);
                m
            })
            .collect()
    }

    /// What the full path accepts, structurally: the line parses, serializes back to itself,
    /// and has the chain fields; with the hole of `record_hash`.
    fn full_structure(line: &[u8]) -> Option<(u64, String, Range<usize>)> {
        let Ok(Value::Object(record)) = crate::canonical::parse(line) else {
            return None;
        };
        let seq = match record.get("seq") {
            Some(Value::Number(Number::Int(d))) => d.parse::<u64>().ok()?,
            _ => return None,
        };
        let integrity = record.get(INTEGRITY)?;
        let prev = integrity.get("prev_hash")?.as_str()?.to_owned();
        integrity.get("record_hash")?.as_str()?;
        let mut out = Vec::new();
        let hole = write_marked(record, &mut out)?;
        (out == line).then_some((seq, prev, hole))
    }

    // Guards the fast path's one promise: it never accepts a line the full path refuses, and
    // it reads the same fields. Mutations are deterministic, so a failure reproduces.
    #[test]
    fn fast_scan_accepts_only_what_the_full_path_accepts() {
        const BYTES: &[u8] = b"\"\\{}[],:0-19.eEu abfnrt\x01\x7f\xc3\xa9\xff";
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            usize::try_from(rng % n as u64).unwrap()
        };
        let (mut fast, mut total) = (0, 0);
        for (i, record) in varied().into_iter().enumerate() {
            let mut out = Vec::new();
            encode(record, i as u64, "sha256:p", "t", &mut out);
            out.pop();
            for round in 0..4000 {
                let mut line = out.clone();
                for _ in 0..=round % 3 {
                    let at = next(line.len());
                    match next(3) {
                        0 => line[at] = BYTES[next(BYTES.len())],
                        1 => line.insert(at, BYTES[next(BYTES.len())]),
                        _ => {
                            line.remove(at);
                        }
                    }
                }
                for candidate in [&out, &line] {
                    total += 1;
                    if let Some(f) = scan::scan(candidate) {
                        fast += 1;
                        let (seq, prev, hole) = full_structure(candidate).unwrap_or_else(|| {
                            panic!(
                                "fast path accepted {:?}",
                                String::from_utf8_lossy(candidate)
                            )
                        });
                        assert_eq!((f.seq, f.record_hash), (seq, hole));
                        assert_eq!(&candidate[f.prev_hash], prev.as_bytes());
                    }
                }
            }
        }
        // The unmutated lines without floats or escaped keys take the fast path.
        assert!(fast > 4000 * 5, "fast path taken {fast} of {total} times");
    }

    #[test]
    fn typical_records_take_the_fast_path() {
        let mut out = Vec::new();
        encode(
            sample(),
            1,
            "sha256:p",
            "2024-01-01T00:00:00.000000Z",
            &mut out,
        );
        assert!(scan::scan(&out[..out.len() - 1]).is_some());
        let lines: Vec<Vec<u8>> = varied()
            .into_iter()
            .map(|r| {
                let mut out = Vec::new();
                encode(r, 1, "sha256:p", "t", &mut out);
                out.pop();
                out
            })
            .collect();
        let taken: Vec<bool> = lines.iter().map(|l| scan::scan(l).is_some()).collect();
        // Floats and escaped keys are left to the parser; everything else is scanned.
        assert_eq!(taken, [true, true, false, true, true, true, false, true]);
        for line in &lines {
            assert!(check_line(line, &mut Vec::new()).is_ok());
        }
    }

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
