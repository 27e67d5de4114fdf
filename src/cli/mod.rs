//! The command line: one file per subcommand. The only place `anyhow` is used.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (a broken chain, an invalid
//! profile, a bad input); 2 usage errors (from clap); 3 the configuration is invalid.

mod approve;
mod audit;
mod decide;
mod grant;
mod hash;
mod load;
mod probe;
mod profiles;
mod replay;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ecl-gate",
    version = env!("GATE_VERSION_LINE"),
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
    /// Print the decision the gate would give for a request, without auditing it
    Decide {
        /// The request (JSON)
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// Profiles root; default: the configured `profiles_root`
        #[arg(long, value_name = "ROOT")]
        profiles: Option<PathBuf>,
        /// Exit 1 unless the decision is this one: ALLOW, DENY or ESCALATE
        #[arg(long, value_name = "TYPE")]
        expect: Option<String>,
    },
    /// Re-decide every request recorded in audit logs (needs `audit.include_request`), as
    /// recorded or under a candidate profile version
    Replay(replay::ReplayArgs),
    /// Create an Ed25519 approver key pair: DIR/<kid>.key (0600) and DIR/<kid>.pub
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Key id; default: derived from the public key
        #[arg(long)]
        kid: Option<String>,
    },
    /// Sign an approval token for one request's intent
    Approve {
        /// The approver's private key (PKCS#8 PEM, as written by `keygen`)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Key id in the token header; default: the kid `keygen` made the key with (its
        /// `<kid>.key` file name), else derived from the key
        #[arg(long)]
        kid: Option<String>,
        /// The `escalation.intent_hash` to approve
        #[arg(
            long,
            value_name = "HASH",
            conflicts_with = "request",
            required_unless_present = "request"
        )]
        intent_hash: Option<String>,
        /// A request file, or a saved ESCALATE decision, whose intent to approve
        #[arg(long, value_name = "FILE")]
        request: Option<PathBuf>,
        /// How long the approval stays valid, e.g. 15m (at most the gate's approvals.max_ttl)
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Who approves (`iss`); default: $USER
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
    },
    /// Audit log tools
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Profile tools
    #[command(subcommand)]
    Profiles(profiles::ProfilesCommand),
    /// Grant tools (proxy mode): verify an `ECL-Grant` as a tool would
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    /// Send load to a running gate; report OK/FAIL, decisions, throughput and latency
    Load(Box<load::LoadArgs>),
    /// GET a URL (e.g. the admin listener's /readyz); exit 0 on 2xx, 1 otherwise
    Probe(probe::ProbeArgs),
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
        Command::Decide {
            request,
            profiles,
            expect,
        } => decide::run(&request, profiles, expect.as_deref(), config),
        Command::Replay(args) => replay::run(&args, config),
        Command::Keygen { out, kid } => approve::keygen(&out, kid.as_deref()),
        Command::Approve {
            key,
            kid,
            intent_hash,
            request,
            ttl,
            approver,
        } => approve::approve(approve::ApproveArgs {
            key,
            kid,
            intent_hash,
            request,
            ttl,
            approver,
        }),
        Command::Profiles(command) => profiles::run(command, config),
        Command::Grant(command) => grant::run(command),
        Command::Load(args) => load::run(&args),
        Command::Probe(args) => probe::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}
