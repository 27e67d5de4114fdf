//! Bearer JWT verification (RFC 7519, RFC 8725) with `jsonwebtoken`, and a bounded cache of
//! tokens already verified.
//!
//! Owns turning a token into a [`Caller`]: algorithm allowlist, key by `kid`, signature,
//! `iss`, `aud`, `exp`, `nbf`, `iat`, `sub`. It never accepts `none` or HMAC, never keeps a
//! token past its `exp`, and never puts a token into an error message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::caller::{Caller, CallerMethod};
use crate::config::auth::JwtConfig;
use crate::metrics::Metrics;

use super::keys::{KeyError, KeySet};
use super::AuthFailure;

/// The claims a caller's token must carry beyond what `Validation` checks.
#[derive(Deserialize)]
struct Claims {
    // Options, so a missing claim is reported by the validation by name, not as bad JSON.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

/// A token verified before, good until `exp` (plus the skew).
struct Verified {
    caller: Caller,
    exp: u64,
}

pub struct JwtVerifier {
    config: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    cache: Mutex<HashMap<Box<str>, Verified>>,
    metrics: Arc<Metrics>,
    /// The key files' digest that failed to load last (empty: unreadable), so a broken file
    /// is reported once, not every interval.
    last_failed: Mutex<Option<Vec<u8>>>,
}

/// Ids echoed in a `detail` are cut here: they come from the untrusted token.
const MAX_ECHOED: usize = 64;

impl JwtVerifier {
    pub fn load(config: JwtConfig, metrics: Arc<Metrics>) -> Result<JwtVerifier, KeyError> {
        let keys = KeySet::load(&config)?;
        Ok(JwtVerifier {
            config,
            keys: RwLock::new(Arc::new(keys)),
            cache: Mutex::new(HashMap::new()),
            metrics,
            last_failed: Mutex::new(None),
        })
    }

    /// Checks the key files every `reload_interval`; a change is loaded, a broken change is
    /// logged, counted and ignored (the previous keys stay in use).
    pub fn spawn_reloader(self: Arc<Self>) {
        let interval = self.config.reload_interval;
        crate::reload::spawn_every(interval, self, Self::reload_if_changed);
    }

    /// One reload check.
    pub fn reload_if_changed(&self) {
        let Ok(mut last_failed) = self.last_failed.lock() else {
            return;
        };
        let current = self.current_keys().fingerprint.clone();
        let fingerprint = match KeySet::fingerprint_files(&self.config) {
            Ok(fingerprint) => fingerprint,
            Err(err) => {
                if last_failed.as_deref() != Some(&[][..]) {
                    tracing::error!(error = %err, "caller key files unreadable; keeping the keys in use");
                    self.metrics.auth_key_reload_failures.inc();
                    *last_failed = Some(Vec::new());
                }
                return;
            }
        };
        if fingerprint == current {
            *last_failed = None;
            return;
        }
        if last_failed.as_ref() == Some(&fingerprint) {
            return;
        }
        match KeySet::load(&self.config) {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), "caller keys reloaded");
                *last_failed = None;
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
                // A token verified with a key that is gone must be checked again.
                if let Ok(mut cache) = self.cache.lock() {
                    cache.clear();
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "changed caller key file does not load; keeping the keys in use");
                self.metrics.auth_key_reload_failures.inc();
                *last_failed = Some(fingerprint);
            }
        }
    }

    fn current_keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            // A writer panicked mid-swap: the Arc it held is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The caller a token proves, or why it proves nothing.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthFailure> {
        if token.len() > self.config.max_token_bytes {
            return Err(AuthFailure::invalid_token(format!(
                "bearer token is longer than {} bytes",
                self.config.max_token_bytes
            )));
        }
        let now = unix_now();
        let skew = self.config.clock_skew.as_secs();
        if let Some(caller) = self.cached(token, now, skew) {
            self.metrics.auth_token_cache_hits.inc();
            return Ok(caller);
        }
        let (caller, exp) = self.verify_uncached(token, now, skew)?;
        self.remember(token, &caller, exp, now, skew);
        Ok(caller)
    }

    fn cached(&self, token: &str, now: u64, skew: u64) -> Option<Caller> {
        let cache = self.cache.lock().ok()?;
        let verified = cache.get(token)?;
        (now <= verified.exp.saturating_add(skew)).then(|| verified.caller.clone())
    }

    fn remember(&self, token: &str, caller: &Caller, exp: u64, now: u64, skew: u64) {
        let capacity = self.config.cache_entries;
        if capacity == 0 {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= capacity {
            cache.retain(|_, v| now <= v.exp.saturating_add(skew));
        }
        // Still full of live tokens: start over rather than grow (bounded memory wins over
        // a few extra signature checks).
        if cache.len() >= capacity {
            cache.clear();
        }
        cache.insert(
            token.into(),
            Verified {
                caller: caller.clone(),
                exp,
            },
        );
    }

    fn verify_uncached(
        &self,
        token: &str,
        now: u64,
        skew: u64,
    ) -> Result<(Caller, u64), AuthFailure> {
        let header = read_header(token)?;
        let alg = match header.alg.as_str() {
            "EdDSA" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            "RS256" => Algorithm::RS256,
            other => {
                return Err(AuthFailure::invalid_token(format!(
                    "algorithm `{}` is not accepted (EdDSA, ES256 or RS256 only)",
                    echo(other)
                )))
            }
        };
        let keys = self.current_keys();
        let key = match &header.kid {
            Some(kid) => keys.keys.get(kid).ok_or_else(|| {
                AuthFailure::invalid_token(format!("unknown key id `{}`", echo(kid)))
            })?,
            None if keys.keys.len() == 1 => keys
                .keys
                .values()
                .next()
                .ok_or_else(|| AuthFailure::invalid_token("token has no `kid`"))?,
            None => {
                return Err(AuthFailure::invalid_token(
                    "token has no `kid` and several keys are configured",
                ))
            }
        };
        if key.alg != alg {
            return Err(AuthFailure::invalid_token(format!(
                "algorithm `{}` does not match the key's `{:?}`",
                header.alg, key.alg
            )));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = skew;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|err| self.explain(err.kind()))?;
        let claims = data.claims;
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
            return Err(AuthFailure::invalid_token(
                "token issued in the future (`iat`)",
            ));
        }
        // INVARIANT: the validation required `sub`, `iss` and `exp`; checked again, not assumed.
        let (Some(sub), Some(iss), Some(exp)) = (claims.sub, claims.iss, claims.exp) else {
            return Err(AuthFailure::invalid_token(
                "token lacks `sub`, `iss` or `exp`",
            ));
        };
        if sub.is_empty() {
            return Err(AuthFailure::invalid_token("token has an empty `sub`"));
        }
        let caller = Caller {
            method: CallerMethod::Jwt,
            id: Arc::from(sub),
            issuer: Some(Arc::from(iss)),
        };
        Ok((caller, exp))
    }

    fn explain(&self, kind: &ErrorKind) -> AuthFailure {
        let text = match kind {
            ErrorKind::ExpiredSignature => "token expired (`exp`)".to_owned(),
            ErrorKind::ImmatureSignature => "token not valid yet (`nbf`)".to_owned(),
            ErrorKind::InvalidIssuer => format!("token issuer is not `{}`", self.config.issuer),
            ErrorKind::InvalidAudience => {
                format!("token audience does not include `{}`", self.config.audience)
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("token has no `{}` claim", echo(claim))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                format!("token claim `{}` is malformed", echo(claim))
            }
            ErrorKind::InvalidSignature => "token signature does not verify".to_owned(),
            ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".to_owned(),
            ErrorKind::Json(_) => {
                "token claims are malformed (`sub`, `iss` and `exp` must be present)".to_owned()
            }
            _ => "token is malformed".to_owned(),
        };
        AuthFailure::invalid_token(text)
    }
}

/// The header members read before the signature is checked.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Reads `alg` and `kid` ourselves, so `alg: none` is refused by name instead of failing as
/// an unknown algorithm deep inside the library.
fn read_header(token: &str) -> Result<RawHeader, AuthFailure> {
    let malformed =
        || AuthFailure::invalid_token("token is not a compact JWS (three base64url parts)");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthFailure::invalid_token("token header is not a JSON object with `alg`"))
}

fn echo(text: &str) -> String {
    if text.chars().count() > MAX_ECHOED {
        format!("{}…", text.chars().take(MAX_ECHOED).collect::<String>())
    } else {
        text.to_owned()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
