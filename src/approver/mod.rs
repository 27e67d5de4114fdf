//! `ecl-gate approver serve`: the service beside the gate where people decide escalations.
//!
//! Two listeners. The agent listener takes the gate's signed notifications
//! (`POST /v1/notifications`) and answers agents waiting for a decision
//! (`GET /v1/approvals/{intent_hash}`); the inbox listener serves approvers the HTML inbox,
//! behind a sign-in. Owns the approver's signing key (it never leaves this process), the
//! pending escalations ([`store`]) and its own hash-chained audit log, written with the gate's
//! record and chain code so `ecl-gate audit verify` checks it.
//!
//! It must never issue a token without its audit record written first, never issue a second
//! token (or a token after a rejection) for one intent, never accept a notification whose gate
//! signature does not verify, and never accept a form without its CSRF token.
//!
//! - `store`: pending escalations, durable, expiring: a file, or PostgreSQL shared by replicas.
//! - `auth`: password file, sessions, identity header, CSRF.
//! - `pages`: the HTML.
//! - `routes`: the HTTP handlers of both listeners.

pub mod auth;
pub mod pages;
mod routes;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::audit::AuditLog;

pub use routes::{agent_router, inbox_router};

/// Everything `approver serve` runs on, validated by the CLI.
pub struct Settings {
    pub listen: SocketAddr,
    pub agent_listen: SocketAddr,
    /// Signs approval tokens; its public key goes into the gate's `approvals.keys`.
    pub key: SigningKey,
    pub kid: String,
    /// Gate keys notifications must verify under, by `kid`.
    pub gate_keys: BTreeMap<String, VerifyingKey>,
    pub passwords: Option<auth::Passwords>,
    /// Trust this header's value as the approver's identity (set by an authenticating proxy).
    pub identity_header: Option<http::HeaderName>,
    pub state_dir: PathBuf,
    /// Longest approval an approver may give: the gate's `approvals.max_ttl`.
    pub max_ttl: Duration,
    /// Mark cookies `Secure` (the inbox is served over HTTPS by a proxy in front).
    pub secure_cookies: bool,
    /// Longest a waiting agent's request is held open.
    pub max_wait: Duration,
}

/// The state both listeners share.
pub struct App {
    pub key: SigningKey,
    pub kid: String,
    pub gate_keys: BTreeMap<String, VerifyingKey>,
    pub passwords: Option<auth::Passwords>,
    pub identity_header: Option<http::HeaderName>,
    pub max_ttl: Duration,
    pub secure_cookies: bool,
    pub max_wait: Duration,
    pub store: store::Escalations,
    pub audit: AuditLog,
    pub sessions: auth::Sessions,
    pub failures: auth::Failures,
    /// Bumped at every change, so waiting agents look again.
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(
        settings: Settings,
        store: store::Escalations,
        audit: AuditLog,
    ) -> Result<Arc<App>, String> {
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(App {
            key: settings.key,
            kid: settings.kid,
            gate_keys: settings.gate_keys,
            passwords: settings.passwords,
            identity_header: settings.identity_header,
            max_ttl: settings.max_ttl,
            secure_cookies: settings.secure_cookies,
            max_wait: settings.max_wait,
            store,
            audit,
            sessions: auth::Sessions::new()?,
            failures: auth::Failures::default(),
            changed,
        }))
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Seconds since 1970, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
