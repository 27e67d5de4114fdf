//! `ecl-gate replay`: re-decide every recorded request and report what differs; with
//! `--candidate`, re-decide under another profile version and report the transitions.
//!
//! Streams: one record in memory at a time, whatever the size of the logs. Prints progress on
//! stderr for long runs, never on stdout (which `--json` keeps machine-readable).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use crate::canonical::{self, Value};
use crate::config::Config;
use crate::decision::Context;
use crate::profile::ProfileStore;
use crate::replay::{CandidateReplayer, CandidateReport, CandidateRule, FailOn, Replayer};

use super::EXIT_PROBLEM;

/// A record line longer than this is refused rather than read: a decision record holds one
/// request, and requests are at most 64 MiB (`max_body_bytes`).
const MAX_LINE_BYTES: u64 = 80 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Audit log files: rolled segments and active files, of one gate or many (a chain's
    /// segments are read in seq order whatever order they are named in)
    #[arg(required = true, value_name = "AUDIT_FILE")]
    files: Vec<PathBuf>,
    /// Profiles root; default: the configured `profiles_root`
    #[arg(long, value_name = "ROOT")]
    profiles: Option<PathBuf>,
    /// Re-decide under a candidate profile version instead of the recorded one:
    /// `ID@VERSION` (records naming any version of ID) or `ID@VERSION=ID@VERSION`
    /// (records naming exactly the first); repeat or separate with commas
    #[arg(long, value_name = "ID@VERSION", value_delimiter = ',')]
    candidate: Vec<String>,
    /// With --candidate: exit 1 if any of these transitions happened, e.g.
    /// `ALLOW→DENY,DENY→ALLOW` (`->` works too; a side is `*`, a type, or a type and a reason
    /// like `DENY TOOL_NOT_ALLOWED`)
    #[arg(
        long,
        value_name = "FROM→TO",
        value_delimiter = ',',
        requires = "candidate"
    )]
    fail_on: Vec<String>,
    /// With --candidate: print the report as one JSON object on stdout
    #[arg(long, requires = "candidate")]
    json: bool,
}

pub fn run(args: &ReplayArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let store = ProfileStore::new(args.profiles.clone().unwrap_or(config.profiles_root));
    let context = Context::new(config.approvals);
    let single_use = config.single_use_ledger.is_some();
    let files = chain_order(&not_chain_files_dropped(&args.files));
    if args.candidate.is_empty() {
        let mut replayer = Replayer::new(&store, &context, single_use);
        for_each_record(&files, |record| replayer.record(record))?;
        return Ok(report_replay(&replayer.report));
    }
    let rules = args
        .candidate
        .iter()
        .map(|text| CandidateRule::parse(text).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fail_on = args
        .fail_on
        .iter()
        .map(|text| FailOn::parse(text).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut replayer = CandidateReplayer::new(&store, &context, rules.clone(), single_use)
        .map_err(anyhow::Error::msg)?;
    for_each_record(&files, |record| replayer.record(record))?;
    let report = replayer.report;
    if args.json {
        let mut line = canonical::to_canonical(&report.to_value(&rules));
        line.push(b'\n');
        std::io::stdout()
            .write_all(&line)
            .context("cannot write to stdout")?;
    } else {
        print_table(&report, &rules);
    }
    if report.re_decided == 0 {
        eprintln!(
            "error: no recorded request names a profile the candidates cover; records carry the request only with `audit.include_request = true`"
        );
        return Ok(ExitCode::from(EXIT_PROBLEM));
    }
    let forbidden: Vec<String> = report
        .sorted()
        .into_iter()
        .filter_map(|(from, to, count)| {
            let pattern = fail_on.iter().find(|p| p.matches(from, to))?;
            Some(format!(
                "{from} → {to}: {} (--fail-on `{}`)",
                count.count,
                pattern.as_str()
            ))
        })
        .collect();
    for line in &forbidden {
        eprintln!("error: forbidden transition {line}");
    }
    Ok(if forbidden.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    })
}

fn report_replay(report: &crate::replay::ReplayReport) -> ExitCode {
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
        return ExitCode::from(EXIT_PROBLEM);
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEM)
    }
}

fn print_table(report: &CandidateReport, rules: &[CandidateRule]) {
    for rule in rules {
        println!("candidate {rule}");
    }
    println!(
        "re-decided {}: same {}, changed {} ({} naming other profiles left as recorded, {} skipped without a recorded request)",
        report.re_decided, report.same, report.changed, report.other_profiles, report.skipped
    );
    let rows = report.sorted();
    if rows.is_empty() {
        println!("no transitions");
        return;
    }
    let labels: Vec<String> = rows
        .iter()
        .map(|(from, to, _)| format!("{from} → {to}"))
        .collect();
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max("transition".len());
    let counts = rows
        .iter()
        .map(|(_, _, c)| c.count.to_string().len())
        .max()
        .unwrap_or(0)
        .max("count".len());
    println!(
        "{:<width$}  {:>counts$}  first request ids",
        "transition", "count"
    );
    for (label, (_, _, count)) in labels.iter().zip(&rows) {
        let pad = width - label.chars().count();
        println!(
            "{label}{:pad$}  {:>counts$}  {}",
            "",
            count.count,
            count.request_ids.join(", ")
        );
    }
}

/// Drops the files a gate keeps beside its chain (`<log>.checkpoints`, a `.tampered-` tail set
/// aside), which a glob like `audit/ecl-audit.log*` also names; says so on stderr.
fn not_chain_files_dropped(files: &[PathBuf]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|file| {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let beside = name.ends_with(crate::audit::segment::CHECKPOINTS_SUFFIX)
                || name.contains(".tampered-");
            if beside {
                eprintln!("note: skipping `{}`: not a chain file", file.display());
            }
            !beside
        })
        .cloned()
        .collect()
}

/// The files in the order a chain was written: within one chain (an active file and its rolled
/// `<name>.<first-seq>` segments), segments by seq, the active file last; chains in the order
/// they were named. Replay needs log order for single-use approvals.
fn chain_order(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(usize, bool, String, &PathBuf)> = Vec::with_capacity(files.len());
    let mut chains: Vec<PathBuf> = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (active, seq) = match name.rsplit_once('.') {
            Some((stem, seq))
                if seq.len() == crate::audit::segment::SEQ_DIGITS
                    && seq.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (file.with_file_name(stem), Some(seq.to_owned()))
            }
            _ => (file.clone(), None),
        };
        let chain = chains.iter().position(|c| *c == active).unwrap_or_else(|| {
            chains.push(active);
            chains.len() - 1
        });
        keyed.push((chain, seq.is_none(), seq.unwrap_or_default(), file));
    }
    keyed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    keyed.into_iter().map(|(_, _, _, f)| f.clone()).collect()
}

/// Reads every record of every file in order, one line in memory at a time.
fn for_each_record(files: &[PathBuf], mut each: impl FnMut(&Value)) -> anyhow::Result<()> {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut progress = Progress::new(total);
    let mut line = Vec::new();
    for file in files {
        let mut reader = std::io::BufReader::with_capacity(
            256 * 1024,
            std::fs::File::open(file)
                .with_context(|| format!("cannot open `{}`", file.display()))?,
        );
        for number in 1.. {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            if read == 0 {
                break;
            }
            if read as u64 > MAX_LINE_BYTES {
                anyhow::bail!(
                    "`{}` line {number}: longer than {MAX_LINE_BYTES} bytes, not a record",
                    file.display()
                );
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.is_empty() {
                continue;
            }
            let record = canonical::parse(text).with_context(|| {
                format!("`{}` line {number}: not a JSON record", file.display())
            })?;
            each(&record);
            progress.advance(read as u64);
        }
    }
    progress.finish();
    Ok(())
}

/// A progress line on stderr: redrawn in place on a terminal, one line every
/// [`Progress::PLAIN_EVERY`] otherwise; nothing for runs shorter than [`Progress::AFTER`].
struct Progress {
    total_bytes: u64,
    bytes: u64,
    records: u64,
    started: Instant,
    next: Instant,
    terminal: bool,
    shown: bool,
}

impl Progress {
    const AFTER: Duration = Duration::from_secs(2);
    const TERMINAL_EVERY: Duration = Duration::from_millis(500);
    const PLAIN_EVERY: Duration = Duration::from_secs(10);

    fn new(total_bytes: u64) -> Progress {
        let started = Instant::now();
        Progress {
            total_bytes,
            bytes: 0,
            records: 0,
            started,
            next: started + Self::AFTER,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.records += 1;
        // Reading the clock on every record would cost more than the check saves.
        if !self.records.is_multiple_of(1024) {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now
            + if self.terminal {
                Self::TERMINAL_EVERY
            } else {
                Self::PLAIN_EVERY
            };
        self.show(now);
    }

    fn show(&mut self, now: Instant) {
        let seconds = now.duration_since(self.started).as_secs_f64().max(0.001);
        let percent = if self.total_bytes == 0 {
            100.0
        } else {
            self.bytes as f64 * 100.0 / self.total_bytes as f64
        };
        let line = format!(
            "replay: {} records, {:.1} of {:.1} MiB ({percent:.0}%), {:.0} records/s",
            self.records,
            self.bytes as f64 / 1_048_576.0,
            self.total_bytes as f64 / 1_048_576.0,
            self.records as f64 / seconds
        );
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.shown {
            self.show(Instant::now());
            if self.terminal {
                eprintln!();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_come_in_seq_order_before_their_active_file() {
        let files: Vec<PathBuf> = [
            "b/ecl-audit.log",
            "a/ecl-audit.log",
            "a/ecl-audit.log.00000000000000000010",
            "a/ecl-audit.log.00000000000000000000",
            "b/ecl-audit.log.00000000000000000005",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let ordered: Vec<String> = chain_order(&files)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            ordered,
            [
                "b/ecl-audit.log.00000000000000000005",
                "b/ecl-audit.log",
                "a/ecl-audit.log.00000000000000000000",
                "a/ecl-audit.log.00000000000000000010",
                "a/ecl-audit.log",
            ]
        );
    }
}
