//! `ecl-gate profiles check`: validates every profile under a root, one line each; with a
//! proxy-mode configuration, also that every tool a profile allows has an upstream, so CI can
//! refuse a profile that would run without one.
//! `ecl-gate profiles diff`: what changed between two versions, by tool and rule.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::config::{load_raw, Config};
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
    /// What changed from one profile version to another: tools and rules added, removed,
    /// tightened, loosened (or changed, where the direction cannot be told)
    Diff {
        /// The version in force, e.g. `example@1.0.0`
        #[arg(value_name = "ID@A")]
        old: String,
        /// The candidate, e.g. `example@1.1.0`
        #[arg(value_name = "ID@B")]
        new: String,
        /// Profiles root; default: the configured `profiles_root`
        #[arg(long, value_name = "ROOT")]
        profiles: Option<PathBuf>,
    },
}

pub fn run(command: ProfilesCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        ProfilesCommand::Check { root } => check(root, config),
        ProfilesCommand::Diff { old, new, profiles } => diff(&old, &new, profiles, config),
    }
}

fn diff(
    old: &str,
    new: &str,
    profiles: Option<PathBuf>,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let root = match profiles {
        Some(root) => root,
        None => Config::load(config)?.profiles_root,
    };
    let store = ProfileStore::new(&root);
    let load = |text: &str| -> anyhow::Result<crate::profile::Profile> {
        let (id, version) = text
            .split_once('@')
            .filter(|(id, version)| is_valid_ref(id) && is_valid_ref(version))
            .ok_or_else(|| {
                anyhow::anyhow!("`{text}` is not a profile like `example@1.0.0` (id and version in [A-Za-z0-9._-])")
            })?;
        Ok(store.load(id, version)?)
    };
    let (before, after) = (load(old)?, load(new)?);
    let changes = crate::profile::diff::diff(&before, &after);
    println!("{old} → {new}");
    if changes.is_empty() {
        println!("no changes to tools or rules");
        return Ok(ExitCode::SUCCESS);
    }
    let mut counts = std::collections::BTreeMap::new();
    for change in &changes {
        *counts.entry(change.direction).or_insert(0u32) += 1;
        println!(
            "  {:<9}  {}: {}",
            change.direction.as_str(),
            change.tool,
            change.what
        );
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(direction, n)| format!("{n} {}", direction.as_str()))
        .collect();
    println!("{} changes: {}", changes.len(), summary.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn check(root: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
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
