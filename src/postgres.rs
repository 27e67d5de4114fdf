//! Connections to PostgreSQL, the fleet's shared truth: the single-use ledger
//! (`approvals.ledger`), `ecl-gate audit ship` and `ecl-gate audit verify --db`.
//!
//! Owns turning a URL plus settings (CA file, password file or `PGPASSWORD`, timeouts, pool
//! size) into a connection pool, and the one place a URL is redacted for logs. It must never
//! log or return a password, and never connect without TLS verification when TLS is used: a
//! certificate that does not verify fails the connection, it is never downgraded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Everything needed to reach one database.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user[:password]@host[:port]/db[?sslmode=…]`; never logged as is.
    pub url: String,
    /// Trust exactly these roots for TLS to PostgreSQL; `None`: the system's and Mozilla's.
    pub ca_file: Option<PathBuf>,
    /// The password, when the URL has none; else `PGPASSWORD`.
    pub password_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`; callers also bound each operation on their side.
    pub statement_timeout: Duration,
    pub pool_size: usize,
    /// `application_name`, so a DBA can tell gates and shippers apart in `pg_stat_activity`.
    pub application_name: String,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redact(&self.url))
            .field("ca_file", &self.ca_file)
            .field("password_file", &self.password_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgSettings {
    /// Defaults for a URL: 5 s to connect, 5 s per statement, a pool of 8.
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            ca_file: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            pool_size: 8,
            application_name: "ecl-gate".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("`{url}` is not a PostgreSQL URL like `postgres://user@host:5432/db`: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read the PostgreSQL password file `{}`: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PostgreSQL CA file `{}`: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot set up TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("cannot build the PostgreSQL connection pool: {0}")]
    Pool(String),
}

/// Whether `text` names a PostgreSQL database rather than a file.
pub fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// The URL with its password replaced by `***`: what logs and error messages show.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password can also hide in the query (`?password=`).
    let tail = if tail.contains("password=") {
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let query: Vec<String> = query
            .split('&')
            .map(|pair| {
                if pair.starts_with("password=") {
                    "password=***".to_owned()
                } else {
                    pair.to_owned()
                }
            })
            .collect();
        format!("{path}?{}", query.join("&"))
    } else {
        tail.to_owned()
    };
    format!("{scheme}://{authority}{tail}")
}

/// The parsed connection settings, password and timeouts applied.
pub fn client_config(settings: &PgSettings) -> Result<tokio_postgres::Config, PgError> {
    let mut config: tokio_postgres::Config =
        settings
            .url
            .parse()
            .map_err(|err: tokio_postgres::Error| PgError::Url {
                url: redact(&settings.url),
                reason: err.to_string(),
            })?;
    if config.get_password().is_none() {
        if let Some(path) = &settings.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
                path: path.clone(),
                source,
            })?;
            config.password(text.trim_end_matches(['\n', '\r']));
        } else if let Some(password) = std::env::var_os("PGPASSWORD") {
            config.password(password.to_string_lossy().as_bytes());
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(settings.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(&settings.application_name);
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    let timeout_ms = settings.statement_timeout.as_millis().max(1);
    config.options(format!("-c statement_timeout={timeout_ms}"));
    Ok(config)
}

/// A pool of connections; connections are opened lazily, on first use.
pub fn pool(settings: &PgSettings) -> Result<Pool, PgError> {
    let config = client_config(settings)?;
    let tls = tls_connector(settings.ca_file.as_deref())?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(settings.connect_timeout);
    // No bound on waiting for a free connection here: callers bound the whole operation
    // (the ledger's `ledger_timeout_ms`), so a burst that queues is judged by the same clock.
    Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .wait_timeout(None)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|err| PgError::Pool(err.to_string()))
}

/// rustls with ring; roots from `ca_file`, else the system's and Mozilla's. Used when the
/// URL's `sslmode` asks for TLS (`prefer`, the default, or `require`).
fn tls_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_error = |reason: String| PgError::CaFile {
                path: path.to_path_buf(),
                reason,
            };
            let bytes =
                std::fs::read(path).map_err(|err| ca_error(format!("cannot read: {err}")))?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| ca_error(err.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
            }
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| PgError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// A database error as one line, without the password (the driver never includes it).
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

/// A pool error as one line.
pub fn describe_pool(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(err) => describe(err),
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => {
            "timed out opening a connection".into()
        }
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Recycle) => {
            "timed out checking a pooled connection".into()
        }
        deadpool_postgres::PoolError::Timeout(_) => {
            "timed out waiting for a free connection".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_in_userinfo_and_query() {
        assert_eq!(
            redact("postgres://gate:s3cret@db:5432/ecl?sslmode=require"),
            "postgres://gate:***@db:5432/ecl?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://gate@db/ecl?password=s3cret&sslmode=disable"),
            "postgresql://gate@db/ecl?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://db"), "postgres://db");
        assert_eq!(redact("not a url"), "***");
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let err = client_config(&PgSettings::new("postgres://u:pw@db:notaport/x")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("postgres://u:***@db:notaport/x"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}

/// Serializes schema creation across processes starting at once (any constant; ours).
const SCHEMA_LOCK: i64 = 0x4543_4c5f_4741_5445; // "ECL_GATE"

/// Why a database cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot reach PostgreSQL at `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("PostgreSQL at `{url}`: {what}: {reason}")]
    Refused {
        url: String,
        what: String,
        reason: String,
    },
    #[error(
        "PostgreSQL at `{url}`: the `{component}` tables are at schema version {found}; this \
         ecl-gate knows version {known}: {hint}"
    )]
    Version {
        url: String,
        component: String,
        found: i32,
        known: i32,
        hint: &'static str,
    },
}

/// One component's tables (`approvals`, `audit`) at one version of its schema.
pub struct Schema<'a> {
    pub component: &'a str,
    pub version: i32,
    /// Creates every table; run once, in the transaction that records the version.
    pub create: &'a str,
    /// Selects every column the code uses (`LIMIT 0`): fails when a table was altered.
    pub probe: &'a str,
}

/// Creates `schema`'s tables when missing, or checks they are the ones this build expects.
/// Idempotent, and safe when several processes start at once (an advisory lock).
pub async fn ensure_schema(pool: &Pool, url: &str, schema: &Schema<'_>) -> Result<(), SchemaError> {
    let url = redact(url);
    let mut client = pool.get().await.map_err(|err| SchemaError::Unreachable {
        url: url.clone(),
        reason: describe_pool(&err),
    })?;
    let refused = |what: &str| {
        let url = url.clone();
        let what = what.to_owned();
        move |err: tokio_postgres::Error| SchemaError::Refused {
            url,
            what,
            reason: describe(&err),
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(refused("cannot begin a transaction"))?;
    // Quiet: `IF NOT EXISTS` would otherwise send a notice on every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(refused("cannot begin a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(refused("cannot take the schema lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ecl_gate_schema (
             component text PRIMARY KEY,
             version integer NOT NULL,
             installed_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(refused("cannot create table `ecl_gate_schema`"))?;
    let found = tx
        .query_opt(
            "SELECT version FROM ecl_gate_schema WHERE component = $1",
            &[&schema.component],
        )
        .await
        .map_err(refused("cannot read table `ecl_gate_schema`"))?
        .map(|row| row.try_get::<_, i32>(0))
        .transpose()
        .map_err(refused(
            "column `ecl_gate_schema.version` is not an integer",
        ))?;
    match found {
        None => {
            tx.batch_execute(schema.create)
                .await
                .map_err(refused(&format!(
                    "cannot create the `{}` tables (an existing table of that name that this \
                 gate did not create?)",
                    schema.component
                )))?;
            tx.execute(
                "INSERT INTO ecl_gate_schema (component, version) VALUES ($1, $2)",
                &[&schema.component, &schema.version],
            )
            .await
            .map_err(refused("cannot record the schema version"))?;
            tracing::info!(
                component = schema.component,
                version = schema.version,
                "created PostgreSQL tables"
            );
        }
        Some(found) if found == schema.version => {
            tx.batch_execute(schema.probe)
                .await
                .map_err(refused(&format!(
                    "the `{}` tables are not as schema version {} defines them",
                    schema.component, schema.version
                )))?;
        }
        Some(found) => {
            return Err(SchemaError::Version {
                url,
                component: schema.component.to_owned(),
                found,
                known: schema.version,
                hint: if found > schema.version {
                    "upgrade this ecl-gate to one that knows the newer schema"
                } else {
                    "no migration from that version is known; move the tables aside"
                },
            })
        }
    }
    tx.commit()
        .await
        .map_err(refused("cannot commit the schema"))?;
    Ok(())
}

/// One connection, for the command-line tools (`audit ship`, `audit verify --db`); its
/// driver task runs on the current runtime.
pub async fn connect(settings: &PgSettings) -> Result<tokio_postgres::Client, String> {
    let config = client_config(settings).map_err(|e| e.to_string())?;
    let tls = tls_connector(settings.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let (client, connection) = tokio::time::timeout(settings.connect_timeout, config.connect(tls))
        .await
        .map_err(|_| {
            format!(
                "cannot reach PostgreSQL at `{}`: no answer within {:?}",
                redact(&settings.url),
                settings.connect_timeout
            )
        })?
        .map_err(|err| {
            format!(
                "cannot reach PostgreSQL at `{}`: {}",
                redact(&settings.url),
                describe(&err)
            )
        })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %describe(&err), "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// A pool of exactly one connection, for code written against [`ensure_schema`].
pub fn single(settings: &PgSettings) -> Result<Pool, PgError> {
    let mut one = settings.clone();
    one.pool_size = 1;
    pool(&one)
}
