//! `ecl-gate serve`: load and check everything, bind, then serve until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::approval::UsedTokens;
use crate::audit::{expand_path, AuditLog, AuditSettings};
use crate::config::{Config, LogFormat};
use crate::profile::{is_valid_ref, ProfileStore};
use crate::proxy::{missing_upstream, Proxy};
use crate::server::{Gate, Server};

use super::EXIT_CONFIG;

/// Records that may wait for the audit writer before callers wait for a place.
const AUDIT_QUEUE_CAPACITY: usize = 8192;

pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    init_logging(&config);

    let profiles = ProfileStore::new(&config.profiles_root);
    preload_profiles(&profiles)?;
    let proxy = match proxy_mode(&config, &profiles)? {
        Ok(proxy) => proxy,
        Err(message) => {
            eprintln!("error: invalid configuration: {message}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };

    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let audit_path = expand_path(&config.audit.path_template, std::process::id(), &hostname);
    if let Some(dir) = audit_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create audit directory `{}`", dir.display()))?;
    }
    let audit = AuditLog::open(AuditSettings {
        path: audit_path.clone(),
        sync: config.audit.sync,
        sync_interval: config.audit.sync_interval,
        queue_capacity: AUDIT_QUEUE_CAPACITY,
    })
    .with_context(|| format!("cannot open audit log `{}`", audit_path.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut gate = Gate::new(&config, profiles, audit);
        if let Some(path) = &config.single_use_ledger {
            let ledger = UsedTokens::open(path).with_context(|| {
                format!("cannot open the single-use ledger `{}`", path.display())
            })?;
            gate.used_tokens = Some(std::sync::Arc::new(ledger));
        }
        gate.proxy = proxy;
        let server = Server::bind(config.listen, std::sync::Arc::new(gate))
            .await
            .with_context(|| format!("cannot listen on `{}`", config.listen))?;
        let addr = server.local_addr()?;
        tracing::info!(
            listen = %addr,
            mode = if config.proxy.is_some() { "proxy" } else { "decide" },
            audit = %audit_path.display(),
            sync = ?config.audit.sync,
            profiles_root = %config.profiles_root.display(),
            "ecl-gate {} serving POST http://{addr}/v1/execute",
            env!("CARGO_PKG_VERSION"),
        );
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Loads every valid profile at start so its bytes are fixed from the first moment and a
/// broken one is reported before traffic arrives. Versions added later still load on demand.
fn preload_profiles(profiles: &ProfileStore) -> anyhow::Result<()> {
    let root = profiles.root();
    let found = profiles.list().with_context(|| {
        format!(
            "cannot read profiles_root `{}` (set `profiles_root` or PROFILES_ROOT)",
            root.display()
        )
    })?;
    for (id, version) in found {
        if !is_valid_ref(&id) || !is_valid_ref(&version) {
            tracing::warn!(%id, %version, "profile name outside [A-Za-z0-9._-] is never served");
            continue;
        }
        match profiles.get(&id, &version) {
            Ok(profile) => {
                tracing::info!(%id, %version, hash = %profile.ref_hash, "profile loaded")
            }
            Err(err) => tracing::warn!(%id, %version, "{err}"),
        }
    }
    Ok(())
}

/// Proxy mode (issue 4): checks that every tool a loaded profile allows has an upstream
/// (`Ok(Err(message))` otherwise, a configuration error), then builds the forwarding client.
fn proxy_mode(
    config: &Config,
    profiles: &ProfileStore,
) -> anyhow::Result<Result<Option<Arc<Proxy>>, String>> {
    let Some(proxy_config) = &config.proxy else {
        return Ok(Ok(None));
    };
    if let Some((tool, id, version)) = missing_upstream(profiles, &proxy_config.upstreams) {
        return Ok(Err(format!(
            "invalid value for `upstreams`: tool `{tool}` (allowed by profile `{id}` version \
             `{version}`) has no `[upstreams.\"{tool}\"]`; in proxy mode every allowed tool needs one"
        )));
    }
    for (tool, upstream) in &proxy_config.upstreams {
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
    Ok(Ok(Some(Arc::new(proxy))))
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

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
