//! The strict profile schema: bytes in, [`Profile`] or a message naming what is wrong out.

use std::collections::HashMap;

use crate::canonical::{self, Value};
use crate::strict::Strict;

use super::{ArgRule, PathStep, Profile, ProfileError, RuleKind, Severity, Shared, ToolPolicy};

/// Parses and validates the bytes of `{id}/{version}.json` on their own.
pub fn parse_profile(id: &str, version: &str, bytes: &[u8]) -> Result<Profile, ProfileError> {
    parse_profile_with(id, version, bytes, &Shared::default())
}

/// [`parse_profile`], sharing compiled patterns and equal tool policies with every profile
/// parsed with `shared`.
pub fn parse_profile_with(
    id: &str,
    version: &str,
    bytes: &[u8],
    shared: &Shared,
) -> Result<Profile, ProfileError> {
    let ref_hash = canonical::sha256_prefixed(bytes);
    let invalid = |message: String| ProfileError::Invalid {
        id: id.to_owned(),
        version: version.to_owned(),
        ref_hash: ref_hash.clone(),
        message,
    };
    let value = canonical::parse(bytes).map_err(|err| invalid(format!("not valid JSON: {err}")))?;
    let tools = read_profile(&value, id, version, shared).map_err(invalid)?;
    drop(value);
    let mut by_name = HashMap::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if by_name.insert(tool.name.as_str().into(), index).is_some() {
            // Two entries for one tool would make the policy depend on which one is read.
            return Err(invalid(format!(
                "tool `{}` is listed more than once in `allowed_tools`",
                tool.name
            )));
        }
    }
    // Only a profile that validated whole shares anything with the store.
    // Not `collect()`: that would reuse the parsed tools' allocation, 7 times the size needed.
    let mut shared_tools = Vec::with_capacity(tools.len());
    shared_tools.extend(tools.into_iter().map(|tool| shared.tool(tool)));
    Ok(Profile {
        id: id.to_owned(),
        version: version.to_owned(),
        ref_hash,
        tools: shared_tools,
        by_name,
    })
}

fn read_profile(
    value: &Value,
    id: &str,
    version: &str,
    shared: &Shared,
) -> Result<Vec<ToolPolicy>, String> {
    let root = Strict::new(value, "")?;
    root.only(&["profile_id", "profile_version", "default", "allowed_tools"])?;
    let declared_id = root.non_empty_str("profile_id")?;
    if declared_id != id {
        return Err(format!(
            "`profile_id` is `{declared_id}` but the file is for `{id}`"
        ));
    }
    let declared_version = root.non_empty_str("profile_version")?;
    if declared_version != version {
        return Err(format!(
            "`profile_version` is `{declared_version}` but the file is for `{version}`"
        ));
    }
    let default = root.non_empty_str("default")?;
    if default != "DENY" {
        return Err(format!("`default` must be `DENY`, found `{default}`"));
    }
    let Value::Array(entries) = root.required("allowed_tools")? else {
        return Err("`allowed_tools` must be an array".to_owned());
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| read_tool(entry, &format!("allowed_tools[{i}]"), shared))
        .collect()
}

fn read_tool(value: &Value, at: &str, shared: &Shared) -> Result<ToolPolicy, String> {
    let tool = Strict::new(value, at)?;
    tool.only(&[
        "name",
        "required_controls",
        "additional_args",
        "constraints",
    ])?;
    let name = tool.non_empty_str("name")?.to_owned();

    let (requires_approval, on_missing) = match tool.members.get("required_controls") {
        None | Some(Value::Null) => (false, Severity::Deny),
        Some(value) => {
            let at = format!("{at}.required_controls");
            let controls = Strict::new(value, &at)?;
            controls.only(&["approval_token", "on_missing"])?;
            (
                controls.optional_bool("approval_token")?.unwrap_or(false),
                severity(&controls, "on_missing")?,
            )
        }
    };
    let deny_additional_args = match tool.members.get("additional_args") {
        None => false,
        Some(Value::String(s)) if s == "allow" => false,
        Some(Value::String(s)) if s == "deny" => true,
        Some(_) => return Err(format!("`{at}.additional_args` must be `allow` or `deny`")),
    };

    let arg_rules = match tool.members.get("constraints") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => {
            let at = format!("{at}.constraints");
            let constraints = Strict::new(value, &at)?;
            constraints.only(&["arg_rules"])?;
            match constraints.members.get("arg_rules") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(rules)) => rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| read_rule(rule, &format!("{at}.arg_rules[{i}]"), shared))
                    .collect::<Result<_, _>>()?,
                Some(other) => {
                    return Err(format!(
                        "`{at}.arg_rules` must be an array, found {}",
                        other.type_name()
                    ))
                }
            }
        }
    };

    // Collecting through `Result` reserves room for 4 rules; a store keeps this for good.
    let mut arg_rules: Vec<ArgRule> = arg_rules;
    arg_rules.shrink_to_fit();
    Ok(ToolPolicy {
        name,
        requires_approval,
        on_missing,
        deny_additional_args,
        arg_rules,
    })
}

fn read_rule(value: &Value, at: &str, shared: &Shared) -> Result<ArgRule, String> {
    let rule = Strict::new(value, at)?;
    rule.only(&[
        "path",
        "type",
        "required",
        "on_violation",
        "max_len",
        "min_len",
        "max_items",
        "min",
        "max",
        "enum",
        "pattern",
    ])?;
    let path = rule.non_empty_str("path")?.to_owned();
    let steps = parse_path(&path).map_err(|why| format!("`{at}.path` `{path}` {why}"))?;
    let kind = match rule.non_empty_str("type")? {
        "string" => RuleKind::String,
        "number" => RuleKind::Number,
        "bool" => RuleKind::Bool,
        "integer" => RuleKind::Integer,
        "array" => RuleKind::Array,
        "object" => RuleKind::Object,
        other => RuleKind::Unknown(other.to_owned()),
    };
    let required = rule.optional_bool("required")?.unwrap_or(true);
    let on_violation = severity(&rule, "on_violation")?;
    let max_len = rule.optional_count("max_len")?;
    let min_len = rule.optional_count("min_len")?;
    let max_items = rule.optional_count("max_items")?;
    let min = bound(&rule, "min")?;
    let max = bound(&rule, "max")?;
    let one_of = match rule.members.get("enum") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("`{at}.enum` must list strings only"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|mut items| {
                    items.shrink_to_fit();
                    items
                })?,
        ),
        Some(other) => {
            return Err(format!(
                "`{at}.enum` must be an array, found {}",
                other.type_name()
            ))
        }
    };
    let pattern = match rule.members.get("pattern") {
        None => None,
        Some(Value::String(source)) => Some(
            shared
                .pattern(source)
                .map_err(|err| format!("`{at}.pattern` is not a valid regex: {err}"))?,
        ),
        Some(other) => {
            return Err(format!(
                "`{at}.pattern` must be a string, found {}",
                other.type_name()
            ))
        }
    };
    // A check that does not apply to the rule's type would be silently ignored; refuse it.
    let string_checks =
        max_len.is_some() || min_len.is_some() || one_of.is_some() || pattern.is_some();
    let known = !matches!(kind, RuleKind::Unknown(_));
    if string_checks && known && kind != RuleKind::String {
        return Err(format!(
            "`{at}` sets `max_len`, `min_len`, `enum` or `pattern`, which apply to strings only"
        ));
    }
    if max_items.is_some() && known && kind != RuleKind::Array {
        return Err(format!(
            "`{at}` sets `max_items`, which applies to arrays only"
        ));
    }
    let numeric = matches!(kind, RuleKind::Number | RuleKind::Integer);
    if (min.is_some() || max.is_some()) && known && !numeric {
        return Err(format!(
            "`{at}` sets `min` or `max`, which apply to `number` and `integer` rules only"
        ));
    }
    if let (Some(min), Some(max)) = (min_len, max_len) {
        if min > max {
            return Err(format!("`{at}` has `min_len` {min} above `max_len` {max}"));
        }
    }
    if let (Some(low), Some(high)) = (min, max) {
        if low > high {
            return Err(format!("`{at}` has `min` {low} above `max` {high}"));
        }
    }
    Ok(ArgRule {
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
    })
}

/// An optional numeric bound: any JSON number, rounded to the nearest double as Python's
/// `float()` rounds it. `true` is not a bound (Python would read it as 1).
fn bound(object: &Strict<'_, '_>, key: &str) -> Result<Option<f64>, String> {
    match object.members.get(key) {
        None => Ok(None),
        Some(Value::Number(number)) => {
            let bound = number.as_f64();
            if bound.is_finite() {
                Ok(Some(bound))
            } else {
                Err(format!(
                    "`{}.{key}` is beyond the range of a double",
                    object.at
                ))
            }
        }
        Some(other) => Err(format!(
            "`{}.{key}` must be a number, found {}",
            object.at,
            other.type_name()
        )),
    }
}

/// An optional `"DENY"` / `"ESCALATE"` member; absent means DENY, as in the reference.
fn severity(object: &Strict<'_, '_>, key: &str) -> Result<Severity, String> {
    match object.members.get(key) {
        None => Ok(Severity::Deny),
        Some(Value::String(s)) if s == "DENY" => Ok(Severity::Deny),
        Some(Value::String(s)) if s == "ESCALATE" => Ok(Severity::Escalate),
        Some(_) => Err(format!(
            "`{}.{key}` must be `DENY` or `ESCALATE`",
            object.at
        )),
    }
}

/// Parses `$.key`, `$.a.b` and `$.items[0]` into steps.
fn parse_path(path: &str) -> Result<Vec<PathStep>, &'static str> {
    let mut rest = path.strip_prefix('$').ok_or("must start with `$`")?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let (key, tail) = after.split_at(end);
            if key.is_empty() {
                return Err("has an empty key");
            }
            steps.push(PathStep::Key(key.to_owned()));
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (index, tail) = after.split_once(']').ok_or("has an unclosed `[`")?;
            let index = if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
                index
                    .parse()
                    .map_err(|_| "has an index that is too large")?
            } else {
                return Err("has an index that is not a number");
            };
            steps.push(PathStep::Index(index));
            rest = tail;
        } else {
            return Err("must continue with `.key` or `[index]`");
        }
    }
    if steps.is_empty() {
        return Err("names no argument");
    }
    steps.shrink_to_fit();
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_steps() {
        assert_eq!(parse_path("$.to"), Ok(vec![PathStep::Key("to".into())]));
        assert_eq!(
            parse_path("$.a.b[2]"),
            Ok(vec![
                PathStep::Key("a".into()),
                PathStep::Key("b".into()),
                PathStep::Index(2)
            ])
        );
        for bad in ["to", "$", "$.", "$..a", "$[x]", "$[1", "$a"] {
            assert!(parse_path(bad).is_err(), "{bad} should be refused");
        }
    }
}
