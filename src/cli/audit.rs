//! `ecl-gate audit`: offline checks of audit logs; exits 1 when anything does not hold.
//!
//! - `verify`: the hash chains, and with `--checkpoint` the Merkle tree against a signed
//!   checkpoint (truncation, rewrite and reordering show).
//! - `prove`, `check-proof`: an inclusion proof of one record, and its offline check.
//! - `consistency`: that a newer checkpoint extends an older one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::{segment, verify_files, verify_paths, ChainReport, VerifyReport};

use super::EXIT_PROBLEM;

mod proofs;
mod ship;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chains of audit log files and directories
    ///
    /// Files are grouped into chains by name: the active file `<name>` and its rolled segments
    /// `<name>.<first-seq>`, checked oldest first whatever the order given, so a missing or
    /// renamed segment is reported. A directory stands for the files in it (hidden files and
    /// tails set aside by `serve --audit-repair` are skipped and listed).
    Verify {
        #[arg(required_unless_present = "db", value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Verify the trail shipped to this PostgreSQL database instead of files: every
        /// stream's chain, contiguity from seq 0 and stored checkpoints (`--pubkey` checks
        /// their signatures; repeat it for a fleet with several keys)
        #[arg(long, value_name = "URL", conflicts_with_all = ["paths", "in_order", "checkpoint"])]
        db: Option<String>,
        /// With `--db`: only this stream
        #[arg(long, value_name = "S", requires = "db")]
        stream: Option<String>,
        /// With `--db`: more checkpoint public keys
        #[arg(long = "also-pubkey", value_name = "K", requires = "db")]
        also_pubkeys: Vec<String>,
        #[command(flatten)]
        pg: ship::PgArgs,
        /// Check the files as one chain in exactly the order given (for archived files whose
        /// names no longer say where they belong)
        #[arg(long)]
        in_order: bool,
        /// Also check the log's Merkle tree against this signed checkpoint (a note, or a
        /// `.checkpoints` file: every checkpoint in it is checked)
        #[arg(long, value_name = "CP", requires = "pubkey")]
        checkpoint: Option<PathBuf>,
        /// The gate's checkpoint public key: PEM or raw base64 file (`ecl-gate keygen`'s
        /// `.pub`), or a signed-note verifier key `name+hash+key`
        #[arg(long, value_name = "K")]
        pubkey: Option<String>,
    },
    /// Copy audit logs into PostgreSQL, every record exactly once, and follow them
    ///
    /// Follows each chain under PATH (files or directories: rolled segments, the active file,
    /// new streams appearing) and its `.checkpoints`; one row per record keyed by (stream,
    /// seq). Resumes from what the database holds after a restart, comparing what was shipped
    /// before; a record whose (stream, seq) is stored with another hash stops that stream.
    Ship(ship::ShipArgs),
    /// Print an inclusion proof of one record (C2SP tlog-proof style), against a checkpoint
    Prove {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The record's seq (its leaf index)
        #[arg(long)]
        seq: u64,
        /// The checkpoint to prove against; default: the newest in `<log>.checkpoints`
        #[arg(long, value_name = "CP")]
        checkpoint: Option<PathBuf>,
    },
    /// Check an inclusion proof offline: the record is in the log the signed checkpoint pins
    CheckProof {
        #[arg(value_name = "PROOF")]
        proof: PathBuf,
        #[arg(long, value_name = "K")]
        pubkey: String,
        /// A file holding the record's line, exactly as in the log
        #[arg(long, value_name = "LINE_FILE")]
        record: PathBuf,
    },
    /// Print and verify the RFC 6962 consistency proof that NEW_CP extends OLD_CP
    Consistency {
        #[arg(value_name = "OLD_CP")]
        old: PathBuf,
        #[arg(value_name = "NEW_CP")]
        new: PathBuf,
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Check both checkpoints' signatures with this key (otherwise only their bodies count)
        #[arg(long, value_name = "K")]
        pubkey: Option<String>,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Ship(args) => ship::ship(&args),
        AuditCommand::Verify {
            db: Some(url),
            stream,
            pubkey,
            also_pubkeys,
            pg,
            ..
        } => ship::verify_db(
            &url,
            stream.as_deref(),
            pubkey.into_iter().chain(also_pubkeys).collect(),
            &pg,
        ),
        AuditCommand::Verify {
            paths,
            checkpoint: Some(checkpoint),
            pubkey,
            ..
        } => outcome(proofs::verify_against(
            &paths,
            &checkpoint,
            pubkey.as_deref().unwrap_or_default(),
        )),
        AuditCommand::Prove {
            paths,
            seq,
            checkpoint,
        } => outcome(proofs::prove(&paths, seq, checkpoint.as_deref())),
        AuditCommand::CheckProof {
            proof,
            pubkey,
            record,
        } => outcome(proofs::check_proof(&proof, &pubkey, &record)),
        AuditCommand::Consistency {
            old,
            new,
            paths,
            pubkey,
        } => outcome(proofs::consistency(&old, &new, &paths, pubkey.as_deref())),
        AuditCommand::Verify {
            paths, in_order, ..
        } if in_order => match verify_files(&paths) {
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

/// Prints what a proof command found; any failure exits 1 with `error: …`.
fn outcome(result: Result<String, String>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(out) => {
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(EXIT_PROBLEM))
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
