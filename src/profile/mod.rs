//! Execution profiles (SPEC §7): the strict schema and the compiled form `decide` reads.
//!
//! Owns turning profile bytes into a [`Profile`] or a [`ProfileError`]. A profile that is
//! anything but exactly right is refused whole: an unknown field, a header that disagrees with
//! the requested id/version, a default other than DENY, a bad regex. It never guesses.

pub mod diff;
mod parse;
mod shared;
mod store;

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use crate::reason::ReasonCode;

pub use parse::{parse_profile, parse_profile_with};
pub use shared::Shared;
pub use store::{is_valid_ref, ProfileStore, MAX_PROFILE_BYTES};

/// The outcome of looking a profile up: what `decide` needs of the profile store.
pub type ProfileLookup = Result<Arc<Profile>, ProfileError>;

/// `profile_ref_hash` when no profile bytes could be read (SPEC §4).
pub fn no_profile_hash() -> String {
    crate::canonical::sha256_prefixed(b"NO_PROFILE")
}

/// A loaded, validated profile version. Immutable once built.
#[derive(Debug)]
pub struct Profile {
    pub id: String,
    pub version: String,
    /// `"sha256:"` + SHA-256 of the exact file bytes.
    pub ref_hash: String,
    /// Shared with every other version of the store that has an equal policy ([`Shared`]).
    tools: Vec<Arc<ToolPolicy>>,
    by_name: HashMap<Box<str>, usize>,
}

impl Profile {
    /// The policy for `name`, if the allowlist names it.
    pub fn tool(&self, name: &str) -> Option<&ToolPolicy> {
        self.by_name
            .get(name)
            .and_then(|&i| self.tools.get(i))
            .map(Arc::as_ref)
    }

    pub fn tools(&self) -> &[Arc<ToolPolicy>] {
        &self.tools
    }
}

/// One allowlist entry.
#[derive(Debug)]
pub struct ToolPolicy {
    pub name: String,
    pub requires_approval: bool,
    /// What a missing approval leads to when `requires_approval` (ext: `on_missing`).
    pub on_missing: Severity,
    /// Ext `additional_args: "deny"`: an argument no rule names violates.
    pub deny_additional_args: bool,
    /// In the order the profile lists them: the first failing rule decides.
    pub arg_rules: Vec<ArgRule>,
}

#[derive(Debug)]
pub struct ArgRule {
    /// As written in the profile, for messages and audit.
    pub path: String,
    pub steps: Vec<PathStep>,
    pub kind: RuleKind,
    /// Ext `required: false`: an absent (or null) value is fine, a present one must conform.
    pub required: bool,
    /// Ext `on_violation`: DENY (the reference's only behaviour) or ESCALATE.
    pub on_violation: Severity,
    pub max_len: Option<u64>,
    pub min_len: Option<u64>,
    pub max_items: Option<u64>,
    /// Inclusive bounds of `number` and `integer` rules, held as doubles as the reference's
    /// `Optional[float]` holds them (SPEC's rule list omits them; the issue adds them).
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub one_of: Option<Vec<String>>,
    /// Compiled as `^(?:…)`: anchored at the start like Python's `re.match`.
    /// Shared with every other rule of the store that has the same source ([`Shared`]).
    pub pattern: Option<Arc<Regex>>,
}

/// What failing a check leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Deny,
    Escalate,
}

/// One step of an argument path: `$.to` is `[Key("to")]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    String,
    Number,
    Bool,
    Integer,
    Array,
    Object,
    /// Kept, not refused at load: the reference reports it when the rule is evaluated
    /// (`CONSTRAINT_EVAL_ERROR`).
    Unknown(String),
}

/// Why no profile could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile `{id}` at version `{version}`")]
    NotFound { id: String, version: String },
    #[error("profile `{id}` version `{version}` is invalid: {message}")]
    Invalid {
        id: String,
        version: String,
        ref_hash: String,
        message: String,
    },
}

impl ProfileError {
    pub fn reason(&self) -> ReasonCode {
        match self {
            ProfileError::NotFound { .. } => ReasonCode::ProfileNotFound,
            ProfileError::Invalid { .. } => ReasonCode::ProfileParseError,
        }
    }

    /// The `profile_ref_hash` this failure is recorded with (SPEC §4).
    pub fn ref_hash(&self) -> String {
        match self {
            ProfileError::NotFound { .. } => no_profile_hash(),
            ProfileError::Invalid { ref_hash, .. } => ref_hash.clone(),
        }
    }
}
