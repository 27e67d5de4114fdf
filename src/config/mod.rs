//! Configuration (SPEC §9): figment defaults < TOML file < environment, then validation.
//!
//! Owns turning untrusted settings into a [`Config`] the gate can run on. Everything is
//! checked before a port is bound; a bad value stops the start with a message naming its key.
//! It never lets the gate start half-configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub mod auth;
pub mod escalations;
pub mod proxy;
mod words;

pub(crate) use words::text;

use crate::approval::{parse_public_key, Approvals};
use crate::audit::SyncMode;

/// Where the TOML file is looked for when neither `--config` nor `ECL_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/ecl-gate.toml";

/// Upper bound for `max_body_bytes`: a request is a tool call, not a file upload.
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// Smallest non-zero `audit.rotate_bytes`: below a few records per file, rotation (two file
/// operations and a directory sync each) would cost more than the writing.
pub const MIN_ROTATE_BYTES: u64 = 4096;

/// Smallest non-zero `audit.rotate_interval_ms`.
pub const MIN_ROTATE_INTERVAL_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file `{0}` does not exist")]
    MissingFile(PathBuf),
    #[error("{}", words::describe(.0))]
    Extract(Box<figment::Error>),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key whose name is only known at run time, e.g. `upstreams."email.send".url`.
    #[error("invalid value for `{key}`: {message}")]
    InvalidKey { key: String, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The configuration exactly as written, every key known, nothing interpreted yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(deserialize_with = "text")]
    pub listen: String,
    #[serde(deserialize_with = "text")]
    pub admin_listen: String,
    #[serde(deserialize_with = "text")]
    pub mode: String,
    pub profiles_root: PathBuf,
    pub max_body_bytes: u64,
    pub body_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub max_header_bytes: u64,
    pub max_in_flight: u64,
    pub max_connections: u64,
    pub shutdown_grace_ms: u64,
    pub audit: RawAudit,
    pub approvals: RawApprovals,
    pub log: RawLog,
    // Proxy mode; validated in `proxy` below, used only with `mode = "proxy"`.
    pub max_upstream_body_bytes: u64,
    pub upstreams: std::collections::BTreeMap<String, proxy::RawUpstream>,
    pub grants: proxy::RawGrants,
    pub tls: proxy::RawTls,
    pub escalations: escalations::RawEscalations,
    pub auth: auth::RawAuth,
    pub listen_tls: auth::RawListenTls,
    // `[[bindings]]` tables cannot follow the shipped file's other tables as `bindings = []`
    // and still be uncommented into place, so the file leaves the key out.
    #[serde(default)]
    pub bindings: Vec<auth::RawBinding>,
    /// Shadow evaluation (issue 17): `"id@version" = "candidate_version"`.
    pub shadow: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    #[serde(deserialize_with = "text")]
    pub max_ttl: String,
    #[serde(deserialize_with = "text")]
    pub clock_skew: String,
    /// Unset: on in proxy mode (the gate executes the call), off in decide mode.
    pub single_use: Option<bool>,
    /// Unset: `used-approvals.jsonl` in the audit log's directory.
    pub used_path: Option<PathBuf>,
    /// `""`: the file at `used_path`; `postgres://…`: a ledger shared by a fleet of gates.
    pub ledger: String,
    /// `""`: the system's and Mozilla's roots.
    pub ledger_ca_file: String,
    /// `""`: the URL's password, else `PGPASSWORD`.
    pub ledger_password_file: String,
    pub ledger_pool_size: u64,
    pub ledger_connect_timeout_ms: u64,
    pub ledger_timeout_ms: u64,
    pub keys: std::collections::BTreeMap<String, RawApproverKey>,
}

/// One approver key: inline (`public_key`) or from a file (`file`), exactly one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproverKey {
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(deserialize_with = "text")]
    pub path: String,
    #[serde(deserialize_with = "text")]
    pub sync: String,
    pub sync_interval_ms: u64,
    pub include_request: bool,
    pub rotate_bytes: u64,
    pub rotate_interval_ms: u64,
    #[serde(deserialize_with = "text")]
    pub origin: String,
    #[serde(deserialize_with = "text")]
    pub checkpoint_key: String,
    pub checkpoint_every: u64,
    pub checkpoint_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(deserialize_with = "text")]
    pub level: String,
    #[serde(deserialize_with = "text")]
    pub format: String,
    pub include_args: bool,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:8000".into(),
            admin_listen: "127.0.0.1:9000".into(),
            mode: "decide".into(),
            profiles_root: "profiles".into(),
            max_body_bytes: 1024 * 1024,
            body_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            max_header_bytes: 64 * 1024,
            max_in_flight: 1024,
            max_connections: 4096,
            shutdown_grace_ms: 10_000,
            audit: RawAudit {
                path: "audit/ecl-audit.log".into(),
                sync: "always".into(),
                sync_interval_ms: 100,
                include_request: false,
                rotate_bytes: 0,
                rotate_interval_ms: 0,
                origin: "ecl-gate/{hostname}".into(),
                checkpoint_key: String::new(),
                checkpoint_every: 1000,
                checkpoint_interval_ms: 10_000,
            },
            approvals: RawApprovals {
                max_ttl: "1h".into(),
                clock_skew: "30s".into(),
                single_use: None,
                used_path: None,
                ledger: String::new(),
                ledger_ca_file: String::new(),
                ledger_password_file: String::new(),
                ledger_pool_size: 8,
                ledger_connect_timeout_ms: 5_000,
                ledger_timeout_ms: 2_000,
                keys: Default::default(),
            },
            log: RawLog {
                level: "info".into(),
                format: "pretty".into(),
                include_args: false,
            },
            max_upstream_body_bytes: proxy::DEFAULT_MAX_UPSTREAM_BODY_BYTES,
            upstreams: Default::default(),
            grants: Default::default(),
            tls: Default::default(),
            escalations: Default::default(),
            auth: Default::default(),
            listen_tls: Default::default(),
            bindings: Vec::new(),
            shadow: Default::default(),
        }
    }
}

/// What the gate does with an ALLOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer the decision; never call a tool.
    Decide,
    /// Also forward an ALLOWed call to the tool's upstream, with a grant, after its decision
    /// record is written.
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub mode: Mode,
    pub profiles_root: PathBuf,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub limits: Limits,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub audit: AuditConfig,
    pub approvals: Approvals,
    /// Where spent approval tokens are recorded, when `approvals.single_use` is on.
    pub single_use_ledger: Option<LedgerConfig>,
    /// Whether single use was switched off explicitly (logged at start in proxy mode).
    pub single_use_explicitly_off: bool,
    /// Start-time warnings for the operator, logged once logging is set up (validation runs
    /// before it, so a `tracing` call here would be lost).
    pub warnings: Vec<String>,
    pub log: LogConfig,
    /// Upstreams, grant signer and TLS trust; `Some` exactly in proxy mode.
    pub proxy: Option<proxy::ProxyConfig>,
    /// Where ESCALATEs are reported, signed; `None` when `escalations.notify` is empty.
    pub escalations: Option<escalations::EscalationConfig>,
    /// How callers authenticate on the execution listener.
    pub auth: auth::AuthConfig,
    /// TLS on the execution listener; `None`: plain HTTP.
    pub listen_tls: Option<auth::ListenTlsConfig>,
    /// Who may use which profiles and principals; `None`: anyone may use any.
    pub bindings: Option<crate::caller::Bindings>,
    /// Candidate profile versions evaluated in shadow, sorted by enforced profile.
    pub shadow: Vec<ShadowCandidate>,
}

/// `shadow."id@version" = "candidate"`: every request naming `id` at `version` is also decided
/// under `id` at `candidate`, and only a disagreement is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowCandidate {
    pub profile_id: String,
    pub profile_version: String,
    pub candidate_version: String,
}

/// The single-use ledger (`approvals.ledger`).
#[derive(Debug, Clone)]
pub enum LedgerConfig {
    /// One host: a locked, fsync'ed file (`approvals.used_path`).
    File(PathBuf),
    /// A fleet: one PostgreSQL table every gate spends tokens in.
    Postgres(crate::postgres::PgSettings),
}

/// Bounds on what clients can make the gate hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// Requests being decided at once; more are answered DENY `OVERLOADED` at once.
    pub max_in_flight: usize,
    /// Open client connections; more wait in the listen backlog.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Before `{pid}`/`{hostname}` expansion.
    pub path_template: String,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    pub include_request: bool,
    /// Roll the active file at this size; 0: never.
    pub rotate_bytes: u64,
    /// Roll the active file at this age; `None`: never.
    pub rotate_interval: Option<Duration>,
    /// Signed checkpoints of the Merkle tree over the records; `None`: off.
    pub checkpoints: Option<CheckpointConfig>,
}

/// `audit.origin` and `audit.checkpoint_*`, validated, with the key read.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Before `{pid}`/`{hostname}` expansion.
    pub origin_template: String,
    pub key: ed25519_dalek::SigningKey,
    pub every: u64,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub include_args: bool,
}

impl Config {
    /// Loads from the usual sources: `explicit` (`--config`), else `ECL_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`] when it exists; then the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(figment(config_file(explicit)?.as_deref()))
    }

    /// Extracts and validates; tests hand in their own figment.
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|err| ConfigError::Extract(Box::new(err)))?;
        raw.validate()
    }
}

/// The keys as written, from the same sources as [`Config::load`], without validating them or
/// reading any file they name: for tools that need a few keys but none of the secrets (e.g.
/// `profiles check` comparing profiles with the configured upstreams in CI).
pub fn load_raw(explicit: Option<&Path>) -> Result<RawConfig, ConfigError> {
    figment(config_file(explicit)?.as_deref())
        .extract()
        .map_err(|err| ConfigError::Extract(Box::new(err)))
}

/// The TOML file to read: `explicit` (`--config`), else `ECL_CONFIG`, else
/// [`DEFAULT_CONFIG_PATH`] when it exists.
fn config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    match explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ECL_CONFIG").map(PathBuf::from))
    {
        Some(path) if !path.is_file() => Err(ConfigError::MissingFile(path)),
        Some(path) => Ok(Some(path)),
        None => Ok(Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file())),
    }
}

/// The layered sources: defaults < TOML `file` < reference env names < `ECL_*`.
///
/// Kubernetes' service links are left out of `ECL_*` (see [`service_link_variables`]); every
/// other unknown `ECL_*` name still stops the start, so a misspelt key is never ignored.
pub fn figment(file: Option<&Path>) -> Figment {
    let links: Vec<String> = service_link_variables()
        .iter()
        .filter_map(|name| name.strip_prefix("ECL_"))
        .map(str::to_ascii_lowercase)
        .collect();
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(
            Env::raw()
                .only(&["AUDIT_LOG_PATH"])
                .map(|_| "audit.path".into()),
        )
        .merge(
            Env::raw()
                .only(&["PROFILES_ROOT"])
                .map(|_| "profiles_root".into()),
        )
        .merge(
            // The variables of `approver serve` and `wait-approval` are not the gate's: a shell
            // that exports them must still start a gate. Only those exact names: any other
            // `ECL_APPROVER_*` (a typo) stays an unknown key and stops the start.
            Env::prefixed("ECL_")
                .filter(move |key| {
                    key != "config"
                        && !is_approver_variable(key.as_str())
                        && !links.iter().any(|link| key == link.as_str())
                })
                .split("__"),
        )
}

/// Every environment variable `approver serve` and `wait-approval` read (their `env =`
/// names; a test keeps the two lists equal). The gate ignores exactly these, and the
/// approver's commands refuse any other `ECL_APPROVER_*` name.
pub const APPROVER_VARIABLES: &[&str] = &[
    "ECL_APPROVER_AGENT_LISTEN",
    "ECL_APPROVER_DB",
    "ECL_APPROVER_DB_CA_FILE",
    "ECL_APPROVER_DB_PASSWORD_FILE",
    "ECL_APPROVER_GATE_KEYS",
    "ECL_APPROVER_IDENTITY_HEADER",
    "ECL_APPROVER_KEY",
    "ECL_APPROVER_KID",
    "ECL_APPROVER_LISTEN",
    "ECL_APPROVER_MAX_TTL",
    "ECL_APPROVER_MAX_WAIT",
    "ECL_APPROVER_PASSWORDS",
    "ECL_APPROVER_SECURE_COOKIES",
    "ECL_APPROVER_STATE_DIR",
    "ECL_APPROVER_URL",
];

/// Whether `key` (an `ECL_` variable without its prefix, any case) is one of
/// [`APPROVER_VARIABLES`].
fn is_approver_variable(key: &str) -> bool {
    APPROVER_VARIABLES
        .iter()
        .filter_map(|name| name.strip_prefix("ECL_"))
        .any(|name| name.eq_ignore_ascii_case(key))
}

/// The `ECL_APPROVER_*` variables in this process's environment that nothing reads: typos
/// such as `ECL_APPROVER_LISTN`, sorted.
pub fn unknown_approver_variables() -> Vec<String> {
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.to_ascii_uppercase().starts_with("ECL_APPROVER_")
                && !APPROVER_VARIABLES.contains(&name.as_str())
        })
        .collect();
    unknown.sort();
    unknown
}

/// The `ECL*` variables in this process's environment that Kubernetes injects for a Service
/// whose name starts with `ecl` (`ecl-gate` → `ECL_GATE_SERVICE_HOST`, `ECL_GATE_PORT`,
/// `ECL_GATE_PORT_8000_TCP_ADDR`, …), recognised by name *and* value: an address, a port or a
/// `tcp://address:port` URL. A key of the gate's own with a service-link-like name but another
/// kind of value (`ECL_ADMIN_PORT=9001`) is not one of them, and stays an unknown key.
pub fn service_link_variables() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, value)| is_service_link(name, value))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

/// Whether `name=value` has the shape of a Kubernetes service-link variable (the kubelet's
/// `makeLinkVariables` and `FromServices`): `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`,
/// `{SVC}_SERVICE_PORT_{PORTNAME}`, `{SVC}_PORT`, `{SVC}_PORT_{N}_{PROTO}` and its `_ADDR`,
/// `_PORT`, `_PROTO`, where `{SVC}` is the upper-cased Service name with `-` as `_`.
pub fn is_service_link(name: &str, value: &str) -> bool {
    let is_port = |v: &str| !v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit());
    let is_host = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let is_proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    // `tcp://10.0.0.1:8000`, `udp://[fd00::1]:53`.
    let is_url = |v: &str, port: Option<&str>| {
        let Some((scheme, rest)) = v.split_once("://") else {
            return false;
        };
        let Ok(addr) = rest.parse::<std::net::SocketAddr>() else {
            return false;
        };
        is_proto(&scheme.to_ascii_uppercase()) && port.is_none_or(|p| p == addr.port().to_string())
    };
    if !name.starts_with("ECL") || name.bytes().any(|b| b.is_ascii_lowercase()) {
        return false;
    }
    // A DNS label, upper-cased: alphanumerics and `_`, never `_` at either end.
    let service_named = |head: &str| {
        !head.is_empty()
            && !head.starts_with('_')
            && !head.ends_with('_')
            && head
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    // A Service or port may itself be named `…-service-…`: try every `_SERVICE_`.
    for (at, _) in name.match_indices("_SERVICE_") {
        let (service, tail) = (&name[..at], &name[at + "_SERVICE_".len()..]);
        let matched = service_named(service)
            && match tail {
                "HOST" => is_host(value),
                "PORT" => is_port(value),
                _ => tail.strip_prefix("PORT_").is_some_and(service_named) && is_port(value),
            };
        if matched {
            return true;
        }
    }
    // `{SVC}_PORT` or `{SVC}_PORT_{N}_{PROTO}[_{FIELD}]`: find the `_PORT` that starts the tail.
    let mut search = name;
    while let Some(at) = search.rfind("_PORT") {
        let (service, tail) = name.split_at(at);
        search = service;
        if !service_named(service) {
            continue;
        }
        let parts: Vec<&str> = tail["_PORT".len()..].split('_').collect();
        let matched = match parts.as_slice() {
            [""] => is_url(value, None),
            ["", port, proto] => is_port(port) && is_proto(proto) && is_url(value, Some(port)),
            ["", port, proto, "ADDR"] => is_port(port) && is_proto(proto) && is_host(value),
            ["", port, proto, "PORT"] => is_port(port) && is_proto(proto) && value == *port,
            ["", port, proto, "PROTO"] => {
                is_port(port) && is_proto(proto) && value.eq_ignore_ascii_case(proto)
            }
            _ => false,
        };
        if matched {
            return true;
        }
    }
    false
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let admin_listen = parse_addr("admin_listen", &self.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(invalid(
                "admin_listen",
                "must differ from `listen`: the execution surface has exactly one route",
            ));
        }
        let mode = match self.mode.as_str() {
            "decide" => Mode::Decide,
            "proxy" => Mode::Proxy,
            other => {
                return Err(invalid(
                    "mode",
                    format!("`{other}`, expected `decide` or `proxy`"),
                ))
            }
        };
        if self.profiles_root.as_os_str().is_empty() {
            return Err(invalid("profiles_root", "must not be empty"));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(invalid(
                "max_body_bytes",
                format!("{} is outside 1..={MAX_BODY_LIMIT}", self.max_body_bytes),
            ));
        }
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .map_err(|_| invalid("max_body_bytes", "does not fit this platform"))?;
        if self.body_timeout_ms == 0 {
            return Err(invalid("body_timeout_ms", "must be at least 1"));
        }
        let limits = Limits {
            header_timeout: Duration::from_millis(in_range(
                "header_timeout_ms",
                self.header_timeout_ms,
                1..=600_000,
            )?),
            max_header_bytes: to_usize(in_range(
                "max_header_bytes",
                self.max_header_bytes,
                8192..=16 * 1024 * 1024,
            )?),
            max_in_flight: to_usize(in_range(
                "max_in_flight",
                self.max_in_flight,
                1..=1_000_000,
            )?),
            max_connections: to_usize(in_range(
                "max_connections",
                self.max_connections,
                1..=1_000_000,
            )?),
        };
        if self.audit.path.trim().is_empty() {
            return Err(invalid("audit.path", "must not be empty"));
        }
        let sync = match self.audit.sync.as_str() {
            "always" => SyncMode::Always,
            "interval" => SyncMode::Interval,
            "never" => SyncMode::Never,
            other => {
                return Err(invalid(
                    "audit.sync",
                    format!("`{other}`, expected `always`, `interval` or `never`"),
                ))
            }
        };
        if !(1..=60_000).contains(&self.audit.sync_interval_ms) {
            return Err(invalid(
                "audit.sync_interval_ms",
                format!("{} is outside 1..=60000", self.audit.sync_interval_ms),
            ));
        }
        if self.audit.rotate_bytes != 0 && self.audit.rotate_bytes < MIN_ROTATE_BYTES {
            return Err(invalid(
                "audit.rotate_bytes",
                format!(
                    "{} is below {MIN_ROTATE_BYTES}; use 0 to turn rotation off",
                    self.audit.rotate_bytes
                ),
            ));
        }
        if self.audit.rotate_interval_ms != 0
            && self.audit.rotate_interval_ms < MIN_ROTATE_INTERVAL_MS
        {
            return Err(invalid(
                "audit.rotate_interval_ms",
                format!(
                    "{} is below {MIN_ROTATE_INTERVAL_MS}; use 0 to turn rotation by age off",
                    self.audit.rotate_interval_ms
                ),
            ));
        }
        let checkpoints = self.audit.checkpoints()?;
        let format = match self.log.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}`, expected `pretty` or `json`"),
                ))
            }
        };
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("`{}`: {err}", self.log.level)));
        }
        let single_use_explicitly_off = self.approvals.single_use == Some(false);
        let single_use_ledger = self.approvals.ledger(mode, &self.audit.path)?;
        let shadow = shadow_candidates(&self.shadow)?;
        let approvals = self.approvals.validate()?;
        let escalations = self.escalations.validate(&self.tls)?;
        self.tls.reload_interval()?;
        // Upstreams and grants are read (credentials, keys) only when they will be used.
        let proxy = match mode {
            Mode::Proxy => Some(proxy::validate(
                self.upstreams,
                self.grants,
                self.tls,
                self.max_upstream_body_bytes,
            )?),
            Mode::Decide => None,
        };
        let listen_tls = self.listen_tls.validate()?;
        let auth = self.auth.validate(listen_tls.as_ref())?;
        let bindings = auth::validate_bindings(self.bindings)?;
        let shutdown_grace = Duration::from_millis(in_range(
            "shutdown_grace_ms",
            self.shutdown_grace_ms,
            0..=600_000,
        )?);
        let mut warnings = Vec::new();
        if let Some(proxy) = &proxy {
            warnings.extend(proxy.warnings.iter().cloned());
            for (tool, upstream) in &proxy.upstreams {
                if upstream.timeout > shutdown_grace {
                    warnings.push(format!(
                        "upstream `{tool}` has `timeout_ms` {} above `shutdown_grace_ms` {}: a call \
                         still waiting on it when a stop's grace ends is recorded with outcome \
                         error `shutdown` (the tool may have run it)",
                        upstream.timeout.as_millis(),
                        shutdown_grace.as_millis()
                    ));
                }
            }
            if single_use_explicitly_off {
                warnings.push(
                    "`approvals.single_use = false`: one approval may execute its call again and \
                     again until the token expires"
                        .to_owned(),
                );
            }
        }
        Ok(Config {
            auth,
            listen_tls,
            bindings,
            proxy,
            escalations,
            shadow,
            approvals,
            single_use_ledger,
            single_use_explicitly_off,
            warnings,
            listen,
            admin_listen,
            mode,
            profiles_root: self.profiles_root,
            max_body_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            limits,
            shutdown_grace,
            audit: AuditConfig {
                path_template: self.audit.path,
                sync,
                sync_interval: Duration::from_millis(self.audit.sync_interval_ms),
                include_request: self.audit.include_request,
                rotate_bytes: self.audit.rotate_bytes,
                rotate_interval: (self.audit.rotate_interval_ms > 0)
                    .then(|| Duration::from_millis(self.audit.rotate_interval_ms)),
                checkpoints,
            },
            log: LogConfig {
                level: self.log.level,
                format,
                include_args: self.log.include_args,
            },
        })
    }
}

impl RawAudit {
    /// Checkpoints are on exactly when `checkpoint_key` names a key file.
    fn checkpoints(&self) -> Result<Option<CheckpointConfig>, ConfigError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let origin = self.origin.trim();
        if origin.is_empty() || origin.contains([' ', '+', '\n', '\t']) {
            return Err(invalid(
                "audit.origin",
                format!(
                    "`{}` must be non-empty without spaces or `+` (it names the signing key)",
                    self.origin
                ),
            ));
        }
        let every = in_range(
            "audit.checkpoint_every",
            self.checkpoint_every,
            1..=100_000_000,
        )?;
        let interval = in_range(
            "audit.checkpoint_interval_ms",
            self.checkpoint_interval_ms,
            100..=86_400_000,
        )?;
        if self.checkpoint_key.trim().is_empty() {
            return Ok(None);
        }
        let path = &self.checkpoint_key;
        let pem = std::fs::read_to_string(path).map_err(|err| {
            invalid(
                "audit.checkpoint_key",
                format!("cannot read `{path}`: {err}"),
            )
        })?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|err| {
            invalid(
                "audit.checkpoint_key",
                format!("`{path}` is not an Ed25519 private key in PKCS#8 PEM (`ecl-gate keygen` writes one): {err}"),
            )
        })?;
        Ok(Some(CheckpointConfig {
            origin_template: origin.to_owned(),
            key,
            every,
            interval: Duration::from_millis(interval),
        }))
    }
}

/// The single-use ledger's file name when `approvals.used_path` is not set.
pub const DEFAULT_LEDGER_NAME: &str = "used-approvals.jsonl";

impl RawApprovals {
    /// `None` when single use is off; a ledger URL with single use switched off is refused
    /// rather than ignored. Single use unset: on in proxy mode, and wherever a URL is given.
    fn ledger(&self, mode: Mode, audit_path: &str) -> Result<Option<LedgerConfig>, ConfigError> {
        // Ranges are checked whether or not PostgreSQL is used: a typo never waits for the
        // day the ledger is switched on.
        let pool_size = to_usize(in_range(
            "approvals.ledger_pool_size",
            self.ledger_pool_size,
            1..=1024,
        )?);
        let connect_timeout = Duration::from_millis(in_range(
            "approvals.ledger_connect_timeout_ms",
            self.ledger_connect_timeout_ms,
            100..=600_000,
        )?);
        let statement_timeout = Duration::from_millis(in_range(
            "approvals.ledger_timeout_ms",
            self.ledger_timeout_ms,
            10..=600_000,
        )?);
        let url = self.ledger.trim();
        let on = self
            .single_use
            .unwrap_or(mode == Mode::Proxy || !url.is_empty());
        if !on {
            if !url.is_empty() {
                return Err(invalid(
                    "approvals.ledger",
                    "is set but `approvals.single_use` is off: turn it on, or remove the ledger",
                ));
            }
            return Ok(None);
        }
        if url.is_empty() {
            return self
                .file_ledger(audit_path)
                .map(|p| Some(LedgerConfig::File(p)));
        }
        if !crate::postgres::is_url(url) {
            return Err(invalid(
                "approvals.ledger",
                "expected empty (the file at `approvals.used_path`) or a URL like \
                 `postgres://user@host:5432/db`",
            ));
        }
        // The URL is parsed now so a typo stops the start; the password is read at connect.
        if let Err(err) = url.parse::<tokio_postgres::Config>() {
            return Err(invalid(
                "approvals.ledger",
                format!("`{}`: {err}", crate::postgres::redact(url)),
            ));
        }
        let path = |text: &str| (!text.trim().is_empty()).then(|| PathBuf::from(text));
        let mut settings = crate::postgres::PgSettings::new(url);
        settings.ca_file = path(&self.ledger_ca_file);
        settings.password_file = path(&self.ledger_password_file);
        settings.pool_size = pool_size;
        settings.connect_timeout = connect_timeout;
        settings.statement_timeout = statement_timeout;
        settings.application_name = "ecl-gate ledger".into();
        if let Some(path) = &settings.ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "approvals.ledger_ca_file",
                    format!("`{}` is not a readable file", path.display()),
                ));
            }
        }
        Ok(Some(LedgerConfig::Postgres(settings)))
    }

    /// The file ledger's path (a template: `{pid}`, `{hostname}` expand at start). The default
    /// sits beside the audit log, the one directory the gate must be able to write anyway (a
    /// relative default would resolve under a read-only working directory in the image).
    fn file_ledger(&self, audit_path: &str) -> Result<PathBuf, ConfigError> {
        if let Some(path) = &self.used_path {
            if path.as_os_str().is_empty() {
                return Err(invalid("approvals.used_path", "must not be empty"));
            }
            return Ok(path.clone());
        }
        let audit = Path::new(audit_path.trim());
        if audit == Path::new("/dev/null") {
            return Err(invalid(
                "approvals.used_path",
                "single use is on and `audit.path` is `/dev/null`, so there is no directory to \
                 keep the ledger beside: set `approvals.used_path`, or turn single use off with \
                 `approvals.single_use = false`",
            ));
        }
        let dir = audit.parent().unwrap_or(Path::new(""));
        Ok(dir.join(DEFAULT_LEDGER_NAME))
    }

    fn validate(self) -> Result<Approvals, ConfigError> {
        let max_ttl = parse_duration("approvals.max_ttl", &self.max_ttl)?;
        let clock_skew = parse_duration("approvals.clock_skew", &self.clock_skew)?;
        if max_ttl.as_secs() == 0 {
            return Err(invalid("approvals.max_ttl", "must be at least 1s"));
        }
        let mut keys = std::collections::BTreeMap::new();
        for (kid, key) in self.keys {
            let text = match (key.public_key, key.file) {
                (Some(text), None) => text,
                (None, Some(file)) => std::fs::read_to_string(&file).map_err(|err| {
                    invalid(
                        "approvals.keys",
                        format!("`{kid}`: cannot read `{}`: {err}", file.display()),
                    )
                })?,
                _ => {
                    return Err(invalid(
                        "approvals.keys",
                        format!("`{kid}` needs exactly one of `public_key` and `file`"),
                    ))
                }
            };
            let key = parse_public_key(&text)
                .map_err(|err| invalid("approvals.keys", format!("`{kid}`: {err}")))?;
            keys.insert(kid, key);
        }
        Ok(Approvals {
            keys,
            max_ttl,
            clock_skew,
        })
    }
}

fn shadow_candidates(
    raw: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<ShadowCandidate>, ConfigError> {
    use crate::profile::is_valid_ref;
    raw.iter()
        .map(|(enforced, candidate)| {
            let key = || format!("shadow.\"{enforced}\"");
            let (id, version) = enforced
                .split_once('@')
                .filter(|(id, version)| is_valid_ref(id) && is_valid_ref(version))
                .ok_or_else(|| ConfigError::InvalidKey {
                    key: key(),
                    message: format!(
                        "`{enforced}` is not a profile like `example@1.0.0` (id and version in [A-Za-z0-9._-])"
                    ),
                })?;
            if !is_valid_ref(candidate) {
                return Err(ConfigError::InvalidKey {
                    key: key(),
                    message: format!(
                        "`{candidate}` is not a profile version (a name in [A-Za-z0-9._-], like `1.1.0`)"
                    ),
                });
            }
            if candidate == version {
                return Err(ConfigError::InvalidKey {
                    key: key(),
                    message: format!(
                        "the candidate `{candidate}` is the enforced version itself; name a new version"
                    ),
                });
            }
            Ok(ShadowCandidate {
                profile_id: id.to_owned(),
                profile_version: version.to_owned(),
                candidate_version: candidate.clone(),
            })
        })
        .collect()
}

fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|err| {
        invalid(
            key,
            format!("`{value}` is not a duration like `15m`: {err}"),
        )
    })
}

pub(crate) fn in_range(
    key: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}

/// Every range above fits a 32-bit `usize`.
pub(crate) fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like `127.0.0.1:8000`"),
        )
    })
}

#[cfg(test)]
mod tests;
