//! The decision: a pure function from what the gate read to ALLOW, DENY or ESCALATE (SPEC §5–7).
//!
//! Owns steps 5–9 of the evaluation order and the shape of a decision. Everything here is a
//! value computed from its arguments: no I/O, no clock but the `now` it is handed, no
//! hash-map iteration order. A DENY is data to be audited, never an `Err`.

mod render;
mod rules;

use std::sync::Arc;
use std::time::SystemTime;

use crate::approval::{Approval, Approvals};
use crate::caller::{Asked, Bindings, Caller};
use crate::canonical::{self, Value};
use crate::profile::{Severity, ToolPolicy};
use crate::request::{ExecRequest, Rejection};

pub use crate::profile::{no_profile_hash, ProfileLookup};
pub use crate::reason::{DecisionType, ReasonCode};
pub use render::{AuditBlock, Timestamps};

/// Name, version and build of this gate, as the decision's `runtime` block reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub name: &'static str,
    pub version: &'static str,
    pub build: &'static str,
}

impl Runtime {
    pub const fn current() -> Runtime {
        Runtime {
            name: "ecl-gate",
            version: env!("CARGO_PKG_VERSION"),
            build: match option_env!("GATE_BUILD_REVISION") {
                Some(build) => build,
                None => "local",
            },
        }
    }
}

/// Everything a decision depends on besides the attempt and the time.
#[derive(Debug, Clone)]
pub struct Context {
    pub runtime: Runtime,
    pub approvals: Approvals,
    /// `[[bindings]]`: who may use which profiles and principals; `None`: anyone may use any.
    pub bindings: Option<Bindings>,
}

impl Context {
    pub fn new(approvals: Approvals) -> Context {
        Context {
            runtime: Runtime::current(),
            approvals,
            bindings: None,
        }
    }

    pub fn with_bindings(self, bindings: Option<Bindings>) -> Context {
        Context { bindings, ..self }
    }
}

/// What the gate managed to read of one execution attempt.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// The body never became a request (SPEC §6 steps 1–4), or the gate itself failed.
    Rejected(&'a Rejection),
    /// A well-formed request and the profile it names.
    Request {
        request: &'a ExecRequest,
        profile: &'a ProfileLookup,
    },
}

/// One decision, everything but the audit block (which exists only once the record is written).
/// What an ALLOW lets run: the tool and its arguments. The arguments stay in the normalized
/// request they came from, shared rather than copied (they are the largest part of a request).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovedCall {
    pub tool_name: String,
    request: Arc<Value>,
}

impl ApprovedCall {
    /// `request` holds the arguments at `tool.args` (absent: `null`).
    pub fn new(tool_name: String, request: Arc<Value>) -> ApprovedCall {
        ApprovedCall { tool_name, request }
    }

    pub fn args(&self) -> &Value {
        &self.request["tool"]["args"]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub decision_type: DecisionType,
    pub reason: ReasonCode,
    pub request_hash: String,
    pub provenance_id: String,
    pub request_id: Option<String>,
    /// `(id, version)` as requested; `None` when the request was not read that far.
    pub profile: Option<(String, String)>,
    pub profile_ref_hash: String,
    pub runtime: Runtime,
    /// The tool and arguments an ALLOW lets run; `None` otherwise.
    pub approved_call: Option<ApprovedCall>,
    pub escalation: Option<Escalation>,
    /// Why, in words, for the caller; absent on ALLOW.
    pub detail: Option<String>,
    /// The normalized request, when one was read; audited only with `audit.include_request`.
    /// Shared with the request: cloned into the record only with `audit.include_request`.
    pub normalized_request: Option<Arc<Value>>,
    /// The approval this decision relied on, if a valid token was presented and needed.
    pub approval: Option<Approval>,
    /// Who asked: an input of the decision, recorded so a replay can hand it back.
    pub caller: Caller,
    /// What the single-use ledger said about that approval; set after `decide`, by the I/O
    /// around it, and audited so a replay applies the same outcome.
    pub single_use: Option<SpendOutcome>,
    /// What a shadow candidate profile decided, set only when it disagrees (issue 17).
    pub shadow: Option<ShadowOutcome>,
}

/// The single-use ledger's answer for an approved call (`single_use` in the audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOutcome {
    /// The approval was spent by this call.
    Spent,
    /// Spent before, by this gate or another sharing the ledger: DENY `APPROVAL_INVALID`.
    AlreadyUsed,
    /// The ledger did not answer: DENY `INTERNAL_ERROR`, the approval left unspent.
    LedgerUnavailable,
}

impl SpendOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SpendOutcome::Spent => "spent",
            SpendOutcome::AlreadyUsed => "already_used",
            SpendOutcome::LedgerUnavailable => "ledger_unavailable",
        }
    }

    pub fn parse(text: &str) -> Option<SpendOutcome> {
        match text {
            "spent" => Some(SpendOutcome::Spent),
            "already_used" => Some(SpendOutcome::AlreadyUsed),
            "ledger_unavailable" => Some(SpendOutcome::LedgerUnavailable),
            _ => None,
        }
    }
}

/// A candidate profile version's decision on the same attempt, where it differs from the
/// enforced one; recorded beside the enforced decision, never answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowOutcome {
    pub profile_version: String,
    pub decision_type: DecisionType,
    pub reason: ReasonCode,
}

/// What an approver is asked to approve, and why (SPEC §5 `escalation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub intent_hash: String,
    pub rules: Vec<String>,
}

/// The rule name an ESCALATE for a missing approval token reports.
pub const APPROVAL_CONTROL: &str = "required_controls.approval_token";

/// `provenance_id` of SPEC §4.
pub fn provenance_id(profile_ref_hash: &str, request_hash: &str, runtime: &Runtime) -> String {
    // The canonical bytes of {profile_ref_hash, request_hash, runtime_version}, written
    // directly: building the object as a `Value` cost more than hashing it.
    let hash = canonical::hash_written(|out| {
        out.extend_from_slice(b"{\"profile_ref_hash\":");
        canonical::write_str(profile_ref_hash, out);
        out.extend_from_slice(b",\"request_hash\":");
        canonical::write_str(request_hash, out);
        out.extend_from_slice(b",\"runtime_version\":");
        canonical::write_str(runtime.version, out);
        out.push(b'}');
    });
    let hex = hash.strip_prefix("sha256:").unwrap_or(&hash);
    let mut id = String::with_capacity(5 + 32);
    id.push_str("prov_");
    id.push_str(hex.get(..32).unwrap_or(hex));
    id
}

/// Decides one attempt by `caller`. Total: every input yields a decision.
///
/// `now` is the decision time; only approval-token validity may ever depend on it.
pub fn decide(
    attempt: Attempt<'_>,
    context: &Context,
    caller: &Caller,
    now: SystemTime,
) -> Decision {
    let runtime = &context.runtime;
    let mut decision = match attempt {
        Attempt::Rejected(rejection) => {
            let reason_and_detail = match caller_refusal(rejection, context, caller) {
                Some(detail) => (ReasonCode::CallerNotPermitted, detail),
                None => (rejection.reason, rejection.detail.clone()),
            };
            let mut decision = Decision::deny(
                reason_and_detail.0,
                rejection.request_hash.clone(),
                rejection.request_id.clone(),
                rejection.profile.clone(),
                no_profile_hash(),
                runtime,
                Some(reason_and_detail.1),
            );
            decision.normalized_request = rejection.normalized.clone();
            decision
        }
        Attempt::Request { request, profile } => evaluate(request, profile, context, caller, now),
    };
    decision.caller = caller.clone();
    decision
}

/// The binding check for a body that passed the schema step but was rejected after it
/// (`CTX_HASH_MISMATCH`): the caller check comes first, right after the schema.
fn caller_refusal(rejection: &Rejection, context: &Context, caller: &Caller) -> Option<String> {
    let bindings = context.bindings.as_ref()?;
    let (profile_id, profile_version) = rejection.profile.as_ref()?;
    let normalized = rejection.normalized.as_ref()?;
    let principal_id = normalized["actor"]["principal_id"].as_str()?;
    bindings
        .permit(
            caller,
            Asked {
                profile_id,
                profile_version,
                principal_id,
            },
        )
        .err()
}

fn evaluate(
    request: &ExecRequest,
    lookup: &ProfileLookup,
    context: &Context,
    caller: &Caller,
    now: SystemTime,
) -> Decision {
    let runtime = &context.runtime;
    let ids = Some((request.profile_id.clone(), request.profile_version.clone()));
    let deny = |reason: ReasonCode, ref_hash: String, detail: String| {
        let mut decision = Decision::deny(
            reason,
            request.request_hash.clone(),
            Some(request.request_id.clone()),
            ids.clone(),
            ref_hash,
            runtime,
            Some(detail),
        );
        decision.normalized_request = Some(Arc::clone(&request.normalized));
        decision
    };

    // Right after the schema: may this caller use this profile, as this principal?
    if let Some(bindings) = &context.bindings {
        let asked = Asked {
            profile_id: &request.profile_id,
            profile_version: &request.profile_version,
            principal_id: &request.actor.principal_id,
        };
        if let Err(detail) = bindings.permit(caller, asked) {
            return deny(ReasonCode::CallerNotPermitted, no_profile_hash(), detail);
        }
    }

    // Step 5: the profile.
    let profile = match lookup {
        Ok(profile) => profile,
        Err(err) => return deny(err.reason(), err.ref_hash(), err.to_string()),
    };
    let ref_hash = profile.ref_hash.clone();

    // Step 6: the allowlist.
    let Some(tool) = profile.tool(&request.tool_name) else {
        return deny(
            ReasonCode::ToolNotAllowed,
            ref_hash,
            format!(
                "tool `{}` is not allowed by profile `{}` version `{}`",
                request.tool_name, profile.id, profile.version
            ),
        );
    };

    // Step 7: controls. A token is checked whenever this call could rely on it; a token the
    // call does not need is ignored, as the reference ignores it. An empty token is no token
    // (the reference's `if not token`): CONTROL_REQUIRED or ESCALATE, not APPROVAL_INVALID.
    let approval = match request.approval_token.as_deref() {
        Some(token) if !token.is_empty() && may_need_approval(tool) => {
            match context.approvals.verify(token, &request.intent_hash, now) {
                Ok(approval) => Some(approval),
                Err(err) => return deny(ReasonCode::ApprovalInvalid, ref_hash, err.to_string()),
            }
        }
        _ => None,
    };
    let escalate = |ref_hash: String, rules: Vec<String>| {
        let mut decision = deny(
            ReasonCode::ApprovalRequired,
            ref_hash,
            "this call needs an approval token bound to `escalation.intent_hash`".to_owned(),
        );
        decision.decision_type = DecisionType::Escalate;
        decision.escalation = Some(Escalation {
            intent_hash: request.intent_hash.clone(),
            rules,
        });
        decision
    };
    if tool.requires_approval && approval.is_none() {
        return match tool.on_missing {
            Severity::Deny => deny(
                ReasonCode::ControlRequired,
                ref_hash,
                format!("tool `{}` requires an approval token", request.tool_name),
            ),
            Severity::Escalate => escalate(ref_hash, vec![APPROVAL_CONTROL.to_owned()]),
        };
    }

    // Step 8: constraints, in the order the profile lists them.
    let passed = match rules::check(tool, request.tool_args()) {
        Ok(passed) => passed,
        Err(failure) => return deny(failure.reason, ref_hash, failure.detail),
    };
    if !passed.escalations.is_empty() && approval.is_none() {
        return escalate(ref_hash, passed.escalations);
    }

    // Step 9.
    let provenance_id = provenance_id(&ref_hash, &request.request_hash, runtime);
    Decision {
        decision_type: DecisionType::Allow,
        reason: ReasonCode::Ok,
        request_hash: request.request_hash.clone(),
        provenance_id,
        request_id: Some(request.request_id.clone()),
        profile: ids,
        profile_ref_hash: ref_hash,
        runtime: runtime.clone(),
        approved_call: Some(ApprovedCall::new(
            request.tool_name.clone(),
            Arc::clone(&request.normalized),
        )),
        escalation: None,
        detail: None,
        normalized_request: Some(Arc::clone(&request.normalized)),
        approval,
        caller: caller.clone(),
        single_use: None,
        shadow: None,
    }
}

/// Whether an approval could change this tool's decision: it requires one, or a rule escalates.
fn may_need_approval(tool: &ToolPolicy) -> bool {
    tool.requires_approval
        || tool
            .arg_rules
            .iter()
            .any(|rule| rule.on_violation == Severity::Escalate)
}

impl Decision {
    /// A DENY with everything the audit record needs.
    pub fn deny(
        reason: ReasonCode,
        request_hash: String,
        request_id: Option<String>,
        profile: Option<(String, String)>,
        profile_ref_hash: String,
        runtime: &Runtime,
        detail: Option<String>,
    ) -> Decision {
        Decision {
            decision_type: DecisionType::Deny,
            reason,
            provenance_id: provenance_id(&profile_ref_hash, &request_hash, runtime),
            request_hash,
            request_id,
            profile,
            profile_ref_hash,
            runtime: runtime.clone(),
            approved_call: None,
            escalation: None,
            detail,
            normalized_request: None,
            approval: None,
            caller: Caller::anonymous(),
            single_use: None,
            shadow: None,
        }
    }

    /// The same attempt turned into a DENY for a failure outside the decision itself (the
    /// audit write failed, the gate panicked): keeps the attempt's identity, drops any grant.
    pub fn overridden(&self, reason: ReasonCode, detail: &str) -> Decision {
        Decision {
            decision_type: DecisionType::Deny,
            reason,
            approved_call: None,
            escalation: None,
            detail: Some(detail.to_owned()),
            ..self.clone()
        }
    }

    /// The same decision after its approval turned out to be spent already
    /// (`approvals.single_use`).
    pub fn approval_already_used(&self) -> Decision {
        let jti = self.approval.as_ref().map_or("", |a| a.jti.as_str());
        self.overridden(
            ReasonCode::ApprovalInvalid,
            &format!("approval token `{jti}` was already used"),
        )
    }

    /// The same decision with the single-use ledger's answer recorded.
    pub fn with_spend(self, outcome: SpendOutcome) -> Decision {
        Decision {
            single_use: Some(outcome),
            ..self
        }
    }

    /// The decision a ledger answer makes of a decision that relied on an approval: what
    /// the gate does after the ledger, and what a replay does with the recorded answer.
    pub fn after_spend(self, outcome: SpendOutcome) -> Decision {
        match outcome {
            SpendOutcome::Spent => self.with_spend(outcome),
            SpendOutcome::AlreadyUsed => self.approval_already_used().with_spend(outcome),
            SpendOutcome::LedgerUnavailable => self
                .overridden(
                    ReasonCode::InternalError,
                    "single-use ledger unavailable: the approval was not spent; retry later",
                )
                .with_spend(outcome),
        }
    }

    /// `candidate` (the same attempt decided under `candidate_version`) where it disagrees with
    /// this decision in type or reason; `None` when they agree.
    pub fn shadow_of(
        &self,
        candidate: &Decision,
        candidate_version: &str,
    ) -> Option<ShadowOutcome> {
        let agrees =
            self.decision_type == candidate.decision_type && self.reason == candidate.reason;
        (!agrees).then(|| ShadowOutcome {
            profile_version: candidate_version.to_owned(),
            decision_type: candidate.decision_type,
            reason: candidate.reason,
        })
    }

    /// Everything but the audit block: what must be equal for equal inputs.
    pub fn fingerprint(&self) -> Value {
        self.body(None)
    }
}

#[cfg(test)]
mod tests;
