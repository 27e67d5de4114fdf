//! Crash test of the audit log: the real `ecl-gate` binary under concurrent load, killed with
//! SIGKILL at random moments, restarted, and checked after every round.
//!
//! ```text
//! cargo run --release --example crashtest -- --rounds 20
//! ```
//!
//! The binary is `--bin PATH`, else `$ECL_GATE_BIN`, else `target/release/ecl-gate`, which the
//! example first brings up to date with `cargo build --release --bin ecl-gate`. Each round
//! starts the gate on 127.0.0.1 (port 0) with a temporary config (`sync = "always"`, small
//! `rotate_bytes`, so kills also land in the middle of rotations), drives concurrent valid
//! requests for `profiles/example/1.0.0.json`, and `kill -9`s it after a random delay; one
//! round in four it also kills a start within its first milliseconds (during recovery). After
//! every restart it checks that every decision answered 200 is in the log (same `request_id`,
//! `request_hash`, `seq` and `record_hash`), that `seq` runs without gaps across all files, and
//! that `ecl-gate audit verify` passes. It ends with one summary line and exits 1 on any
//! missing decision or chain break.
//!
//! SIGKILL tests process crashes: the page cache survives, so this does not test power loss
//! (for that, `sync = "always"` relies on fdatasync, which the unit tests check is called
//! before any answer).
//!
//! The integration test `crashtest::a_few_kill_9_rounds_lose_nothing` runs three short rounds
//! of this same code against the debug binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ecl_gate::canonical::{self, Value};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Result<T> = std::result::Result<T, String>;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: u32,
    pub bin: PathBuf,
    /// Concurrent clients.
    pub workers: usize,
    /// The gate is killed between `min_kill` and `max_kill` after it is ready.
    pub min_kill: Duration,
    pub max_kill: Duration,
    pub rotate_bytes: u64,
    pub seed: u64,
    /// Print one line per round.
    pub verbose: bool,
    /// Acknowledgments the gate never gave, added before the final check: a self-test that
    /// the check reports exactly this many missing.
    pub phantom_acks: u64,
}

/// The figures of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rounds: u32,
    /// Decisions answered 200: each must be in the log.
    pub acknowledged: u64,
    /// Acknowledged decisions not found in the log (or found with other hashes).
    pub missing: u64,
    /// Failed `audit verify` runs and seq gaps.
    pub chain_breaks: u64,
    /// Answered 503 AUDIT_WRITE_FAILED (never expected here).
    pub refused: u64,
    /// Requests cut off by a kill: never acknowledged, so free to be absent.
    pub unanswered: u64,
    /// Records in the log at the end, and the files holding them.
    pub records: u64,
    pub files: u64,
    /// Restarts that cut a torn last line or finished an interrupted rotation.
    pub torn_tails_cut: u64,
    pub rotations_finished: u64,
    /// Starts killed within their first milliseconds.
    pub early_kills: u64,
}

impl Summary {
    pub fn lost_nothing(&self) -> bool {
        self.missing == 0 && self.chain_breaks == 0
    }

    pub fn line(&self, seed: u64) -> String {
        format!(
            "crashtest: rounds={} acknowledged={} missing={} chain_breaks={} refused={} \
             unanswered={} records={} files={} torn_tails_cut={} rotations_finished={} \
             early_kills={} seed={seed}",
            self.rounds,
            self.acknowledged,
            self.missing,
            self.chain_breaks,
            self.refused,
            self.unanswered,
            self.records,
            self.files,
            self.torn_tails_cut,
            self.rotations_finished,
            self.early_kills,
        )
    }
}

/// An acknowledged decision: what the client was told about its record.
#[derive(Debug, Clone)]
struct Ack {
    request_id: String,
    request_hash: String,
    seq: u64,
    record_hash: String,
}

/// Runs the crash test; `Err` only when the test itself cannot run (no binary, no start).
pub fn run(options: &Options) -> Result<Summary> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let audit_dir = dir.path().join("audit");
    let config = dir.path().join("gate.toml");
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nprofiles_root = {:?}\n\
             [audit]\npath = {:?}\nsync = \"always\"\nrotate_bytes = {}\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n",
            profiles.display().to_string(),
            audit_dir.join("ecl-audit.log").display().to_string(),
            options.rotate_bytes,
        ),
    )
    .map_err(|e| format!("cannot write the config: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let mut rng = Rng(options.seed | 1);
    let mut summary = Summary::default();
    let mut acks: Vec<Ack> = Vec::new();
    let events = Arc::new(Events::default());

    for round in 1..=options.rounds {
        if rng.below(4) == 0 {
            // Killed while it recovers the tail the previous kill left.
            let mut early = Gate::spawn(&options.bin, &config, &events)?;
            std::thread::sleep(Duration::from_millis(rng.below(10)));
            early.kill()?;
            summary.early_kills += 1;
        }
        let mut gate = Gate::spawn(&options.bin, &config, &events)?;
        let addr = gate.ready(Duration::from_secs(30))?;
        check(options, &audit_dir, &acks, &mut summary)?;

        let delay = options.min_kill
            + Duration::from_millis(rng.below(
                u64::try_from((options.max_kill - options.min_kill).as_millis()).unwrap_or(0) + 1,
            ));
        let round_acks = runtime.block_on(drive(addr, options.workers, round, delay, &mut gate));
        let (new_acks, refused, unanswered) = round_acks?;
        summary.acknowledged += new_acks.len() as u64;
        summary.refused += refused;
        summary.unanswered += unanswered;
        acks.extend(new_acks);
        summary.rounds = round;
        if options.verbose {
            eprintln!(
                "round {round}: killed after {} ms; {} acknowledged so far",
                delay.as_millis(),
                summary.acknowledged
            );
        }
    }

    for n in 0..options.phantom_acks {
        acks.push(Ack {
            request_id: format!("phantom-{n}"),
            request_hash: canonical::sha256_prefixed(b"phantom"),
            seq: u64::MAX,
            record_hash: String::new(),
        });
    }
    // The last kill's aftermath is checked by one more start.
    let mut gate = Gate::spawn(&options.bin, &config, &events)?;
    gate.ready(Duration::from_secs(30))?;
    check(options, &audit_dir, &acks, &mut summary)?;
    gate.kill()?;
    summary.torn_tails_cut = events.torn.load(Ordering::Relaxed);
    summary.rotations_finished = events.rotations.load(Ordering::Relaxed);
    Ok(summary)
}

/// Lines of the gates' logs the summary counts.
#[derive(Default)]
struct Events {
    torn: AtomicU64,
    rotations: AtomicU64,
}

/// `bin` with an empty environment but for what any process needs: the gate must run on the
/// configuration file alone, not on `ECL_*` variables or `RUST_LOG` the caller happens to have
/// (a test in the same process may be setting them at that moment).
fn clean_command(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    command.env_clear();
    for name in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

struct Gate {
    child: Child,
    addr: mpsc::Receiver<SocketAddr>,
}

impl Gate {
    fn spawn(bin: &Path, config: &Path, events: &Arc<Events>) -> Result<Gate> {
        let mut child = clean_command(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", bin.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| "the gate's stderr is not piped".to_owned())?;
        let (tx, addr) = mpsc::channel();
        let events = Arc::clone(events);
        // Drains stderr to the end: a full pipe would block the gate's logging.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("cut a torn last line") {
                    events.torn.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("rotation interrupted by a crash") {
                    events.rotations.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("\"level\":\"ERROR\"") || line.contains("error:") {
                    eprintln!("gate: {line}");
                }
                if let Some(addr) = serving_addr(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        Ok(Gate { child, addr })
    }

    fn ready(&mut self, timeout: Duration) -> Result<SocketAddr> {
        match self.addr.recv_timeout(timeout) {
            Ok(addr) => Ok(addr),
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                let _ = self.kill();
                Err(format!("the gate did not start serving (exit: {status:?})"))
            }
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) -> Result<()> {
        // An already exited child is fine: it is reaped below.
        let _ = self.child.kill();
        self.child
            .wait()
            .map(drop)
            .map_err(|e| format!("cannot reap the gate: {e}"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `ADDR` from a log line containing `serving POST http://ADDR/v1/execute`.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("serving POST http://")? + "serving POST http://".len()..];
    rest[..rest.find("/v1/execute")?].parse().ok()
}

/// Sends requests from `workers` clients until the gate is killed after `delay`; returns the
/// acknowledged decisions, the refused and the unanswered counts.
async fn drive(
    addr: SocketAddr,
    workers: usize,
    round: u32,
    delay: Duration,
    gate: &mut Gate,
) -> Result<(Vec<Ack>, u64, u64)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let snapshot = Value::object([("session", "crashtest".into()), ("turn", 1i64.into())]);
    let snapshot_hash = canonical::hash(&snapshot);

    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let (client, acks, refused, unanswered, stop) = (
                client.clone(),
                Arc::clone(&acks),
                Arc::clone(&refused),
                Arc::clone(&unanswered),
                Arc::clone(&stop),
            );
            let (snapshot, snapshot_hash) = (snapshot.clone(), snapshot_hash.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request_id = format!("r{round}-w{worker}-{n}");
                    let body = request_body(&request_id, &snapshot, &snapshot_hash);
                    match send(&client, addr, body).await {
                        Some((200, answer)) => match ack_of(&request_id, &answer) {
                            Some(ack) => {
                                if let Ok(mut acks) = acks.lock() {
                                    acks.push(ack);
                                }
                            }
                            None => {
                                eprintln!("crashtest: a 200 without an audit block: {answer:?}")
                            }
                        },
                        Some((503, _)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Some((status, answer)) => {
                            eprintln!("crashtest: unexpected {status}: {answer:?}");
                        }
                        // Killed mid-request, or the gate is gone: stop this client.
                        None => {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(delay).await;
    gate.kill()?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let acks = acks.lock().map(|a| a.clone()).unwrap_or_default();
    Ok((
        acks,
        refused.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
    ))
}

fn request_body(request_id: &str, snapshot: &Value, snapshot_hash: &str) -> Bytes {
    let request = Value::object([
        ("request_id", request_id.into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:crashtest".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([
                ("name", "email.send".into()),
                (
                    "args",
                    Value::object([("to", "bob@example.com".into()), ("subject", "hi".into())]),
                ),
            ]),
        ),
        (
            "profile",
            Value::object([("id", "example".into()), ("version", "1.0.0".into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot", snapshot.clone()),
                ("snapshot_hash", snapshot_hash.into()),
            ]),
        ),
    ]);
    Bytes::from(canonical::to_canonical(&request))
}

/// The status and parsed answer, or `None` when no complete answer arrived.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    body: Bytes,
) -> Option<(u16, Value)> {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/v1/execute"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, canonical::parse(&bytes).ok()?))
}

fn ack_of(request_id: &str, answer: &Value) -> Option<Ack> {
    let audit = answer.get("audit")?;
    Some(Ack {
        request_id: request_id.to_owned(),
        request_hash: answer.get("request_hash")?.as_str()?.to_owned(),
        seq: number(audit.get("seq")?)?,
        record_hash: audit.get("record_hash")?.as_str()?.to_owned(),
    })
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_i64().and_then(|i| u64::try_from(i).ok()),
        _ => None,
    }
}

/// Checks the log against every acknowledgment so far; counts into `summary`.
fn check(options: &Options, audit_dir: &Path, acks: &[Ack], summary: &mut Summary) -> Result<()> {
    let verify = clean_command(&options.bin)
        .arg("audit")
        .arg("verify")
        .arg(audit_dir)
        .output()
        .map_err(|e| format!("cannot run audit verify: {e}"))?;
    // Before the first decision there is only an empty file, which verifies.
    if !verify.status.success() {
        summary.chain_breaks += 1;
        eprintln!(
            "crashtest: audit verify failed: {}",
            String::from_utf8_lossy(&verify.stderr).trim()
        );
    }

    let files = chain_files(audit_dir)?;
    let mut by_id: HashMap<String, (String, u64, String)> = HashMap::new();
    let mut expected_seq = 0u64;
    let mut gaps = 0u64;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        for line in text.lines() {
            let Ok(record) = canonical::parse(line.as_bytes()) else {
                gaps += 1;
                continue;
            };
            let seq = record.get("seq").and_then(number);
            if seq != Some(expected_seq) {
                eprintln!(
                    "crashtest: `{}`: seq {seq:?} where {expected_seq} was expected",
                    file.display()
                );
                gaps += 1;
            }
            expected_seq = seq.map_or(expected_seq + 1, |s| s + 1);
            let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
            by_id.insert(
                text(record.get("request_id")),
                (
                    text(record.get("request_hash")),
                    seq.unwrap_or(u64::MAX),
                    text(record.get("integrity").and_then(|i| i.get("record_hash"))),
                ),
            );
        }
    }
    summary.chain_breaks += gaps.min(1);
    summary.records = expected_seq;
    summary.files = files.len() as u64;

    let mut missing = 0;
    for ack in acks {
        let found = by_id.get(&ack.request_id);
        if found != Some(&(ack.request_hash.clone(), ack.seq, ack.record_hash.clone())) {
            if missing < 5 {
                eprintln!("crashtest: acknowledged but not in the log: {ack:?} (found {found:?})");
            }
            missing += 1;
        }
    }
    // Counted once per decision: a later check sees the same loss again.
    summary.missing = summary.missing.max(missing);
    Ok(())
}

/// The chain's files in order: rolled segments by first seq, then the active file.
fn chain_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut rolled = Vec::new();
    let mut active = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || ecl_gate::audit::segment::is_set_aside(&name) {
            continue;
        }
        match ecl_gate::audit::segment::split_rolled(&name) {
            Some((_, seq)) => rolled.push((seq, path)),
            None => active.push(path),
        }
    }
    rolled.sort();
    Ok(rolled.into_iter().map(|(_, p)| p).chain(active).collect())
}

/// xorshift64: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `--bin`, else `$ECL_GATE_BIN`, else `target/release/ecl-gate` after building it.
fn locate_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = explicit.or_else(|| std::env::var_os("ECL_GATE_BIN").map(PathBuf::from)) {
        return Ok(bin);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("crashtest: cargo build --release --bin ecl-gate");
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "ecl-gate"])
        .current_dir(manifest)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), PathBuf::from);
    Ok(target.join("release").join("ecl-gate"))
}

const USAGE: &str =
    "usage: crashtest [--rounds N] [--workers N] [--min-kill-ms N] [--max-kill-ms N] \
                     [--rotate-bytes N] [--seed N] [--bin PATH] [--phantom-acks N] [--quiet]";

fn parse_args() -> Result<(Options, Option<PathBuf>)> {
    let mut options = Options {
        rounds: 20,
        bin: PathBuf::new(),
        workers: 32,
        min_kill: Duration::from_millis(50),
        max_kill: Duration::from_millis(600),
        rotate_bytes: 64 * 1024,
        seed: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        verbose: true,
        phantom_acks: 0,
    };
    let mut bin = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--quiet" {
            options.verbose = false;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("`{arg}` needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("`{arg}` takes a number, not `{value}`"))
        };
        match arg.as_str() {
            "--rounds" => options.rounds = u32::try_from(number()?).map_err(|e| e.to_string())?,
            "--workers" => {
                options.workers = usize::try_from(number()?).map_err(|e| e.to_string())?
            }
            "--min-kill-ms" => options.min_kill = Duration::from_millis(number()?),
            "--max-kill-ms" => options.max_kill = Duration::from_millis(number()?),
            "--rotate-bytes" => options.rotate_bytes = number()?,
            "--seed" => options.seed = number()?,
            "--phantom-acks" => options.phantom_acks = number()?,
            "--bin" => bin = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown argument `{arg}`\n{USAGE}")),
        }
    }
    if options.max_kill < options.min_kill {
        return Err("`--max-kill-ms` must not be below `--min-kill-ms`".into());
    }
    Ok((options, bin))
}

fn main() -> ExitCode {
    let started = Instant::now();
    let (mut options, bin) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    options.bin = match locate_binary(bin) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(summary) => {
            println!(
                "{} elapsed_s={:.1}",
                summary.line(options.seed),
                started.elapsed().as_secs_f64()
            );
            if summary.lost_nothing() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
