//! The command line: one file per subcommand. The only place `anyhow` is used.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (a broken chain, an invalid
//! profile, a bad input); 2 usage errors (from clap); 3 the configuration is invalid.

mod audit;
mod hash;
mod profiles;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ecl-gate",
    version,
    about = "Deterministic, fail-closed execution gate for AI agents' tool calls",
    long_about = "Deterministic, fail-closed execution gate for AI agents' tool calls.\n\n\
                  Without a subcommand, `ecl-gate` runs `serve`."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML); default: $ECL_CONFIG, else config/ecl-gate.toml if present
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve POST /v1/execute (the default)
    Serve(serve::ServeArgs),
    /// Print `sha256:…` of the canonical form of a JSON document (e.g. a context snapshot)
    Hash {
        /// JSON file; standard input when absent or `-`
        file: Option<PathBuf>,
    },
    /// Print the canonical form (ECL-C14N-1) of a JSON document, without a final newline
    Canonicalize {
        /// JSON file; standard input when absent or `-`
        file: Option<PathBuf>,
    },
    /// Audit log tools
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Profile tools
    #[command(subcommand)]
    Profiles(profiles::ProfilesCommand),
}

pub const EXIT_PROBLEM: u8 = 1;
pub const EXIT_CONFIG: u8 = 3;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli
        .command
        .unwrap_or_else(|| Command::Serve(serve::ServeArgs::default()))
    {
        Command::Serve(args) => serve::run(config, &args),
        Command::Hash { file } => hash::hash(file.as_deref()),
        Command::Canonicalize { file } => hash::canonicalize(file.as_deref()),
        Command::Audit(command) => audit::run(command),
        Command::Profiles(command) => profiles::run(command, config),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}
