//! Approval tokens (SPEC §7a): compact JWS, EdDSA over Ed25519, bound to one request's intent.
//!
//! Owns verifying a token against the configured approver keys at an injected decision time,
//! and, for the approver CLI, signing one. Pure: no clock, no I/O. It must never accept an
//! algorithm other than EdDSA, a token whose `sub` is not the request's `intent_hash`, or one
//! whose lifetime exceeds `max_ttl`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::canonical::{Map, Value};
use crate::jws::{self, JwsError};

mod used;

pub use used::{Spend, UsedTokens};

/// Tokens longer than this are refused unread: a real one is a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the gate accepts approvals with: approver keys by `kid`, and time limits.
#[derive(Debug, Clone)]
pub struct Approvals {
    pub keys: BTreeMap<String, VerifyingKey>,
    /// Longest allowed `exp - iat`.
    pub max_ttl: Duration,
    /// Tolerated clock difference between approver and gate.
    pub clock_skew: Duration,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            keys: BTreeMap::new(),
            max_ttl: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// A verified approval: who approved, and the token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub kid: String,
    pub issuer: String,
    pub jti: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// Why a token is not a valid approval for this request. Messages go to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalError {
    Malformed(String),
    Algorithm(String),
    UnknownKey(String),
    BadSignature,
    WrongSubject,
    Expired,
    NotYetValid,
    LifetimeTooLong { ttl: u64, max: u64 },
}

impl fmt::Display for ApprovalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalError::Malformed(why) => write!(f, "approval token is malformed: {why}"),
            ApprovalError::Algorithm(alg) => {
                write!(f, "approval token uses algorithm `{alg}`; only `EdDSA` is accepted")
            }
            ApprovalError::UnknownKey(kid) => {
                write!(f, "approval token is signed with unknown key `{kid}`")
            }
            ApprovalError::BadSignature => f.write_str("approval token signature does not verify"),
            ApprovalError::WrongSubject => {
                f.write_str("approval token was issued for a different request (`sub` is not this request's intent_hash)")
            }
            ApprovalError::Expired => f.write_str("approval token has expired"),
            ApprovalError::NotYetValid => f.write_str("approval token is not valid yet"),
            ApprovalError::LifetimeTooLong { ttl, max } => write!(
                f,
                "approval token lives {ttl} s, longer than the allowed {max} s"
            ),
        }
    }
}

impl From<JwsError> for ApprovalError {
    fn from(err: JwsError) -> Self {
        match err {
            JwsError::Malformed(why) => ApprovalError::Malformed(why),
            JwsError::Algorithm(alg) => ApprovalError::Algorithm(alg),
            JwsError::BadSignature => ApprovalError::BadSignature,
        }
    }
}

fn malformed(why: impl Into<String>) -> ApprovalError {
    ApprovalError::Malformed(why.into())
}

impl Approvals {
    /// Verifies `token` for the request whose intent is `intent_hash`, at decision time `now`.
    pub fn verify(
        &self,
        token: &str,
        intent_hash: &str,
        now: SystemTime,
    ) -> Result<Approval, ApprovalError> {
        let (header, claims) = jws::verify(token, MAX_TOKEN_BYTES, |header| {
            self.keys
                .get(&header.kid)
                .ok_or_else(|| ApprovalError::UnknownKey(header.kid.clone()))
        })?;
        let (kid, claims) = (header.kid, &claims);
        if claim_str(claims, "sub")? != intent_hash {
            return Err(ApprovalError::WrongSubject);
        }
        let issuer = claim_str(claims, "iss")?.to_owned();
        let jti = claim_str(claims, "jti")?.to_owned();
        let issued_at =
            claim_time(claims, "iat")?.ok_or_else(|| malformed("claim `iat` is missing"))?;
        let expires_at =
            claim_time(claims, "exp")?.ok_or_else(|| malformed("claim `exp` is missing"))?;
        let not_before = claim_time(claims, "nbf")?;

        let max = self.max_ttl.as_secs();
        let ttl = expires_at.saturating_sub(issued_at);
        if expires_at <= issued_at {
            return Err(malformed("`exp` is not after `iat`"));
        }
        if ttl > max {
            return Err(ApprovalError::LifetimeTooLong { ttl, max });
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let skew = self.clock_skew;
        let starts = Duration::from_secs(not_before.unwrap_or(issued_at).max(issued_at));
        if now + skew < starts {
            return Err(ApprovalError::NotYetValid);
        }
        if now >= Duration::from_secs(expires_at) + skew {
            return Err(ApprovalError::Expired);
        }
        Ok(Approval {
            kid,
            issuer,
            jti,
            issued_at,
            expires_at,
        })
    }
}

fn claim_str<'a>(claims: &'a Map, name: &str) -> Result<&'a str, ApprovalError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(malformed(format!(
            "claim `{name}` must be a non-empty string"
        ))),
        None => Err(malformed(format!("claim `{name}` is missing"))),
    }
}

/// A NumericDate as whole seconds; fractions are refused rather than rounded.
fn claim_time(claims: &Map, name: &str) -> Result<Option<u64>, ApprovalError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| malformed(format!("claim `{name}` must be whole seconds since 1970"))),
        Some(_) => Err(malformed(format!("claim `{name}` must be a number"))),
    }
}

/// Reads an approver's public key: SPKI PEM (what `ecl-gate keygen` writes and OpenSSL or
/// Python's `cryptography` produce) or the raw 32 bytes in base64 / base64url.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|err| format!("not an Ed25519 public key in PEM: {err}"));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| "neither PEM nor base64".to_owned())?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&raw).map_err(|err| format!("not a valid Ed25519 point: {err}"))
}

/// The key id the CLI derives for a public key: stable, short, safe in file names.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("ed25519-{}", &hex::encode(digest)[..16])
}

/// What an approver signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub intent_hash: &'a str,
    pub issued_at: u64,
    pub expires_at: u64,
    pub jti: &'a str,
}

/// Signs an approval token: what `ecl-gate approve` prints.
pub fn sign(key: &SigningKey, kid: &str, grant: &Grant<'_>) -> String {
    let header = Value::object([
        ("alg", "EdDSA".into()),
        ("kid", kid.into()),
        ("typ", "JWT".into()),
    ]);
    let claims = Value::object([
        ("iss", grant.issuer.into()),
        ("sub", grant.intent_hash.into()),
        ("iat", grant.issued_at.into()),
        ("exp", grant.expires_at.into()),
        ("jti", grant.jti.into()),
    ]);
    jws::sign(key, &header, &claims)
}

#[cfg(test)]
mod tests;
