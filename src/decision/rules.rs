//! Argument rules (SPEC §7, step 8 of §6): evaluated in the profile's order, first failure decides.

use crate::canonical::Value;
use crate::profile::{ArgRule, PathStep, RuleKind, ToolPolicy};

use super::ReasonCode;

/// The rule that stopped a call, as a reason code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    pub reason: ReasonCode,
    pub detail: String,
}

impl RuleFailure {
    fn violation(rule: &ArgRule, why: impl std::fmt::Display) -> Self {
        RuleFailure {
            reason: ReasonCode::ConstraintViolation,
            detail: format!("`{}` {why}", rule.path),
        }
    }

    fn cannot_evaluate(detail: String) -> Self {
        RuleFailure {
            reason: ReasonCode::ConstraintEvalError,
            detail,
        }
    }
}

/// Checks `args` against every rule of `tool`, in order.
pub fn check(tool: &ToolPolicy, args: &Value) -> Result<(), RuleFailure> {
    if tool.arg_rules.is_empty() {
        return Ok(());
    }
    if !matches!(args, Value::Object(_)) {
        return Err(RuleFailure::cannot_evaluate(format!(
            "tool `{}` has argument rules, so its args must be an object, found {}",
            tool.name,
            args.type_name()
        )));
    }
    tool.arg_rules
        .iter()
        .try_for_each(|rule| check_rule(rule, args))
}

fn check_rule(rule: &ArgRule, args: &Value) -> Result<(), RuleFailure> {
    let value = match resolve(args, &rule.steps) {
        None | Some(Value::Null) => return Err(RuleFailure::violation(rule, "is missing")),
        Some(value) => value,
    };
    match &rule.kind {
        RuleKind::String => {
            let Value::String(s) = value else {
                return Err(RuleFailure::violation(
                    rule,
                    format_args!("must be a string, found {}", value.type_name()),
                ));
            };
            check_string(rule, s)
        }
        RuleKind::Number => match value {
            Value::Number(_) => Ok(()),
            other => Err(RuleFailure::violation(
                rule,
                format_args!("must be a number, found {}", other.type_name()),
            )),
        },
        RuleKind::Bool => match value {
            Value::Bool(_) => Ok(()),
            other => Err(RuleFailure::violation(
                rule,
                format_args!("must be a boolean, found {}", other.type_name()),
            )),
        },
        RuleKind::Unknown(kind) => Err(RuleFailure::cannot_evaluate(format!(
            "rule for `{}` has unknown type `{kind}`",
            rule.path
        ))),
    }
}

fn check_string(rule: &ArgRule, s: &str) -> Result<(), RuleFailure> {
    if let Some(max) = rule.max_len {
        // Code points, as Python's len(str) counts them.
        let len = s.chars().count() as u64;
        if len > max {
            return Err(RuleFailure::violation(
                rule,
                format_args!("is {len} characters long, at most {max} allowed"),
            ));
        }
    }
    if let Some(allowed) = &rule.one_of {
        if !allowed.iter().any(|a| a == s) {
            return Err(RuleFailure::violation(
                rule,
                "is not one of the allowed values",
            ));
        }
    }
    if let Some(pattern) = &rule.pattern {
        if !pattern.is_match(s) {
            return Err(RuleFailure::violation(
                rule,
                "does not match the required pattern",
            ));
        }
    }
    Ok(())
}

fn resolve<'v>(args: &'v Value, steps: &[PathStep]) -> Option<&'v Value> {
    steps.iter().try_fold(args, |value, step| match step {
        PathStep::Key(key) => value.get(key),
        PathStep::Index(i) => value.as_array()?.get(*i),
    })
}
