//! A strict view of a parsed JSON object, shared by the request and profile schemas.
//!
//! Every member must be claimed by name and nothing is coerced: a number is never a string,
//! an empty string is never "present". Errors are messages for people, naming the field.

use crate::canonical::{Map, Value};

/// A strict view of one JSON object: every member must be claimed, none coerced.
pub(crate) struct Strict<'a, 'p> {
    pub at: &'p str,
    pub members: &'a Map,
}

impl<'a, 'p> Strict<'a, 'p> {
    pub fn new(value: &'a Value, at: &'p str) -> Result<Self, String> {
        match value {
            Value::Object(members) => Ok(Strict { at, members }),
            other if at.is_empty() => Err(format!(
                "must be a JSON object, found {}",
                other.type_name()
            )),
            other => Err(format!(
                "`{at}` must be an object, found {}",
                other.type_name()
            )),
        }
    }

    pub fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.members.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) if self.at.is_empty() => Err(format!("unknown field `{unknown}`")),
            Some(unknown) => Err(format!("unknown field `{unknown}` in `{}`", self.at)),
            None => Ok(()),
        }
    }

    pub fn required(&self, key: &str) -> Result<&'a Value, String> {
        self.members
            .get(key)
            .ok_or_else(|| format!("missing field `{}{key}`", self.prefix()))
    }

    pub fn non_empty_str(&self, key: &str) -> Result<&'a str, String> {
        match self.required(key)? {
            Value::String(s) if !s.is_empty() => Ok(s),
            Value::String(_) => Err(format!("`{}{key}` must not be empty", self.prefix())),
            other => Err(format!(
                "`{}{key}` must be a string, found {}",
                self.prefix(),
                other.type_name()
            )),
        }
    }

    /// An optional member that is a string or null.
    pub fn nullable_str(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.members.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "`{}{key}` must be a string or null, found {}",
                self.prefix(),
                other.type_name()
            )),
        }
    }

    fn prefix(&self) -> String {
        if self.at.is_empty() {
            String::new()
        } else {
            format!("{}.", self.at)
        }
    }

    /// An optional member that is a boolean.
    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.members.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!(
                "`{}{key}` must be a boolean, found {}",
                self.prefix(),
                other.type_name()
            )),
        }
    }

    /// An optional member that is a non-negative integer.
    pub fn optional_count(&self, key: &str) -> Result<Option<u64>, String> {
        match self.members.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_integer() => n
                .as_i64()
                .and_then(|i| u64::try_from(i).ok())
                .map(Some)
                .ok_or_else(|| format!("`{}{key}` must be a non-negative integer", self.prefix())),
            Some(other) => Err(format!(
                "`{}{key}` must be a non-negative integer, found {}",
                self.prefix(),
                other.type_name()
            )),
        }
    }
}
