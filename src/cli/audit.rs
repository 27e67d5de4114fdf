//! `ecl-gate audit verify`: checks hash chains offline; exits 1 on the first broken record.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::EXIT_PROBLEM;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of one or more audit log files, in the order given
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { files } => match crate::audit::verify_files(&files) {
            Ok(report) => {
                println!(
                    "ok: {} records in {} file(s), chain intact; head {}",
                    report.records, report.files, report.head_hash
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(failure) => {
                eprintln!("error: {failure}");
                Ok(ExitCode::from(EXIT_PROBLEM))
            }
        },
    }
}
