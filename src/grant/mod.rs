//! Grants: the gate's proof, to a tool, that one exact call went through the gate.
//!
//! In proxy mode every forwarded call carries an `ECL-Grant` header: a compact JWS, EdDSA over
//! Ed25519, header `typ` `ecl-grant+jwt`, whose claims bind the decision (`provenance_id`,
//! `request_hash`), the `tool`, the audience (`aud`: which upstream may accept it) and the
//! SHA-256 of the exact body bytes sent (`body_sha256`), for a short time (`iat`, `exp`).
//! Network topology alone cannot keep an agent from calling a tool directly (a Kubernetes
//! sidecar shares the agent's network namespace); a tool that accepts only calls whose grant
//! verifies can.
//!
//! Owns signing (for the gate) and verifying (for tools and `ecl-gate grant verify`). Pure: no
//! clock, times are handed in; no I/O but the randomness of a `jti`. Verification must never
//! accept an algorithm other than EdDSA, another token type, another body, another audience,
//! or a grant outside its short lifetime.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::canonical::{self, Map, Value};
use crate::jws::{self, JwsError};

/// The HTTP header a forwarded call carries its grant in (header names are case-insensitive).
pub const GRANT_HEADER: &str = "ecl-grant";
/// The JWS `typ` of a grant: keeps an approval token, signed with the same kind of key, from
/// ever passing as a grant (RFC 8725 §3.11, explicit typing).
pub const GRANT_TYPE: &str = "ecl-grant+jwt";
/// Grants longer than this are refused unread: a real one is about 600 bytes.
pub const MAX_GRANT_BYTES: usize = 4096;
/// Clock difference [`verify_grant`] tolerates between gate and tool.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Longest `exp - iat` [`verify_grant`] accepts: a grant is for one call, now.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// The claims of a verified (or freshly signed) grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantClaims {
    /// Key id from the JWS header.
    pub kid: String,
    pub provenance_id: String,
    pub request_hash: String,
    pub tool: String,
    /// `sha256:` + lowercase hex of the exact body bytes the gate sent.
    pub body_sha256: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// Unique per grant: lets a tool refuse a grant it has seen before, until `exp`.
    pub jti: String,
}

/// Why a grant is refused. Messages are meant for the caller of the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    Missing,
    Malformed(String),
    Algorithm(String),
    WrongType(String),
    UnknownKey(String),
    BadSignature,
    WrongAudience { expected: String, found: String },
    BodyMismatch,
    Expired,
    NotYetValid,
    LifetimeTooLong { lifetime: u64, max: u64 },
    Randomness,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Missing => {
                write!(f, "no `ECL-Grant` header: calls must come through the gate")
            }
            GrantError::Malformed(why) => write!(f, "grant is malformed: {why}"),
            GrantError::Algorithm(alg) => {
                write!(f, "grant uses algorithm `{alg}`; only `EdDSA` is accepted")
            }
            GrantError::WrongType(typ) => {
                write!(f, "token type `{typ}` is not a grant (`{GRANT_TYPE}`)")
            }
            GrantError::UnknownKey(kid) => write!(f, "grant is signed with unknown key `{kid}`"),
            GrantError::BadSignature => f.write_str("grant signature does not verify"),
            GrantError::WrongAudience { expected, found } => {
                write!(f, "grant is for audience `{found}`, not `{expected}`")
            }
            GrantError::BodyMismatch => {
                f.write_str("grant was issued for a different body (`body_sha256` does not match)")
            }
            GrantError::Expired => f.write_str("grant has expired"),
            GrantError::NotYetValid => {
                f.write_str("grant is not valid yet (`iat` is in the future)")
            }
            GrantError::LifetimeTooLong { lifetime, max } => {
                write!(
                    f,
                    "grant lives {lifetime} s, longer than the allowed {max} s"
                )
            }
            GrantError::Randomness => f.write_str("no randomness for the grant id"),
        }
    }
}

impl std::error::Error for GrantError {}

impl GrantError {
    /// The HTTP status a tool should refuse with: 401 when no grant was presented at all,
    /// 403 when one was presented and is not good for this call.
    pub fn http_status(&self) -> u16 {
        match self {
            GrantError::Missing => 401,
            _ => 403,
        }
    }

    /// A stable, machine-readable name for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Missing => "grant_missing",
            GrantError::Malformed(_) => "grant_malformed",
            GrantError::Algorithm(_) => "grant_algorithm",
            GrantError::WrongType(_) => "grant_type",
            GrantError::UnknownKey(_) => "grant_unknown_key",
            GrantError::BadSignature => "grant_bad_signature",
            GrantError::WrongAudience { .. } => "grant_wrong_audience",
            GrantError::BodyMismatch => "grant_body_mismatch",
            GrantError::Expired => "grant_expired",
            GrantError::NotYetValid => "grant_not_yet_valid",
            GrantError::LifetimeTooLong { .. } => "grant_lifetime",
            GrantError::Randomness => "grant_internal",
        }
    }
}

impl From<JwsError> for GrantError {
    fn from(err: JwsError) -> Self {
        match err {
            JwsError::Malformed(why) => GrantError::Malformed(why),
            JwsError::Algorithm(alg) => GrantError::Algorithm(alg),
            JwsError::BadSignature => GrantError::BadSignature,
        }
    }
}

fn malformed(why: impl Into<String>) -> GrantError {
    GrantError::Malformed(why.into())
}

/// `sha256:` + lowercase hex of `body`: the form of `body_sha256`.
pub fn body_sha256(body: &[u8]) -> String {
    canonical::sha256_prefixed(body)
}

/// What one forwarded call is granted for.
#[derive(Debug, Clone, Copy)]
pub struct GrantedCall<'a> {
    pub provenance_id: &'a str,
    pub request_hash: &'a str,
    pub tool: &'a str,
    /// The exact bytes that will be sent.
    pub body: &'a [u8],
    pub audience: &'a str,
}

/// The gate's signing side: key, key id, lifetime.
#[derive(Clone)]
pub struct GrantSigner {
    key: SigningKey,
    kid: String,
    ttl: Duration,
}

impl fmt::Debug for GrantSigner {
    // Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantSigner")
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl GrantSigner {
    /// `ttl` is clamped to 1 s ..= [`MAX_LIFETIME`].
    pub fn new(key: SigningKey, kid: String, ttl: Duration) -> GrantSigner {
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_LIFETIME);
        GrantSigner { key, kid, ttl }
    }

    /// From a PKCS#8 PEM private key (what `ecl-gate keygen` writes); `kid` defaults to the
    /// id `keygen` derives, so the key files' names and the grant header agree.
    pub fn from_pem(pem: &str, kid: Option<String>, ttl: Duration) -> Result<GrantSigner, String> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|err| format!("not an Ed25519 private key in PKCS#8 PEM: {err}"))?;
        let kid = kid.unwrap_or_else(|| crate::approval::key_id(&key.verifying_key()));
        Ok(GrantSigner::new(key, kid, ttl))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The public key tools verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a grant for `call`, issued at `now`, with a fresh random `jti`.
    pub fn sign(
        &self,
        call: &GrantedCall<'_>,
        now: SystemTime,
    ) -> Result<(String, GrantClaims), GrantError> {
        let mut jti = [0u8; 16];
        getrandom::getrandom(&mut jti).map_err(|_| GrantError::Randomness)?;
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = GrantClaims {
            kid: self.kid.clone(),
            provenance_id: call.provenance_id.to_owned(),
            request_hash: call.request_hash.to_owned(),
            tool: call.tool.to_owned(),
            body_sha256: body_sha256(call.body),
            aud: call.audience.to_owned(),
            iat,
            exp: iat + self.ttl.as_secs(),
            jti: hex::encode(jti),
        };
        Ok((self.sign_claims(&claims), claims))
    }

    /// Signs exactly these claims (tests and tools that need a crafted grant use this).
    pub fn sign_claims(&self, claims: &GrantClaims) -> String {
        let header = Value::object([
            ("alg", "EdDSA".into()),
            ("kid", claims.kid.as_str().into()),
            ("typ", GRANT_TYPE.into()),
        ]);
        let body = Value::object([
            ("provenance_id", claims.provenance_id.as_str().into()),
            ("request_hash", claims.request_hash.as_str().into()),
            ("tool", claims.tool.as_str().into()),
            ("body_sha256", claims.body_sha256.as_str().into()),
            ("aud", claims.aud.as_str().into()),
            ("iat", claims.iat.into()),
            ("exp", claims.exp.into()),
            ("jti", claims.jti.as_str().into()),
        ]);
        jws::sign(&self.key, &header, &body)
    }
}

/// Verifies `token` for a call with exactly `body`, at the tool whose audience is `audience`,
/// at time `now`, against the gate's `public_key`: the whole tool side in one call.
///
/// Strict: header `alg` exactly `EdDSA`, `typ` exactly `ecl-grant+jwt`, no `crit`; the
/// signature verifies (strict Ed25519); every claim present with its type; `aud` equal to
/// `audience`; `body_sha256` equal to the SHA-256 of `body`; `exp - iat` at most
/// [`MAX_LIFETIME`]; `now` within `iat ..< exp`, give or take [`DEFAULT_CLOCK_SKEW`].
pub fn verify_grant(
    token: &str,
    body: &[u8],
    public_key: &VerifyingKey,
    audience: &str,
    now: SystemTime,
) -> Result<GrantClaims, GrantError> {
    GrantVerifier::single(*public_key, audience).verify(token, body, now)
}

/// The tool side with more than one gate key (rotation: old and new `kid` side by side) and
/// its own time limits.
#[derive(Debug, Clone)]
pub struct GrantVerifier {
    keys: Keys,
    audience: Option<String>,
    pub clock_skew: Duration,
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone)]
enum Keys {
    /// One key, whatever `kid` the header names.
    Single(VerifyingKey),
    ByKid(BTreeMap<String, VerifyingKey>),
}

impl GrantVerifier {
    /// Accepts grants signed by `key` (any `kid`) for `audience`.
    pub fn single(key: VerifyingKey, audience: &str) -> GrantVerifier {
        GrantVerifier {
            keys: Keys::Single(key),
            audience: Some(audience.to_owned()),
            clock_skew: DEFAULT_CLOCK_SKEW,
            max_lifetime: MAX_LIFETIME,
        }
    }

    /// Accepts grants whose header `kid` names one of `keys`, for `audience`.
    pub fn with_keys(keys: BTreeMap<String, VerifyingKey>, audience: &str) -> GrantVerifier {
        GrantVerifier {
            keys: Keys::ByKid(keys),
            audience: Some(audience.to_owned()),
            clock_skew: DEFAULT_CLOCK_SKEW,
            max_lifetime: MAX_LIFETIME,
        }
    }

    /// For `ecl-gate grant verify` without `--audience`: every check but the audience.
    pub(crate) fn any_audience(key: VerifyingKey) -> GrantVerifier {
        GrantVerifier {
            audience: None,
            ..GrantVerifier::single(key, "")
        }
    }

    /// Verifies `token` for exactly `body` at `now`.
    pub fn verify(
        &self,
        token: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<GrantClaims, GrantError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(GrantError::Missing);
        }
        let (header, claims) = jws::verify(token, MAX_GRANT_BYTES, |header| {
            // The type keeps an approval token (same keys' format, other meaning) from ever
            // passing as a grant.
            match header.typ.as_deref() {
                Some(GRANT_TYPE) => {}
                other => return Err(GrantError::WrongType(other.unwrap_or_default().to_owned())),
            }
            match &self.keys {
                Keys::Single(key) => Ok(key),
                Keys::ByKid(keys) => keys
                    .get(&header.kid)
                    .ok_or_else(|| GrantError::UnknownKey(header.kid.clone())),
            }
        })?;
        let (kid, claims) = (header.kid, &claims);
        let claims = GrantClaims {
            kid,
            provenance_id: claim_str(claims, "provenance_id")?,
            request_hash: claim_str(claims, "request_hash")?,
            tool: claim_str(claims, "tool")?,
            body_sha256: claim_str(claims, "body_sha256")?,
            aud: claim_str(claims, "aud")?,
            iat: claim_time(claims, "iat")?,
            exp: claim_time(claims, "exp")?,
            jti: claim_str(claims, "jti")?,
        };
        if let Some(expected) = &self.audience {
            if &claims.aud != expected {
                return Err(GrantError::WrongAudience {
                    expected: expected.clone(),
                    found: claims.aud,
                });
            }
        }
        if claims.body_sha256 != body_sha256(body) {
            return Err(GrantError::BodyMismatch);
        }
        if claims.exp <= claims.iat {
            return Err(malformed("`exp` is not after `iat`"));
        }
        let lifetime = claims.exp - claims.iat;
        if lifetime > self.max_lifetime.as_secs() {
            return Err(GrantError::LifetimeTooLong {
                lifetime,
                max: self.max_lifetime.as_secs(),
            });
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if now + self.clock_skew < Duration::from_secs(claims.iat) {
            return Err(GrantError::NotYetValid);
        }
        if now >= Duration::from_secs(claims.exp) + self.clock_skew {
            return Err(GrantError::Expired);
        }
        Ok(claims)
    }
}

fn claim_str(claims: &Map, name: &str) -> Result<String, GrantError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(malformed(format!(
            "claim `{name}` must be a non-empty string"
        ))),
        None => Err(malformed(format!("claim `{name}` is missing"))),
    }
}

/// A NumericDate as whole seconds; fractions are refused rather than rounded.
fn claim_time(claims: &Map, name: &str) -> Result<u64, GrantError> {
    match claims.get(name) {
        None => Err(malformed(format!("claim `{name}` is missing"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| malformed(format!("claim `{name}` must be whole seconds since 1970"))),
        Some(_) => Err(malformed(format!("claim `{name}` must be a number"))),
    }
}

#[cfg(test)]
mod tests;
