//! ECL-C14N-1: the JSON value model, the canonical writer and the hashes built on it (SPEC §3–4).
//!
//! Owns the one representation of JSON that every hash in the gate is computed over. It must
//! never depend on hash-map order, locale or platform: two equal values always give the same
//! bytes, byte for byte what Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives.

mod parse;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use parse::{parse, ParseError, ParseErrorKind, MAX_DEPTH, MAX_VALUES};

/// Object members, kept sorted by key. `String`'s `Ord` compares UTF-8 bytes, which orders
/// keys exactly as Unicode code points do, the order the canonical form requires.
pub type Map = BTreeMap<String, Value>;

/// A JSON value as the gate sees it: integers keep every digit, floats are IEEE-754 doubles.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A JSON number. A token without fraction or exponent stays an exact integer of any size, as
/// Python's `int` does; anything else is a double.
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    /// Canonical decimal digits with an optional leading `-`; never `-0`, never leading zeros.
    Int(Box<str>),
    /// Always finite.
    Float(f64),
}

impl Number {
    /// The integer, when it is one and fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::Int(digits) => digits.parse().ok(),
            Number::Float(_) => None,
        }
    }

    /// The value as a double (big integers round, as Python's `float(int)` does).
    pub fn as_f64(&self) -> f64 {
        match self {
            Number::Int(digits) => digits.parse().unwrap_or(f64::NAN),
            Number::Float(f) => *f,
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, Number::Int(_))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Number(Number::Int(n.to_string().into_boxed_str()))
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Number(Number::Int(n.to_string().into_boxed_str()))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Object(m)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    /// Builds an object from `(key, value)` pairs; a later duplicate key replaces an earlier one.
    pub fn object<K: Into<String>, const N: usize>(members: [(K, Value); N]) -> Value {
        Value::Object(members.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The member `key` of an object; `None` for a missing key or a non-object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|m| m.get(key))
    }

    /// An integer member as `i64`, if it is one and fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The JSON type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(Number::Int(_)) => "integer",
            Value::Number(Number::Float(_)) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

static NULL: Value = Value::Null;

/// `value["key"]` reads like the JSON it indexes: a missing member or a non-object gives null.
impl std::ops::Index<&str> for Value {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

/// The canonical bytes of `value`.
pub fn to_canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// Appends the canonical bytes of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(Number::Int(digits)) => out.extend_from_slice(digits.as_bytes()),
        Value::Number(Number::Float(f)) => write_python_float(*f, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Whether any of the 8 bytes in `word` is `"`, `\\` or below 0x20 (exact: no false positives,
/// the classic "has zero byte" / "has byte less than" bit tricks).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (below_space
        | has_zero(word ^ (ONES * u64::from(b'"')))
        | has_zero(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// The index of the first byte of `bytes` that is `"`, `\\` or below 0x20: the bytes a JSON
/// string must escape, and the bytes that end an unescaped run when parsing one.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    // Most strings (hashes, ids, prose) have none: skip them 8 bytes at a time.
    let mut words = bytes.chunks_exact(8);
    let mut clean = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if word_needs_escape(u64::from_le_bytes(word)) {
            break;
        }
        clean += 8;
    }
    bytes[clean..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|at| clean + at)
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    // One capacity check for the common case of a string that needs no escaping (~150
    // strings per decision are written).
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    while let Some(at) = first_special(&bytes[start..]).map(|at| start + at) {
        out.extend_from_slice(&bytes[start..at]);
        let b = bytes[at];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = at + 1;
                continue;
            }
        };
        out.extend_from_slice(escape);
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes `f` as Python's `repr(float)`: the shortest digits that round-trip, in fixed notation
/// for 1e-4 <= |f| < 1e16 (always with a fraction), otherwise as `d[.ddd]e±XX`.
fn write_python_float(f: f64, out: &mut Vec<u8>) {
    if f == 0.0 {
        out.extend_from_slice(if f.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    // Rust's `{:e}` prints the shortest round-trip digits, e.g. `-1.2345e-7`; only the layout
    // differs from Python.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    break_tie_to_even(f.abs(), &mut digits, exp);
    if f.is_sign_negative() {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits.as_bytes());
                out.resize(out.len() + int_len - digits.len(), b'0');
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits.as_bytes()[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits.as_bytes()[int_len..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            let zeros = usize::try_from(-exp - 1).unwrap_or(0);
            out.resize(out.len() + zeros, b'0');
            out.extend_from_slice(digits.as_bytes());
        }
    } else {
        out.extend_from_slice(&digits.as_bytes()[..1]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits.as_bytes()[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        out.extend_from_slice(format!("e{sign}{:02}", exp.unsigned_abs()).as_bytes());
    }
}

/// Rust and Python both print the shortest digits that round-trip and, among those, the ones
/// closest to the exact value; they differ only when the exact value lies exactly halfway
/// between two such candidates (e.g. 259189143840433.125): Rust rounds the tie up, Python's
/// `repr` (David Gay's dtoa) to an even last digit. Here `digits` (no dot, first digit at
/// 10^`exp`) is switched to the even neighbour in exactly that case; `f` is positive.
fn break_tie_to_even(f: f64, digits: &mut String, exp: i32) {
    let Ok(d) = digits.parse::<u64>() else {
        return;
    };
    if d % 2 == 0 {
        return;
    }
    let Ok(len) = i32::try_from(digits.len()) else {
        return;
    };
    // The value of `digits` is d × 10^k.
    let k = exp - (len - 1);
    for neighbour in [d.wrapping_sub(1), d.wrapping_add(1)] {
        // A neighbour ending in 0 would be a shorter representation, which `{:e}` would have
        // found; it is skipped so the digit count (and so `exp`) stays the same.
        if neighbour % 10 == 0 {
            continue;
        }
        // The midpoint between d and the neighbour, (d + neighbour) / 2 × 10^k, as an odd
        // integer times a power of ten.
        let Some(mid) = (u128::from(d) + u128::from(neighbour)).checked_mul(5) else {
            continue;
        };
        if !equals_odd_times_pow10(f, mid, k - 1) {
            continue;
        }
        let candidate = neighbour.to_string();
        if candidate.len() == digits.len()
            && format!("{candidate}e{k}")
                .parse::<f64>()
                .is_ok_and(|g| g == f)
        {
            *digits = candidate;
            return;
        }
    }
}

/// Whether positive `f` equals exactly `m` × 10^`k`, for odd `m`.
fn equals_odd_times_pow10(f: f64, m: u128, k: i32) -> bool {
    let bits = f.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).unwrap_or(0);
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, mut e2) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    if mantissa == 0 {
        return false;
    }
    let twos = mantissa.trailing_zeros();
    let odd = u128::from(mantissa >> twos);
    e2 += i32::try_from(twos).unwrap_or(0);
    // f = odd × 2^e2 and m × 10^k = m × 5^k × 2^k; both odd parts and both powers of two
    // must agree (for k < 0, compare odd × 5^-k with m instead).
    let Some(five_pow) = 5u128.checked_pow(k.unsigned_abs()) else {
        return false;
    };
    e2 == k
        && if k >= 0 {
            m.checked_mul(five_pow) == Some(odd)
        } else {
            odd.checked_mul(five_pow) == Some(m)
        }
}

/// `"sha256:"` + lowercase hex SHA-256 of `bytes`.
pub fn sha256_prefixed(bytes: &[u8]) -> String {
    prefixed(Sha256::digest(bytes).as_slice())
}

/// `"sha256:"` + lowercase hex of an already computed digest.
pub fn prefixed(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + 2 * digest.len());
    s.push_str("sha256:");
    // Five or six hashes per request: `hex::encode` goes through a char iterator and a second
    // String, which cost more than this loop (callgrind: ~1,700 instructions a hash).
    for &byte in digest {
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    s
}

/// `hash(v)` of SPEC §3: the prefixed SHA-256 of the canonical bytes.
pub fn hash(value: &Value) -> String {
    hash_written(|out| write_canonical(value, out))
}

/// `hash` of the object `members` without the top-level members named in `omit`: what
/// cloning the object, removing them and hashing gives, without the clone.
pub fn hash_without(members: &Map, omit: &[&str]) -> String {
    hash_written(|out| {
        out.push(b'{');
        let mut first = true;
        for (key, value) in members.iter().filter(|(k, _)| !omit.contains(&k.as_str())) {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            write_string(key, out);
            out.push(b':');
            write_canonical(value, out);
        }
        out.push(b'}');
    })
}

/// `(hash(object), hash_without(object, omit))` of the object `members`, from one
/// serialization: the members kept are hashed as they are written. The request hash and the
/// intent hash of every request are these two (SPEC §4).
pub fn hash_with_and_without(members: &Map, omit: &[&str]) -> (String, String) {
    with_scratch(|out| {
        // The two byte streams are the same up to the first omitted member (in a request:
        // `actor` and `context`, the larger part): that prefix is hashed once and the hasher
        // forked there.
        let mut with = Sha256::new();
        let mut without: Option<Sha256> = None;
        let mut kept_any = false;
        out.push(b'{');
        for (i, (key, value)) in members.iter().enumerate() {
            let omitted = omit.contains(&key.as_str());
            if omitted && without.is_none() {
                with.update(&out[..]);
                out.clear();
                without = Some(with.clone());
            }
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            write_string(key, out);
            out.push(b':');
            write_canonical(value, out);
            if !omitted {
                if let Some(without) = &mut without {
                    if kept_any {
                        without.update(b",");
                    }
                    without.update(&out[start..]);
                }
                kept_any = true;
            }
        }
        out.push(b'}');
        with.update(&out[..]);
        let with = prefixed(&with.finalize());
        let without = match without {
            Some(mut without) => {
                without.update(b"}");
                prefixed(&without.finalize())
            }
            None => with.clone(),
        };
        (with, without)
    })
}

/// The prefixed SHA-256 of the bytes `write` produces: for callers that write a small
/// canonical object straight to bytes instead of building it as a `Value`.
pub fn hash_written(write: impl Fn(&mut Vec<u8>)) -> String {
    with_scratch(|buf| {
        write(buf);
        sha256_prefixed(buf)
    })
}

/// Runs `work` on an empty scratch buffer.
fn with_scratch<R>(work: impl Fn(&mut Vec<u8>) -> R) -> R {
    // Several hashes per request: serializing into a reused buffer saves an allocation and
    // its regrowths each time. A nested call (none exists) would just allocate.
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = work(&mut buf);
            if buf.capacity() > MAX_KEPT_SCRATCH {
                *buf = Vec::new();
            }
            result
        }
        Err(_) => work(&mut Vec::with_capacity(1024)),
    })
}

/// A scratch buffer larger than this (a big request was hashed) is not kept for the next one.
const MAX_KEPT_SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends `s` as a canonical JSON string (quoted and escaped).
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    write_string(s, out);
}

/// Appends `n` as a JSON integer (its decimal digits), without allocating.
pub fn write_u64(n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes one JSON object straight to bytes, member by member, without building a [`Value`]:
/// for hot paths whose members are known in advance.
///
/// INVARIANT: members must be written in canonical key order (by UTF-8 bytes), each key once;
/// debug builds check it. The result is then byte for byte `to_canonical` of the same object.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
    #[cfg(debug_assertions)]
    last_key: Option<String>,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter {
            out,
            empty: true,
            #[cfg(debug_assertions)]
            last_key: None,
        }
    }

    /// Writes `"key":` and returns the buffer for the value, which the caller must write next.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last_key.as_deref().is_none_or(|last| last < key),
                "object keys out of canonical order: `{key}` after `{:?}`",
                self.last_key
            );
            self.last_key = Some(key.to_owned());
        }
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        write_string(key, self.out);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) {
        write_string(value, self.key(key));
    }

    pub fn value(&mut self, key: &str, value: &Value) {
        write_canonical(value, self.key(key));
    }

    pub fn null(&mut self, key: &str) {
        self.key(key).extend_from_slice(b"null");
    }

    pub fn u64(&mut self, key: &str, n: u64) {
        write_u64(n, self.key(key));
    }

    /// Closes the object.
    pub fn finish(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut out = Vec::new();
        write_python_float(f, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    // The tie cases below are written as their exact binary values on purpose.
    #[allow(clippy::excessive_precision)]
    fn floats_are_written_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1.234e16, "1.234e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // Exact ties between two shortest candidates go to the even digit, as in Python.
            (259189143840433.125, "259189143840433.12"),
            (-1736261076126565.25, "-1736261076126565.2"),
            (821266108446277.25, "821266108446277.2"),
            (196790152217186.125, "196790152217186.12"),
        ];
        for (f, want) in cases {
            assert_eq!(float(f), want, "repr of {f:e}");
        }
    }

    #[test]
    fn object_writer_matches_to_canonical() {
        let nested = Value::object([("b", Value::Null), ("a", "x\n\"y".into())]);
        let expected = Value::object([
            ("a", "é\u{1}".into()),
            ("b", nested.clone()),
            ("c", Value::from(u64::MAX)),
            ("d", Value::Null),
            ("e", Value::from(0u64)),
        ]);
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out);
        w.str("a", "é\u{1}");
        w.value("b", &nested);
        w.u64("c", u64::MAX);
        w.null("d");
        w.u64("e", 0);
        w.finish();
        assert_eq!(out, to_canonical(&expected));

        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out);
        let mut inner = ObjectWriter::new(w.key("k"));
        inner.str("z", "1");
        inner.finish();
        w.finish();
        assert_eq!(out, b"{\"k\":{\"z\":\"1\"}}");
        let mut out = Vec::new();
        ObjectWriter::new(&mut out).finish();
        assert_eq!(out, b"{}");
    }

    #[test]
    fn hash_without_equals_hash_of_the_object_minus_those_members() {
        let object = Value::object([
            ("a", 1i64.into()),
            ("controls", Value::object([("x", Value::Null)])),
            ("m", "é\"".into()),
            ("submitted_at", Value::Null),
            ("z", Value::Array(vec![true.into()])),
        ]);
        let Value::Object(members) = &object else {
            unreachable!()
        };
        for omit in [
            &[][..],
            &["controls"][..],
            &["controls", "submitted_at"][..],
            // The first member (no comma before it) and the last.
            &["a"][..],
            &["a", "z"][..],
            &["a", "m", "z", "controls", "submitted_at", "absent"][..],
        ] {
            let mut expected = members.clone();
            expected.retain(|k, _| !omit.contains(&k.as_str()));
            assert_eq!(
                hash_without(members, omit),
                hash(&Value::Object(expected.clone())),
                "{omit:?}"
            );
            assert_eq!(
                hash_with_and_without(members, omit),
                (hash(&object), hash(&Value::Object(expected))),
                "{omit:?}"
            );
        }
    }

    #[test]
    fn hash_is_sha256_of_the_canonical_bytes_whatever_the_size() {
        // Large values are hashed through the scratch buffer too, which is not kept after.
        for len in [0, 10, 100_000] {
            let v = Value::object([("s", "x".repeat(len).into())]);
            assert_eq!(hash(&v), sha256_prefixed(&to_canonical(&v)));
        }
    }

    #[test]
    // The 8-byte skip must find every byte that needs escaping, at every position in a word.
    fn word_skip_finds_every_escape_at_every_offset() {
        let reference = |s: &str| {
            let mut out = vec![b'"'];
            for c in s.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    '\u{8}' => out.extend_from_slice(b"\\b"),
                    '\u{c}' => out.extend_from_slice(b"\\f"),
                    c if (c as u32) < 0x20 => {
                        out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                    }
                    c => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            out.push(b'"');
            out
        };
        for b in (0u8..0x80).chain([0xc3]) {
            let special = if b == 0xc3 {
                "é".to_owned()
            } else {
                char::from(b).to_string()
            };
            for len in 0..20 {
                for at in 0..=len {
                    let mut s = "a".repeat(len);
                    s.insert_str(at, &special);
                    let mut out = Vec::new();
                    write_string(&s, &mut out);
                    assert_eq!(out, reference(&s), "{s:?}");
                }
            }
        }
        let mut words = vec![0u64, u64::MAX, 0x2020_2020_2020_2020, 0x7f7f_7f7f_7f7f_7f7f];
        for filler in [0x61u8, 0x20, 0x80, 0xa2, 0xdc, 0xff] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut bytes = [filler; 8];
                    bytes[at] = b;
                    words.push(u64::from_le_bytes(bytes));
                }
            }
        }
        for word in words {
            let needs = word
                .to_le_bytes()
                .iter()
                .any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(word_needs_escape(word), needs, "{word:#x}");
        }
    }

    #[test]
    fn prefixed_is_lowercase_hex_of_every_byte() {
        let digest: Vec<u8> = (0..=255u8).collect();
        assert_eq!(
            prefixed(&digest),
            format!("sha256:{}", hex::encode(&digest))
        );
        assert_eq!(
            sha256_prefixed(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn strings_escape_only_quote_backslash_and_controls() {
        let v = Value::from("a\"b\\c\n\u{1}\u{7f}/\u{2028}😀");
        assert_eq!(
            String::from_utf8(to_canonical(&v)).unwrap_or_default(),
            "\"a\\\"b\\\\c\\n\\u0001\u{7f}/\u{2028}😀\""
        );
    }
}
