//! `ecl-gate token`: sign a caller JWT (EdDSA) with a key from `keygen`, for demos, tests and
//! setups without an identity provider.
//!
//! Prints the token on stdout and nothing else; never logs it. Real deployments get their
//! tokens from their platform (Kubernetes projected service-account tokens, an IdP).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;

use crate::canonical::Value;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The private key (PKCS#8 PEM, as written by `keygen`)
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Key id in the header: the `[auth.jwt.keys."kid"]` the gate verifies it with
    #[arg(long)]
    kid: String,
    /// `iss`: must equal the gate's `auth.jwt.issuer`
    #[arg(long)]
    issuer: String,
    /// `aud`: must hold the gate's `auth.jwt.audience`
    #[arg(long)]
    audience: String,
    /// `sub`: the caller id bindings see
    #[arg(long)]
    subject: String,
    /// Lifetime (`exp - iat`), e.g. 1h
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    for (name, value) in [
        ("--kid", &args.kid),
        ("--issuer", &args.issuer),
        ("--audience", &args.audience),
        ("--subject", &args.subject),
    ] {
        if value.is_empty() {
            bail!("{name} must not be empty");
        }
    }
    if args.ttl.is_zero() || args.ttl > Duration::from_secs(366 * 24 * 3600) {
        bail!("--ttl must be more than 0 and at most a year");
    }
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read `{}`", args.key.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|err| {
        anyhow::anyhow!(
            "`{}` is not an Ed25519 PKCS#8 PEM key: {err}",
            args.key.display()
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let header = Value::object([
        ("alg", "EdDSA".into()),
        ("kid", args.kid.as_str().into()),
        ("typ", "JWT".into()),
    ]);
    let claims = Value::object([
        ("iss", args.issuer.as_str().into()),
        ("aud", args.audience.as_str().into()),
        ("sub", args.subject.as_str().into()),
        ("iat", now.into()),
        ("exp", (now + args.ttl.as_secs()).into()),
    ]);
    println!("{}", crate::jws::sign(&key, &header, &claims));
    Ok(ExitCode::SUCCESS)
}
