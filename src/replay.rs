//! Replay: re-decide recorded requests at their recorded decision time and compare.
//!
//! The strong form of determinism: given the audit log (with `audit.include_request`), the
//! profiles and the approver keys, every decision comes back identical. Reads profiles through
//! the store; never writes anything.

mod candidate;

use std::collections::HashSet;
use std::time::SystemTime;

use crate::caller::{Caller, CallerMethod};
use crate::canonical::{self, Value};
use crate::decision::{decide, provenance_id, Attempt, Context, DecisionType, Timestamps};
use crate::profile::ProfileStore;
use crate::request;

pub use candidate::{
    CandidateReplayer, CandidateReport, CandidateRule, FailOn, Outcome, TransitionCount,
    EXAMPLE_IDS,
};

/// Fields of a decision record that a replay must reproduce exactly.
const COMPARED: [&str; 10] = [
    "decision_type",
    "reason_code",
    "request_hash",
    "approved_call",
    "profile_id",
    "profile_version",
    "profile_ref_hash",
    "escalation",
    "approval",
    "request",
];

/// How many differences are kept for the report; all are counted.
const KEPT_DIFFERENCES: usize = 20;

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: u64,
    pub identical: u64,
    pub differing: u64,
    /// Records without a stored request (the body never became one, or `include_request` was off).
    pub skipped: u64,
    pub differences: Vec<String>,
    /// Profiles whose bytes no longer hash to what the log recorded.
    pub changed_profiles: Vec<String>,
}

impl ReplayReport {
    pub fn is_clean(&self) -> bool {
        self.differing == 0 && self.changed_profiles.is_empty()
    }
}

pub struct Replayer<'a> {
    pub profiles: &'a ProfileStore,
    pub context: &'a Context,
    pub report: ReplayReport,
    /// With `approvals.single_use`, the approvals spent so far in the replayed log.
    spent: Option<HashSet<(String, String)>>,
}

impl<'a> Replayer<'a> {
    pub fn new(profiles: &'a ProfileStore, context: &'a Context, single_use: bool) -> Self {
        Replayer {
            profiles,
            context,
            report: ReplayReport::default(),
            spent: single_use.then(HashSet::new),
        }
    }

    /// Replays one record; records are expected in log order.
    pub fn record(&mut self, record: &Value) {
        if record["record_type"]
            .as_str()
            .is_some_and(|t| t != "decision")
        {
            return;
        }
        let seq = record["seq"]
            .as_i64()
            .map_or_else(|| "?".to_owned(), |s| s.to_string());
        let Some(stored) = record.get("request") else {
            self.report.skipped += 1;
            return;
        };
        self.report.replayed += 1;
        match self.replay_one(record, stored) {
            Ok(()) => self.report.identical += 1,
            Err(what) => {
                self.report.differing += 1;
                if self.report.differences.len() < KEPT_DIFFERENCES {
                    self.report.differences.push(format!("seq {seq}: {what}"));
                }
            }
        }
    }

    fn replay_one(&mut self, record: &Value, stored: &Value) -> Result<(), String> {
        let decided_at = record["timestamps"]["decided_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .ok_or("no readable `timestamps.decided_at`")?;
        let timestamps = Timestamps {
            received_at: record["timestamps"]["received_at"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            decided_at: record["timestamps"]["decided_at"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let caller = recorded_caller(record)?;
        let mut replayed = self.decide_at(stored, &caller, decided_at);
        let recorded_spend = record["single_use"]
            .as_str()
            .and_then(crate::decision::SpendOutcome::parse);
        if let (Some(outcome), true) = (
            recorded_spend,
            replayed.decision_type == DecisionType::Allow && replayed.approval.is_some(),
        ) {
            // The ledger's answer is an input (with a shared ledger, other gates spend too):
            // replay applies the recorded one.
            replayed = replayed.after_spend(outcome);
        } else if let (Some(spent), Some(approval)) = (&mut self.spent, &replayed.approval) {
            let fresh = spent.insert((approval.kid.clone(), approval.jti.clone()));
            if !fresh && replayed.decision_type == DecisionType::Allow {
                replayed = replayed.approval_already_used();
            }
        }
        let replayed = replayed.audit_record(&timestamps, true);

        let id = record["profile_id"].as_str().unwrap_or_default();
        let version = record["profile_version"].as_str().unwrap_or_default();
        let recorded_hash = &record["profile_ref_hash"];
        let replayed_hash = replayed.get("profile_ref_hash").unwrap_or(&Value::Null);
        if recorded_hash != replayed_hash {
            let note = format!(
                "profile `{id}` version `{version}`: recorded {}, now {}",
                show(recorded_hash),
                show(replayed_hash)
            );
            if !self.report.changed_profiles.contains(&note) {
                self.report.changed_profiles.push(note);
            }
        }

        let mut differences = Vec::new();
        for key in COMPARED {
            let recorded = record.get(key).unwrap_or(&Value::Null);
            let now = replayed.get(key).unwrap_or(&Value::Null);
            if recorded != now {
                differences.push(format!(
                    "{key} recorded {}, replayed {}",
                    show(recorded),
                    show(now)
                ));
            }
        }
        // Provenance binds the runtime version that decided; a record written by another
        // version cannot be recomputed here, so only this version's records are checked.
        if record["runtime"]["version"].as_str() == Some(self.context.runtime.version) {
            let expected = provenance_id(
                replayed_hash.as_str().unwrap_or_default(),
                replayed
                    .get("request_hash")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                &self.context.runtime,
            );
            if record["provenance_id"].as_str() != Some(expected.as_str()) {
                differences.push(format!(
                    "provenance_id recorded {}, replayed {expected}",
                    show(&record["provenance_id"])
                ));
            }
        }
        if let Some(shadow) = record.get("shadow") {
            if let Some(mismatch) = self.check_shadow(stored, shadow, &caller, decided_at) {
                differences.push(mismatch);
            }
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(differences.join("; "))
        }
    }

    /// A recorded shadow disagreement is evidence like the decision: the candidate version it
    /// names must still decide exactly what it says.
    fn check_shadow(
        &self,
        stored: &Value,
        shadow: &Value,
        caller: &Caller,
        now: SystemTime,
    ) -> Option<String> {
        let version = shadow["profile_version"].as_str().unwrap_or_default();
        let bytes = canonical::to_canonical(stored);
        let replayed = match request::decode(&bytes) {
            Err(_) => {
                return Some("shadow recorded for a request that never named a profile".to_owned())
            }
            Ok(request) => {
                let profile = self.profiles.get(&request.profile_id, version);
                decide(
                    Attempt::Request {
                        request: &request,
                        profile: &profile,
                    },
                    self.context,
                    caller,
                    now,
                )
            }
        };
        let recorded = (
            shadow["decision_type"].as_str().unwrap_or_default(),
            shadow["reason_code"].as_str().unwrap_or_default(),
        );
        let now = (replayed.decision_type.as_str(), replayed.reason.as_str());
        (recorded != now).then(|| {
            format!(
                "shadow under version `{version}` recorded {} {}, replayed {} {}",
                recorded.0, recorded.1, now.0, now.1
            )
        })
    }

    fn decide_at(
        &self,
        stored: &Value,
        caller: &Caller,
        now: SystemTime,
    ) -> crate::decision::Decision {
        let bytes = canonical::to_canonical(stored);
        match request::decode(&bytes) {
            Err(rejection) => decide(Attempt::Rejected(&rejection), self.context, caller, now),
            Ok(request) => {
                let profile = self
                    .profiles
                    .get(&request.profile_id, &request.profile_version);
                decide(
                    Attempt::Request {
                        request: &request,
                        profile: &profile,
                    },
                    self.context,
                    caller,
                    now,
                )
            }
        }
    }
}

/// The caller a record names; records written before callers were recorded were all
/// `anonymous`.
pub(crate) fn recorded_caller(record: &Value) -> Result<Caller, String> {
    let Some(caller) = record.get("caller") else {
        return Ok(Caller::anonymous());
    };
    let method = caller["method"]
        .as_str()
        .and_then(CallerMethod::parse)
        .ok_or("no readable `caller.method`")?;
    let id = caller["id"].as_str().ok_or("no readable `caller.id`")?;
    Ok(Caller {
        method,
        id: id.into(),
        issuer: caller["iss"].as_str().map(Into::into),
    })
}

fn show(value: &Value) -> String {
    let text = String::from_utf8_lossy(&canonical::to_canonical(value)).into_owned();
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}
