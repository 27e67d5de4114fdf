//! `ecl-gate grant verify`: the tool side of a grant, from a shell (what a tool written in
//! another language can call, and what an operator runs when a tool refuses a call).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::approval::parse_public_key;
use crate::grant::{GrantVerifier, DEFAULT_CLOCK_SKEW};

use super::EXIT_PROBLEM;

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Verify an `ECL-Grant` token against the exact body it came with; exit 0 if valid, 1 if not
    Verify {
        /// The gate's grant public key (SPKI PEM as `keygen` writes, or raw 32 bytes in base64)
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
        /// The exact request body the tool received; `-` for standard input
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// The audience the tool expects (`aud`): its upstream URL or configured audience.
        /// Without it every check but the audience is made, and the audience is printed
        #[arg(long, value_name = "AUD")]
        audience: Option<String>,
        /// Verify as of this Unix time instead of now
        #[arg(long, value_name = "SECONDS")]
        at: Option<u64>,
        /// Tolerated clock difference between gate and tool
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        clock_skew: Duration,
        /// The token (the `ECL-Grant` header's value); `-` for standard input
        token: String,
    },
}

pub fn run(command: GrantCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantCommand::Verify {
            pubkey,
            body,
            audience,
            at,
            clock_skew,
            token,
        } => verify(&pubkey, &body, audience.as_deref(), at, clock_skew, &token),
    }
}

fn verify(
    pubkey: &Path,
    body: &Path,
    audience: Option<&str>,
    at: Option<u64>,
    clock_skew: Duration,
    token: &str,
) -> anyhow::Result<ExitCode> {
    if token == "-" && body == Path::new("-") {
        bail!("only one of the token and --body can come from standard input");
    }
    let text = std::fs::read_to_string(pubkey)
        .with_context(|| format!("cannot read `{}`", pubkey.display()))?;
    let key =
        parse_public_key(&text).map_err(|err| anyhow::anyhow!("`{}`: {err}", pubkey.display()))?;
    let body = read_input(body)?;
    let token = if token == "-" {
        String::from_utf8(read_input(Path::new("-"))?).context("the token is not UTF-8")?
    } else {
        token.to_owned()
    };
    let now = match at {
        Some(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now(),
    };
    let mut verifier = match audience {
        Some(audience) => GrantVerifier::single(key, audience),
        None => GrantVerifier::any_audience(key),
    };
    verifier.clock_skew = clock_skew;
    if clock_skew > DEFAULT_CLOCK_SKEW * 12 {
        eprintln!("warning: a clock skew of {clock_skew:?} makes short grants meaningless");
    }
    match verifier.verify(&token, &body, now) {
        Ok(claims) => {
            let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            println!(
                "ok: grant `{}` (kid `{}`) for tool `{}`, provenance `{}`, audience `{}`, body {}, expires in {} s",
                claims.jti,
                claims.kid,
                claims.tool,
                claims.provenance_id,
                claims.aud,
                claims.body_sha256,
                claims.exp.saturating_sub(now_secs)
            );
            if audience.is_none() {
                eprintln!("note: the audience was not checked; pass --audience to check it");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            println!("refused: {err}");
            Ok(ExitCode::from(EXIT_PROBLEM))
        }
    }
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))
}
