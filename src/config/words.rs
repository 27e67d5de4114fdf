//! Configuration errors and values in the user's words.
//!
//! figment names a key as `default.audit.synk` (its profile prefix) or `AUDIT.ORIGIN`, and
//! parses `ECL_AUDIT__ORIGIN=12345` as a number that a text key then refuses. This module
//! names keys as they were written — `audit.synk` in a file, `ECL_AUDIT__SYNK` in the
//! environment — and lets text keys take what the environment parsed as a number or a bool.
//! It never prints a value the user did not write in that key (a secret could be nearby).

use std::fmt;

use figment::error::{Actual, Kind};
use figment::Source;
use serde::de::{self, Deserializer, Visitor};

/// Every error figment found, one per line.
pub fn describe(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| describe_one(&e))
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_one(err: &figment::Error) -> String {
    let path: Vec<&str> = err.path.iter().map(String::as_str).collect();
    let (key, source) = match &err.metadata {
        Some(meta) if meta.name.contains("`ECL_`") => (
            format!("ECL_{}", path.join("__").to_ascii_uppercase()),
            format!(" (environment; `{}` in a config file)", toml_key(&path)),
        ),
        Some(meta) if meta.name.contains("environment") => {
            let name = match path.as_slice() {
                ["audit", "path"] => "AUDIT_LOG_PATH".to_owned(),
                ["profiles_root"] => "PROFILES_ROOT".to_owned(),
                _ => path.join("."),
            };
            (name, " (environment)".to_owned())
        }
        Some(meta) => {
            let source = match &meta.source {
                Some(Source::File(file)) => format!(" in `{}`", file.display()),
                _ => String::new(),
            };
            (toml_key(&path), source)
        }
        None => (toml_key(&path), String::new()),
    };
    match &err.kind {
        Kind::UnknownField(_, expected) => format!(
            "unknown key `{key}`{source}; the keys here are {}",
            list(expected)
        ),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => format!(
            "invalid value for `{key}`{source}: found {}, expected {}",
            actual_words(actual),
            expected_words(expected)
        ),
        Kind::MissingField(field) => {
            format!("missing key `{field}` under `{key}`{source}")
        }
        Kind::UnknownVariant(found, expected) => format!(
            "invalid value for `{key}`{source}: `{found}`, expected one of {}",
            list(expected)
        ),
        other => format!("invalid value for `{key}`{source}: {other}"),
    }
}

/// `upstreams."email.send".url`: segments that are not bare TOML keys are quoted.
fn toml_key(path: &[&str]) -> String {
    path.iter()
        .map(|segment| {
            let bare = !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare {
                (*segment).to_owned()
            } else {
                format!("\"{}\"", segment.escape_default())
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's type names, in words.
fn expected_words(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "`true` or `false`",
        other => other,
    }
}

fn actual_words(actual: &Actual) -> String {
    match actual {
        Actual::Str(s) => format!("text `{s}`"),
        Actual::Unsigned(n) => format!("the number {n}"),
        Actual::Signed(n) => format!("the number {n}"),
        Actual::Float(n) => format!("the number {n}"),
        Actual::Bool(b) => format!("`{b}`"),
        Actual::Map => "a table".to_owned(),
        Actual::Seq => "a list".to_owned(),
        other => other.to_string(),
    }
}

/// `#[serde(deserialize_with = "text")]` for keys that hold text: the environment's
/// `ECL_AUDIT__ORIGIN=12345` or `ECL_GRANTS__TTL=30` reach them as numbers, and are taken as the
/// text they were. A fraction is refused, since `1.50` would come back as `1.5`: the message
/// says how to keep it as written.
pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(TextVisitor)
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Err(E::custom(format!(
            "found the number {v}, expected text; to keep a value such as `1.50` as written, \
             quote it: in TOML `\"1.50\"`, in the environment `'\"1.50\"'`"
        )))
    }
}
