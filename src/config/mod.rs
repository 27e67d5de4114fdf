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
    #[error("{0}")]
    Extract(Box<figment::Error>),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
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
    pub listen: String,
    pub admin_listen: String,
    pub mode: String,
    pub profiles_root: PathBuf,
    pub max_body_bytes: u64,
    pub body_timeout_ms: u64,
    pub audit: RawAudit,
    pub log: RawLog,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: String,
    pub sync: String,
    pub sync_interval_ms: u64,
    pub include_request: bool,
    pub rotate_bytes: u64,
    pub rotate_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: String,
    pub format: String,
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
            audit: RawAudit {
                path: "audit/ecl-audit.log".into(),
                sync: "always".into(),
                sync_interval_ms: 100,
                include_request: false,
                rotate_bytes: 0,
                rotate_interval_ms: 0,
            },
            log: RawLog {
                level: "info".into(),
                format: "pretty".into(),
            },
        }
    }
}

/// What the gate does with an ALLOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer the decision; never call a tool.
    Decide,
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
    pub audit: AuditConfig,
    pub log: LogConfig,
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
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Config {
    /// Loads from the usual sources: `explicit` (`--config`), else `ECL_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`] when it exists; then the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ECL_CONFIG").map(PathBuf::from))
        {
            Some(path) if !path.is_file() => return Err(ConfigError::MissingFile(path)),
            Some(path) => Some(path),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
        };
        Config::from_figment(figment(file.as_deref()))
    }

    /// Extracts and validates; tests hand in their own figment.
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|err| ConfigError::Extract(Box::new(err)))?;
        raw.validate()
    }
}

/// The layered sources: defaults < TOML `file` < reference env names < `ECL_*`.
pub fn figment(file: Option<&Path>) -> Figment {
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
            Env::prefixed("ECL_")
                .filter(|key| key != "config")
                .split("__"),
        )
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
            "proxy" => {
                return Err(invalid(
                    "mode",
                    "`proxy` is not available in this version; use `decide`",
                ))
            }
            other => return Err(invalid("mode", format!("`{other}`, expected `decide`"))),
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
        Ok(Config {
            listen,
            admin_listen,
            mode,
            profiles_root: self.profiles_root,
            max_body_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            audit: AuditConfig {
                path_template: self.audit.path,
                sync,
                sync_interval: Duration::from_millis(self.audit.sync_interval_ms),
                include_request: self.audit.include_request,
                rotate_bytes: self.audit.rotate_bytes,
                rotate_interval: (self.audit.rotate_interval_ms > 0)
                    .then(|| Duration::from_millis(self.audit.rotate_interval_ms)),
            },
            log: LogConfig {
                level: self.log.level,
                format,
            },
        })
    }
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
