//! `ecl-gate load`: send requests to a running gate and report throughput and latency.
//!
//! Exit codes: 0 every answer was a well-formed decision; 1 any FAIL, or the target could not be
//! reached; 2 usage errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::load::{
    self, Limit, LoadError, Options, Progress, Report, Scenario, Template, Workload,
};

use super::EXIT_PROBLEM;

const EXIT_USAGE: u8 = 2;
/// The run length when neither `--requests` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Upper bounds that keep a typo from starting a day-long or machine-filling run.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
const MAX_CONCURRENCY: usize = 10_000;
const MAX_THREADS: usize = 64;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The execution endpoint; a URL without a path means /v1/execute
    #[arg(long, default_value = "http://127.0.0.1:8000/v1/execute")]
    url: String,
    /// Stop after this many measured requests
    #[arg(long, short = 'n', value_name = "N", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Measure for this long, e.g. `30s` or `2m` [default: 10s unless --requests is given]
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Keep-alive connections, each with one request in flight
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Send this JSON request (its `request_id` is replaced by a unique one per request)
    #[arg(long, value_name = "FILE", conflicts_with = "scenario")]
    body: Option<PathBuf>,
    /// Built-in requests for the shipped profile `example` 1.0.0 [default: allow]
    #[arg(long, value_enum)]
    scenario: Option<ScenarioArg>,
    /// Send load for this long before measuring, e.g. `3s`
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Give up on a request (and its connection) after this long
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Threads of the load generator; its CPU competes with the server's on a small machine
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as one line of JSON
    #[arg(long)]
    json: bool,
    /// No progress line on stderr
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Allow a target that is not a loopback address
    #[arg(long)]
    allow_remote: bool,
    /// https:// targets: trust these PEM CA certificates [default: the public web PKI]
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// https:// targets: present this PEM client certificate (mTLS); needs --key
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM)
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Send `Authorization: Bearer <token>` with the token in this file
    #[arg(long, value_name = "FILE")]
    bearer_file: Option<PathBuf>,
    /// Open a new connection (and TLS handshake) for every request: measures handshakes
    #[arg(long)]
    new_connections: bool,
    /// Print the request body this run would send (`request_id` "load-1") and exit: the same
    /// request for another load generator (wrk, oha, k6, hey)
    #[arg(long, conflicts_with_all = ["json", "requests", "duration"])]
    print_body: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// email.send to bob@example.com: ALLOW
    Allow,
    /// email.send to a foreign address: DENY CONSTRAINT_VIOLATION
    Deny,
    /// allow and deny, alternating
    Mixed,
}

pub fn run(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let usage = |message: String| {
        eprintln!("error: {message}");
        Ok(ExitCode::from(EXIT_USAGE))
    };
    if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
        return usage(format!("--concurrency must be 1 to {MAX_CONCURRENCY}"));
    }
    if !(1..=MAX_THREADS).contains(&args.threads) {
        return usage(format!("--threads must be 1 to {MAX_THREADS}"));
    }
    if args.timeout.is_zero() {
        return usage("--timeout must be more than 0".to_owned());
    }
    if args.warmup > MAX_DURATION {
        return usage("--warmup must be at most 24h".to_owned());
    }
    let limit = match (args.requests, args.duration) {
        (Some(0), _) => return usage("--requests must be at least 1".to_owned()),
        (Some(n), _) => Limit::Requests(n),
        (None, Some(d)) if d.is_zero() || d > MAX_DURATION => {
            return usage("--duration must be more than 0 and at most 24h".to_owned())
        }
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => Limit::Duration(DEFAULT_DURATION),
    };
    let workload = match &args.body {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read body file `{}`", path.display()))?;
            match Template::from_json(&bytes) {
                Ok(template) => Workload {
                    name: format!("body {}", path.display()),
                    templates: vec![template],
                },
                Err(err) => return usage(format!("body file `{}`: {err}", path.display())),
            }
        }
        None => {
            let scenario = match args.scenario.unwrap_or(ScenarioArg::Allow) {
                ScenarioArg::Allow => Scenario::Allow,
                ScenarioArg::Deny => Scenario::Deny,
                ScenarioArg::Mixed => Scenario::Mixed,
            };
            Workload {
                name: format!("scenario {}", scenario.name()),
                templates: scenario.templates().map_err(anyhow::Error::msg)?,
            }
        }
    };
    if args.print_body {
        let [template] = workload.templates.as_slice() else {
            return usage(format!(
                "--print-body prints one request; {} sends {}",
                workload.name,
                workload.templates.len()
            ));
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&template.body(b"load-1"))?;
        stdout.write_all(b"\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = Options {
        url: args.url.clone(),
        limit,
        concurrency: args.concurrency,
        threads: args.threads,
        warmup: args.warmup,
        timeout: args.timeout,
        workload,
        allow_remote: args.allow_remote,
        tls: load::TlsFiles {
            ca_file: args.cacert.clone(),
            client_cert: args.cert.clone().zip(args.key.clone()),
        },
        bearer_file: args.bearer_file.clone(),
        new_connections: args.new_connections,
    };

    if let Err(err) = load::check_options(&options) {
        return usage(err.to_string());
    }
    if !args.quiet {
        eprintln!(
            "ecl-gate load: {} with {} connection(s), {}{}",
            options.url,
            options.concurrency,
            match limit {
                Limit::Requests(n) => format!("{n} requests"),
                Limit::Duration(d) => humantime::format_duration(d).to_string(),
            },
            if options.warmup.is_zero() {
                String::new()
            } else {
                format!(
                    " after {} warm-up",
                    humantime::format_duration(options.warmup)
                )
            }
        );
    }
    let quiet = args.quiet;
    let report = match load::run(&options, |p| {
        if !quiet {
            eprintln!("{}", progress_line(p));
        }
    }) {
        Ok(report) => report,
        Err(LoadError::Usage(message)) => return usage(message),
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_PROBLEM));
        }
    };

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text_report(&report));
    }
    if report.unexpected > 0 && !args.quiet {
        eprintln!(
            "warning: {} answer(s) were not the decision the scenario expects; is profile `example` 1.0.0 the shipped one?",
            report.unexpected
        );
    }
    Ok(if report.fail == 0 && report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}

fn progress_line(p: &Progress) -> String {
    format!(
        "[{:>5.1}s] {}{:>9.0} req/s  {:>10} done  {} failed",
        p.elapsed.as_secs_f64(),
        if p.warming_up { "warm-up " } else { "" },
        p.rate,
        p.done,
        p.failed
    )
}

fn text_report(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target      {} ({}, {} connection(s), {} thread(s))",
        r.url, r.workload, r.concurrency, r.threads
    );
    let _ = writeln!(
        out,
        "measured    {:.2} s{}",
        r.elapsed_s,
        if r.warmup_s > 0.0 {
            format!(" after {:.1} s warm-up", r.warmup_s)
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "result      {} OK, {} FAIL", r.ok, r.fail);
    for (kind, f) in &r.failures {
        let _ = writeln!(out, "  FAIL      {kind}: {}  (e.g. {})", f.count, f.example);
    }
    let decisions: Vec<String> = r
        .decisions
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(d, n)| format!("{d} {n}"))
        .collect();
    let _ = writeln!(out, "decisions   {}", decisions.join(", "));
    for (reason, n) in &r.reasons {
        let _ = writeln!(out, "  {reason:<40} {n}");
    }
    if r.unexpected > 0 {
        let _ = writeln!(out, "unexpected  {}", r.unexpected);
    }
    let _ = writeln!(out, "throughput  {:.0} decisions/s", r.throughput_rps);
    let l = &r.latency_ms;
    let _ = writeln!(
        out,
        "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
    );
    if let Some(cpu) = r.load_cpu_s {
        let _ = writeln!(out, "load CPU    {cpu:.2} s (this generator, whole run)");
    }
    out
}
