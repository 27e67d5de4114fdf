//! What changed between two profile versions, in terms of tools and rules (issue 17).
//!
//! Owns the comparison of two compiled [`Profile`]s into changes a reviewer can judge: a tool
//! or rule added or removed, a limit tightened or loosened, or changed in a way whose direction
//! cannot be told (a new regex). Pure; it never reads files and never decides a request.

use std::collections::BTreeSet;

use super::{ArgRule, Profile, RuleKind, Severity, ToolPolicy};

/// Which way a change moves the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// A tool or rule that is new: a new tool loosens, a new rule tightens.
    Added,
    /// A tool or rule that is gone: a removed tool tightens, a removed rule loosens.
    Removed,
    /// Fewer calls pass than before.
    Tightened,
    /// More calls pass than before.
    Loosened,
    /// Different, in a way whose direction cannot be told (a new pattern, another type).
    Changed,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Added => "added",
            Direction::Removed => "removed",
            Direction::Tightened => "tightened",
            Direction::Loosened => "loosened",
            Direction::Changed => "changed",
        }
    }
}

/// One change, about one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub direction: Direction,
    pub tool: String,
    /// What changed, in words, e.g. "rule `$.subject`: max_len 120 → 80".
    pub what: String,
}

/// The changes from `old` to `new`, tool by tool in name order.
pub fn diff(old: &Profile, new: &Profile) -> Vec<Change> {
    let names: BTreeSet<&str> = old
        .tools()
        .iter()
        .chain(new.tools())
        .map(|t| t.name.as_str())
        .collect();
    let mut changes = Vec::new();
    for name in names {
        let mut change = |direction: Direction, what: String| {
            changes.push(Change {
                direction,
                tool: name.to_owned(),
                what,
            });
        };
        match (old.tool(name), new.tool(name)) {
            (None, Some(tool)) => change(
                Direction::Added,
                format!("tool now allowed ({})", describe_tool(tool)),
            ),
            (Some(_), None) => change(Direction::Removed, "tool no longer allowed".to_owned()),
            (Some(before), Some(after)) => tool_changes(before, after, &mut change),
            (None, None) => {}
        }
    }
    changes
}

fn describe_tool(tool: &ToolPolicy) -> String {
    let rules = match tool.arg_rules.len() {
        0 => "no arg rules".to_owned(),
        1 => "1 arg rule".to_owned(),
        n => format!("{n} arg rules"),
    };
    if tool.requires_approval {
        format!("approval token required, {rules}")
    } else {
        rules
    }
}

fn tool_changes(
    before: &ToolPolicy,
    after: &ToolPolicy,
    change: &mut impl FnMut(Direction, String),
) {
    if before.requires_approval != after.requires_approval {
        if after.requires_approval {
            change(
                Direction::Tightened,
                "approval token now required".to_owned(),
            );
        } else {
            change(
                Direction::Loosened,
                "approval token no longer required".to_owned(),
            );
        }
    } else if before.requires_approval && before.on_missing != after.on_missing {
        change(
            severity_direction(before.on_missing, after.on_missing),
            format!(
                "missing approval token: {} → {}",
                severity(before.on_missing),
                severity(after.on_missing)
            ),
        );
    }
    if before.deny_additional_args != after.deny_additional_args {
        if after.deny_additional_args {
            change(
                Direction::Tightened,
                "additional_args: allow → deny (args no rule names now violate)".to_owned(),
            );
        } else {
            change(
                Direction::Loosened,
                "additional_args: deny → allow".to_owned(),
            );
        }
    }

    // Rules pair up by path (and occurrence, for a path listed twice).
    let keyed = |rules: &[ArgRule]| -> Vec<(String, usize)> {
        let mut seen: Vec<(String, usize)> = Vec::with_capacity(rules.len());
        for rule in rules {
            let n = seen.iter().filter(|(p, _)| *p == rule.path).count();
            seen.push((rule.path.clone(), n));
        }
        seen
    };
    let old_keys = keyed(&before.arg_rules);
    let new_keys = keyed(&after.arg_rules);
    for (key, rule) in old_keys.iter().zip(&before.arg_rules) {
        match new_keys.iter().position(|k| k == key) {
            None => change(
                Direction::Removed,
                format!("rule `{}` removed ({})", rule.path, describe_rule(rule)),
            ),
            Some(i) => {
                if let Some(new_rule) = after.arg_rules.get(i) {
                    rule_changes(rule, new_rule, change);
                }
            }
        }
    }
    for (key, rule) in new_keys.iter().zip(&after.arg_rules) {
        if !old_keys.contains(key) {
            change(
                Direction::Added,
                format!("rule `{}` added ({})", rule.path, describe_rule(rule)),
            );
        }
    }
    // The first failing rule decides the reason, so an order change can change decisions.
    let common_old: Vec<_> = old_keys.iter().filter(|k| new_keys.contains(k)).collect();
    let common_new: Vec<_> = new_keys.iter().filter(|k| old_keys.contains(k)).collect();
    if common_old != common_new {
        change(
            Direction::Changed,
            "rules reordered (the first failing rule decides)".to_owned(),
        );
    }
}

fn rule_changes(before: &ArgRule, after: &ArgRule, change: &mut impl FnMut(Direction, String)) {
    let at = format!("rule `{}`", before.path);
    if before.kind != after.kind {
        change(
            Direction::Changed,
            format!("{at}: type {} → {}", kind(&before.kind), kind(&after.kind)),
        );
    }
    if before.required != after.required {
        let (direction, text) = if after.required {
            (Direction::Tightened, "now required (absent violates)")
        } else {
            (Direction::Loosened, "now optional (absent is fine)")
        };
        change(direction, format!("{at}: {text}"));
    }
    if before.on_violation != after.on_violation {
        change(
            severity_direction(before.on_violation, after.on_violation),
            format!(
                "{at}: on_violation {} → {}",
                severity(before.on_violation),
                severity(after.on_violation)
            ),
        );
    }
    limit(&at, "max_len", before.max_len, after.max_len, true, change);
    limit(&at, "min_len", before.min_len, after.min_len, false, change);
    limit(
        &at,
        "max_items",
        before.max_items,
        after.max_items,
        true,
        change,
    );
    bound(&at, "min", before.min, after.min, false, change);
    bound(&at, "max", before.max, after.max, true, change);
    match (&before.one_of, &after.one_of) {
        (None, None) => {}
        (None, Some(values)) => change(
            Direction::Tightened,
            format!("{at}: enum set to {}", list(values)),
        ),
        (Some(_), None) => change(Direction::Loosened, format!("{at}: enum removed")),
        (Some(old), Some(new)) if old != new => {
            let old_set: BTreeSet<&String> = old.iter().collect();
            let new_set: BTreeSet<&String> = new.iter().collect();
            let added: Vec<String> = new_set.difference(&old_set).map(|s| (*s).clone()).collect();
            let removed: Vec<String> = old_set.difference(&new_set).map(|s| (*s).clone()).collect();
            let direction = match (added.is_empty(), removed.is_empty()) {
                (true, false) => Direction::Tightened,
                (false, true) => Direction::Loosened,
                _ => Direction::Changed,
            };
            let mut parts = Vec::new();
            if !removed.is_empty() {
                parts.push(format!("without {}", list(&removed)));
            }
            if !added.is_empty() {
                parts.push(format!("with {}", list(&added)));
            }
            change(direction, format!("{at}: enum {}", parts.join(", ")));
        }
        _ => {}
    }
    match (rule_pattern(before), rule_pattern(after)) {
        (None, Some(new)) => change(Direction::Tightened, format!("{at}: pattern `{new}` set")),
        (Some(old), None) => change(
            Direction::Loosened,
            format!("{at}: pattern `{old}` removed"),
        ),
        (Some(old), Some(new)) if old != new => change(
            Direction::Changed,
            format!("{at}: pattern `{old}` → `{new}`"),
        ),
        _ => {}
    }
}

/// A numeric limit; `upper` for a maximum (lower is tighter), else a minimum.
fn limit(
    at: &str,
    name: &str,
    before: Option<u64>,
    after: Option<u64>,
    upper: bool,
    change: &mut impl FnMut(Direction, String),
) {
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let direction = match (before, after) {
        (None, Some(_)) => Direction::Tightened,
        (Some(_), None) => Direction::Loosened,
        (Some(old), Some(new)) if old != new => {
            if (new < old) == upper {
                Direction::Tightened
            } else {
                Direction::Loosened
            }
        }
        _ => return,
    };
    change(
        direction,
        format!("{at}: {name} {} → {}", show(before), show(after)),
    );
}

/// A number bound (`min`/`max`), like [`limit`].
fn bound(
    at: &str,
    name: &str,
    before: Option<f64>,
    after: Option<f64>,
    upper: bool,
    change: &mut impl FnMut(Direction, String),
) {
    let show = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let direction = match (before, after) {
        (None, Some(_)) => Direction::Tightened,
        (Some(_), None) => Direction::Loosened,
        (Some(old), Some(new)) if old != new => {
            if (new < old) == upper {
                Direction::Tightened
            } else {
                Direction::Loosened
            }
        }
        _ => return,
    };
    change(
        direction,
        format!("{at}: {name} {} → {}", show(before), show(after)),
    );
}

/// ESCALATE lets a call through with an approval; DENY never does.
fn severity_direction(before: Severity, after: Severity) -> Direction {
    match (before, after) {
        (Severity::Escalate, Severity::Deny) => Direction::Tightened,
        (Severity::Deny, Severity::Escalate) => Direction::Loosened,
        _ => Direction::Changed,
    }
}

fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Deny => "DENY",
        Severity::Escalate => "ESCALATE",
    }
}

fn kind(kind: &RuleKind) -> &str {
    match kind {
        RuleKind::String => "string",
        RuleKind::Number => "number",
        RuleKind::Bool => "bool",
        RuleKind::Integer => "integer",
        RuleKind::Array => "array",
        RuleKind::Object => "object",
        RuleKind::Unknown(name) => name,
    }
}

fn describe_rule(rule: &ArgRule) -> String {
    let mut parts = vec![kind(&rule.kind).to_owned()];
    if let Some(n) = rule.max_len {
        parts.push(format!("max_len {n}"));
    }
    if let Some(n) = rule.min_len {
        parts.push(format!("min_len {n}"));
    }
    if let Some(n) = rule.max_items {
        parts.push(format!("max_items {n}"));
    }
    if let Some(n) = rule.min {
        parts.push(format!("min {n}"));
    }
    if let Some(n) = rule.max {
        parts.push(format!("max {n}"));
    }
    if let Some(values) = &rule.one_of {
        parts.push(format!("enum {}", list(values)));
    }
    if let Some(pattern) = &rule.pattern {
        parts.push(format!("pattern `{}`", pattern_source(pattern.as_str())));
    }
    if !rule.required {
        parts.push("optional".to_owned());
    }
    if rule.on_violation == Severity::Escalate {
        parts.push("on_violation ESCALATE".to_owned());
    }
    parts.join(", ")
}

fn rule_pattern(rule: &ArgRule) -> Option<&str> {
    rule.pattern.as_ref().map(|p| pattern_source(p.as_str()))
}

/// The pattern as the profile wrote it, without the `^(?:…)` the loader wraps it in.
fn pattern_source(compiled: &str) -> &str {
    compiled
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(compiled)
}

fn list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::parse_profile;

    fn profile(version: &str, tools: &str) -> Profile {
        let text = format!(
            r#"{{"profile_id":"p","profile_version":"{version}","default":"DENY","allowed_tools":{tools}}}"#
        );
        parse_profile("p", version, text.as_bytes()).unwrap()
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}: {}", c.direction.as_str(), c.tool, c.what))
            .collect()
    }

    #[test]
    fn the_same_profile_has_no_changes() {
        let tools = r#"[{"name":"a","constraints":{"arg_rules":[{"path":"$.x","type":"string","max_len":3}]}}]"#;
        assert!(diff(&profile("1", tools), &profile("2", tools)).is_empty());
    }

    #[test]
    fn tools_and_rules_added_removed_tightened_loosened() {
        let old = profile(
            "1",
            r#"[{"name":"email.send","constraints":{"arg_rules":[
                {"path":"$.subject","type":"string","max_len":120},
                {"path":"$.to","type":"string","pattern":"^[^@]+@example\\.com$"},
                {"path":"$.cc","type":"string","enum":["a","b"]}]}},
               {"name":"gone","required_controls":{"approval_token":true}}]"#,
        );
        let new = profile(
            "2",
            r#"[{"name":"email.send","required_controls":{"approval_token":true},"additional_args":"deny",
                "constraints":{"arg_rules":[
                {"path":"$.subject","type":"string","max_len":80,"min_len":1},
                {"path":"$.cc","type":"string","enum":["a","b","c"],"required":false},
                {"path":"$.body","type":"string"}]}},
               {"name":"files.read"}]"#,
        );
        assert_eq!(
            lines(&diff(&old, &new)),
            [
                "tightened email.send: approval token now required",
                "tightened email.send: additional_args: allow → deny (args no rule names now violate)",
                "tightened email.send: rule `$.subject`: max_len 120 → 80",
                "tightened email.send: rule `$.subject`: min_len none → 1",
                "removed email.send: rule `$.to` removed (string, pattern `^[^@]+@example\\.com$`)",
                "loosened email.send: rule `$.cc`: now optional (absent is fine)",
                "loosened email.send: rule `$.cc`: enum with [`c`]",
                "added email.send: rule `$.body` added (string)",
                "added files.read: tool now allowed (no arg rules)",
                "removed gone: tool no longer allowed",
            ]
        );
    }

    #[test]
    fn number_bounds_tighten_and_loosen() {
        let old = profile(
            "1",
            r#"[{"name":"pay","constraints":{"arg_rules":[
                {"path":"$.amount","type":"number","min":0,"max":500},
                {"path":"$.n","type":"integer","max":3}]}}]"#,
        );
        let new = profile(
            "2",
            r#"[{"name":"pay","constraints":{"arg_rules":[
                {"path":"$.amount","type":"number","min":1,"max":100.5},
                {"path":"$.n","type":"integer"}]}}]"#,
        );
        assert_eq!(
            lines(&diff(&old, &new)),
            [
                "tightened pay: rule `$.amount`: min 0 → 1",
                "tightened pay: rule `$.amount`: max 500 → 100.5",
                "loosened pay: rule `$.n`: max 3 → none",
            ]
        );
    }

    #[test]
    fn direction_of_what_cannot_be_ordered_is_changed() {
        let old = profile(
            "1",
            r#"[{"name":"t","constraints":{"arg_rules":[
                {"path":"$.a","type":"string","pattern":"x"},{"path":"$.b","type":"number"}]}}]"#,
        );
        let new = profile(
            "2",
            r#"[{"name":"t","constraints":{"arg_rules":[
                {"path":"$.b","type":"integer"},{"path":"$.a","type":"string","pattern":"y"}]}}]"#,
        );
        assert_eq!(
            lines(&diff(&old, &new)),
            [
                "changed t: rule `$.a`: pattern `x` → `y`",
                "changed t: rule `$.b`: type number → integer",
                "changed t: rules reordered (the first failing rule decides)",
            ]
        );
    }
}
