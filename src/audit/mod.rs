//! The hash-chained audit log (SPEC §8): one append-only JSON Lines file per process, each line
//! the canonical JSON of one record, each record linked to the previous one by `prev_hash`.
//!
//! Owns the file, the chain state (`seq`, `prev_hash`) and the only thread that writes to the
//! file. Requests hand a record to [`AuditLog::append`] and get back a [`Receipt`] once the record
//! is written (and fdatasync'ed when `sync = always`). This module must never acknowledge a
//! record that was not written, never leave half a record in the file for the next append, and
//! never advance the chain past a record that was refused.
//!
//! The file is locked (`flock`, exclusive) while a gate writes it, so two processes can never
//! extend one chain. [`AuditLog::is_failing`] tells readiness whether records are being refused.
//!
//! - `writer`: the writer thread, group commit, failure handling, rotation.
//! - `recover`: opening an existing file, cutting a torn tail, checking (or repairing) the
//!   last record.
//! - `segment`: the names of the active file, rolled segments and set-aside tails.
//! - `verify`: streaming verification of whole chains for `ecl-gate audit verify`.
//! - `record`: the encoding and hashing of one line, shared by the three above.
//! - `tree`: the Merkle tree over the records and its signed checkpoints (`<log>.checkpoints`).

mod record;
mod recover;
pub mod segment;
pub mod tree;
mod verify;
mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::canonical::Map;

/// For pinning other modules' prepared records to the tree encoder, byte for byte.
#[cfg(test)]
pub(crate) use record::{encode_prepared, encode_via_tree};
pub use record::{PreparedRecord, RecordWriter, TimestampsWriter};
pub use verify::{
    verify_files, verify_paths, ChainReport, Verification, VerifyFailure, VerifyReport,
};

/// The chain fields of one record line (without its `\n`), checked as `audit verify` checks
/// it: canonical JSON, `record_hash` recomputing. For readers outside this module (the
/// shipper, `verify --db`); the error says why, with the seq when it could be read.
pub fn check_record_line(line: &[u8]) -> Result<LineFields, (Option<u64>, String)> {
    let mut scratch = Vec::new();
    match record::check_line(line, &mut scratch) {
        Ok(checked) => Ok(LineFields {
            seq: checked.seq,
            prev_hash: checked.prev_hash.into_owned(),
            record_hash: checked.record_hash.into_owned(),
        }),
        Err(err) => Err((err.seq, err.reason)),
    }
}

/// What [`check_record_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFields {
    pub seq: u64,
    pub prev_hash: String,
    pub record_hash: String,
}

/// `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "sha256:GENESIS";

/// Path that disables persistence (benchmarks only).
const DEV_NULL: &str = "/dev/null";

/// When the writer calls fdatasync (`audit.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Before any record of a batch is acknowledged.
    Always,
    /// At most every `sync_interval`, and within `sync_interval` of a write.
    Interval,
    /// Left to the OS.
    Never,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Already expanded (see [`expand_path`]).
    pub path: PathBuf,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    /// Capacity of the bounded queue in front of the writer thread.
    pub queue_capacity: usize,
    /// Told about every committed batch and every fdatasync (metrics); `None`: nobody.
    pub observer: Option<Arc<dyn AuditObserver>>,
    /// Sign checkpoints of the Merkle tree over the records; `None`: off.
    pub checkpoints: Option<tree::CheckpointSettings>,
}

/// Watches the writer thread's work, for metrics. Called on the writer thread between
/// write and reply, so it must be cheap and must never block.
pub trait AuditObserver: Send + Sync + std::fmt::Debug {
    /// A batch of `records` was written (and synced, as the mode demands).
    fn batch_committed(&self, records: usize);
    /// One fdatasync of the log succeeded after `took`.
    fn synced(&self, took: Duration);
    /// A checkpoint of the tree at `size` was signed (and is served).
    fn checkpoint_signed(&self, _size: u64) {}
    /// A due checkpoint was not signed, or signed ones could not be appended to the
    /// checkpoints file; retried.
    fn checkpoint_failed(&self) {}
}

/// How the file is managed beyond appending; the default rolls never and repairs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Roll to a new file once the active one holds this many bytes; 0: never.
    pub rotate_bytes: u64,
    /// Roll to a new file once the active one is this old (counted from when this process
    /// opened or created it) and holds a record.
    pub rotate_interval: Option<Duration>,
    /// At open, move a tail that does not verify aside (`<file>.tampered-<unix-seconds>`)
    /// instead of refusing to start.
    pub repair_tail: bool,
}

/// Expands `{pid}` and `{hostname}` in a configured path template.
///
/// Characters of the host name other than ASCII letters, digits, `.`, `-` and `_` become `_`,
/// so a host name can never add a directory to the path.
pub fn expand_path(template: &str, pid: u32, hostname: &str) -> PathBuf {
    let host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(
        template
            .replace("{pid}", &pid.to_string())
            .replace("{hostname}", &host),
    )
}

/// Where a record went: the decision's `audit` block (SPEC §5).
#[derive(Debug, Clone)]
pub struct Receipt {
    pub stream: Arc<str>,
    pub seq: u64,
    pub prev_hash: String,
    pub record_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log `{}`: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "audit log `{}` is in use by another process (it holds the file's lock): two writers would fork the chain",
        .path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot recover the tail of audit log `{}`: {source}", .path.display())]
    Recover { path: PathBuf, source: io::Error },
    #[error("audit log `{}` does not verify at {}: {reason}", .path.display(), at(*.seq, *.offset))]
    Tampered {
        path: PathBuf,
        /// The record's seq, when the line was readable that far.
        seq: Option<u64>,
        /// Where the line starts.
        offset: u64,
        reason: String,
    },
    #[error("cannot move the bad tail of audit log `{}` to `{}`: {source}", .path.display(), .aside.display())]
    Repair {
        path: PathBuf,
        aside: PathBuf,
        source: io::Error,
    },
    #[error("audit log `{}` is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("audit write failed: {0}")]
    Write(#[source] io::Error),
    #[error("audit writer has stopped")]
    Closed,
}

fn at(seq: Option<u64>, offset: u64) -> String {
    match seq {
        Some(seq) => format!("seq {seq} (byte {offset})"),
        None => format!("byte {offset}"),
    }
}

/// What readiness needs to know about the log; see [`AuditLog::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHealth {
    /// Records are being refused: the last batch (or probe) failed and none succeeded since.
    pub failing: bool,
    /// Refused batches, failed probes and failed fdatasyncs since open.
    pub failures: u64,
    /// The last write or fdatasync error, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// Checkpoints are configured but no longer signed: the tree thread died.
    pub checkpoints_stopped: bool,
}

/// Shared between the writer thread (which sets it) and every handle (which reads it).
#[derive(Debug, Default)]
struct HealthState {
    failing: AtomicBool,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set when the tree thread ended before the log closed (only a panic does that): the
    /// records are still written, but no checkpoint is signed until a restart.
    checkpoints_stopped: AtomicBool,
}

impl HealthState {
    fn set_failing(&self, error: &io::Error) {
        self.failing.store(true, Ordering::Release);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    fn set_ok(&self) {
        self.failing.store(false, Ordering::Release);
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// Handle to the audit log; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct AuditLog {
    // INVARIANT: `tx` is declared before `shared`, so a handle drops its sender first; when the
    // last handle drops, every sender is gone before `Shared::drop` joins the writer thread,
    // which therefore sees the channel disconnected and exits.
    tx: flume::Sender<writer::Pending>,
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    stream: Arc<str>,
    disabled: bool,
    health: Arc<HealthState>,
    /// `Some` when checkpoints are on: the newest signed one, once there is one.
    latest: Option<tree::Latest>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the writer finish its last batch (and final sync) before the process goes on.
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "audit writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .field("disabled", &self.shared.disabled)
            .finish_non_exhaustive()
    }
}

enum OpenLocked {
    Io(io::Error),
    Audit(AuditError),
}

/// Opens the active file and, for a regular file, locks it; then checks the name still leads
/// to the locked file. A live writer may roll between our open and our lock (renaming a fresh
/// file over the name and closing the old one), and the lock would then be on a rolled
/// segment that nobody else holds; opening again finds the file that is really active.
fn open_locked(path: &Path) -> Result<File, OpenLocked> {
    use std::os::unix::fs::MetadataExt;
    let mut attempts = 0;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(OpenLocked::Io)?;
        let opened = file.metadata().map_err(OpenLocked::Io)?;
        if !opened.file_type().is_file() {
            return Ok(file);
        }
        lock(&file, path).map_err(OpenLocked::Audit)?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == opened.dev() && now.ino() == opened.ino() => return Ok(file),
            _ if attempts < 10 => attempts += 1,
            Ok(_) | Err(_) => {
                return Err(OpenLocked::Io(io::Error::other(
                    "the file was replaced while it was being opened, again and again",
                )))
            }
        }
    }
}

impl AuditLog {
    /// Blocking. Opens/creates the file (append, mode 0o640), locks it, recovers the tail,
    /// spawns the writer thread.
    pub fn open(settings: AuditSettings) -> Result<AuditLog, AuditError> {
        Self::open_with(settings, FileOptions::default())
    }

    /// [`AuditLog::open`] with rotation and tail repair as `options` say.
    pub fn open_with(
        settings: AuditSettings,
        options: FileOptions,
    ) -> Result<AuditLog, AuditError> {
        Self::open_sink(settings, options, Box::new(|file| file), Timers::default())
    }

    /// [`AuditLog::open_with`] with every file the writer writes wrapped in another sink
    /// (fault injection in tests).
    fn open_sink<S: writer::Sink>(
        settings: AuditSettings,
        options: FileOptions,
        mut wrap: writer::Wrap<S>,
        timers: Timers,
    ) -> Result<AuditLog, AuditError> {
        let path = settings.path.clone();
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let mut file = open_locked(&path).map_err(|err| match err {
            OpenLocked::Io(source) => open_err(source),
            OpenLocked::Audit(err) => err,
        })?;
        let regular = file.metadata().map_err(open_err)?.file_type().is_file();
        let disabled = path == Path::new(DEV_NULL);
        if disabled {
            tracing::warn!(
                path = DEV_NULL,
                "AUDIT PERSISTENCE IS DISABLED: audit records are discarded; use this for benchmarks only"
            );
        }
        let tail = if regular {
            // `open_locked` took the lock before anything is read or cut: the tail may belong
            // to a live writer.
            recover::recover(&mut file, &path, options.repair_tail)?
        } else {
            // Never read a device or pipe: /dev/full reads as endless zeros.
            recover::Tail::genesis()
        };
        let rotates = options.rotate_bytes > 0 || options.rotate_interval.is_some();
        if rotates && !regular {
            tracing::warn!(path = %path.display(), "the audit log is not a regular file; rotation is off");
        }
        let stream: Arc<str> = Arc::from(
            path.file_name()
                .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
                .as_ref(),
        );
        let sync = if disabled {
            SyncMode::Never
        } else {
            settings.sync
        };
        let health = Arc::new(HealthState::default());
        let mut latest = None;
        let tree = match settings.checkpoints.clone() {
            Some(_) if !regular => {
                tracing::warn!(path = %path.display(), "the audit log is not a regular file; checkpoints are off");
                None
            }
            Some(cp) => {
                let slot = tree::Latest::default();
                latest = Some(slot.clone());
                let durability = if sync == SyncMode::Never {
                    tree::Durability::BeforeSigning(file.try_clone().map_err(|source| {
                        AuditError::Open {
                            path: path.clone(),
                            source,
                        }
                    })?)
                } else {
                    tree::Durability::Writer
                };
                Some(tree::TreeFeed::spawn(
                    tree::open(&path, tail.next_seq, cp, durability, slot)?,
                    settings.observer.clone(),
                    health.clone(),
                )?)
            }
            None => None,
        };
        let (tx, rx) = flume::bounded(settings.queue_capacity.max(1));
        let state = writer::Writer::new(
            wrap(file),
            wrap,
            writer::Config {
                path: path.clone(),
                stream: stream.clone(),
                regular,
                sync,
                sync_interval: settings.sync_interval,
                rotate_bytes: options.rotate_bytes,
                rotate_interval: options.rotate_interval,
                probe_interval: timers.probe,
                rotate_retry: timers.rotate_retry,
                observer: settings.observer.clone(),
            },
            tail,
            health.clone(),
            tree,
        );
        let thread = std::thread::Builder::new()
            .name("ecl-audit-writer".into())
            .spawn(move || state.run(rx))
            .map_err(AuditError::Spawn)?;
        Ok(AuditLog {
            tx,
            shared: Arc::new(Shared {
                path,
                stream,
                disabled,
                health,
                latest,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Appends one record and resolves once it is written (and fdatasync'ed when
    /// sync = always).
    ///
    /// `record` is the full record object except `seq`, `integrity` and
    /// `timestamps.logged_at`, which the writer sets (overwriting any given).
    pub async fn append(&self, record: Map) -> Result<Receipt, AuditError> {
        let prepared = PreparedRecord::from_map(&record);
        // Freed here, by the thread that built it, not kept while the writer works.
        drop(record);
        self.append_prepared(prepared).await
    }

    /// [`AuditLog::append`] of a record already serialized by this thread (see
    /// [`RecordWriter`]): the writer thread, which every record passes one at a time, then
    /// only copies its bytes and chains them.
    pub async fn append_prepared(&self, record: PreparedRecord) -> Result<Receipt, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send_async(writer::Pending { record, reply })
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// The file name of the path (no directories), e.g. `ecl_audit_123.log`.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether checkpoints are being signed.
    pub fn checkpoints_enabled(&self) -> bool {
        self.shared.latest.is_some()
    }

    /// The newest signed checkpoint note (C2SP `tlog-checkpoint` in a `signed-note`), if any.
    pub fn latest_checkpoint(&self) -> Option<Arc<str>> {
        self.shared
            .latest
            .as_ref()
            .and_then(|slot| slot.read().ok().and_then(|c| c.clone()))
    }

    /// True when the path is `/dev/null`: records are chained but discarded.
    pub fn is_disabled(&self) -> bool {
        self.shared.disabled
    }

    /// Whether records are being refused right now: true from a failed batch until a batch
    /// succeeds (or, with no traffic, until the writer's probe, every second, finds the disk
    /// takes writes again), and once the writer thread is gone. Two atomic loads: cheap
    /// enough for every `/readyz`.
    pub fn is_failing(&self) -> bool {
        self.shared.health.is_failing() || self.tx.is_disconnected()
    }

    /// [`AuditLog::is_failing`] with the counters and last error, for readiness details.
    pub fn health(&self) -> AuditHealth {
        let state = &self.shared.health;
        AuditHealth {
            failing: self.is_failing(),
            failures: state.failures.load(Ordering::Relaxed),
            last_error: state.last_error.lock().ok().and_then(|e| e.clone()),
            checkpoints_stopped: state.checkpoints_stopped.load(Ordering::Acquire),
        }
    }
}

/// The writer's retry timers; tests shorten or lengthen them to stay deterministic.
#[derive(Debug, Clone, Copy)]
struct Timers {
    probe: Duration,
    rotate_retry: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            probe: writer::PROBE_INTERVAL,
            rotate_retry: writer::ROTATE_RETRY,
        }
    }
}

/// Takes the exclusive advisory lock that makes this process the file's only writer. It is
/// released when the file is closed, a crash included.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
