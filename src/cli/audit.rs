//! `ecl-gate audit verify`: checks hash chains offline; exits 1 when any chain is broken.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::{segment, verify_files, verify_paths, ChainReport, VerifyReport};

use super::EXIT_PROBLEM;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chains of audit log files and directories
    ///
    /// Files are grouped into chains by name: the active file `<name>` and its rolled segments
    /// `<name>.<first-seq>`, checked oldest first whatever the order given, so a missing or
    /// renamed segment is reported. A directory stands for the files in it (hidden files and
    /// tails set aside by `serve --audit-repair` are skipped and listed).
    Verify {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Check the files as one chain in exactly the order given (for archived files whose
        /// names no longer say where they belong)
        #[arg(long)]
        in_order: bool,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { paths, in_order } if in_order => match verify_files(&paths) {
            Ok(report) => {
                println!("ok: {}", summary(&report));
                Ok(ExitCode::SUCCESS)
            }
            Err(failure) => {
                eprintln!("error: {failure}");
                Ok(ExitCode::from(EXIT_PROBLEM))
            }
        },
        AuditCommand::Verify { paths, .. } => {
            let verification = match verify_paths(&paths) {
                Ok(v) => v,
                Err(failure) => {
                    eprintln!("error: {failure}");
                    return Ok(ExitCode::from(EXIT_PROBLEM));
                }
            };
            for aside in &verification.set_aside {
                eprintln!(
                    "note: skipped `{}`: a tail set aside by --audit-repair, not part of a chain",
                    aside.display()
                );
            }
            if verification.chains.is_empty() {
                eprintln!("error: no audit log files found");
                return Ok(ExitCode::from(EXIT_PROBLEM));
            }
            for chain in &verification.chains {
                match &chain.result {
                    Ok(report) => println!("ok: `{}`: {}", chain.name.display(), summary(report)),
                    Err(failure) => {
                        eprintln!("error: chain `{}`: {failure}", chain.name.display());
                        hint_missing_segments(chain);
                    }
                }
            }
            Ok(if verification.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEM)
            })
        }
    }
}

/// A chain named by its active file alone fails at its first record; say why.
fn hint_missing_segments(chain: &ChainReport) {
    let on_disk = segment::rolled_segments(&chain.name).unwrap_or_default();
    let left_out = on_disk
        .iter()
        .filter(|(_, path)| !chain.files.contains(path))
        .count();
    if left_out > 0 {
        eprintln!(
            "hint: {left_out} rolled segment(s) of this chain were not given; verify the directory `{}`",
            segment::dir_of(&chain.name).display()
        );
    }
}

fn summary(report: &VerifyReport) -> String {
    let seqs = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!(" (seq {first}..={last})"),
        _ => String::new(),
    };
    format!(
        "{} records{seqs} in {} file(s), chain intact; head {}",
        report.records, report.files, report.head_hash
    )
}
