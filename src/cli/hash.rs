//! `ecl-gate hash` and `ecl-gate canonicalize`: what agents use to compute `snapshot_hash`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::canonical;

pub fn hash(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let value = read_json(file)?;
    println!("{}", canonical::hash(&value));
    Ok(ExitCode::SUCCESS)
}

pub fn canonicalize(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let value = read_json(file)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&canonical::to_canonical(&value))?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn read_json(file: Option<&Path>) -> anyhow::Result<canonical::Value> {
    let (bytes, name) = match file {
        Some(path) if path != Path::new("-") => (
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?,
            path.display().to_string(),
        ),
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
            (bytes, "standard input".to_owned())
        }
    };
    canonical::parse(&bytes).with_context(|| format!("`{name}` is not acceptable JSON"))
}
