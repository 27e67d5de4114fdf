//! Decision types and reason codes, spelled exactly as on the wire (SPEC §5).
//!
//! Below every other module: request and profile parsing report reason codes too, and the
//! decision imports them, so the codes live here and nothing here imports anything.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionType {
    Allow,
    Deny,
    Escalate,
}

impl DecisionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionType::Allow => "ALLOW",
            DecisionType::Deny => "DENY",
            DecisionType::Escalate => "ESCALATE",
        }
    }
}

impl fmt::Display for DecisionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    Ok,
    RequestParseError,
    RequestSchemaInvalid,
    RequestTooLarge,
    CtxHashMismatch,
    ProfileNotFound,
    ProfileParseError,
    ToolNotAllowed,
    ControlRequired,
    ApprovalInvalid,
    ApprovalRequired,
    ConstraintViolation,
    ConstraintEvalError,
    AuditWriteFailed,
    Overloaded,
    InternalError,
    CallerUnauthenticated,
    CallerNotPermitted,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 18] = [
        ReasonCode::Ok,
        ReasonCode::RequestParseError,
        ReasonCode::RequestSchemaInvalid,
        ReasonCode::RequestTooLarge,
        ReasonCode::CtxHashMismatch,
        ReasonCode::ProfileNotFound,
        ReasonCode::ProfileParseError,
        ReasonCode::ToolNotAllowed,
        ReasonCode::ControlRequired,
        ReasonCode::ApprovalInvalid,
        ReasonCode::ApprovalRequired,
        ReasonCode::ConstraintViolation,
        ReasonCode::ConstraintEvalError,
        ReasonCode::AuditWriteFailed,
        ReasonCode::Overloaded,
        ReasonCode::InternalError,
        ReasonCode::CallerUnauthenticated,
        ReasonCode::CallerNotPermitted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Ok => "OK",
            ReasonCode::RequestParseError => "REQUEST_PARSE_ERROR",
            ReasonCode::RequestSchemaInvalid => "REQUEST_SCHEMA_INVALID",
            ReasonCode::RequestTooLarge => "REQUEST_TOO_LARGE",
            ReasonCode::CtxHashMismatch => "CTX_HASH_MISMATCH",
            ReasonCode::ProfileNotFound => "PROFILE_NOT_FOUND",
            ReasonCode::ProfileParseError => "PROFILE_PARSE_ERROR",
            ReasonCode::ToolNotAllowed => "TOOL_NOT_ALLOWED",
            ReasonCode::ControlRequired => "CONTROL_REQUIRED",
            ReasonCode::ApprovalInvalid => "APPROVAL_INVALID",
            ReasonCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ReasonCode::ConstraintViolation => "CONSTRAINT_VIOLATION",
            ReasonCode::ConstraintEvalError => "CONSTRAINT_EVAL_ERROR",
            ReasonCode::AuditWriteFailed => "AUDIT_WRITE_FAILED",
            ReasonCode::Overloaded => "OVERLOADED",
            ReasonCode::InternalError => "INTERNAL_ERROR",
            ReasonCode::CallerUnauthenticated => "CALLER_UNAUTHENTICATED",
            ReasonCode::CallerNotPermitted => "CALLER_NOT_PERMITTED",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
