//! `ecl-gate replay`: re-decide every recorded request and report what differs.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::canonical;
use crate::config::Config;
use crate::decision::Context;
use crate::profile::ProfileStore;
use crate::replay::Replayer;

use super::EXIT_PROBLEM;

pub fn run(
    files: &[PathBuf],
    profiles: Option<PathBuf>,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let store = ProfileStore::new(profiles.unwrap_or(config.profiles_root));
    let context = Context::new(config.approvals).with_bindings(config.bindings);
    let mut replayer = Replayer::new(&store, &context, config.single_use_ledger.is_some());
    for file in files {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file)
                .with_context(|| format!("cannot open `{}`", file.display()))?,
        );
        for (index, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("cannot read `{}`", file.display()))?;
            let record = canonical::parse(line.as_bytes()).with_context(|| {
                format!("`{}` line {}: not a JSON record", file.display(), index + 1)
            })?;
            replayer.record(&record);
        }
    }
    let report = replayer.report;
    println!(
        "replayed {}, identical {}, differing {} (skipped {} without a recorded request)",
        report.replayed, report.identical, report.differing, report.skipped
    );
    for note in &report.changed_profiles {
        eprintln!("error: profile bytes changed since they were recorded: {note}");
    }
    for difference in &report.differences {
        eprintln!("differs: {difference}");
    }
    if report.replayed == 0 {
        eprintln!("error: nothing to replay; records carry the request only with `audit.include_request = true`");
        return Ok(ExitCode::from(EXIT_PROBLEM));
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}
