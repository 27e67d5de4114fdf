//! Caller configuration: `[auth]` (how callers authenticate) and `[[bindings]]` (what each
//! caller may use), from raw strings to validated settings.
//!
//! Owns shapes and cross-field checks only. Key files are read later, by the authenticator at
//! start, so a missing JWKS stops the start with its own message; nothing here ever reads or
//! logs a token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::caller::{Binding, Bindings, Pattern, PrincipalPattern, ProfilePattern};

use super::ConfigError;

/// Largest accepted bearer token: Kubernetes service-account tokens are about 1 KiB, and a
/// token is hashed and parsed before it is known to be good.
pub const DEFAULT_MAX_TOKEN_BYTES: u64 = 8192;

/// `[auth]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `["none"]` (the default), or one or both of `"jwt"` and `"mtls"`.
    pub methods: Vec<String>,
    pub jwt: RawJwt,
}

/// `[auth.jwt]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audience: String,
    /// A JWKS (RFC 7517) file; empty: none.
    pub jwks_file: PathBuf,
    /// PEM public keys by `kid`.
    pub keys: BTreeMap<String, RawJwtKey>,
    pub clock_skew: String,
    /// Verified tokens remembered until their `exp`; 0 turns the cache off.
    pub cache_entries: u64,
    pub max_token_bytes: u64,
    /// How often key files are checked for changes.
    pub reload_interval_ms: u64,
}

/// `[auth.jwt.keys."kid"]`: a PEM public key (SPKI) and the algorithm it verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    pub file: PathBuf,
    pub alg: String,
}

/// `[listen_tls]` as written: TLS on the execution listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenTls {
    /// PEM certificate chain, leaf first; empty: plain HTTP.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates must chain to; needed when `auth.methods` has `mtls`.
    pub client_ca_file: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval_ms: u64,
}

impl Default for RawListenTls {
    fn default() -> Self {
        RawListenTls {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            reload_interval_ms: 1000,
        }
    }
}

/// TLS on the execution listener, validated (files are read by the listener at start).
#[derive(Debug, Clone)]
pub struct ListenTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Set exactly when callers authenticate by client certificate.
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Duration,
}

/// `[[bindings]]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBinding {
    pub caller: String,
    pub profiles: Vec<String>,
    #[serde(default = "default_principals")]
    pub principals: Vec<String>,
}

fn default_principals() -> Vec<String> {
    vec![crate::caller::CALLER_PLACEHOLDER.to_owned()]
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            methods: vec!["none".into()],
            jwt: RawJwt {
                issuer: String::new(),
                audience: String::new(),
                jwks_file: PathBuf::new(),
                keys: BTreeMap::new(),
                clock_skew: "30s".into(),
                cache_entries: 10_000,
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
                reload_interval_ms: 1000,
            },
        }
    }
}

/// The signature algorithms a caller's JWT may use; never `none`, never HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    EdDsa,
    Es256,
    Rs256,
}

impl JwtAlgorithm {
    pub fn parse(text: &str) -> Option<JwtAlgorithm> {
        match text {
            "EdDSA" => Some(JwtAlgorithm::EdDsa),
            "ES256" => Some(JwtAlgorithm::Es256),
            "RS256" => Some(JwtAlgorithm::Rs256),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::EdDsa => "EdDSA",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::Rs256 => "RS256",
        }
    }
}

/// How callers authenticate on the execution listener.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `Some` when `auth.methods` has `jwt`.
    pub jwt: Option<JwtConfig>,
    /// `auth.methods` has `mtls`: a verified client certificate names the caller (with `jwt`
    /// too: when the request carries no bearer token).
    pub mtls: bool,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub pem_keys: Vec<PemKey>,
    pub clock_skew: Duration,
    pub cache_entries: usize,
    pub max_token_bytes: usize,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct PemKey {
    pub kid: String,
    pub alg: JwtAlgorithm,
    pub file: PathBuf,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl RawAuth {
    /// `listen_tls` is already validated: mTLS needs its client CA and the other way round.
    pub fn validate(self, listen_tls: Option<&ListenTlsConfig>) -> Result<AuthConfig, ConfigError> {
        let auth = self.validate_methods()?;
        let client_ca = listen_tls.is_some_and(|tls| tls.client_ca_file.is_some());
        if auth.mtls && !client_ca {
            return Err(invalid(
                "auth.methods",
                "`mtls` needs `listen_tls.cert_file`, `listen_tls.key_file` and `listen_tls.client_ca_file`",
            ));
        }
        if client_ca && !auth.mtls {
            return Err(invalid(
                "listen_tls.client_ca_file",
                "is used only when `auth.methods` has `mtls`",
            ));
        }
        Ok(auth)
    }

    fn validate_methods(self) -> Result<AuthConfig, ConfigError> {
        if self.methods.is_empty() {
            return Err(invalid(
                "auth.methods",
                "must not be empty; `[\"none\"]` lets every caller in as `anonymous`",
            ));
        }
        let (mut jwt, mut mtls, mut none) = (false, false, false);
        for method in &self.methods {
            let seen = match method.as_str() {
                "jwt" => &mut jwt,
                "mtls" => &mut mtls,
                "none" => &mut none,
                other => {
                    return Err(invalid(
                        "auth.methods",
                        format!("`{other}`: expected `none`, `jwt` or `mtls`"),
                    ))
                }
            };
            if std::mem::replace(seen, true) {
                return Err(invalid(
                    "auth.methods",
                    format!("`{method}` is listed twice"),
                ));
            }
        }
        if none && self.methods.len() > 1 {
            return Err(invalid(
                "auth.methods",
                "`none` cannot be combined with other methods",
            ));
        }
        // Unused `[auth.jwt]` settings are still checked: a typo should not wait for the day
        // `jwt` is switched on.
        let checked = self.jwt.validate(jwt)?;
        Ok(AuthConfig {
            jwt: jwt.then_some(checked),
            mtls,
        })
    }
}

impl RawJwt {
    /// `in_use`: `auth.methods` has `jwt`, so issuer, audience and keys are required.
    fn validate(self, in_use: bool) -> Result<JwtConfig, ConfigError> {
        if in_use && self.issuer.trim().is_empty() {
            return Err(invalid(
                "auth.jwt.issuer",
                "must name the issuer tokens must carry in `iss`",
            ));
        }
        if in_use && self.audience.trim().is_empty() {
            return Err(invalid(
                "auth.jwt.audience",
                "must name the audience tokens must carry in `aud`",
            ));
        }
        let jwks_file = (!self.jwks_file.as_os_str().is_empty()).then_some(self.jwks_file);
        let mut pem_keys = Vec::with_capacity(self.keys.len());
        for (kid, key) in self.keys {
            let alg = JwtAlgorithm::parse(&key.alg).ok_or_else(|| ConfigError::InvalidKey {
                key: format!("auth.jwt.keys.\"{kid}\".alg"),
                message: format!("`{}`, expected `EdDSA`, `ES256` or `RS256`", key.alg),
            })?;
            if key.file.as_os_str().is_empty() {
                return Err(ConfigError::InvalidKey {
                    key: format!("auth.jwt.keys.\"{kid}\".file"),
                    message: "must name a PEM public key file".into(),
                });
            }
            pem_keys.push(PemKey {
                kid,
                alg,
                file: key.file,
            });
        }
        if in_use && jwks_file.is_none() && pem_keys.is_empty() {
            return Err(invalid(
                "auth.jwt.jwks_file",
                "no keys: set `auth.jwt.jwks_file` or `[auth.jwt.keys.\"kid\"]`",
            ));
        }
        let clock_skew = humantime::parse_duration(&self.clock_skew).map_err(|err| {
            invalid(
                "auth.jwt.clock_skew",
                format!("`{}`: {err}", self.clock_skew),
            )
        })?;
        if clock_skew > Duration::from_secs(300) {
            return Err(invalid(
                "auth.jwt.clock_skew",
                format!("`{}` is above 5m", self.clock_skew),
            ));
        }
        if !(256..=65_536).contains(&self.max_token_bytes) {
            return Err(invalid(
                "auth.jwt.max_token_bytes",
                format!("{} is outside 256..=65536", self.max_token_bytes),
            ));
        }
        if self.cache_entries > 1_000_000 {
            return Err(invalid(
                "auth.jwt.cache_entries",
                format!("{} is above 1000000", self.cache_entries),
            ));
        }
        if !(100..=600_000).contains(&self.reload_interval_ms) {
            return Err(invalid(
                "auth.jwt.reload_interval_ms",
                format!("{} is outside 100..=600000", self.reload_interval_ms),
            ));
        }
        Ok(JwtConfig {
            issuer: self.issuer,
            audience: self.audience,
            jwks_file,
            pem_keys,
            clock_skew,
            cache_entries: usize::try_from(self.cache_entries).unwrap_or(usize::MAX),
            max_token_bytes: usize::try_from(self.max_token_bytes).unwrap_or(usize::MAX),
            reload_interval: Duration::from_millis(self.reload_interval_ms),
        })
    }
}

impl RawListenTls {
    pub fn validate(self) -> Result<Option<ListenTlsConfig>, ConfigError> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if !set(&self.cert_file) {
            if set(&self.key_file) || set(&self.client_ca_file) {
                return Err(invalid(
                    "listen_tls.cert_file",
                    "must be set when `listen_tls.key_file` or `listen_tls.client_ca_file` is",
                ));
            }
            return Ok(None);
        }
        if !set(&self.key_file) {
            return Err(invalid(
                "listen_tls.key_file",
                "must name the private key of `listen_tls.cert_file`",
            ));
        }
        if !(100..=600_000).contains(&self.reload_interval_ms) {
            return Err(invalid(
                "listen_tls.reload_interval_ms",
                format!("{} is outside 100..=600000", self.reload_interval_ms),
            ));
        }
        Ok(Some(ListenTlsConfig {
            client_ca_file: set(&self.client_ca_file).then_some(self.client_ca_file),
            cert_file: self.cert_file,
            key_file: self.key_file,
            reload_interval: Duration::from_millis(self.reload_interval_ms),
        }))
    }
}

/// `[[bindings]]`; none configured: `None`, anyone may use any profile.
pub fn validate_bindings(raw: Vec<RawBinding>) -> Result<Option<Bindings>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut bindings = Vec::with_capacity(raw.len());
    for (index, binding) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("bindings[{index}].{field}");
        if binding.caller.is_empty() {
            return Err(ConfigError::InvalidKey {
                key: key("caller"),
                message: "must name a caller id or pattern".into(),
            });
        }
        if binding.profiles.is_empty() {
            return Err(ConfigError::InvalidKey {
                key: key("profiles"),
                message: "must list at least one `id@version` pattern".into(),
            });
        }
        let mut profiles = Vec::with_capacity(binding.profiles.len());
        for text in &binding.profiles {
            profiles.push(
                ProfilePattern::parse(text).ok_or_else(|| ConfigError::InvalidKey {
                    key: key("profiles"),
                    message: format!(
                        "`{text}`, expected `id@version` (`*` matches anything, e.g. `finance-agent@2.*`)"
                    ),
                })?,
            );
        }
        if binding.principals.is_empty() {
            return Err(ConfigError::InvalidKey {
                key: key("principals"),
                message:
                    "must list at least one principal pattern (`{caller}`: the caller id itself)"
                        .into(),
            });
        }
        if let Some(empty) = binding.principals.iter().find(|p| p.is_empty()) {
            return Err(ConfigError::InvalidKey {
                key: key("principals"),
                message: format!("`{empty}` is empty"),
            });
        }
        bindings.push(Binding {
            caller: Pattern::new(binding.caller),
            profiles,
            principals: binding
                .principals
                .iter()
                .map(|p| PrincipalPattern::parse(p))
                .collect(),
        });
    }
    Ok(Some(Bindings { bindings }))
}
