//! `[escalations]`: where the gate reports an ESCALATE, and the key it signs the report with.
//!
//! Owns validating those keys into an [`EscalationConfig`]; reads the signing key and, for
//! `https://`, the `[tls]` trust. Errors name the key, never a key's bytes.

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalations {
    /// `http(s)://…` that receives every ESCALATE (e.g. `ecl-gate approver serve`'s
    /// `/v1/notifications`); empty: off.
    pub notify: String,
    /// PKCS#8 PEM Ed25519 private key that signs notifications; required with `notify`.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Key id in the notification header; default: derived from the public key.
    #[serde(default)]
    pub kid: Option<String>,
    /// Notifications waiting to be delivered; beyond it, new ones are dropped and counted.
    pub queue_capacity: u64,
    /// One delivery attempt: connect, send, answer.
    pub timeout_ms: u64,
}

impl Default for RawEscalations {
    fn default() -> Self {
        RawEscalations {
            notify: String::new(),
            signing_key: None,
            kid: None,
            queue_capacity: 1024,
            timeout_ms: 5000,
        }
    }
}

/// Validated `[escalations]`, present only when `notify` is set.
#[derive(Clone)]
pub struct EscalationConfig {
    pub url: http::Uri,
    pub key: SigningKey,
    pub kid: String,
    pub queue_capacity: usize,
    pub timeout: Duration,
    /// `[tls]`: extra CA certificates and whether the public roots are trusted too.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub public_roots: bool,
}

impl std::fmt::Debug for EscalationConfig {
    // Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscalationConfig")
            .field("url", &self.url)
            .field("kid", &self.kid)
            .field("queue_capacity", &self.queue_capacity)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl RawEscalations {
    pub fn validate(
        self,
        tls: &super::proxy::RawTls,
    ) -> Result<Option<EscalationConfig>, ConfigError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let queue_capacity = super::in_range(
            "escalations.queue_capacity",
            self.queue_capacity,
            1..=1_000_000,
        )?;
        let timeout_ms = super::in_range("escalations.timeout_ms", self.timeout_ms, 1..=600_000)?;
        if self.notify.trim().is_empty() {
            return Ok(None);
        }
        let url: http::Uri = self.notify.parse().map_err(|_| {
            invalid(
                "escalations.notify",
                format!("`{}` is not a URL", self.notify),
            )
        })?;
        match url.scheme_str() {
            Some("http" | "https") if url.host().is_some() => {}
            _ => {
                return Err(invalid(
                    "escalations.notify",
                    format!(
                        "`{}` must be an `http://` or `https://` URL with a host",
                        self.notify
                    ),
                ))
            }
        }
        let Some(path) = self.signing_key.filter(|p| !p.as_os_str().is_empty()) else {
            return Err(invalid(
                "escalations.signing_key",
                "notifications are signed: set it to a PKCS#8 PEM Ed25519 key (`ecl-gate keygen --out DIR` writes one)",
            ));
        };
        let pem = std::fs::read_to_string(&path).map_err(|err| {
            invalid(
                "escalations.signing_key",
                format!("cannot read `{}`: {err}", path.display()),
            )
        })?;
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|err| {
            invalid(
                "escalations.signing_key",
                format!(
                    "`{}` is not an Ed25519 private key in PKCS#8 PEM: {err}",
                    path.display()
                ),
            )
        })?;
        let kid = match self.kid {
            Some(kid) if crate::profile::is_valid_ref(&kid) => kid,
            Some(kid) => {
                return Err(invalid(
                    "escalations.kid",
                    format!("`{kid}` must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"),
                ))
            }
            None => crate::approval::key_id(&key.verifying_key()),
        };
        let extra_roots = match &tls.ca_file {
            Some(path) if url.scheme_str() == Some("https") => super::proxy::ca_file(path)?,
            _ => Vec::new(),
        };
        Ok(Some(EscalationConfig {
            url,
            key,
            kid,
            queue_capacity: super::to_usize(queue_capacity),
            timeout: Duration::from_millis(timeout_ms),
            extra_roots,
            public_roots: tls.public_roots,
        }))
    }
}
