//! `ecl-gate wait-approval`: the agent's side of an escalation — wait for the approver's
//! decision on one intent and print the token.
//!
//! Exit codes: 0 approved (the token on stdout); 1 rejected (the reason on stderr), unknown
//! or expired; 4 still pending when `--timeout` ran out.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::notify::wire::is_hash;

pub const EXIT_TIMEOUT: u8 = 4;

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The approver's agent-facing base URL, e.g. http://approver:8301
    #[arg(long, env = "ECL_APPROVER_URL", value_name = "URL")]
    approver: String,
    /// The `escalation.intent_hash` of the ESCALATE answer
    #[arg(long, value_name = "HASH")]
    intent_hash: String,
    /// Give up (exit 4) when no decision came within this time
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Length of each long-poll request
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    poll: Duration,
}

/// Answers are a few hundred bytes; more is refused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub fn run(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    crate::cli::approver::refuse_unknown_variables()?;
    if !is_hash(&args.intent_hash) {
        bail!(
            "`{}` is not an intent hash (`sha256:` and 64 lowercase hex digits)",
            args.intent_hash
        );
    }
    let base = args.approver.trim_end_matches('/');
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(wait(base, args))
}

async fn wait(base: &str, args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let client = crate::notify::http_client(&[], true, Duration::from_secs(10))
        .map_err(|err| anyhow::anyhow!("cannot set up HTTP: {err}"))?;
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        let left = args.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            eprintln!(
                "error: no decision on `{}` within {}",
                args.intent_hash,
                humantime::format_duration(args.timeout)
            );
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        let wait = args.poll.min(left).as_secs().max(1);
        let url = format!("{base}/v1/approvals/{}?wait={wait}", args.intent_hash);
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("`{url}` is not a URL"))?;
        let request = http::Request::get(uri)
            .header(
                http::header::USER_AGENT,
                concat!("ecl-gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::<Bytes>::default())?;
        let exchange = async {
            let answer = client.request(request).await?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let outcome = tokio::time::timeout(Duration::from_secs(wait + 15), exchange).await;
        let failure = match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(format!("{err:#}")),
            Err(_) => Err("no answer in time".to_owned()),
        };
        let (status, body) = match failure {
            Ok(answer) => answer,
            Err(why) if failures < 5 => {
                failures += 1;
                eprintln!("warning: approver at `{base}` unreachable ({why}); retrying");
                tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
                continue;
            }
            Err(why) => bail!("approver at `{base}` unreachable: {why}"),
        };
        failures = 0;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |name: &str| {
            json.get(name)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        match status.as_u16() {
            200 => {
                let token = field("approval_token");
                if token.is_empty() {
                    bail!("the approver answered 200 without a token");
                }
                eprintln!("approved by `{}`", field("approver"));
                println!("{token}");
                return Ok(ExitCode::SUCCESS);
            }
            202 => {
                eprintln!(
                    "waiting for a decision on `{}` ({} s so far)",
                    args.intent_hash,
                    started.elapsed().as_secs()
                );
            }
            403 => {
                eprintln!("rejected by `{}`: {}", field("approver"), field("reason"));
                return Ok(ExitCode::from(super::EXIT_PROBLEM));
            }
            404 => {
                eprintln!(
                    "error: the approver knows no escalation `{}`, or it expired",
                    args.intent_hash
                );
                return Ok(ExitCode::from(super::EXIT_PROBLEM));
            }
            other => bail!("the approver answered HTTP {other}: {}", field("error")),
        }
    }
}
