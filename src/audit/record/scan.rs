//! The byte-level fast path of [`super::check_line`]: proves a line canonical without building
//! a tree.
//!
//! Verification reads every record of every file, and the full path (parse into values,
//! serialize again, compare) spends most of its time allocating maps and strings. This scan
//! walks the bytes once and accepts only a strict subset of canonical JSON, every piece of
//! which is written back unchanged by the canonical writer: no whitespace, integers only (no
//! `-0`), strings with only the escapes the writer emits, object keys without escapes in
//! strictly increasing byte order, nesting within [`MAX_DEPTH`]. Anything else (floats, escaped
//! keys, odd escapes, errors of any kind) returns `None` and the caller takes the full path,
//! which decides and words the error. It must never accept a line the full path refuses: that
//! equivalence is tested on mutated lines in `super::tests`.

use std::ops::Range;

use crate::canonical::MAX_DEPTH;

/// The chain fields of a line the scan accepted.
pub(super) struct Fields {
    pub seq: u64,
    /// `integrity.prev_hash` without its quotes; it contains no escape.
    pub prev_hash: Range<usize>,
    /// `integrity.record_hash` with its quotes: the hole that is hashed as `""`.
    pub record_hash: Range<usize>,
}

/// `Some` only when `line` is canonical JSON the full path would accept as far as structure
/// goes (the hash is the caller's to check).
pub(super) fn scan(line: &[u8]) -> Option<Fields> {
    // Validating once makes every string's bytes valid UTF-8, as the parser requires.
    std::str::from_utf8(line).ok()?;
    let mut s = Scanner {
        b: line,
        pos: 0,
        seq: None,
        prev_hash: None,
        record_hash: None,
    };
    s.object(1, Level::Top)?;
    if s.pos != line.len() {
        return None;
    }
    Some(Fields {
        seq: s.seq?,
        prev_hash: s.prev_hash?,
        record_hash: s.record_hash?,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The record itself: `seq` and `integrity` are read here.
    Top,
    /// The top-level `integrity` object: `prev_hash` and `record_hash` are read here.
    Integrity,
    Nested,
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    seq: Option<u64>,
    prev_hash: Option<Range<usize>>,
    record_hash: Option<Range<usize>>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// `depth` counts this value's container if it is one, as the parser does.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth, Level::Nested),
            b'[' => self.array(depth),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.b
            .get(self.pos..)?
            .starts_with(lit)
            .then(|| self.pos += lit.len())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.value(depth + 1)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize, level: Level) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut previous: Option<Range<usize>> = None;
        loop {
            let key = self.string()?;
            // INVARIANT: a key without escapes is its own UTF-8; byte order of UTF-8 is code
            // point order, the canonical key order, and strictly greater rules out duplicates.
            if key.escaped || previous.is_some_and(|p| self.b[p] >= self.b[key.inner.clone()]) {
                return None;
            }
            self.eat(b':')?;
            let name = &self.b[key.inner.clone()];
            match (level, name) {
                (Level::Top, b"seq") => self.seq = Some(self.integer()?.unsigned?),
                (Level::Top, b"integrity") => {
                    if self.peek()? != b'{' {
                        return None;
                    }
                    self.object(depth + 1, Level::Integrity)?;
                }
                (Level::Integrity, b"prev_hash" | b"record_hash") => {
                    let start = self.pos;
                    let value = self.string()?;
                    if value.escaped {
                        return None;
                    }
                    if name == b"prev_hash" {
                        self.prev_hash = Some(value.inner);
                    } else {
                        self.record_hash = Some(start..self.pos);
                    }
                }
                _ => self.value(depth + 1)?,
            }
            previous = Some(key.inner);
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string token as the canonical writer writes it; `pos` is on its opening quote.
    fn string(&mut self) -> Option<Str> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            // Runs of plain bytes are the bulk of a record: find their end with memchr, then
            // look for raw control characters in one pass the compiler vectorizes.
            let rest = self.b.get(self.pos..)?;
            let run = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..run].iter().fold(false, |acc, &b| acc | (b < 0x20)) {
                // A raw control character is never canonical (nor valid JSON).
                return None;
            }
            self.pos += run;
            match self.b[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Some(Str {
                        inner: start..self.pos - 1,
                        escaped,
                    });
                }
                _ => {
                    escaped = true;
                    self.escape()?;
                }
            }
        }
    }

    /// Only the escapes the writer emits: `\"`, `\\`, the five short forms, and `\u00xx`
    /// (lowercase) for the other control characters.
    fn escape(&mut self) -> Option<()> {
        let next = *self.b.get(self.pos + 1)?;
        match next {
            b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.pos += 2;
                Some(())
            }
            b'u' => {
                let hex = self.b.get(self.pos + 2..self.pos + 6)?;
                let (b'0', b'0', hi @ (b'0' | b'1'), lo) = (hex[0], hex[1], hex[2], hex[3]) else {
                    return None;
                };
                let lo = match lo {
                    b'0'..=b'9' => lo - b'0',
                    b'a'..=b'f' => lo - b'a' + 10,
                    _ => return None,
                };
                let unit = (hi - b'0') << 4 | lo;
                // These five have a short form, which the writer uses instead.
                if matches!(unit, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                    return None;
                }
                self.pos += 6;
                Some(())
            }
            _ => None,
        }
    }

    /// An integer token as written canonically: `-?(0|[1-9][0-9]*)`, never `-0`, no fraction
    /// or exponent (a float's canonical spelling is the full path's to check).
    fn integer(&mut self) -> Option<Int> {
        let start = self.pos;
        let negative = self.eat(b'-').is_some();
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return None,
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E' | b'0'..=b'9')) {
            return None;
        }
        let digits = &self.b[start..self.pos];
        if digits == b"-0" {
            return None;
        }
        let unsigned = if negative {
            None
        } else {
            std::str::from_utf8(digits).ok()?.parse::<u64>().ok()
        };
        Some(Int { unsigned })
    }
}

struct Str {
    /// Between the quotes.
    inner: Range<usize>,
    escaped: bool,
}

struct Int {
    /// The value, when it is a `u64`.
    unsigned: Option<u64>,
}
