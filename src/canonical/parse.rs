//! The strict JSON reader of ECL-C14N-1 (SPEC §3): bytes in, one [`Value`] or one refusal out.
//!
//! Owns the decision of which request bodies are JSON at all. Everything it accepts is exactly
//! RFC 8259 and reads the same in the gate as in any conforming tool, so it refuses whatever two
//! readers could disagree on: duplicate keys, lone surrogates, invalid UTF-8, non-finite or
//! overflowing numbers, trailing content, leading BOMs and nesting deeper than [`MAX_DEPTH`].
//! It must never panic, never recurse deeper than [`MAX_DEPTH`] (the limit is checked before
//! each descent, so hostile input cannot exhaust the stack), never round an integer token
//! (its digits are kept as written) and never guess: every error is a refusal, not a repair.

use std::collections::btree_map::Entry;
use std::fmt;

use super::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted. The outermost container is level 1, so
/// 128 nested `[` are accepted and a 129th is refused with [`ParseErrorKind::TooDeep`] at its
/// offset. Scalars do not count as a level. The vectors only pin the bounds loosely (a
/// 200-deep array is refused; accepted cases nest at most 8 deep); the exact boundary follows
/// SPEC §3's wording "nesting deeper than 128".
pub const MAX_DEPTH: usize = 128;

/// Most values (scalars and containers) one document may hold. A 1 MiB body of `[0,0,…]` is
/// half a million values, tens of MB in memory: the cap bounds what one request can allocate.
pub const MAX_VALUES: usize = 1 << 18;

/// Why a body is not ECL JSON, and the byte offset into the input where that was noticed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub offset: usize,
}

/// The rule a refused input broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// No value at all: empty or whitespace-only input.
    Empty,
    /// Anything RFC 8259's grammar does not allow.
    Syntax,
    /// Bytes other than whitespace after the value.
    TrailingContent,
    InvalidUtf8,
    /// A `\u` escape of a surrogate that is not half of a high-low pair.
    LoneSurrogate,
    /// `NaN`, `Infinity` or `-Infinity`.
    NonFinite,
    /// A fraction or exponent number whose value is beyond the range of a double.
    NumberOverflow,
    /// The key, unescaped, that an object already had.
    DuplicateKey(String),
    /// More than [`MAX_VALUES`] values in one document.
    TooManyValues,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl ParseErrorKind {
    /// A short, stable name for logs and error codes.
    pub fn as_str(&self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "empty",
            ParseErrorKind::Syntax => "syntax",
            ParseErrorKind::TrailingContent => "trailing_content",
            ParseErrorKind::InvalidUtf8 => "invalid_utf8",
            ParseErrorKind::LoneSurrogate => "lone_surrogate",
            ParseErrorKind::NonFinite => "non_finite",
            ParseErrorKind::NumberOverflow => "number_overflow",
            ParseErrorKind::DuplicateKey(_) => "duplicate_key",
            ParseErrorKind::TooDeep => "too_deep",
            ParseErrorKind::TooManyValues => "too_many_values",
        }
    }
}

/// Keys in messages are cut short: a hostile body could otherwise put a megabyte into a log line.
const MAX_KEY_IN_MESSAGE: usize = 64;

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ParseErrorKind::Empty => f.write_str("empty input")?,
            ParseErrorKind::Syntax => f.write_str("syntax error")?,
            ParseErrorKind::TrailingContent => f.write_str("trailing content")?,
            ParseErrorKind::InvalidUtf8 => f.write_str("invalid utf-8")?,
            ParseErrorKind::LoneSurrogate => f.write_str("lone surrogate escape")?,
            ParseErrorKind::NonFinite => f.write_str("non-finite number")?,
            ParseErrorKind::NumberOverflow => f.write_str("number overflows a double")?,
            ParseErrorKind::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH}")?,
            ParseErrorKind::TooManyValues => write!(f, "more than {MAX_VALUES} values")?,
            ParseErrorKind::DuplicateKey(key) => {
                // Escaped so control characters and backticks cannot forge log structure.
                f.write_str("duplicate key `")?;
                for c in key.chars().take(MAX_KEY_IN_MESSAGE) {
                    if c == '`' {
                        f.write_str("\\`")?;
                    } else {
                        write!(f, "{}", c.escape_debug())?;
                    }
                }
                if key.chars().nth(MAX_KEY_IN_MESSAGE).is_some() {
                    f.write_str("…")?;
                }
                f.write_str("`")?;
            }
        }
        write!(f, " at byte {}", self.offset)
    }
}

/// Parses `input` as exactly one JSON value, refusing anything SPEC §3 refuses.
pub fn parse(input: &[u8]) -> Result<Value, ParseError> {
    // Validating once up front is far faster than per string and makes "invalid UTF-8
    // anywhere" true even inside bytes that would also be a syntax error.
    let text = std::str::from_utf8(input).map_err(|e| ParseError {
        kind: ParseErrorKind::InvalidUtf8,
        offset: e.valid_up_to(),
    })?;
    let mut p = Parser {
        text,
        bytes: input,
        pos: 0,
        values: 0,
    };
    p.skip_ws();
    if p.pos >= p.bytes.len() {
        return Err(p.err(ParseErrorKind::Empty));
    }
    let value = p.parse_value(0)?;
    p.skip_ws();
    if p.pos < p.bytes.len() {
        return Err(p.err(ParseErrorKind::TrailingContent));
    }
    Ok(value)
}

struct Parser<'a> {
    /// The same bytes as `bytes`, already proven UTF-8, so string runs copy without re-checking.
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Values started so far, against [`MAX_VALUES`].
    values: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            kind,
            offset: self.pos,
        }
    }

    fn err_at(kind: ParseErrorKind, offset: usize) -> ParseError {
        ParseError { kind, offset }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn starts_with(&self, lit: &[u8]) -> bool {
        self.bytes
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(lit))
    }

    /// `depth` is the number of containers already open around this value.
    fn parse_value(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.err(ParseErrorKind::TooManyValues));
        }
        match self.peek() {
            Some(b'{') => self.parse_object(depth),
            Some(b'[') => self.parse_array(depth),
            Some(b'"') => self.parse_string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            // Named so callers can tell a non-finite number from a typo; Python's `json`
            // would accept these three tokens, which is why they must be refused explicitly.
            Some(b'N') if self.starts_with(b"NaN") => Err(self.err(ParseErrorKind::NonFinite)),
            Some(b'I') if self.starts_with(b"Infinity") => Err(self.err(ParseErrorKind::NonFinite)),
            _ => Err(self.err(ParseErrorKind::Syntax)),
        }
    }

    fn literal(&mut self, lit: &[u8], value: Value) -> Result<Value, ParseError> {
        if self.starts_with(lit) {
            self.pos += lit.len();
            Ok(value)
        } else {
            Err(self.err(ParseErrorKind::Syntax))
        }
    }

    /// Checked before the bracket is consumed, so the stack never grows past the limit.
    fn enter(&self, depth: usize) -> Result<usize, ParseError> {
        if depth >= MAX_DEPTH {
            Err(self.err(ParseErrorKind::TooDeep))
        } else {
            Ok(depth + 1)
        }
    }

    fn parse_array(&mut self, depth: usize) -> Result<Value, ParseError> {
        let depth = self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.parse_value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err(ParseErrorKind::Syntax)),
            }
        }
    }

    fn parse_object(&mut self, depth: usize) -> Result<Value, ParseError> {
        let depth = self.enter(depth)?;
        self.pos += 1;
        let mut members = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err(ParseErrorKind::Syntax));
            }
            let key_offset = self.pos;
            let key = self.parse_string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err(ParseErrorKind::Syntax));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.parse_value(depth)?;
            // Keys compare after unescaping, so `"a"` and `"\u0061"` collide as they would in
            // any tool reading the same body.
            match members.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let (key, _) = slot.remove_entry();
                    return Err(Self::err_at(ParseErrorKind::DuplicateKey(key), key_offset));
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.err(ParseErrorKind::Syntax)),
            }
        }
    }

    /// `text[start..end]`; both ends sit on ASCII bytes, so slicing cannot split a character.
    fn slice(&self, start: usize, end: usize) -> Result<&'a str, ParseError> {
        self.text
            .get(start..end)
            .ok_or_else(|| Self::err_at(ParseErrorKind::Syntax, start))
    }

    /// Reads the string whose opening quote is at `pos`; leaves `pos` after the closing quote.
    fn parse_string(&mut self) -> Result<String, ParseError> {
        self.pos += 1;
        // Unescaped strings, the common case, are copied in one allocation; `out` only
        // appears at the first escape.
        let mut out: Option<String> = None;
        let mut run_start = self.pos;
        loop {
            let rest = self.bytes.get(self.pos..).unwrap_or_default();
            let Some(skip) = super::first_special(rest) else {
                self.pos = self.bytes.len();
                return Err(self.err(ParseErrorKind::Syntax));
            };
            self.pos += skip;
            let run = self.slice(run_start, self.pos)?;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(match out {
                        Some(mut s) => {
                            s.push_str(run);
                            s
                        }
                        None => run.to_owned(),
                    });
                }
                Some(b'\\') => {
                    let s = out.get_or_insert_with(|| String::with_capacity(run.len() + 16));
                    s.push_str(run);
                    let c = self.parse_escape()?;
                    s.push(c);
                    run_start = self.pos;
                }
                // A raw control character: RFC 8259 requires it to be escaped.
                _ => return Err(self.err(ParseErrorKind::Syntax)),
            }
        }
    }

    /// Reads the escape whose backslash is at `pos`.
    fn parse_escape(&mut self) -> Result<char, ParseError> {
        let escape_offset = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.parse_unicode_escape(escape_offset);
            }
            _ => return Err(self.err(ParseErrorKind::Syntax)),
        };
        self.pos += 1;
        Ok(c)
    }

    /// Reads the four hex digits after `\u` (and a low half after a high one).
    fn parse_unicode_escape(&mut self, escape_offset: usize) -> Result<char, ParseError> {
        let unit = self.hex4()?;
        let lone = || Self::err_at(ParseErrorKind::LoneSurrogate, escape_offset);
        let code = match unit {
            0xD800..=0xDBFF => {
                if !self.starts_with(b"\\u") {
                    return Err(lone());
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(lone());
                }
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(lone()),
            _ => unit,
        };
        char::from_u32(code).ok_or_else(lone)
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut unit = 0u32;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.err(ParseErrorKind::Syntax)),
            };
            unit = unit << 4 | u32::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    fn skip_digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn parse_number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
            if self.starts_with(b"Infinity") {
                return Err(Self::err_at(ParseErrorKind::NonFinite, start));
            }
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                // `01` is not a number followed by trailing content but a malformed number.
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err(ParseErrorKind::Syntax));
                }
            }
            Some(b'1'..=b'9') => {
                self.skip_digits();
            }
            _ => return Err(self.err(ParseErrorKind::Syntax)),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            if self.skip_digits() == 0 {
                return Err(self.err(ParseErrorKind::Syntax));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.skip_digits() == 0 {
                return Err(self.err(ParseErrorKind::Syntax));
            }
        }
        let token = self.slice(start, self.pos)?;
        if !is_float {
            // Integers keep every digit, as Python's `int` does; only `-0` has a second
            // spelling to fold.
            let digits = if token == "-0" { "0" } else { token };
            return Ok(Value::Number(Number::Int(digits.into())));
        }
        // The token is already in a grammar Rust's parser accepts, and its result is correctly
        // rounded, as the canonical form requires.
        match token.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Number(Number::Float(f))),
            Ok(_) => Err(Self::err_at(ParseErrorKind::NumberOverflow, start)),
            Err(_) => Err(Self::err_at(ParseErrorKind::Syntax, start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(input: &str) -> ParseErrorKind {
        kind_bytes(input.as_bytes())
    }

    fn kind_bytes(input: &[u8]) -> ParseErrorKind {
        match parse(input) {
            Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(input)),
            Err(e) => e.kind,
        }
    }

    fn canon(input: &str) -> String {
        match parse(input.as_bytes()) {
            Ok(v) => String::from_utf8(super::super::to_canonical(&v)).unwrap(),
            Err(e) => panic!("{input:?} refused: {e}"),
        }
    }

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn empty_and_whitespace_only_inputs_are_empty() {
        for input in ["", " ", "\t\n\r "] {
            assert_eq!(kind(input), ParseErrorKind::Empty, "{input:?}");
        }
    }

    #[test]
    fn grammar_violations_are_syntax_errors() {
        let cases = [
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "{'a':1}",
            "01",
            "-01",
            "00",
            "+1",
            ".5",
            "1.",
            "1.e5",
            "1e",
            "1e+",
            "-",
            "- 1",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "{\"a\"}",
            "[",
            "{",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\ud800\\uzzzz\"",
            "\"a\u{1}b\"",
            "\"tab\there\"",
            "\"nl\nhere\"",
            "/* c */ 1",
            "// c\n1",
            "tru",
            "nul",
            "True",
            "nan",
            "inf",
            "-nan",
            "\u{feff}{}",
            "\u{a0}1",
            "\u{c}1",
            "]",
        ];
        for input in cases {
            assert_eq!(kind(input), ParseErrorKind::Syntax, "{input:?}");
        }
    }

    #[test]
    fn content_after_the_value_is_trailing() {
        for input in [
            "{\"a\":1} x",
            "{\"a\":1}{\"b\":2}",
            "1 2",
            "null,",
            "[]]",
            "truex",
        ] {
            assert_eq!(kind(input), ParseErrorKind::TrailingContent, "{input:?}");
        }
        assert_eq!(canon(" \t\r\n[1] \t\r\n"), "[1]");
    }

    #[test]
    fn invalid_utf8_is_refused_anywhere() {
        let cases: [&[u8]; 5] = [
            b"\"\xff\"",
            b"\xc3",
            b"[1] \x80",
            b"\"\xed\xa0\x80\"", // an encoded surrogate
            b"\"\xc0\xaf\"",     // overlong `/`
        ];
        for input in cases {
            assert_eq!(kind_bytes(input), ParseErrorKind::InvalidUtf8, "{input:?}");
        }
        let e = parse(b"\"ab\xff\"").unwrap_err();
        assert_eq!(e.offset, 3);
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for input in [
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\ud800x\"",
            "\"\\ud800\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"\\udfff\\ud800\"",
            "\"\\uDBFF\\n\"",
        ] {
            assert_eq!(kind(input), ParseErrorKind::LoneSurrogate, "{input:?}");
        }
    }

    #[test]
    fn non_finite_tokens_are_refused() {
        for input in ["NaN", "Infinity", "-Infinity", "[NaN]", "{\"a\":-Infinity}"] {
            assert_eq!(kind(input), ParseErrorKind::NonFinite, "{input:?}");
        }
    }

    #[test]
    fn floats_beyond_a_double_overflow_but_integers_never_do() {
        for input in ["1e400", "-1e400", "1.8e308", "[1e99999999999999999999]"] {
            assert_eq!(kind(input), ParseErrorKind::NumberOverflow, "{input:?}");
        }
        let big = "9".repeat(400);
        assert_eq!(canon(&big), big);
        assert_eq!(canon("1e-400"), "0.0");
        assert_eq!(canon("-1e-400"), "-0.0");
        assert_eq!(canon("1.7976931348623157e308"), "1.7976931348623157e+308");
    }

    #[test]
    fn duplicate_keys_compare_after_unescaping() {
        let e = parse(b"{\"a\":1,\"\\u0061\":2}").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::DuplicateKey("a".into()));
        assert_eq!(e.offset, 7);
        assert_eq!(e.to_string(), "duplicate key `a` at byte 7");
        assert_eq!(
            kind("{\"a\":{\"b\":1,\"b\":1}}"),
            ParseErrorKind::DuplicateKey("b".into())
        );
        // Same key in different objects is fine.
        assert_eq!(canon("[{\"a\":1},{\"a\":2}]"), "[{\"a\":1},{\"a\":2}]");
        assert_eq!(canon("{\"a\":{\"a\":1}}"), "{\"a\":{\"a\":1}}");
    }

    #[test]
    fn values_are_limited_to_max_values() {
        let at_limit = format!("[{}]", vec!["0"; MAX_VALUES - 1].join(","));
        assert!(parse(at_limit.as_bytes()).is_ok());
        let over = format!("[{}]", vec!["0"; MAX_VALUES].join(","));
        assert_eq!(
            parse(over.as_bytes()).unwrap_err().kind,
            ParseErrorKind::TooManyValues
        );
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        let e = parse(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::TooDeep);
        assert_eq!(e.offset, MAX_DEPTH);
        let objects = "{\"k\":".repeat(MAX_DEPTH) + "1" + &"}".repeat(MAX_DEPTH);
        assert!(parse(objects.as_bytes()).is_ok());
        let objects = "{\"k\":".repeat(MAX_DEPTH + 1) + "1" + &"}".repeat(MAX_DEPTH + 1);
        assert_eq!(kind(&objects), ParseErrorKind::TooDeep);
        // Far deeper than any stack could take if the limit were checked late.
        assert_eq!(kind(&"[".repeat(1 << 20)), ParseErrorKind::TooDeep);
    }

    #[test]
    fn integers_keep_every_digit_and_minus_zero_folds() {
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("[-0, 0]"), "[0,0]");
        assert_eq!(canon("-0.0"), "-0.0");
        assert_eq!(
            canon("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(canon("-98765432109876543210"), "-98765432109876543210");
        assert_eq!(canon("9007199254740993"), "9007199254740993");
        assert_eq!(canon("1E2"), "100.0");
        assert_eq!(canon("0e0"), "0.0");
        assert_eq!(canon("12345.678e3"), "12345678.0");
    }

    #[test]
    fn escapes_are_unescaped() {
        assert_eq!(
            parse(br#""\"\\\/\b\f\n\r\t\u00e9\u0000""#).unwrap(),
            Value::String("\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{0}".into())
        );
        assert_eq!(canon(r#""caf\u00E9 na\u00efve""#), "\"café naïve\"");
        assert_eq!(canon("\"raw é 中 😀 \u{7f}\""), "\"raw é 中 😀 \u{7f}\"");
        assert_eq!(canon(r#""x\u0041y""#), "\"xAy\"");
    }

    #[test]
    fn surrogate_pairs_combine() {
        assert_eq!(canon(r#""\ud83d\ude00 emoji""#), "\"😀 emoji\"");
        assert_eq!(canon(r#""\uD800\uDC00""#), "\"\u{10000}\"");
        assert_eq!(canon(r#""\udbff\udfff""#), "\"\u{10ffff}\"");
    }

    #[test]
    fn errors_print_lowercase_with_offset() {
        let e = parse(b"[1,]").unwrap_err();
        assert_eq!(e.to_string(), "syntax error at byte 3");
        let e = parse(b"{\"a`\\n\":1,\"a`\\n\":1}").unwrap_err();
        assert_eq!(e.to_string(), "duplicate key `a\\`\\n` at byte 10");
        let long = format!("{{\"{0}\":1,\"{0}\":1}}", "k".repeat(200));
        let msg = parse(long.as_bytes()).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("`{}…`", "k".repeat(MAX_KEY_IN_MESSAGE))),
            "{msg}"
        );
        assert_eq!(
            ParseErrorKind::DuplicateKey(String::new()).as_str(),
            "duplicate_key"
        );
        assert_eq!(ParseErrorKind::TooDeep.as_str(), "too_deep");
    }

    #[test]
    fn never_panics_on_truncations_of_valid_input() {
        let doc = r#"{"a":[1,-2.5e-3,"x\u00e9\ud83d\ude00",true,false,null,{"b":{}}],"c":"\n"}"#;
        for end in 0..doc.len() {
            let _ = parse(&doc.as_bytes()[..end]);
        }
        for b in 0..=255u8 {
            let mut input = doc.as_bytes().to_vec();
            for i in 0..input.len() {
                let saved = input[i];
                input[i] = b;
                let _ = parse(&input);
                input[i] = saved;
            }
        }
    }
}
