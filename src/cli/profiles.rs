//! `ecl-gate profiles check`: validates every profile under a root, one line each; with a
//! proxy-mode configuration, also that every tool a profile allows has an upstream, so CI can
//! refuse a profile that would run without one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::config::load_raw;
use crate::profile::{is_valid_ref, ProfileStore};

use super::EXIT_PROBLEM;

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Validate every `{id}/{version}.json`; exits 1 if any is invalid, or, with a proxy-mode
    /// configuration, if a profile allows a tool that has no `[upstreams."…"]`
    Check {
        /// Profiles root; default: the configured `profiles_root`
        root: Option<PathBuf>,
    },
}

pub fn run(command: ProfilesCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let ProfilesCommand::Check { root } = command;
    // Only the keys: CI has the configuration but not the secrets it names.
    let raw = load_raw(config)?;
    let upstreams: Option<std::collections::BTreeSet<String>> =
        (raw.mode == "proxy").then(|| raw.upstreams.keys().cloned().collect());
    let root = root.unwrap_or(raw.profiles_root);
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
            Ok(profile) => {
                let unrouted: Vec<&str> = match &upstreams {
                    Some(routed) => profile
                        .tools()
                        .iter()
                        .map(|tool| tool.name.as_str())
                        .filter(|tool| !routed.contains(*tool))
                        .collect(),
                    None => Vec::new(),
                };
                if unrouted.is_empty() {
                    println!(
                        "ok       {id} {version} {} ({} tools)",
                        profile.ref_hash,
                        profile.tools().len()
                    );
                } else {
                    invalid += 1;
                    println!(
                        "unrouted {id} {version}: no `[upstreams.\"…\"]` for {}; proxy mode would record its ALLOWs as `no_upstream`",
                        unrouted
                            .iter()
                            .map(|tool| format!("`{tool}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Err(err) => {
                invalid += 1;
                println!("invalid  {id} {version}: {err}");
            }
        }
    }
    println!("{} profiles, {invalid} invalid or unrouted", found.len());
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}
