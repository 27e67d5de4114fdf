//! What the profile versions of one store share instead of each holding its own copy: compiled
//! `pattern`s and whole tool policies.
//!
//! A store keeps every version of every profile, and versions mostly repeat one another: the
//! same tools with the same rules. Each distinct pattern is compiled once (~100 µs, ~10 KB) and
//! each distinct tool policy is held once; a version holds `Arc`s. Sharing never changes what a
//! profile means: a policy is shared only with one equal to it in every field, and only a
//! profile that validated on its own is ever built. Entries are never dropped (loaded versions
//! never are either), and only profiles, never requests, reach this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::{ArgRule, PathStep, RuleKind, Severity, ToolPolicy};

/// The compiled patterns and tool policies shared by every profile parsed with it.
#[derive(Debug, Default)]
pub struct Shared {
    patterns: Mutex<HashMap<Box<str>, Arc<Regex>>>,
    // Keyed by every field of the policy, written out by `policy_key`.
    tools: Mutex<HashMap<Box<[u8]>, Arc<ToolPolicy>>>,
}

impl Shared {
    /// The regex for `source`, anchored at the start like Python's `re.match`.
    pub fn pattern(&self, source: &str) -> Result<Arc<Regex>, regex::Error> {
        if let Some(found) = self
            .patterns
            .lock()
            .ok()
            .and_then(|map| map.get(source).cloned())
        {
            return Ok(found);
        }
        // Compiled outside the lock: two first uses may both compile; the first to land wins.
        // A rule holds an `Arc` of the one regex (a `Regex` clone carries its own cache pool).
        let regex = Arc::new(Regex::new(&format!("^(?:{source})"))?);
        match self.patterns.lock() {
            Ok(mut map) => Ok(Arc::clone(map.entry(source.into()).or_insert(regex))),
            Err(_) => Ok(regex),
        }
    }

    /// `tool`, or the equal policy an earlier version of the store already holds.
    pub fn tool(&self, tool: ToolPolicy) -> Arc<ToolPolicy> {
        let key = policy_key(&tool);
        let Ok(mut tools) = self.tools.lock() else {
            return Arc::new(tool);
        };
        Arc::clone(
            tools
                .entry(key.into_boxed_slice())
                .or_insert_with(|| Arc::new(tool)),
        )
    }

    /// Distinct patterns compiled so far.
    pub fn pattern_count(&self) -> usize {
        self.patterns.lock().map(|map| map.len()).unwrap_or(0)
    }

    /// Distinct tool policies held so far.
    pub fn tool_count(&self) -> usize {
        self.tools.lock().map(|map| map.len()).unwrap_or(0)
    }
}

/// Every field of `tool`, written so that two policies have the same key exactly when they
/// are equal. Strings are length-prefixed, so no two field sequences write the same bytes.
fn policy_key(tool: &ToolPolicy) -> Vec<u8> {
    // Destructured without `..`: a field added to the policy must be added to the key, or two
    // policies differing only in it would be shared.
    let ToolPolicy {
        name,
        requires_approval,
        on_missing,
        deny_additional_args,
        arg_rules,
    } = tool;
    let mut key = Vec::with_capacity(64 + 64 * arg_rules.len());
    put_str(&mut key, name);
    key.extend([
        u8::from(*requires_approval),
        severity_byte(*on_missing),
        u8::from(*deny_additional_args),
    ]);
    put_len(&mut key, arg_rules.len());
    for rule in arg_rules {
        put_rule(&mut key, rule);
    }
    key
}

fn put_rule(key: &mut Vec<u8>, rule: &ArgRule) {
    let ArgRule {
        path,
        steps,
        kind,
        required,
        on_violation,
        max_len,
        min_len,
        max_items,
        min,
        max,
        one_of,
        pattern,
    } = rule;
    put_str(key, path);
    put_len(key, steps.len());
    for step in steps {
        match step {
            PathStep::Key(name) => {
                key.push(0);
                put_str(key, name);
            }
            PathStep::Index(index) => {
                key.push(1);
                put_len(key, *index);
            }
        }
    }
    match kind {
        RuleKind::String => key.push(0),
        RuleKind::Number => key.push(1),
        RuleKind::Bool => key.push(2),
        RuleKind::Integer => key.push(3),
        RuleKind::Array => key.push(4),
        RuleKind::Object => key.push(5),
        RuleKind::Unknown(name) => {
            key.push(6);
            put_str(key, name);
        }
    }
    key.extend([u8::from(*required), severity_byte(*on_violation)]);
    for count in [max_len, min_len, max_items] {
        put_option(key, count.map(u64::to_le_bytes));
    }
    // By bits: equal bounds are equal doubles (no NaN reaches a profile).
    for bound in [min, max] {
        put_option(key, bound.map(|b| b.to_bits().to_le_bytes()));
    }
    match one_of {
        None => key.push(0),
        Some(items) => {
            key.push(1);
            put_len(key, items.len());
            for item in items {
                put_str(key, item);
            }
        }
    }
    match pattern {
        None => key.push(0),
        Some(regex) => {
            key.push(1);
            put_str(key, regex.as_str());
        }
    }
}

fn put_option(key: &mut Vec<u8>, bytes: Option<[u8; 8]>) {
    match bytes {
        None => key.push(0),
        Some(bytes) => {
            key.push(1);
            key.extend(bytes);
        }
    }
}

fn severity_byte(severity: Severity) -> u8 {
    match severity {
        Severity::Deny => 0,
        Severity::Escalate => 1,
    }
}

fn put_len(key: &mut Vec<u8>, len: usize) {
    key.extend((len as u64).to_le_bytes());
}

fn put_str(key: &mut Vec<u8>, s: &str) {
    put_len(key, s.len());
    key.extend(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::parse_profile_with;

    fn tool_of(shared: &Shared, version: &str, tool: &str) -> Arc<ToolPolicy> {
        let bytes = format!(
            r#"{{"profile_id":"p","profile_version":"{version}","default":"DENY","allowed_tools":[{tool}]}}"#
        );
        let profile = parse_profile_with("p", version, bytes.as_bytes(), shared).unwrap();
        Arc::clone(&profile.tools()[0])
    }

    const BASE: &str = r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#;

    /// Versions that repeat a tool hold one policy: a 10,000-version store held 10,000 copies.
    #[test]
    fn equal_policies_are_held_once() {
        let shared = Shared::default();
        let first = tool_of(&shared, "1", BASE);
        // Member order and spacing differ; the policy does not.
        let reordered = r#"{ "constraints": {"arg_rules": [{"type":"string","path":"$.a","pattern":"^x$"},{"max":2.0,"path":"$.n","type":"number","min":1}]}, "name": "t" }"#;
        assert!(Arc::ptr_eq(&first, &tool_of(&shared, "2", BASE)));
        assert!(Arc::ptr_eq(&first, &tool_of(&shared, "3", reordered)));
        assert_eq!(shared.tool_count(), 1);
        assert_eq!(shared.pattern_count(), 1);
    }

    /// A policy is shared only with one equal in every field: each variant below differs from
    /// `BASE` in one thing, and must keep its own policy (or it would decide as `BASE` does).
    #[test]
    fn policies_differing_in_any_field_are_not_shared() {
        let variants = [
            r#"{"name":"u","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","required_controls":{"approval_token":true},"constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","required_controls":{"approval_token":true,"on_missing":"ESCALATE"},"constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","additional_args":"deny","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.b","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a[0]","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"strange","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$","required":false},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$","on_violation":"ESCALATE"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$","max_len":3},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$","min_len":3},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$","enum":["x"]},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^y$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1.5,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":3}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"integer","min":1,"max":2}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.n","type":"number","min":1,"max":2},{"path":"$.a","type":"string","pattern":"^x$"}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.a","type":"string","pattern":"^x$"}]}}"#,
            r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.l","type":"array","max_items":2},{"path":"$.a","type":"string","pattern":"^x$"},{"path":"$.n","type":"number","min":1,"max":2}]}}"#,
            r#"{"name":"t"}"#,
        ];
        let shared = Shared::default();
        let mut held = vec![tool_of(&shared, "0", BASE)];
        for (i, variant) in variants.iter().enumerate() {
            let tool = tool_of(&shared, &format!("{}", i + 1), variant);
            if let Some(same) = held.iter().position(|other| Arc::ptr_eq(other, &tool)) {
                panic!("variant {i} shares the policy of {same}: {variant}");
            }
            held.push(tool);
        }
        assert_eq!(shared.tool_count(), variants.len() + 1);
    }

    /// A refused profile shares nothing: its tools never enter the store's table.
    #[test]
    fn refused_profiles_share_nothing() {
        let shared = Shared::default();
        let duplicated = format!(
            r#"{{"profile_id":"p","profile_version":"1","default":"DENY","allowed_tools":[{BASE},{BASE}]}}"#
        );
        assert!(parse_profile_with("p", "1", duplicated.as_bytes(), &shared).is_err());
        assert_eq!(shared.tool_count(), 0);
    }
}
