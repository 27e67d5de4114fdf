//! `ecl-gate decide`: the decision the server would give, without touching the audit log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};

use crate::caller::{Caller, CallerMethod};
use crate::canonical;
use crate::config::Config;
use crate::decision::{decide, Attempt, Context};
use crate::profile::ProfileStore;
use crate::request;

use super::EXIT_PROBLEM;

pub fn run(
    request_path: &Path,
    profiles: Option<PathBuf>,
    expect: Option<&str>,
    caller: Caller,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let root = profiles.unwrap_or(config.profiles_root);
    let bytes = std::fs::read(request_path)
        .with_context(|| format!("cannot read `{}`", request_path.display()))?;
    let context = Context::new(config.approvals).with_bindings(config.bindings);
    let now = SystemTime::now();
    let decision = match request::decode(&bytes) {
        Err(rejection) => decide(Attempt::Rejected(&rejection), &context, &caller, now),
        Ok(request) => {
            let store = ProfileStore::new(root);
            let profile = store.get(&request.profile_id, &request.profile_version);
            decide(
                Attempt::Request {
                    request: &request,
                    profile: &profile,
                },
                &context,
                &caller,
                now,
            )
        }
    };
    println!(
        "{}",
        String::from_utf8_lossy(&canonical::to_canonical(&decision.body(None)))
    );
    match expect {
        None => Ok(ExitCode::SUCCESS),
        Some(want) if want.eq_ignore_ascii_case(decision.decision_type.as_str()) => {
            Ok(ExitCode::SUCCESS)
        }
        Some(want)
            if ["ALLOW", "DENY", "ESCALATE"].contains(&want.to_ascii_uppercase().as_str()) =>
        {
            eprintln!(
                "error: expected {}, got {} {}",
                want.to_ascii_uppercase(),
                decision.decision_type,
                decision.reason
            );
            Ok(ExitCode::from(EXIT_PROBLEM))
        }
        Some(want) => bail!("--expect takes ALLOW, DENY or ESCALATE, not `{want}`"),
    }
}

/// The caller `--caller` and `--caller-method` describe.
pub fn caller(id: Option<String>, method: Option<&str>) -> anyhow::Result<Caller> {
    let Some(id) = id else {
        return Ok(Caller::anonymous());
    };
    if id.is_empty() {
        bail!("--caller must not be empty");
    }
    let method = match method {
        None => CallerMethod::Jwt,
        Some(text) => CallerMethod::parse(text).with_context(|| {
            format!("--caller-method takes `jwt`, `mtls` or `none`, not `{text}`")
        })?,
    };
    Ok(Caller {
        method,
        id: id.into(),
        issuer: None,
    })
}
