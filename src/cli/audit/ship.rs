//! `ecl-gate audit ship` and `ecl-gate audit verify --db`: the command-line side of the
//! fleet's trail in PostgreSQL (the work is in `crate::ship`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::EXIT_PROBLEM;
use crate::postgres::{self, PgSettings};
use crate::ship::{self as shipping, ShipOptions};

/// How to reach PostgreSQL; the password comes from the URL, `--password-file` or
/// `PGPASSWORD`, and is never printed.
#[derive(Debug, Clone, clap::Args)]
pub struct PgArgs {
    /// Trust only this CA (PEM) for TLS to PostgreSQL (`sslmode=require` in the URL)
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Read the password from this file when the URL has none (else `PGPASSWORD`)
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Give up connecting after this long
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

impl PgArgs {
    fn settings(&self, url: &str, application: &str) -> PgSettings {
        let mut settings = PgSettings::new(url);
        settings.ca_file.clone_from(&self.ca_file);
        settings.password_file.clone_from(&self.password_file);
        settings.connect_timeout = self.connect_timeout;
        settings.statement_timeout = Duration::from_secs(600);
        settings.application_name = application.into();
        settings
    }
}

#[derive(Debug, clap::Args)]
pub struct ShipArgs {
    /// The database: postgres://user@host:5432/db
    #[arg(long, value_name = "URL")]
    to: String,
    /// Audit logs: active files or directories holding them
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Prepended to every stream name (a log's file name), e.g. `cluster-a/`
    #[arg(long, default_value = "", value_name = "P")]
    stream_prefix: String,
    /// Records per insert (one transaction)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    batch: u64,
    /// How often to look for new records when caught up
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// How often to log a progress line
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    progress: Duration,
    /// Ship what is there now, then exit (non-zero if a stream is stopped)
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    pg: PgArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn ship(args: &ShipArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    if !postgres::is_url(&args.to) {
        anyhow::bail!(
            "`--to {}` is not a PostgreSQL URL like `postgres://user@host:5432/db`",
            postgres::redact(&args.to)
        );
    }
    let options = ShipOptions {
        db: args.pg.settings(&args.to, "ecl-gate audit ship"),
        paths: args.paths.clone(),
        stream_prefix: args.stream_prefix.clone(),
        batch: usize::try_from(args.batch).unwrap_or(1000),
        poll: args.poll,
        once: args.once,
        progress_every: args.progress,
    };
    tracing::info!(
        to = %postgres::redact(&args.to),
        paths = ?args.paths,
        batch = args.batch,
        "shipping audit records"
    );
    let report = runtime()?
        .block_on(async {
            tokio::select! {
                result = shipping::run(options) => result,
                () = shutdown() => Err("stopped by signal".to_owned()),
            }
        })
        .map_err(|err| anyhow::anyhow!(err))?;
    for (stream, problem) in &report.stopped {
        eprintln!("error: stream `{stream}` stopped: {problem}");
    }
    println!(
        "shipped {} record(s) from {} stream(s); {} stopped",
        report.shipped,
        report.streams,
        report.stopped.len()
    );
    Ok(if report.stopped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}

async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = interrupt => {},
                _ = terminate.recv() => {},
            }
            return;
        }
    }
    let _ = interrupt.await;
}

pub fn verify_db(
    url: &str,
    stream: Option<&str>,
    keys: Vec<String>,
    pg: &PgArgs,
) -> anyhow::Result<ExitCode> {
    let keys = keys
        .iter()
        .map(|k| super::proofs::load_key(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let settings = pg.settings(url, "ecl-gate audit verify");
    let verdicts = runtime()?
        .block_on(async {
            let client = postgres::connect(&settings).await?;
            shipping::db_verify::verify(&client, stream, &keys).await
        })
        .map_err(|err| anyhow::anyhow!(err))?;
    if verdicts.is_empty() {
        eprintln!(
            "error: no stream{} in `{}`",
            stream.map(|s| format!(" `{s}`")).unwrap_or_default(),
            postgres::redact(url)
        );
        return Ok(ExitCode::from(EXIT_PROBLEM));
    }
    let mut failed = false;
    for verdict in &verdicts {
        match &verdict.problem {
            None => println!(
                "ok: stream `{}`: {} records from seq 0, chain intact, {} checkpoint(s) {}",
                verdict.stream,
                verdict.records,
                verdict.checkpoints,
                if keys.is_empty() {
                    "match (signatures not checked: give --pubkey)"
                } else {
                    "match, signatures valid"
                }
            ),
            Some(problem) => {
                failed = true;
                eprintln!("error: stream `{}`: {problem}", verdict.stream);
            }
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_PROBLEM)
    } else {
        ExitCode::SUCCESS
    })
}
