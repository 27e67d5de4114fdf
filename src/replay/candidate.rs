//! Replay against a candidate: re-decide recorded requests under another profile version and
//! count how the decisions would change (issue 17).
//!
//! Owns the `--candidate` and `--fail-on` grammars and the transition table. Pure: records go
//! in one at a time (memory stays bounded by the number of distinct transitions, plus spent
//! approvals with `approvals.single_use`); profiles come from the store. It never writes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::canonical::{self, Value};
use crate::decision::{decide, Attempt, Context, DecisionType, ProfileLookup, ReasonCode};
use crate::profile::{is_valid_ref, Profile, ProfileStore};
use crate::request;

/// Request ids kept per transition, as examples to look up in the log.
pub const EXAMPLE_IDS: usize = 5;

/// `ID@VERSION` (every version of `ID`) or `ID@VERSION=ID@VERSION` (exactly the first, decided
/// under the second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateRule {
    pub from_id: String,
    /// `None`: every version of `from_id`.
    pub from_version: Option<String>,
    pub to_id: String,
    pub to_version: String,
}

impl CandidateRule {
    pub fn parse(text: &str) -> Result<CandidateRule, String> {
        let profile = |part: &str| -> Result<(String, String), String> {
            part.split_once('@')
                .filter(|(id, version)| is_valid_ref(id) && is_valid_ref(version))
                .map(|(id, version)| (id.to_owned(), version.to_owned()))
                .ok_or_else(|| {
                    format!("`{part}` is not a profile like `example@1.1.0` (id and version in [A-Za-z0-9._-])")
                })
        };
        match text.split_once('=') {
            None => {
                let (id, version) = profile(text)?;
                Ok(CandidateRule {
                    from_id: id.clone(),
                    from_version: None,
                    to_id: id,
                    to_version: version,
                })
            }
            Some((from, to)) => {
                let (from_id, from_version) = profile(from)?;
                let (to_id, to_version) = profile(to)?;
                Ok(CandidateRule {
                    from_id,
                    from_version: Some(from_version),
                    to_id,
                    to_version,
                })
            }
        }
    }

    fn matches(&self, id: &str, version: &str) -> bool {
        self.from_id == id && self.from_version.as_deref().is_none_or(|v| v == version)
    }

    /// `to_id@to_version`.
    pub fn candidate(&self) -> String {
        format!("{}@{}", self.to_id, self.to_version)
    }
}

impl std::fmt::Display for CandidateRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.from_version {
            None => write!(f, "{}@* → {}", self.from_id, self.candidate()),
            Some(version) => write!(f, "{}@{version} → {}", self.from_id, self.candidate()),
        }
    }
}

/// A decision as the table shows it: its type and reason, as recorded (strings, so that a
/// record from another version with a reason this one does not know still counts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Outcome {
    pub decision_type: String,
    pub reason_code: String,
}

impl Outcome {
    fn of(decision_type: DecisionType, reason: ReasonCode) -> Outcome {
        Outcome {
            decision_type: decision_type.as_str().to_owned(),
            reason_code: reason.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Outcome {
    /// `ALLOW` for an ALLOW `OK`, else `DENY CONSTRAINT_VIOLATION`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.decision_type == "ALLOW" && self.reason_code == "OK" {
            f.write_str("ALLOW")
        } else {
            write!(f, "{} {}", self.decision_type, self.reason_code)
        }
    }
}

/// How often one transition happened, and where to look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransitionCount {
    pub count: u64,
    /// The first [`EXAMPLE_IDS`] request ids, in log order.
    pub request_ids: Vec<String>,
}

#[derive(Debug, Default)]
pub struct CandidateReport {
    /// Decision records whose profile a candidate rule names, decided again.
    pub re_decided: u64,
    pub same: u64,
    pub changed: u64,
    /// Decision records naming a profile no rule covers; left as they were.
    pub other_profiles: u64,
    /// Decision records without a stored request (`audit.include_request` off, or the body
    /// never became one), or without a readable decision time.
    pub skipped: u64,
    pub transitions: BTreeMap<(Outcome, Outcome), TransitionCount>,
}

impl CandidateReport {
    /// The transitions, most frequent first (ties in table order, so the output is stable).
    pub fn sorted(&self) -> Vec<(&Outcome, &Outcome, &TransitionCount)> {
        let mut all: Vec<_> = self
            .transitions
            .iter()
            .map(|((from, to), count)| (from, to, count))
            .collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.2.count));
        all
    }

    /// The report for `--json`.
    pub fn to_value(&self, rules: &[CandidateRule]) -> Value {
        let outcome = |o: &Outcome| {
            Value::object([
                ("decision_type", o.decision_type.as_str().into()),
                ("reason_code", o.reason_code.as_str().into()),
            ])
        };
        let transitions = self
            .sorted()
            .into_iter()
            .map(|(from, to, count)| {
                Value::object([
                    ("from", outcome(from)),
                    ("to", outcome(to)),
                    ("count", count.count.into()),
                    (
                        "request_ids",
                        Value::Array(
                            count
                                .request_ids
                                .iter()
                                .map(|id| id.as_str().into())
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        let candidates = rules
            .iter()
            .map(|rule| {
                Value::object([
                    ("profile_id", rule.from_id.as_str().into()),
                    (
                        "profile_version",
                        rule.from_version
                            .as_deref()
                            .map_or(Value::Null, Value::from),
                    ),
                    ("candidate", rule.candidate().into()),
                ])
            })
            .collect();
        Value::object([
            ("candidates", Value::Array(candidates)),
            ("re_decided", self.re_decided.into()),
            ("same", self.same.into()),
            ("changed", self.changed.into()),
            ("other_profiles", self.other_profiles.into()),
            ("skipped", self.skipped.into()),
            ("transitions", Value::Array(transitions)),
        ])
    }
}

/// One side of a `--fail-on` pattern: any decision, a type, or a type and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    Any,
    Type(String),
    Exact(String, String),
}

impl Side {
    fn parse(text: &str) -> Result<Side, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let known = |t: &str| matches!(t, "ALLOW" | "DENY" | "ESCALATE");
        match words.as_slice() {
            ["*"] => Ok(Side::Any),
            [t] if known(t) => Ok(Side::Type((*t).to_owned())),
            [t, reason] if known(t) && ReasonCode::ALL.iter().any(|r| r.as_str() == *reason) => {
                Ok(Side::Exact((*t).to_owned(), (*reason).to_owned()))
            }
            _ => Err(format!(
                "`{text}` is not `*`, ALLOW, DENY, ESCALATE or a type with a reason like `DENY CONSTRAINT_VIOLATION`"
            )),
        }
    }

    fn matches(&self, outcome: &Outcome) -> bool {
        match self {
            Side::Any => true,
            Side::Type(t) => &outcome.decision_type == t,
            Side::Exact(t, r) => &outcome.decision_type == t && &outcome.reason_code == r,
        }
    }
}

/// `--fail-on FROM→TO` (also `FROM->TO`): a transition that must not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailOn {
    from: Side,
    to: Side,
    text: String,
}

impl FailOn {
    pub fn parse(text: &str) -> Result<FailOn, String> {
        let (from, to) = text
            .split_once('→')
            .or_else(|| text.split_once("->"))
            .ok_or_else(|| {
                format!("`{text}` is not a transition like `ALLOW→DENY` or `DENY->ALLOW`")
            })?;
        Ok(FailOn {
            from: Side::parse(from)?,
            to: Side::parse(to)?,
            text: text.trim().to_owned(),
        })
    }

    /// Whether the transition `from → to` (a real change) is one this pattern forbids.
    pub fn matches(&self, from: &Outcome, to: &Outcome) -> bool {
        from != to && self.from.matches(from) && self.to.matches(to)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

pub struct CandidateReplayer<'a> {
    context: &'a Context,
    rules: Vec<(CandidateRule, Arc<Profile>)>,
    pub report: CandidateReport,
    /// With `approvals.single_use`, the approvals the candidate's decisions spent so far.
    spent: Option<HashSet<(String, String)>>,
}

impl<'a> CandidateReplayer<'a> {
    /// Loads every candidate first: a candidate that cannot be used is an error before any
    /// record is read, not a table full of PROFILE_NOT_FOUND.
    pub fn new(
        profiles: &ProfileStore,
        context: &'a Context,
        rules: Vec<CandidateRule>,
        single_use: bool,
    ) -> Result<Self, String> {
        let mut loaded = Vec::with_capacity(rules.len());
        for rule in rules {
            let profile = profiles
                .get(&rule.to_id, &rule.to_version)
                .map_err(|err| format!("candidate `{}` cannot be used: {err}", rule.candidate()))?;
            loaded.push((rule, profile));
        }
        // An exact `ID@VERSION=…` rule wins over an `ID@VERSION` one for every version.
        loaded.sort_by_key(|(rule, _)| rule.from_version.is_none());
        Ok(CandidateReplayer {
            context,
            rules: loaded,
            report: CandidateReport::default(),
            spent: single_use.then(HashSet::new),
        })
    }

    fn candidate_for(&self, id: &str, version: &str) -> Option<&Arc<Profile>> {
        self.rules
            .iter()
            .find(|(rule, _)| rule.matches(id, version))
            .map(|(_, profile)| profile)
    }

    /// Re-decides one record under its candidate; records are expected in log order.
    pub fn record(&mut self, record: &Value) {
        if record["record_type"]
            .as_str()
            .is_some_and(|t| t != "decision")
        {
            return;
        }
        let Some(stored) = record.get("request") else {
            self.report.skipped += 1;
            return;
        };
        let Some(now) = record["timestamps"]["decided_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            self.report.skipped += 1;
            return;
        };
        let bytes = canonical::to_canonical(stored);
        let decision = match request::decode(&bytes) {
            // Rejected before the profile step: no profile version can change that.
            Err(rejection) => {
                let covered = rejection
                    .profile
                    .as_ref()
                    .is_some_and(|(id, version)| self.candidate_for(id, version).is_some());
                if !covered {
                    self.report.other_profiles += 1;
                    return;
                }
                decide(Attempt::Rejected(&rejection), self.context, now)
            }
            Ok(request) => {
                let Some(profile) = self
                    .candidate_for(&request.profile_id, &request.profile_version)
                    .cloned()
                else {
                    self.report.other_profiles += 1;
                    return;
                };
                let lookup: ProfileLookup = Ok(profile);
                decide(
                    Attempt::Request {
                        request: &request,
                        profile: &lookup,
                    },
                    self.context,
                    now,
                )
            }
        };
        let mut decision = decision;
        if let (Some(spent), Some(approval)) = (&mut self.spent, &decision.approval) {
            let fresh = spent.insert((approval.kid.clone(), approval.jti.clone()));
            if !fresh && decision.decision_type == DecisionType::Allow {
                decision = decision.approval_already_used();
            }
        }
        let from = Outcome {
            decision_type: record["decision_type"].as_str().unwrap_or("?").to_owned(),
            reason_code: record["reason_code"].as_str().unwrap_or("?").to_owned(),
        };
        let to = Outcome::of(decision.decision_type, decision.reason);
        self.report.re_decided += 1;
        if from == to {
            self.report.same += 1;
            return;
        }
        self.report.changed += 1;
        let entry = self.report.transitions.entry((from, to)).or_default();
        entry.count += 1;
        if entry.request_ids.len() < EXAMPLE_IDS {
            let id = record["request_id"].as_str().unwrap_or("UNKNOWN");
            entry.request_ids.push(id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(t: &str, r: &str) -> Outcome {
        Outcome {
            decision_type: t.into(),
            reason_code: r.into(),
        }
    }

    #[test]
    fn candidate_rules_parse_both_forms_and_refuse_the_rest() {
        assert_eq!(
            CandidateRule::parse("example@1.1.0").unwrap(),
            CandidateRule {
                from_id: "example".into(),
                from_version: None,
                to_id: "example".into(),
                to_version: "1.1.0".into(),
            }
        );
        let exact = CandidateRule::parse("example@1.0.0=next@2").unwrap();
        assert_eq!(exact.from_version.as_deref(), Some("1.0.0"));
        assert_eq!(exact.candidate(), "next@2");
        assert!(exact.matches("example", "1.0.0"));
        assert!(!exact.matches("example", "1.0.1"));
        for bad in ["example", "@1", "example@", "../x@1", "a@1=b", "a@1=b@../2"] {
            let err = CandidateRule::parse(bad).unwrap_err();
            assert!(err.contains("is not a profile like"), "{bad}: {err}");
        }
    }

    #[test]
    fn fail_on_matches_changes_only() {
        let allow = outcome("ALLOW", "OK");
        let violation = outcome("DENY", "CONSTRAINT_VIOLATION");
        let not_allowed = outcome("DENY", "TOOL_NOT_ALLOWED");
        let pattern = FailOn::parse("ALLOW→DENY").unwrap();
        assert!(pattern.matches(&allow, &violation));
        assert!(!pattern.matches(&violation, &allow));
        let exact = FailOn::parse("DENY TOOL_NOT_ALLOWED->ALLOW").unwrap();
        assert!(exact.matches(&not_allowed, &allow));
        assert!(!exact.matches(&violation, &allow));
        let any = FailOn::parse("*→*").unwrap();
        assert!(any.matches(&not_allowed, &violation));
        assert!(!any.matches(&allow, &allow), "no change is never a failure");
        for bad in ["ALLOW", "ALLOW→MAYBE", "DENY NOPE→ALLOW", ""] {
            assert!(FailOn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outcomes_print_as_the_table_shows_them() {
        assert_eq!(outcome("ALLOW", "OK").to_string(), "ALLOW");
        assert_eq!(
            outcome("ESCALATE", "APPROVAL_REQUIRED").to_string(),
            "ESCALATE APPROVAL_REQUIRED"
        );
    }
}
