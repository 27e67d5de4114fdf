//! `ecl-gate approver serve` and `ecl-gate approver passwd`: the approval inbox service.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;

use crate::approval::{key_id, parse_public_key};
use crate::approver::store::{Escalations, FileStore, PgStore};
use crate::approver::{self, auth, App, Settings};
use crate::audit::{AuditLog, AuditSettings, SyncMode};
use crate::postgres::{self, PgSettings};

#[derive(Debug, clap::Subcommand)]
pub enum ApproverCommand {
    /// Serve the approval inbox (for approvers) and the notification and wait endpoints (for
    /// the gate and agents)
    Serve(Box<ServeArgs>),
    /// Print a password file line `NAME:$argon2id$…` for the password read from stdin
    Passwd {
        /// The approver's name; it becomes the `iss` of the tokens they sign
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The inbox (HTML, for approvers)
    #[arg(long, env = "ECL_APPROVER_LISTEN", default_value = "127.0.0.1:8300")]
    listen: SocketAddr,
    /// Notifications from the gate (`POST /v1/notifications`) and agents waiting
    /// (`GET /v1/approvals/{intent_hash}`)
    #[arg(
        long,
        env = "ECL_APPROVER_AGENT_LISTEN",
        default_value = "127.0.0.1:8301"
    )]
    agent_listen: SocketAddr,
    /// The approver's private key (PKCS#8 PEM, `ecl-gate keygen` writes one); signs tokens
    #[arg(long, env = "ECL_APPROVER_KEY", value_name = "FILE")]
    key: PathBuf,
    /// Key id in tokens; default: derived from the key (what `keygen` named the files)
    #[arg(long, env = "ECL_APPROVER_KID")]
    kid: Option<String>,
    /// A gate's public key notifications must verify under: `FILE` (kid derived) or
    /// `KID=FILE`; repeat for several gates
    #[arg(
        long = "gate-key",
        env = "ECL_APPROVER_GATE_KEYS",
        value_delimiter = ',',
        required = true,
        value_name = "[KID=]FILE"
    )]
    gate_keys: Vec<String>,
    /// Password file (`approver passwd` prints its lines): approvers sign in with name and password
    #[arg(long, env = "ECL_APPROVER_PASSWORDS", value_name = "FILE")]
    passwords: Option<PathBuf>,
    /// Trust this request header as the approver's identity, e.g. `X-Forwarded-User` from
    /// oauth2-proxy; ONLY when nothing but that proxy can reach --listen
    #[arg(long, env = "ECL_APPROVER_IDENTITY_HEADER", value_name = "NAME")]
    identity_header: Option<String>,
    /// Where the pending escalations (`state.jsonl`, unless --db) and the audit log
    /// (`approver-audit.log`) live
    #[arg(
        long,
        env = "ECL_APPROVER_STATE_DIR",
        default_value = "approver",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    /// Keep the escalations in this PostgreSQL database (the gates' fleet database) instead
    /// of `state.jsonl`, so several approver replicas share them:
    /// postgres://user@host:5432/db?sslmode=require (the password: --db-password-file,
    /// PGPASSWORD, or in the URL; never logged)
    #[arg(
        long,
        env = "ECL_APPROVER_DB",
        value_name = "URL",
        hide_env_values = true
    )]
    db: Option<String>,
    /// Trust only this CA (PEM) for TLS to PostgreSQL; default: the system's and Mozilla's roots
    #[arg(
        long,
        env = "ECL_APPROVER_DB_CA_FILE",
        value_name = "FILE",
        requires = "db"
    )]
    db_ca_file: Option<PathBuf>,
    /// Read the database password from this file when the URL has none (else PGPASSWORD)
    #[arg(
        long,
        env = "ECL_APPROVER_DB_PASSWORD_FILE",
        value_name = "FILE",
        requires = "db"
    )]
    db_password_file: Option<PathBuf>,
    /// Longest approval approvers may give: the gate's `approvals.max_ttl`
    #[arg(long, env = "ECL_APPROVER_MAX_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    max_ttl: Duration,
    /// Longest a waiting agent's request is held open
    #[arg(long, env = "ECL_APPROVER_MAX_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// Mark cookies `Secure`: set it when approvers reach the inbox over HTTPS
    #[arg(long, env = "ECL_APPROVER_SECURE_COOKIES")]
    secure_cookies: bool,
}

pub fn run(command: ApproverCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApproverCommand::Passwd { name } => passwd(&name),
        ApproverCommand::Serve(args) => serve(*args),
    }
}

fn passwd(name: &str) -> anyhow::Result<ExitCode> {
    if !auth::is_identity(name) {
        bail!("`{name}` is not a valid approver name (printable ASCII, no spaces, `:` or quotes)");
    }
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("cannot read the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.len() < 8 {
        bail!("the password must have at least 8 characters");
    }
    let hash =
        auth::hash_password(password).map_err(|err| anyhow::anyhow!("cannot hash: {err}"))?;
    println!("{name}:{hash}");
    Ok(ExitCode::SUCCESS)
}

fn read_signing_key(path: &PathBuf) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key `{}`", path.display()))?;
    SigningKey::from_pkcs8_pem(pem.trim())
        .map_err(|err| anyhow::anyhow!("`{}` is not an Ed25519 private key: {err}", path.display()))
}

fn gate_keys(specs: &[String]) -> anyhow::Result<BTreeMap<String, ed25519_dalek::VerifyingKey>> {
    let mut keys = BTreeMap::new();
    for spec in specs {
        let (kid, file) = match spec.split_once('=') {
            Some((kid, file)) => (Some(kid.to_owned()), PathBuf::from(file)),
            None => (None, PathBuf::from(spec)),
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("--gate-key: cannot read `{}`", file.display()))?;
        let key = parse_public_key(&text)
            .map_err(|err| anyhow::anyhow!("--gate-key `{}`: {err}", file.display()))?;
        keys.insert(kid.unwrap_or_else(|| key_id(&key)), key);
    }
    Ok(keys)
}

/// Refuses `ECL_APPROVER_*` variables that nothing reads: a typo must not be ignored.
pub fn refuse_unknown_variables() -> anyhow::Result<()> {
    let unknown = crate::config::unknown_approver_variables();
    if unknown.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = unknown.iter().map(|name| format!("`{name}`")).collect();
    bail!(
        "unknown environment variable {}: the approver reads only {}",
        names.join(", "),
        crate::config::APPROVER_VARIABLES.join(", ")
    )
}

/// The database settings from `--db` and its companions, checked before anything starts.
fn db_settings(args: &ServeArgs) -> anyhow::Result<Option<PgSettings>> {
    let Some(url) = args.db.as_deref() else {
        return Ok(None);
    };
    if !postgres::is_url(url) {
        bail!(
            "--db `{}` is not a PostgreSQL URL like `postgres://user@host:5432/db`",
            postgres::redact(url)
        );
    }
    let mut settings = PgSettings::new(url);
    settings.ca_file.clone_from(&args.db_ca_file);
    settings.password_file.clone_from(&args.db_password_file);
    settings.application_name = "ecl-gate approver".into();
    settings.pool_size = 8;
    // Parsed now (and the password file read) so a typo stops the start, named.
    postgres::client_config(&settings)?;
    if let Some(path) = &settings.ca_file {
        if !path.is_file() {
            bail!("--db-ca-file `{}` is not a readable file", path.display());
        }
    }
    Ok(Some(settings))
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::cli::serve::init_plain_logging();
    refuse_unknown_variables()?;
    let db = db_settings(&args)?;
    let key = read_signing_key(&args.key)?;
    let kid = args
        .kid
        .clone()
        .unwrap_or_else(|| key_id(&key.verifying_key()));
    let gate_keys = gate_keys(&args.gate_keys)?;
    let passwords = match &args.passwords {
        Some(path) => Some(auth::Passwords::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let identity_header = match &args.identity_header {
        Some(name) => Some(
            http::HeaderName::try_from(name.as_str())
                .map_err(|_| anyhow::anyhow!("--identity-header `{name}` is not a header name"))?,
        ),
        None => None,
    };
    if passwords.is_none() && identity_header.is_none() {
        bail!("approvers must authenticate: give --passwords FILE and/or --identity-header NAME");
    }
    if args.max_ttl.as_secs() == 0 {
        bail!("--max-ttl must be at least 1s");
    }
    if args.listen == args.agent_listen && args.listen.port() != 0 {
        bail!("--listen and --agent-listen must differ: agents must not reach the inbox");
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create `{}`", args.state_dir.display()))?;
    let file_store = match &db {
        Some(_) => None,
        None => Some(FileStore::open(
            &args.state_dir.join("state.jsonl"),
            &gate_keys,
            approver::now_secs(),
        )?),
    };
    let audit_path = args.state_dir.join("approver-audit.log");
    let audit = AuditLog::open(AuditSettings {
        path: audit_path.clone(),
        sync: SyncMode::Always,
        sync_interval: Duration::from_millis(100),
        queue_capacity: 1024,
        observer: None,
        checkpoints: None,
    })
    .with_context(|| {
        format!(
            "cannot open the approver's audit log `{}`",
            audit_path.display()
        )
    })?;
    let kids: Vec<String> = gate_keys.keys().cloned().collect();
    let settings = Settings {
        listen: args.listen,
        agent_listen: args.agent_listen,
        key,
        kid: kid.clone(),
        gate_keys,
        passwords,
        identity_header,
        state_dir: args.state_dir.clone(),
        max_ttl: args.max_ttl,
        secure_cookies: args.secure_cookies,
        max_wait: args.max_wait,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let inbox_listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on `{}`", settings.listen))?;
        let agent_listener = tokio::net::TcpListener::bind(settings.agent_listen)
            .await
            .with_context(|| format!("cannot listen on `{}` (--agent-listen)", settings.agent_listen))?;
        let mut signals = crate::cli::serve::StopSignals::install()
            .context("cannot listen for SIGTERM")?;
        let inbox_addr = inbox_listener.local_addr()?;
        let agent_addr = agent_listener.local_addr()?;
        let store = match (file_store, &db) {
            (Some(file), _) => Escalations::File(tokio::sync::Mutex::new(file)),
            (None, Some(db)) => {
                let pg = PgStore::connect(db, settings.gate_keys.clone()).await?;
                tracing::info!(db = %pg.url(), "escalations are kept in PostgreSQL, shared with other approver replicas");
                Escalations::Postgres(pg)
            }
            (None, None) => bail!("no store for the escalations"),
        };
        let pending = store
            .pending(approver::now_secs())
            .await
            .map_err(|err| anyhow::anyhow!("cannot read the escalations: {err}"))?;
        let app = App::new(settings, store, audit).map_err(anyhow::Error::msg)?;
        if matches!(app.store, Escalations::Postgres(_)) {
            tokio::spawn(purge_expired(Arc::clone(&app)));
        }
        tracing::info!(
            kid = %kid,
            gate_kids = ?kids,
            store = app.store.kind(),
            pending,
            audit = %audit_path.display(),
            "ecl-gate approver: inbox on http://{inbox_addr}/, notifications on http://{agent_addr}/v1/notifications, approvals on http://{agent_addr}/v1/approvals/{{intent_hash}}"
        );
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let inbox = axum::serve(inbox_listener, approver::inbox_router(Arc::clone(&app)))
            .with_graceful_shutdown(notified(Arc::clone(&shutdown)));
        let agent = axum::serve(agent_listener, approver::agent_router(Arc::clone(&app)))
            .with_graceful_shutdown(notified(Arc::clone(&shutdown)));
        let signals = async {
            signals.next().await;
            tracing::info!("stopping: no new connections; waiting agents are answered when their wait ends");
            shutdown.notify_waiters();
        };
        let (a, b, ()) = tokio::join!(inbox, agent, signals);
        a.context("inbox listener failed")?;
        b.context("agent listener failed")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes escalations past their end from the shared table, once a minute; every replica
/// does it (the statements are idempotent and bounded).
async fn purge_expired(app: Arc<App>) {
    let Escalations::Postgres(pg) = &app.store else {
        return;
    };
    let mut every = tokio::time::interval(approver::store::postgres::PURGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pg.purge(approver::now_secs()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired escalations purged"),
            Err(err) => {
                tracing::warn!(error = %err, "expired escalations could not be purged; retrying in a minute")
            }
        }
    }
}

async fn notified(notify: Arc<tokio::sync::Notify>) {
    notify.notified().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args as _;

    // The gate lets through exactly the approver's variables: the list must name every
    // `env =` of `approver serve` and `wait-approval`, and nothing else.
    #[test]
    fn the_approver_variable_list_is_exactly_what_the_commands_read() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let command = crate::cli::wait::WaitArgs::augment_args(command);
        let mut read: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        read.sort();
        let mut listed: Vec<String> = crate::config::APPROVER_VARIABLES
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        listed.sort();
        assert_eq!(read, listed);
    }
}
