//! The state every execution request shares: profiles, audit log, limits.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::caller::Caller;
use tokio::sync::Semaphore;

use crate::config::{Config, Limits};
use crate::decision::{self, Attempt, Context, Decision, Runtime};
use crate::metrics::Metrics;
use crate::profile::ProfileStore;

use super::shadow::Shadows;

/// The decision function the gate calls; [`decision::decide`] except in fault-injection tests.
pub type DecideFn = fn(Attempt<'_>, &Context, &Caller, SystemTime) -> Decision;

pub struct Gate {
    pub profiles: ProfileStore,
    pub audit: AuditLog,
    pub context: Context,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub include_request: bool,
    pub limits: Limits,
    /// Permits for requests being decided (`max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    pub decide: DecideFn,
    pub metrics: Arc<Metrics>,
    /// `log.include_args`: tool arguments in decision log lines.
    pub log_args: bool,
    /// The single-use ledger, when `approvals.single_use` is on.
    pub used_tokens: Option<crate::ledger::Ledger>,
    /// Proxy mode: forwards ALLOWed calls after their decision record is written.
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// `escalations.notify`: reports every ESCALATE after its record is written.
    pub notifier: Option<crate::notify::Notifier>,
    /// Who is calling; [`Authenticator::none`] (everyone `anonymous`) until `serve` loads keys.
    pub auth: Authenticator,
    /// TLS on the execution listener; `None`: plain HTTP.
    pub tls: Option<Arc<super::tls::TlsListener>>,
    /// Candidate profile versions decided in shadow (`shadow` in the config).
    pub shadow: Shadows,
}

impl Gate {
    pub fn new(config: &Config, profiles: ProfileStore, audit: AuditLog) -> Gate {
        Gate {
            profiles,
            audit,
            context: Context::new(config.approvals.clone()).with_bindings(config.bindings.clone()),
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            include_request: config.audit.include_request,
            limits: config.limits,
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            decide: decision::decide,
            metrics: Arc::new(Metrics::new(&Runtime::current())),
            log_args: config.log.include_args,
            used_tokens: None,
            proxy: None,
            notifier: None,
            auth: Authenticator::none(),
            tls: None,
            shadow: Shadows::new(&config.shadow),
        }
    }
}
