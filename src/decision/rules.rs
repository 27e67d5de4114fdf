//! Argument rules (SPEC §7, step 8 of §6), evaluated in the profile's order.
//!
//! The first DENY rule that is violated, or any rule that cannot be evaluated, decides at once.
//! Violated ESCALATE rules are collected; they matter only if no DENY check fails.

use std::cmp::Ordering;

use crate::canonical::{Number, Value};
use crate::profile::{ArgRule, PathStep, RuleKind, Severity, ToolPolicy};

use super::ReasonCode;

/// The check that stopped a call, as a reason code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    pub reason: ReasonCode,
    pub detail: String,
}

/// What the rules let through: the ESCALATE rules that were violated, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesPassed {
    pub escalations: Vec<String>,
}

enum Check {
    Conforms,
    Violated(String),
    CannotEvaluate(String),
}

/// Checks `args` against every rule of `tool`, then (ext) the `additional_args` policy.
pub fn check(tool: &ToolPolicy, args: &Value) -> Result<RulesPassed, RuleFailure> {
    let mut passed = RulesPassed::default();
    if tool.arg_rules.is_empty() && !tool.deny_additional_args {
        return Ok(passed);
    }
    let Value::Object(members) = args else {
        return Err(RuleFailure {
            reason: ReasonCode::ConstraintEvalError,
            detail: format!(
                "tool `{}` checks its arguments, so its args must be an object, found {}",
                tool.name,
                args.type_name()
            ),
        });
    };
    for rule in &tool.arg_rules {
        match check_rule(rule, args) {
            Check::Conforms => {}
            Check::CannotEvaluate(detail) => {
                return Err(RuleFailure {
                    reason: ReasonCode::ConstraintEvalError,
                    detail,
                })
            }
            Check::Violated(why) => {
                let detail = format!("`{}` {why}", rule.path);
                match rule.on_violation {
                    Severity::Deny => {
                        return Err(RuleFailure {
                            reason: ReasonCode::ConstraintViolation,
                            detail,
                        })
                    }
                    Severity::Escalate => passed.escalations.push(detail),
                }
            }
        }
    }
    if tool.deny_additional_args {
        let named = |key: &str| {
            tool.arg_rules
                .iter()
                .any(|rule| matches!(rule.steps.first(), Some(PathStep::Key(k)) if k == key))
        };
        if let Some(extra) = members.keys().find(|key| !named(key)) {
            return Err(RuleFailure {
                reason: ReasonCode::ConstraintViolation,
                detail: format!(
                    "argument `{extra}` is not named by any rule and tool `{}` denies additional args",
                    tool.name
                ),
            });
        }
    }
    Ok(passed)
}

fn check_rule(rule: &ArgRule, args: &Value) -> Check {
    // A rule of a type the gate does not know can never be checked, present value or not:
    // failing closed here keeps a typo in a profile from silently passing an optional rule.
    if let RuleKind::Unknown(kind) = &rule.kind {
        return Check::CannotEvaluate(format!(
            "rule for `{}` has unknown type `{kind}`",
            rule.path
        ));
    }
    let value = match resolve(args, &rule.steps) {
        None | Some(Value::Null) if !rule.required => return Check::Conforms,
        None | Some(Value::Null) => return Check::Violated("is missing".to_owned()),
        Some(value) => value,
    };
    let wrong_type = |expected: &str| {
        Check::Violated(format!("must be {expected}, found {}", value.type_name()))
    };
    match (&rule.kind, value) {
        (RuleKind::String, Value::String(s)) => check_string(rule, s),
        (RuleKind::String, _) => wrong_type("a string"),
        // Python's bool is an int; the reference still refuses it, and so do we.
        (RuleKind::Number, Value::Number(number)) => check_bounds(rule, number),
        (RuleKind::Number, _) => wrong_type("a number"),
        (RuleKind::Integer, Value::Number(number @ Number::Int(_))) => check_bounds(rule, number),
        (RuleKind::Integer, _) => wrong_type("an integer"),
        (RuleKind::Bool, Value::Bool(_)) => Check::Conforms,
        (RuleKind::Bool, _) => wrong_type("a boolean"),
        (RuleKind::Object, Value::Object(_)) => Check::Conforms,
        (RuleKind::Object, _) => wrong_type("an object"),
        (RuleKind::Array, Value::Array(items)) => match rule.max_items {
            Some(max) if items.len() as u64 > max => {
                Check::Violated(format!("has {} items, at most {max} allowed", items.len()))
            }
            _ => Check::Conforms,
        },
        (RuleKind::Array, _) => wrong_type("an array"),
        (RuleKind::Unknown(kind), _) => Check::CannotEvaluate(format!(
            "rule for `{}` has unknown type `{kind}`",
            rule.path
        )),
    }
}

/// Inclusive `min`/`max`. A double, and an integer a double holds exactly, compare as the
/// reference's `float(v) < min` does. A larger integer compares exactly against the bound:
/// rounding it first (as `float()` does) could move it onto the bound and let it through, and
/// beyond 1.8e308 `float()` fails. Exact comparison never allows what the rounded one refuses.
fn check_bounds(rule: &ArgRule, number: &Number) -> Check {
    if let Some(min) = rule
        .min
        .filter(|&min| compare(number, min) == Ordering::Less)
    {
        return Check::Violated(format!("is below the minimum {}", show(min)));
    }
    if let Some(max) = rule
        .max
        .filter(|&max| compare(number, max) == Ordering::Greater)
    {
        return Check::Violated(format!("is above the maximum {}", show(max)));
    }
    Check::Conforms
}

/// A bound as the profile's reader would write it (Python's `repr` of the float).
fn show(bound: f64) -> String {
    String::from_utf8_lossy(&crate::canonical::to_canonical(&Value::Number(
        Number::Float(bound),
    )))
    .into_owned()
}

/// Orders a JSON number against a finite double, exactly.
fn compare(number: &Number, bound: f64) -> Ordering {
    let digits = match number {
        // INVARIANT: canonical doubles are finite, and so are bounds (profile::parse).
        Number::Float(value) => return value.partial_cmp(&bound).unwrap_or(Ordering::Equal),
        Number::Int(digits) => digits,
    };
    // Up to 15 digits an integer is below 2^53, so the double is exact (and no String is made).
    if digits.trim_start_matches('-').len() <= 15 {
        if let Ok(small) = digits.parse::<i64>() {
            return (small as f64)
                .partial_cmp(&bound)
                .unwrap_or(Ordering::Equal);
        }
    }
    let floor = bound.floor();
    // `{:.0}` of an integral double prints its exact decimal digits.
    let floor_digits = if floor == 0.0 {
        "0".to_owned()
    } else {
        format!("{floor:.0}")
    };
    match compare_integers(digits, &floor_digits) {
        // Equal to the floor of a bound with a fraction is below the bound.
        Ordering::Equal if floor != bound => Ordering::Less,
        other => other,
    }
}

/// Orders two canonical integers (optional `-`, no leading zeros, never `-0`).
fn compare_integers(a: &str, b: &str) -> Ordering {
    let magnitude = |a: &str, b: &str| a.len().cmp(&b.len()).then_with(|| a.cmp(b));
    match (a.strip_prefix('-'), b.strip_prefix('-')) {
        (None, None) => magnitude(a, b),
        (Some(a), Some(b)) => magnitude(b, a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
    }
}

fn check_string(rule: &ArgRule, s: &str) -> Check {
    if rule.max_len.is_some() || rule.min_len.is_some() {
        // Code points, as Python's len(str) counts them.
        let len = s.chars().count() as u64;
        if let Some(max) = rule.max_len.filter(|&max| len > max) {
            return Check::Violated(format!("is {len} characters long, at most {max} allowed"));
        }
        if let Some(min) = rule.min_len.filter(|&min| len < min) {
            return Check::Violated(format!("is {len} characters long, at least {min} required"));
        }
    }
    if let Some(allowed) = &rule.one_of {
        if !allowed.iter().any(|a| a == s) {
            return Check::Violated("is not one of the allowed values".to_owned());
        }
    }
    if let Some(pattern) = &rule.pattern {
        if !pattern.is_match(s) {
            return Check::Violated("does not match the required pattern".to_owned());
        }
    }
    Check::Conforms
}

fn resolve<'v>(args: &'v Value, steps: &[PathStep]) -> Option<&'v Value> {
    steps.iter().try_fold(args, |value, step| match step {
        PathStep::Key(key) => value.get(key),
        PathStep::Index(i) => value.as_array()?.get(*i),
    })
}
