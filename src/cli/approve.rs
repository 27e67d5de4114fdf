//! `ecl-gate keygen` and `ecl-gate approve`: the approver's side of SPEC §7a.
//!
//! The gate itself only ever holds public keys; these commands are for the people who approve.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::SigningKey;

use crate::approval::{key_id, sign, Grant};
use crate::canonical::{self, Value};

pub fn keygen(out: &Path, kid: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).context("cannot get randomness from the operating system")?;
    let key = SigningKey::from_bytes(&seed);
    let kid = kid.map_or_else(|| key_id(&key.verifying_key()), str::to_owned);
    if !crate::profile::is_valid_ref(&kid) {
        bail!("kid `{kid}` must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    // PKCS#8 v1 (no embedded public key): what OpenSSL and Python's `cryptography` (PyJWT)
    // read; the v2 form ed25519-dalek writes by default is refused there as "extra data".
    let private_pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .context("cannot encode the private key")?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .context("cannot encode the public key")?;
    let private_path = out.join(format!("{kid}.key"));
    let public_path = out.join(format!("{kid}.pub"));
    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    write_new(&public_path, public_pem.as_bytes(), 0o644)?;
    println!("{kid}");
    eprintln!(
        "wrote `{}` (private, 0600: keep it with the approver) and `{}`\n\
         add to the gate's config:\n  [approvals.keys.{kid}]\n  file = \"{}\"",
        private_path.display(),
        public_path.display(),
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a file that must not exist yet: a key is never silently replaced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}` (it must not exist yet)", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// The kid `keygen` made a key with: it writes `<kid>.key`, so the file's name is the kid (with
/// no `--kid`, `keygen`'s kid is the derived one and so is the name). A key from elsewhere,
/// not named `<kid>.key`, signs with the kid derived from its public key.
fn kid_of_key_file(path: &Path) -> Option<String> {
    if path.extension()? != "key" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    crate::profile::is_valid_ref(stem).then(|| stem.to_owned())
}

pub struct ApproveArgs {
    pub key: PathBuf,
    pub kid: Option<String>,
    pub intent_hash: Option<String>,
    pub request: Option<PathBuf>,
    pub ttl: Duration,
    pub approver: Option<String>,
}

pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read key `{}`", args.key.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|err| {
        anyhow::anyhow!(
            "`{}` is not an Ed25519 private key: {err}",
            args.key.display()
        )
    })?;
    let kid = match args.kid {
        Some(kid) => kid,
        None => kid_of_key_file(&args.key).unwrap_or_else(|| key_id(&key.verifying_key())),
    };
    let intent_hash = match (args.intent_hash, args.request) {
        (Some(hash), None) => {
            if !hash.starts_with("sha256:") || hash.len() != 71 {
                bail!("`{hash}` is not an intent hash (`sha256:` and 64 hex digits)");
            }
            hash
        }
        (None, Some(path)) => intent_of(&path)?,
        _ => bail!("give exactly one of --intent-hash and --request"),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let approver = args
        .approver
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "approver".to_owned());
    let mut jti = [0u8; 16];
    getrandom::getrandom(&mut jti).context("cannot get randomness from the operating system")?;
    let token = sign(
        &key,
        &kid,
        &Grant {
            issuer: &approver,
            intent_hash: &intent_hash,
            issued_at: now,
            expires_at: now + args.ttl.as_secs().max(1),
            jti: &hex::encode(jti),
        },
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The intent hash of a request file, or of an ESCALATE decision's `escalation.intent_hash`.
fn intent_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let value = canonical::parse(&bytes)
        .with_context(|| format!("`{}` is not acceptable JSON", path.display()))?;
    if let Some(Value::String(hash)) = value.get("escalation").and_then(|e| e.get("intent_hash")) {
        return Ok(hash.clone());
    }
    match crate::request::decode(&bytes) {
        Ok(request) => Ok(request.intent_hash),
        Err(rejection) => bail!(
            "`{}` is not a valid execution request ({}): {}",
            path.display(),
            rejection.reason,
            rejection.detail
        ),
    }
}
