//! `ecl-gate audit ship`: copies gates' audit logs into PostgreSQL, every record exactly once.
//!
//! Owns following chains on disk — rolled segments, the active file (a torn last line is left
//! until it is complete or cut), new streams appearing — and their `.checkpoints`, and writing
//! them as rows keyed by `(stream, seq)`. Resumes from what the database holds, re-reading the
//! local files and comparing every already-shipped record's hash on the way, so a file
//! rewritten after shipping, an edited row or a deleted row is named.
//!
//! It must never overwrite a stored row, never ship a line whose own hash does not verify or
//! that does not link to the one before, and never skip a seq: any of these stops that stream
//! (recorded in `ecl_audit_streams.stopped_reason`) while the other streams go on. It runs
//! beside the gate; the gate never waits for it.

pub mod db_verify;
pub mod schema;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Client;

use crate::audit::{check_record_line, segment, GENESIS};
use crate::postgres::{self, PgSettings};
use schema::Row;

/// Longest record line accepted, as the gate writes and verifies them.
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// How already-shipped records are compared at resume: this many hashes per query.
const COMPARE_CHUNK: i64 = 2000;

#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub db: PgSettings,
    /// Files (active files) and directories holding gates' audit logs.
    pub paths: Vec<PathBuf>,
    /// Prepended to each stream's name (its active file's name), e.g. a cluster's name.
    pub stream_prefix: String,
    pub batch: usize,
    pub poll: Duration,
    /// Ship what is there, then exit (cron jobs, tests); otherwise follow forever.
    pub once: bool,
    pub progress_every: Duration,
}

/// A chain on disk: its active file and rolled segments, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    stream: String,
    active: PathBuf,
    files: Vec<PathBuf>,
}

/// Where the shipper is in one stream.
#[derive(Debug)]
struct Cursor {
    /// The next seq to ship.
    next_seq: u64,
    /// The `record_hash` of `next_seq - 1` (GENESIS at 0): each line must link to it.
    last_hash: String,
    /// The file and byte offset reading continues from, identified by inode across renames.
    file: Option<(u64, u64)>,
    /// Set at (re)start: already shipped records read again are compared with their rows.
    verified_to: u64,
    stopped: Option<String>,
    checkpoints_shipped: usize,
    /// A seq jump seen once: `(expected, found)`. A gate rotating between our listing and our
    /// open looks like one, so it is a gap only when a fresh listing shows it again.
    suspected_gap: Option<(u64, u64)>,
}

/// What one pass found and did, for the progress line and the exit code.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub shipped: u64,
    pub streams: usize,
    pub stopped: Vec<(String, String)>,
    /// Bytes in active files not read yet at the start of the pass.
    pub behind_bytes: u64,
    /// Age of the newest record shipped in this pass when it was committed.
    pub delay: Option<Duration>,
    /// A stream saw a seq jump once and must be looked at again before it is called a gap.
    pub recheck: bool,
}

pub struct Shipper {
    options: ShipOptions,
    cursors: BTreeMap<String, Cursor>,
}

impl Shipper {
    pub fn new(options: ShipOptions) -> Shipper {
        Shipper {
            options,
            cursors: BTreeMap::new(),
        }
    }

    /// Creates the tables when missing (or checks them).
    pub async fn prepare(&self) -> Result<(), String> {
        let pool = postgres::single(&self.options.db).map_err(|e| e.to_string())?;
        postgres::ensure_schema(&pool, &self.options.db.url, &schema::SCHEMA)
            .await
            .map_err(|e| e.to_string())
    }

    /// Forgets positions: the next pass resumes from the database (after a lost connection).
    pub fn reset(&mut self) {
        self.cursors.clear();
    }

    /// One pass over every chain: ship what is new. A database error ends the pass (the
    /// caller reconnects and resets); a problem with one stream stops only that stream.
    pub async fn pass(&mut self, client: &mut Client) -> Result<PassReport, String> {
        let chains = discover(&self.options.paths, &self.options.stream_prefix)?;
        let mut report = PassReport {
            streams: chains.len(),
            ..PassReport::default()
        };
        for chain in chains {
            if !self.cursors.contains_key(&chain.stream) {
                let cursor = resume(client, &chain.stream).await?;
                self.cursors.insert(chain.stream.clone(), cursor);
            }
            let Some(cursor) = self.cursors.get_mut(&chain.stream) else {
                continue;
            };
            if cursor.stopped.is_none() {
                report.behind_bytes += behind(&chain, cursor);
                let outcome =
                    ship_chain(client, &chain, cursor, self.options.batch, &mut report).await?;
                if let Err(problem) = outcome {
                    tracing::error!(stream = %chain.stream, problem = %problem, "stream stopped: nothing more is shipped from it until this is resolved");
                    record_stop(client, &chain.stream, &problem).await?;
                    cursor.stopped = Some(problem);
                }
            }
            if cursor.stopped.is_none() {
                if let Err(problem) = ship_checkpoints(client, &chain, cursor).await? {
                    tracing::error!(stream = %chain.stream, problem = %problem, "stream stopped");
                    record_stop(client, &chain.stream, &problem).await?;
                    cursor.stopped = Some(problem);
                }
            }
            if let Some(problem) = &cursor.stopped {
                report.stopped.push((chain.stream.clone(), problem.clone()));
            } else if cursor.suspected_gap.is_some() {
                report.recheck = true;
            }
        }
        Ok(report)
    }
}

/// Bytes of the active file after the cursor (0 when reading an older file: more to come).
fn behind(chain: &Chain, cursor: &Cursor) -> u64 {
    let Ok(meta) = std::fs::metadata(&chain.active) else {
        return 0;
    };
    match cursor.file {
        Some((inode, offset)) if inode == inode_of(&meta) => meta.len().saturating_sub(offset),
        _ => meta.len(),
    }
}

/// The chains among `paths`, grouped like `audit verify` groups them.
fn discover(paths: &[PathBuf], prefix: &str) -> Result<Vec<Chain>, String> {
    let mut actives: BTreeMap<PathBuf, ()> = BTreeMap::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read the directory `{}`: {e}", path.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.')
                    || segment::is_checkpoints(&name)
                    || segment::is_set_aside(&name)
                    || !entry.file_type().is_ok_and(|t| t.is_file())
                {
                    continue;
                }
                let active = match segment::split_rolled(&name) {
                    Some((base, _)) => path.join(base),
                    None => entry.path(),
                };
                actives.insert(active, ());
            }
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let active = match segment::split_rolled(&name) {
                Some((base, _)) => path.with_file_name(base),
                None => path.clone(),
            };
            actives.insert(active, ());
        }
    }
    let mut chains = Vec::new();
    for active in actives.into_keys() {
        let mut files: Vec<PathBuf> = segment::rolled_segments(&active)
            .map_err(|e| format!("cannot list the segments of `{}`: {e}", active.display()))?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        if active.is_file() {
            files.push(active.clone());
        }
        let name = active
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        chains.push(Chain {
            stream: format!("{prefix}{name}"),
            active,
            files,
        });
    }
    Ok(chains)
}

async fn resume(client: &Client, stream: &str) -> Result<Cursor, String> {
    let row = client
        .query_opt(
            "SELECT seq, record_hash FROM ecl_audit_records WHERE stream = $1 ORDER BY seq DESC LIMIT 1",
            &[&stream],
        )
        .await
        .map_err(|e| postgres::describe(&e))?;
    let stopped: Option<String> = client
        .query_opt(
            "SELECT stopped_reason FROM ecl_audit_streams WHERE stream = $1",
            &[&stream],
        )
        .await
        .map_err(|e| postgres::describe(&e))?
        .and_then(|row| row.get(0));
    let (next_seq, last_hash) = match row {
        Some(row) => {
            let seq: i64 = row.get(0);
            (u64::try_from(seq).unwrap_or(0) + 1, row.get::<_, String>(1))
        }
        None => (0, GENESIS.to_owned()),
    };
    if let Some(reason) = &stopped {
        tracing::warn!(%stream, %reason, "stream was stopped earlier: clear `ecl_audit_streams.stopped_reason` once resolved");
    }
    Ok(Cursor {
        next_seq,
        last_hash,
        file: None,
        verified_to: 0,
        stopped,
        checkpoints_shipped: 0,
        suspected_gap: None,
    })
}

#[cfg(unix)]
fn inode_of(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode_of(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

/// A stream-level problem (the stream stops) or, outside, a database error (the pass ends).
type StreamOutcome = Result<(), String>;

async fn ship_chain(
    client: &mut Client,
    chain: &Chain,
    cursor: &mut Cursor,
    batch_size: usize,
    report: &mut PassReport,
) -> Result<StreamOutcome, String> {
    // Where to start: the file the cursor is in (found by inode, it may have been rolled),
    // else from the first file, comparing what was shipped before.
    let mut start = 0;
    let mut offset = 0;
    let mut expected_inode = None;
    if let Some((inode, at)) = cursor.file {
        match chain
            .files
            .iter()
            .position(|f| std::fs::metadata(f).is_ok_and(|m| inode_of(&m) == inode))
        {
            // A file shorter than where reading stopped was cut (`--audit-repair`): read the
            // chain again from its start, comparing.
            Some(index) if std::fs::metadata(&chain.files[index]).is_ok_and(|m| m.len() >= at) => {
                start = index;
                offset = at;
                expected_inode = Some(inode);
            }
            Some(_) => {
                cursor.file = None;
                cursor.verified_to = 0;
            }
            None => cursor.file = None,
        }
    }
    let mut pending: Vec<Row> = Vec::new();
    let mut compare: Vec<(u64, String, PathBuf, u64)> = Vec::new();
    for (index, path) in chain.files.iter().enumerate().skip(start) {
        let mut file = match File::open(path) {
            Ok(file) => file,
            // Rolled and removed between listing and opening: the next pass lists again.
            Err(_) => break,
        };
        let inode = file.metadata().map(|m| inode_of(&m)).unwrap_or(0);
        if index == start && expected_inode.is_some_and(|expected| expected != inode) {
            // Renamed (rolled) between listing and opening: list again next pass.
            return Ok(Ok(()));
        }
        let from = if index == start { offset } else { 0 };
        if file.seek(SeekFrom::Start(from)).is_err() {
            break;
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut position = from;
        let mut line = Vec::with_capacity(4096);
        let mut line_no = 0u64;
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            if read == 0 || line.last() != Some(&b'\n') {
                // End of what is written; a torn tail is left for the gate to finish or cut.
                break;
            }
            line_no += 1;
            let text = &line[..read - 1];
            let fields = match check_record_line(text) {
                Ok(fields) => fields,
                Err((seq, reason)) => {
                    return Ok(Err(format!(
                        "`{}` at byte {position}{}: {reason}",
                        path.display(),
                        seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
                    )))
                }
            };
            position += read as u64;
            if fields.seq < cursor.next_seq {
                // Shipped before: compare with its row (once per run).
                if fields.seq >= cursor.verified_to {
                    compare.push((fields.seq, fields.record_hash, path.clone(), line_no));
                    if compare.len() as i64 >= COMPARE_CHUNK {
                        if let Err(problem) =
                            compare_shipped(client, &chain.stream, &compare).await?
                        {
                            return Ok(Err(problem));
                        }
                        compare.clear();
                    }
                }
                continue;
            }
            if fields.seq != cursor.next_seq {
                let jump = (cursor.next_seq, fields.seq);
                if cursor.suspected_gap != Some(jump) {
                    // Perhaps a rotation between listing and opening: keep what was read,
                    // and look again with a fresh listing before calling it a gap.
                    cursor.suspected_gap = Some(jump);
                    if let Err(problem) = flush(client, &chain.stream, &mut pending, report).await?
                    {
                        return Ok(Err(problem));
                    }
                    cursor.file = None;
                    cursor.verified_to = cursor.next_seq;
                    return Ok(Ok(()));
                }
                return Ok(Err(format!(
                    "`{}`: seq {} follows seq {}: records {}..={} are missing from the files",
                    path.display(),
                    fields.seq,
                    cursor.next_seq.wrapping_sub(1),
                    cursor.next_seq,
                    fields.seq.saturating_sub(1)
                )));
            }
            if fields.prev_hash != cursor.last_hash {
                return Ok(Err(format!(
                    "`{}` seq {}: prev_hash does not link to the record shipped before it (seq {}, {})",
                    path.display(),
                    fields.seq,
                    cursor.next_seq.wrapping_sub(1),
                    cursor.last_hash
                )));
            }
            let text = String::from_utf8_lossy(text);
            pending.push(Row::from_line(
                &text,
                fields.seq,
                &fields.prev_hash,
                &fields.record_hash,
            ));
            cursor.next_seq = fields.seq + 1;
            cursor.last_hash = fields.record_hash;
            cursor.suspected_gap = None;
            if pending.len() >= batch_size {
                if let Err(problem) = flush(client, &chain.stream, &mut pending, report).await? {
                    return Ok(Err(problem));
                }
                cursor.file = Some((inode, position));
            }
        }
        if !compare.is_empty() {
            if let Err(problem) = compare_shipped(client, &chain.stream, &compare).await? {
                return Ok(Err(problem));
            }
            compare.clear();
        }
        if let Err(problem) = flush(client, &chain.stream, &mut pending, report).await? {
            return Ok(Err(problem));
        }
        cursor.file = Some((inode, position));
    }
    cursor.verified_to = cursor.next_seq;
    Ok(Ok(()))
}

/// Already shipped records read again: each must have a row, with the same hash.
async fn compare_shipped(
    client: &Client,
    stream: &str,
    lines: &[(u64, String, PathBuf, u64)],
) -> Result<StreamOutcome, String> {
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return Ok(Ok(()));
    };
    let from = i64::try_from(first.0).unwrap_or(i64::MAX);
    let to = i64::try_from(last.0).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT seq, record_hash FROM ecl_audit_records WHERE stream = $1 AND seq BETWEEN $2 AND $3",
            &[&stream, &from, &to],
        )
        .await
        .map_err(|e| postgres::describe(&e))?;
    let stored: BTreeMap<i64, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (seq, hash, path, line) in lines {
        let key = i64::try_from(*seq).unwrap_or(i64::MAX);
        match stored.get(&key) {
            None => {
                return Ok(Err(format!(
                    "seq {seq} is in `{}` line {line} but its row is missing from the database although later records were shipped: a row was deleted",
                    path.display()
                )))
            }
            Some(stored) if stored != hash => {
                return Ok(Err(format!(
                    "seq {seq}: `{}` line {line} has record_hash {hash}, the database holds {stored}: the file was rewritten after shipping, or the row was edited",
                    path.display()
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Ok(()))
}

/// Writes `rows` in one statement (one transaction); rows already stored are compared.
async fn flush(
    client: &mut Client,
    stream: &str,
    rows: &mut Vec<Row>,
    report: &mut PassReport,
) -> Result<StreamOutcome, String> {
    if rows.is_empty() {
        return Ok(Ok(()));
    }
    let db = |e: tokio_postgres::Error| postgres::describe(&e);
    let column = |f: fn(&Row) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let record_hash = column(|r| Some(r.record_hash.clone()));
    let prev_hash = column(|r| Some(r.prev_hash.clone()));
    let record_type = column(|r| Some(r.record_type.clone()));
    let decision_type = column(|r| r.decision_type.clone());
    let reason_code = column(|r| r.reason_code.clone());
    let request_id = column(|r| r.request_id.clone());
    let principal_id = column(|r| r.principal_id.clone());
    let caller = column(|r| r.caller.clone());
    let tool_name = column(|r| r.tool_name.clone());
    let profile_id = column(|r| r.profile_id.clone());
    let profile_version = column(|r| r.profile_version.clone());
    let received_at = column(|r| r.received_at.clone());
    let decided_at = column(|r| r.decided_at.clone());
    let logged_at = column(|r| r.logged_at.clone());
    let line = column(|r| Some(r.line.clone()));
    let tx = client.transaction().await.map_err(db)?;
    let inserted = tx
        .query(
            schema::INSERT_BATCH,
            &[
                &stream,
                &seqs,
                &record_hash,
                &prev_hash,
                &record_type,
                &decision_type,
                &reason_code,
                &request_id,
                &principal_id,
                &caller,
                &tool_name,
                &profile_id,
                &profile_version,
                &received_at,
                &decided_at,
                &logged_at,
                &line,
            ],
        )
        .await
        .map_err(db)?;
    let inserted: std::collections::BTreeSet<i64> = inserted.iter().map(|r| r.get(0)).collect();
    if inserted.len() < rows.len() {
        // Some (stream, seq) were stored already: by an earlier run that died after its commit
        // (same hash: nothing to do), or by something else (a different hash: never
        // overwritten, the stream stops).
        let skipped: Vec<i64> = seqs
            .iter()
            .copied()
            .filter(|s| !inserted.contains(s))
            .collect();
        let stored = tx
            .query(
                "SELECT seq, record_hash FROM ecl_audit_records WHERE stream = $1 AND seq = ANY($2)",
                &[&stream, &skipped],
            )
            .await
            .map_err(db)?;
        for row in &stored {
            let seq: i64 = row.get(0);
            let hash: String = row.get(1);
            let ours = rows
                .iter()
                .find(|r| r.seq == seq)
                .map(|r| r.record_hash.clone())
                .unwrap_or_default();
            if ours != hash {
                tx.rollback().await.map_err(db)?;
                rows.clear();
                return Ok(Err(format!(
                    "conflict at seq {seq}: the database holds record_hash {hash}, this file has {ours}: two writers on one stream, or tampering"
                )));
            }
        }
    }
    let last = rows.last().map(|r| (r.seq, r.logged_at.clone()));
    if let Some((seq, logged_at)) = &last {
        tx.execute(
            "INSERT INTO ecl_audit_streams (stream, shipped_seq, last_logged_at, updated_at)
             VALUES ($1, $2, $3::text::timestamptz, now())
             ON CONFLICT (stream) DO UPDATE SET shipped_seq = EXCLUDED.shipped_seq,
                 last_logged_at = EXCLUDED.last_logged_at, updated_at = now()",
            &[&stream, seq, logged_at],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    report.shipped += inserted.len() as u64;
    if let Some(logged_at) = last.and_then(|(_, l)| l) {
        if let Ok(at) = humantime::parse_rfc3339(&logged_at) {
            report.delay = SystemTime::now().duration_since(at).ok();
        }
    }
    rows.clear();
    Ok(Ok(()))
}

/// Ships the chain's signed checkpoints; a different note for a size already stored stops
/// the stream.
async fn ship_checkpoints(
    client: &Client,
    chain: &Chain,
    cursor: &mut Cursor,
) -> Result<StreamOutcome, String> {
    let path = crate::audit::tree::checkpoints_path(&chain.active);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Ok(()));
    };
    let (notes, _torn) = crate::checkpoint::split_notes(&text);
    for note in notes.iter().skip(cursor.checkpoints_shipped) {
        let body = note.split("\n\n").next().unwrap_or_default();
        let Ok(checkpoint) = crate::checkpoint::Checkpoint::parse_body(&format!("{body}\n")) else {
            return Ok(Err(format!(
                "`{}`: a checkpoint does not parse",
                path.display()
            )));
        };
        let size = i64::try_from(checkpoint.size).unwrap_or(i64::MAX);
        let stored = client
            .query_opt(
                "WITH ins AS (INSERT INTO ecl_audit_checkpoints (stream, size, note) VALUES ($1, $2, $3)
                     ON CONFLICT (stream, size) DO NOTHING RETURNING note)
                 SELECT note FROM ins UNION ALL
                 SELECT note FROM ecl_audit_checkpoints WHERE stream = $1 AND size = $2",
                &[&chain.stream, &size, note],
            )
            .await
            .map_err(|e| postgres::describe(&e))?;
        if let Some(row) = stored {
            let stored: String = row.get(0);
            if stored != *note {
                return Ok(Err(format!(
                    "`{}`: the checkpoint at size {} differs from the one stored",
                    path.display(),
                    checkpoint.size
                )));
            }
        }
        cursor.checkpoints_shipped += 1;
    }
    Ok(Ok(()))
}

async fn record_stop(client: &Client, stream: &str, problem: &str) -> Result<(), String> {
    client
        .execute(
            "INSERT INTO ecl_audit_streams (stream, stopped_reason, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (stream) DO UPDATE SET stopped_reason = EXCLUDED.stopped_reason, updated_at = now()",
            &[&stream, &problem],
        )
        .await
        .map_err(|e| postgres::describe(&e))?;
    Ok(())
}

/// Follows until stopped (or, with `once`, ships what is there): reconnects after a lost
/// connection and resumes from the database. Returns the last pass's report.
pub async fn run(options: ShipOptions) -> Result<PassReport, String> {
    let mut shipper = Shipper::new(options.clone());
    shipper.prepare().await?;
    let mut client: Option<Client> = None;
    let mut last_progress = Instant::now();
    let mut shipped_since = 0u64;
    let mut backoff = Duration::from_millis(200);
    let started = Instant::now();
    loop {
        let connected = match client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => postgres::connect(&options.db).await,
        };
        let mut current = match connected {
            Ok(c) => c,
            Err(err) if options.once => return Err(err),
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "cannot reach the database");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        match shipper.pass(&mut current).await {
            Ok(report) => {
                shipped_since += report.shipped;
                if options.once && (report.shipped > 0 || report.recheck) {
                    // Until nothing is left: a pass ends early at a suspected gap.
                    client = Some(current);
                    continue;
                }
                if options.once {
                    log_progress(&report, shipped_since, started.elapsed());
                    return Ok(PassReport {
                        shipped: shipped_since,
                        ..report
                    });
                }
                if last_progress.elapsed() >= options.progress_every {
                    log_progress(&report, shipped_since, last_progress.elapsed());
                    shipped_since = 0;
                    last_progress = Instant::now();
                }
                client = Some(current);
                if report.shipped == 0 {
                    tokio::time::sleep(options.poll).await;
                }
            }
            Err(err) => {
                if options.once {
                    return Err(err);
                }
                tracing::warn!(error = %err, "database error: reconnecting and resuming from what it holds");
                shipper.reset();
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

fn log_progress(report: &PassReport, shipped: u64, over: Duration) {
    let rate = if over.is_zero() {
        0.0
    } else {
        shipped as f64 / over.as_secs_f64()
    };
    tracing::info!(
        shipped,
        per_second = format!("{rate:.0}"),
        streams = report.streams,
        stopped = report.stopped.len(),
        behind_bytes = report.behind_bytes,
        delay = ?report.delay,
        "audit ship progress"
    );
}
