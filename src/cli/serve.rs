//! `ecl-gate serve`: load and check everything, bind, then serve until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::admin::Admin;
use crate::approval::UsedTokens;
use crate::audit::{expand_path, AuditError, AuditLog, AuditSettings, FileOptions};
use crate::auth::Authenticator;
use crate::config::{Config, LedgerConfig, LogFormat};
use crate::decision::Runtime;
use crate::ledger::{Ledger, PgLedger, PURGE_EVERY};
use crate::metrics::Metrics;
use crate::profile::{is_valid_ref, ProfileStore};
use crate::proxy::{tools_without_upstream, Proxy, SHUTDOWN_RECORDING};
use crate::server::{Gate, Server, TlsListener};

use super::EXIT_CONFIG;

/// Records that may wait for the audit writer before callers wait for a place.
const AUDIT_QUEUE_CAPACITY: usize = 8192;

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// When the audit log's last record does not verify, move the bad tail to
    /// `<log>.tampered-<unix-seconds>` (never deleted) and continue the chain from the last
    /// good record, instead of refusing to start
    #[arg(long)]
    pub audit_repair: bool,
}

pub fn run(config_path: Option<&Path>, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    init_logging(&config);
    for name in crate::config::service_link_variables() {
        tracing::debug!(%name, "ignoring a Kubernetes service-link variable");
    }
    // Validation ran before logging existed; its warnings are the operator's to see.
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    let profiles = ProfileStore::new(&config.profiles_root);
    preload_profiles(&profiles)?;
    let proxy = proxy_mode(&config, &profiles)?;

    let metrics = Arc::new(Metrics::new(&Runtime::current()));
    let auth = match Authenticator::load(&config.auth, Arc::clone(&metrics)) {
        Ok(auth) => auth,
        Err(err) => {
            eprintln!("error: invalid configuration: caller keys: {err}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let tls = match &config.listen_tls {
        None => None,
        Some(tls_config) => match TlsListener::load(tls_config.clone(), Arc::clone(&metrics)) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(err) => {
                eprintln!("error: invalid configuration: listen_tls: {err}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    if !config.listen.ip().is_loopback() && tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "the execution listener is reachable beyond this host over plain HTTP: tool \
             arguments cross the network in clear text (set `listen_tls`)"
        );
    }
    if !config.listen.ip().is_loopback() && !auth.is_required() {
        tracing::warn!(
            listen = %config.listen,
            "the execution listener is reachable beyond this host, but callers are not authenticated \
             (`auth.methods = [\"none\"]`): anyone who reaches it may claim any principal{}",
            if config.bindings.is_some() { "" } else { " and use any profile" }
        );
    }
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let audit_path = expand_path(&config.audit.path_template, std::process::id(), &hostname);
    if let Some(dir) = audit_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create audit directory `{}`", dir.display()))?;
    }
    let audit = AuditLog::open_with(
        AuditSettings {
            path: audit_path.clone(),
            sync: config.audit.sync,
            sync_interval: config.audit.sync_interval,
            queue_capacity: AUDIT_QUEUE_CAPACITY,
            observer: Some(Arc::new(metrics.audit_observer())),
            checkpoints: checkpoint_settings(&config, &hostname)?,
        },
        FileOptions {
            rotate_bytes: config.audit.rotate_bytes,
            rotate_interval: config.audit.rotate_interval,
            repair_tail: args.audit_repair,
        },
    )
    .map_err(|err| with_hint(err, &audit_path))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut gate = Gate::new(&config, profiles, audit);
        gate.metrics = Arc::clone(&metrics);
        match &config.single_use_ledger {
            None => {}
            Some(LedgerConfig::File(template)) => {
                let path = &expand_path(&template.to_string_lossy(), std::process::id(), &hostname);
                let ledger = UsedTokens::open(path).with_context(|| {
                    format!("cannot open the single-use ledger `{}`", path.display())
                })?;
                tracing::info!(ledger = %path.display(), "approvals are single use");
                gate.used_tokens = Some(Ledger::File(Arc::new(ledger)));
            }
            Some(LedgerConfig::Postgres(settings)) => {
                let ledger = PgLedger::connect(settings, &hostname)
                    .await
                    .map_err(|err| {
                        anyhow::anyhow!("{err}; refusing to start (approvals.ledger)")
                    })?;
                tracing::info!(url = %ledger.url(), "single-use ledger in PostgreSQL");
                let ledger = Arc::new(ledger);
                tokio::spawn(maintain_ledger(
                    Arc::clone(&ledger),
                    config.approvals.clock_skew,
                ));
                gate.used_tokens = Some(Ledger::Postgres(ledger));
            }
        }
        if let Some(proxy) = &proxy {
            proxy.spawn_reloaders(&metrics);
        }
        gate.proxy = proxy;
        if let Some(escalations) = &config.escalations {
            let notifier =
                crate::notify::Notifier::spawn(escalations, config.approvals.max_ttl, Arc::clone(&metrics))
                    .map_err(|err| anyhow::anyhow!("cannot set up escalation notifications: {err}"))?;
            tracing::info!(notify = %escalations.url, kid = %escalations.kid, "escalations are reported, signed");
            gate.notifier = Some(notifier);
        }
        auth.spawn_reloader();
        gate.auth = auth;
        if let Some(tls) = &tls {
            Arc::clone(tls).spawn_reloader();
        }
        gate.tls = tls;
        // Loads (and logs) every shadow candidate now, so a broken one shows at start.
        let _ = gate.shadow.status(&gate.profiles);
        let gate = Arc::new(gate);
        let server = Server::bind(config.listen, Arc::clone(&gate))
            .await
            .with_context(|| format!("cannot listen on `{}`", config.listen))?;
        let addr = server.local_addr()?;
        let serving = Arc::new(AtomicBool::new(false));
        let admin = Admin::bind(config.admin_listen, Arc::clone(&gate), Arc::clone(&serving))
            .await
            .with_context(|| {
                format!("cannot listen on `{}` (admin_listen)", config.admin_listen)
            })?;
        let admin_addr = admin.local_addr()?;
        let mut signals = StopSignals::install().context("cannot listen for SIGTERM")?;
        // Ready from the moment the listener is bound: connections wait in its backlog until
        // the accept loop runs, and whoever reads the "serving" line below may probe at once.
        serving.store(true, Ordering::Release);
        log_effective_config(&config);
        tracing::info!(
            listen = %addr,
            admin = %admin_addr,
            mode = if config.proxy.is_some() { "proxy" } else { "decide" },
            audit = %audit_path.display(),
            sync = ?config.audit.sync,
            rotate_bytes = config.audit.rotate_bytes,
            rotate_interval = ?config.audit.rotate_interval,
            profiles_root = %config.profiles_root.display(),
            "ecl-gate {} serving POST {scheme}://{addr}/v1/execute (admin on http://{admin_addr})",
            env!("GATE_VERSION_LINE"),
            scheme = if config.listen_tls.is_some() { "https" } else { "http" },
        );

        // First signal: stop accepting, let in-flight requests finish within the grace period.
        // A second signal: leave at once.
        // A watch, not a Notify: `notify_waiters` wakes only futures already polled, so a signal
        // that came before a task first polled its `stopping` future was lost and the gate
        // never stopped. The watch keeps the value for late waiters.
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopping = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let admin_stopping = {
            let mut rx = stop_rx;
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let admin_task = tokio::spawn(admin.run(admin_stopping));
        let serve = tokio::spawn(server.run(stopping));
        signals.next().await;
        tracing::info!(grace = ?config.shutdown_grace, "stopping: finishing requests in flight");
        serving.store(false, Ordering::Release);
        let _ = stop.send(true);
        tokio::select! {
            () = stop_serving(serve, gate.proxy.clone(), config.shutdown_grace) => {}
            () = signals.next() => {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        }
        let _ = admin_task.await;
        anyhow::Ok(())
    })?;
    // Dropping the runtime drops the last handles on the audit log: its writer finishes the
    // last batch and syncs before the process exits.
    drop(runtime);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Probes the shared ledger so readiness follows PostgreSQL between spends (and recovers by
/// itself), and purges rows whose tokens expired; several gates purging at once is harmless.
async fn maintain_ledger(ledger: Arc<PgLedger>, clock_skew: std::time::Duration) {
    const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
    let mut last_purge: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        ledger.probe().await;
        if ledger.health().unavailable().is_some()
            || last_purge.is_some_and(|at| at.elapsed() < PURGE_EVERY)
        {
            continue;
        }
        last_purge = Some(std::time::Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // A token is refused once `exp + clock_skew` has passed; its row is kept until then.
        match ledger
            .purge(now.saturating_sub(clock_skew.as_secs() + 1))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged expired approvals from the ledger"),
            Err(err) => tracing::warn!(error = %err, "cannot purge expired approvals"),
        }
    }
}

/// The rest of a stop: requests in flight get `grace`; then calls still waiting on a tool are
/// cut off, each recorded with outcome `shutdown` and answered, so no forwarded call is left
/// without an outcome record.
async fn stop_serving(
    mut serve: tokio::task::JoinHandle<()>,
    proxy: Option<Arc<Proxy>>,
    grace: std::time::Duration,
) {
    if tokio::time::timeout(grace, &mut serve).await.is_ok() {
        return;
    }
    if let Some(proxy) = proxy.filter(|p| p.forwarding() > 0) {
        tracing::warn!(
            calls = proxy.forwarding(),
            "grace period over with calls still waiting on their tools: recording them as \
             `shutdown` and answering their agents"
        );
        proxy.stop_forwarding();
        let recorded = tokio::time::timeout(SHUTDOWN_RECORDING, async {
            proxy.idle().await;
            let _ = (&mut serve).await;
        })
        .await;
        if recorded.is_ok() {
            return;
        }
        if proxy.forwarding() > 0 {
            tracing::error!(
                calls = proxy.forwarding(),
                "forwarded calls still without an outcome record; stopping anyway"
            );
        }
    }
    tracing::warn!("requests still in flight after the grace period; stopping anyway");
}

/// `audit.origin` expanded like the path, with the signer named after it (the usual
/// `signed-note` convention: the key is named for the log it signs).
fn checkpoint_settings(
    config: &Config,
    hostname: &str,
) -> anyhow::Result<Option<crate::audit::tree::CheckpointSettings>> {
    let Some(cp) = &config.audit.checkpoints else {
        return Ok(None);
    };
    let origin = expand_path(&cp.origin_template, std::process::id(), hostname)
        .to_string_lossy()
        .into_owned();
    let signer = crate::checkpoint::NoteSigner::new(&origin, cp.key.clone())
        .map_err(|e| anyhow::anyhow!("invalid configuration: audit.origin: {e}"))?;
    tracing::info!(
        origin = %origin,
        verifier_key = %crate::checkpoint::verifier_key(&origin, &cp.key.verifying_key()),
        every = cp.every,
        interval = ?cp.interval,
        "signing audit checkpoints"
    );
    Ok(Some(crate::audit::tree::CheckpointSettings {
        origin,
        signer: Arc::new(signer),
        every: cp.every,
        interval: cp.interval,
    }))
}

/// The audit errors name their file; a refused start also says what the operator can do.
fn with_hint(err: AuditError, audit_path: &Path) -> anyhow::Error {
    let dir = crate::audit::segment::dir_of(audit_path).display();
    match &err {
        AuditError::Tampered { path, .. } if path == audit_path => anyhow::anyhow!(
            "{err}; refusing to start: check the whole chain with `ecl-gate audit verify {dir}`, \
             or start with `--audit-repair` to move the bad tail to a `.tampered-<unix-seconds>` \
             file beside the log and continue from the last good record"
        ),
        AuditError::Tampered { .. } => anyhow::anyhow!(
            "{err}; refusing to start: check the whole chain with `ecl-gate audit verify {dir}`"
        ),
        _ => anyhow::Error::new(err),
    }
}

/// Loads every valid profile at start so its bytes are fixed from the first moment and a
/// broken one is reported before traffic arrives. Versions added later still load on demand.
///
/// A store may hold tens of thousands of versions: they load on every core (parsing dominates
/// and versions are independent), with a progress line every few seconds and one summary.
fn preload_profiles(profiles: &ProfileStore) -> anyhow::Result<()> {
    let root = profiles.root();
    let started = Instant::now();
    let found = profiles.list().with_context(|| {
        format!(
            "cannot read profiles_root `{}` (set `profiles_root` or PROFILES_ROOT)",
            root.display()
        )
    })?;
    let (valid, outside): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|(id, version)| is_valid_ref(id) && is_valid_ref(version));
    for (id, version) in outside {
        tracing::warn!(%id, %version, "profile name outside [A-Za-z0-9._-] is never served");
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(valid.len().max(1));
    let next = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let load = || {
        // Claimed one at a time: versions differ in size, so fixed shares would finish unevenly.
        while let Some((id, version)) = valid.get(next.fetch_add(1, Ordering::Relaxed)) {
            match profiles.get(id, version) {
                Ok(profile) => {
                    tracing::debug!(%id, %version, hash = %profile.ref_hash, "profile loaded")
                }
                Err(err) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%id, %version, "{err}")
                }
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(load)).collect();
        let mut last_progress = Instant::now();
        while !handles.iter().all(|handle| handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if last_progress.elapsed() >= PRELOAD_PROGRESS_EVERY {
                last_progress = Instant::now();
                tracing::info!(
                    "loading profiles: {} of {} versions",
                    next.load(Ordering::Relaxed).min(valid.len()),
                    valid.len()
                );
            }
        }
    });
    tracing::info!(
        root = %root.display(),
        versions = profiles.loaded_count(),
        refused = refused.load(Ordering::Relaxed),
        distinct_tools = profiles.distinct_tools(),
        distinct_patterns = profiles.distinct_patterns(),
        seconds = started.elapsed().as_secs_f64(),
        "profiles loaded"
    );
    Ok(())
}

/// How often a long start says how far loading the profile store got.
const PRELOAD_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The effective configuration at start, for operators reading the log. Nothing in it is a
/// secret today (approver keys are public); keys holding secrets must be redacted here.
fn log_effective_config(config: &Config) {
    tracing::info!(
        listen = %config.listen,
        admin_listen = %config.admin_listen,
        profiles_root = %config.profiles_root.display(),
        max_body_bytes = config.max_body_bytes,
        body_timeout_ms = config.body_timeout.as_millis() as u64,
        max_in_flight = config.limits.max_in_flight,
        max_connections = config.limits.max_connections,
        audit_path = %config.audit.path_template,
        audit_sync = ?config.audit.sync,
        include_request = config.audit.include_request,
        approver_keys = ?config.approvals.keys.keys().collect::<Vec<_>>(),
        approvals_max_ttl = ?config.approvals.max_ttl,
        single_use = config.single_use_ledger.is_some(),
        single_use_ledger = match &config.single_use_ledger {
            Some(LedgerConfig::Postgres(settings)) => crate::postgres::redact(&settings.url),
            Some(LedgerConfig::File(path)) => path.display().to_string(),
            None => String::new(),
        },
        log_include_args = config.log.include_args,
        shutdown_grace = ?config.shutdown_grace,
        auth = if config.auth.mtls { "mtls" } else if config.auth.jwt.is_some() { "jwt" } else { "none" },
        listen_tls = config.listen_tls.is_some(),
        bindings = config.bindings.as_ref().map_or(0, |b| b.bindings.len()),
        "effective configuration"
    );
}

/// Proxy mode (issue 4): builds the forwarding client, and names every tool a loaded profile
/// allows without an upstream. Those do not stop the start (a profile pushed to a running gate
/// must not crash-loop the next rollout): their ALLOWs are recorded with outcome
/// `no_upstream`, and `/readyz`, `ecl_tools_without_upstream` and this log report them.
fn proxy_mode(config: &Config, profiles: &ProfileStore) -> anyhow::Result<Option<Arc<Proxy>>> {
    let Some(proxy_config) = &config.proxy else {
        return Ok(None);
    };
    for gap in tools_without_upstream(profiles, &proxy_config.upstreams) {
        tracing::warn!(
            tool = %gap.tool,
            profile = %gap.profile_id,
            version = %gap.profile_version,
            "{gap}"
        );
    }
    for (tool, upstream) in &proxy_config.upstreams {
        if let Some(files) = &upstream.client_cert {
            tracing::info!(
                %tool,
                cert_file = %files.cert_file.display(),
                "upstream is called with a client certificate (mTLS), re-read when it changes"
            );
        }
        if upstream.url.scheme_str() == Some("http") {
            tracing::warn!(
                %tool,
                "upstream is plain http: its credentials and grants cross the network unencrypted"
            );
        }
    }
    let proxy = Proxy::new(proxy_config)?;
    tracing::info!(
        upstreams = proxy_config.upstreams.len(),
        grant_kid = %proxy_config.signer.kid(),
        grant_ttl = ?proxy_config.signer.ttl(),
        "proxy mode: ALLOWed calls are forwarded with a grant"
    );
    Ok(Some(Arc::new(proxy)))
}

/// Logging for commands without the gate's configuration: `RUST_LOG`, else `info`, to stderr.
pub(crate) fn init_plain_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// SIGINT and SIGTERM, listened for from creation on: created before the "serving" line, so a
/// signal right after it stops the gate gracefully instead of killing it outright.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {},
                _ = self.terminate.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start loads every valid version once across its worker threads, refuses the broken
    /// one without stopping, and never reads a name outside the charset.
    #[test]
    fn preload_loads_every_valid_version_on_all_workers() {
        let dir = tempfile::tempdir().unwrap();
        let tool = r#"{"name":"t","constraints":{"arg_rules":[{"path":"$.q","type":"string","pattern":"^[a-z]+$"}]}}"#;
        for id in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.path().join(id)).unwrap();
            for version in 0..40 {
                std::fs::write(
                    dir.path().join(format!("{id}/{version}.json")),
                    format!(
                        r#"{{"profile_id":"{id}","profile_version":"{version}","default":"DENY","allowed_tools":[{tool}]}}"#
                    ),
                )
                .unwrap();
            }
        }
        std::fs::write(dir.path().join("a/broken.json"), "{").unwrap();
        std::fs::write(dir.path().join("a/.hidden.json"), "{").unwrap();
        let store = ProfileStore::new(dir.path());
        preload_profiles(&store).unwrap();
        assert_eq!(store.loaded_count(), 120);
        assert_eq!(store.distinct_tools(), 1);
        assert_eq!(store.distinct_patterns(), 1);
        assert_eq!(
            store.get("b", "39").unwrap().ref_hash,
            crate::canonical::sha256_prefixed(
                &std::fs::read(dir.path().join("b/39.json")).unwrap()
            )
        );
    }

    /// A root that cannot be read stops the start, naming it and how to set it.
    #[test]
    fn preload_of_a_missing_root_names_it() {
        let store = ProfileStore::new("/nonexistent/profiles-root");
        let err = preload_profiles(&store).unwrap_err().to_string();
        assert!(
            err.contains("`/nonexistent/profiles-root`") && err.contains("PROFILES_ROOT"),
            "{err}"
        );
    }
}
