//! `ecl-gate profiles check`: validates every profile under a root, one line each.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::profile::{is_valid_ref, ProfileStore};

use super::EXIT_PROBLEM;

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Validate every `{id}/{version}.json`; exits 1 if any is invalid
    Check {
        /// Profiles root; default: the configured `profiles_root`
        root: Option<PathBuf>,
    },
}

pub fn run(command: ProfilesCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let ProfilesCommand::Check { root } = command;
    let root = match root {
        Some(root) => root,
        None => Config::load(config)?.profiles_root,
    };
    let store = ProfileStore::new(&root);
    let found = store
        .list()
        .with_context(|| format!("cannot list profiles under `{}`", root.display()))?;
    if found.is_empty() {
        eprintln!(
            "error: no `{{id}}/{{version}}.json` files under `{}`",
            root.display()
        );
        return Ok(ExitCode::from(EXIT_PROBLEM));
    }
    let mut invalid = 0;
    for (id, version) in &found {
        if !is_valid_ref(id) || !is_valid_ref(version) {
            invalid += 1;
            println!("invalid  {id} {version}: name outside [A-Za-z0-9._-], never served");
            continue;
        }
        match store.load(id, version) {
            Ok(profile) => println!(
                "ok       {id} {version} {} ({} tools)",
                profile.ref_hash,
                profile.tools().len()
            ),
            Err(err) => {
                invalid += 1;
                println!("invalid  {id} {version}: {err}");
            }
        }
    }
    println!("{} profiles, {invalid} invalid", found.len());
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}
