//! The Merkle tree over a stream's records and the signed checkpoints of it (issue 9).
//!
//! Owns the tree state (a compact range, O(log n) hashes), the checkpoints file
//! `<log>.checkpoints` beside the log, and the start-up rebuild: the tree is rebuilt by
//! streaming the leaf hashes of every record of the chain (rolled segments, then the active
//! file), and the newest stored checkpoint must be a prefix of it before anything new is
//! signed. It must never sign a checkpoint over records that are not durable, and never sign
//! two checkpoints that are inconsistent with each other: the tree only grows, and a start on a
//! log that no longer matches its newest checkpoint is refused.
//!
//! The tree lives on a thread of its own, fed by the writer through [`TreeFeed`]: the writer
//! hands over the lines of each batch it wrote and tells how many records are durable; leaf
//! hashing, signing and the checkpoints file's fdatasync stay off the writer's path, so the
//! chain's append throughput barely changes when checkpoints are on. The feed is bounded, so a
//! tree thread that falls behind slows the writer instead of growing without limit.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::{split_notes, verify_checkpoint, Checkpoint, NoteSigner};
use crate::merkle::{leaf_hash, CompactRange, Hash};

use super::{segment, AuditError, AuditObserver};

/// Longest record line read back (as in verification).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Batches the writer may be ahead of the tree thread before it waits for it; also how many
/// spent batch buffers are kept for reuse.
const FEED_DEPTH: usize = 4;

/// A spent batch buffer larger than this is freed rather than kept for reuse.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// Signed checkpoints reach the checkpoints file at most this long after they are served.
/// Writing each one as it is signed cost 10-15 % of the append rate under `sync = "always"`:
/// every small append to a second file rides along with the log's next fdatasync.
const FILE_WRITE_DELAY: Duration = Duration::from_secs(1);

/// Signed notes not yet in the file beyond which no more are signed: the file refuses writes.
const MAX_UNWRITTEN: usize = 1 << 20;

/// How checkpoints are made (`audit.origin`, `audit.checkpoint_*`).
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// The first line of every checkpoint; also the signing key's name.
    pub origin: String,
    pub signer: Arc<NoteSigner>,
    /// Sign once this many records were added since the last checkpoint.
    pub every: u64,
    /// Sign this long after the last checkpoint when records were added.
    pub interval: Duration,
}

/// The newest signed checkpoint note, shared with the admin listener.
pub type Latest = Arc<RwLock<Option<Arc<str>>>>;

/// The tree and checkpoint state, owned by the tree thread once the log is open.
pub(super) struct TreeState {
    pub range: CompactRange,
    settings: CheckpointSettings,
    file: File,
    path: PathBuf,
    /// Length of the checkpoints file after the last whole note: a failed append is cut back.
    file_len: u64,
    /// Notes signed (and served) but not yet appended to the file, oldest first.
    unwritten: String,
    written_at: Instant,
    signed_size: u64,
    signed_at: Instant,
    latest: Latest,
    durability: Durability,
    observer: Option<Arc<dyn AuditObserver>>,
}

/// Who makes the records durable before a checkpoint covers them.
pub(super) enum Durability {
    /// The writer fdatasyncs (`always`, `interval`) and says how far through [`TreeFeed`].
    Writer,
    /// `never`: the writer does not sync, so the tree thread fdatasyncs the active file (this
    /// handle to it) itself before signing; rolled segments were synced when they rolled.
    BeforeSigning(File),
    /// `never`, and no handle to the active file could be had after a rotation: nothing is
    /// signed until the next rotation or restart.
    Unavailable,
}

/// `<log>.checkpoints`.
pub fn checkpoints_path(log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    log.with_file_name(format!("{name}{}", segment::CHECKPOINTS_SUFFIX))
}

fn corrupt(path: &Path, reason: String) -> AuditError {
    AuditError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

/// Rebuilds the tree of the chain whose active file is `log` (holding `records` records,
/// after tail recovery) and checks the newest stored checkpoint against it.
pub(super) fn open(
    log: &Path,
    records: u64,
    settings: CheckpointSettings,
    durability: Durability,
    latest: Latest,
) -> Result<TreeState, AuditError> {
    let path = checkpoints_path(log);
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&path)
        .map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
    let mut text = String::new();
    (&file)
        .read_to_string(&mut text)
        .map_err(|e| corrupt(&path, format!("cannot read the checkpoints: {e}")))?;
    let (notes, torn) = split_notes(&text);
    let kept: u64 = notes.iter().map(|n| n.len() as u64).sum();
    if torn {
        // An append the crash interrupted: it was never served, so it is cut, like a torn
        // record.
        tracing::warn!(path = %path.display(), "cutting an incomplete last checkpoint");
        file.set_len(kept)
            .map_err(|e| corrupt(&path, format!("cannot cut a torn checkpoint: {e}")))?;
    }
    let newest = match notes.last() {
        Some(note) => Some((
            verify_checkpoint(note, &settings.signer.verifying_key()).map_err(|e| {
                corrupt(
                    &path,
                    format!(
                        "the newest checkpoint does not verify with `audit.checkpoint_key`: {e}"
                    ),
                )
            })?,
            Arc::<str>::from(*note),
        )),
        None => None,
    };

    let mut range = CompactRange::new();
    let pinned = newest.as_ref().map(|(cp, _)| cp.size);
    let mut pinned_root = (pinned == Some(0)).then(crate::merkle::empty_root);
    for_each_leaf(&chain_files(log)?, |leaf| {
        range.append(leaf);
        if Some(range.size()) == pinned {
            pinned_root = Some(range.root());
        }
    })?;
    if range.size() != records {
        return Err(corrupt(
            log,
            format!(
                "the chain's files hold {} records but the chain continues at seq {records}: the tree needs every record since seq 0 (a rolled segment is missing)",
                range.size()
            ),
        ));
    }
    if let Some((cp, _)) = &newest {
        check_consistent(cp, range.size(), pinned_root.as_ref(), &path)?;
    }
    let (signed_size, note) = match newest {
        Some((cp, note)) => (cp.size, Some(note)),
        None => (0, None),
    };
    if let Ok(mut slot) = latest.write() {
        *slot = note;
    }
    Ok(TreeState {
        range,
        settings,
        file,
        path,
        file_len: kept,
        unwritten: String::new(),
        written_at: Instant::now(),
        signed_size,
        signed_at: Instant::now(),
        latest,
        durability,
        observer: None,
    })
}

fn check_consistent(
    cp: &Checkpoint,
    size: u64,
    root: Option<&Hash>,
    path: &Path,
) -> Result<(), AuditError> {
    let refuse = |what: String| {
        corrupt(
            path,
            format!(
                "{what}; refusing to sign checkpoints that contradict the newest one: restore the log, or move `{}` aside knowing that auditors holding its checkpoints will see the break",
                path.display()
            ),
        )
    };
    match root {
        None => Err(refuse(format!(
            "the log holds {size} records, its newest checkpoint covers {}: truncated",
            cp.size
        ))),
        Some(root) if *root != cp.root => Err(refuse(format!(
            "the log's first {} records do not have the root of its newest checkpoint: rewritten",
            cp.size
        ))),
        Some(_) => Ok(()),
    }
}

/// The chain's files oldest first: rolled segments, then the active file.
fn chain_files(log: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let rolled = segment::rolled_segments(log).map_err(|source| AuditError::Recover {
        path: log.to_owned(),
        source,
    })?;
    if let Some((first, path)) = rolled.first() {
        if *first != 0 {
            return Err(corrupt(
                path,
                format!("the oldest rolled segment starts at seq {first}, not 0: the tree needs every record since seq 0"),
            ));
        }
    }
    Ok(rolled
        .into_iter()
        .map(|(_, p)| p)
        .chain(std::iter::once(log.to_owned()))
        .collect())
}

/// Calls `each` with the leaf hash of every line of `files`, in order; a line is the record's
/// bytes without the `\n`. Lines are not checked here (verification and recovery do that).
pub fn for_each_leaf(files: &[PathBuf], mut each: impl FnMut(Hash)) -> Result<(), AuditError> {
    let mut line = Vec::with_capacity(4096);
    for path in files {
        let read_err = |e: io::Error| corrupt(path, format!("cannot read: {e}"));
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(read_err)?);
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(read_err)?;
            if n == 0 {
                break;
            }
            match line.split_last() {
                Some((b'\n', record)) => each(leaf_hash(record)),
                _ => {
                    return Err(corrupt(
                        path,
                        "a line is torn or longer than 16 MiB".to_owned(),
                    ))
                }
            }
        }
    }
    Ok(())
}

impl TreeState {
    /// The thread's body: takes the writer's updates until the writer hangs up, signs on the
    /// interval while idle, and signs once more at the end over whatever is durable.
    fn run(mut self, updates: flume::Receiver<Update>, spare: flume::Sender<Vec<u8>>) {
        // At open the tree holds exactly the records already on disk.
        let mut durable = self.range.size();
        loop {
            let deadline = [self.due(durable), self.write_due()]
                .into_iter()
                .flatten()
                .min();
            let update = match deadline {
                Some(deadline) => updates.recv_deadline(deadline),
                None => updates
                    .recv()
                    .map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            match update {
                Ok(Update::Written {
                    lines,
                    durable: now,
                }) => {
                    for line in lines.split(|b| *b == b'\n') {
                        // The buffer ends with `\n`: the last piece is empty, not a record.
                        if !line.is_empty() {
                            self.range.append(leaf_hash(line));
                        }
                    }
                    durable = now;
                    // Handing the buffer back spares an allocation per batch; a full pool
                    // just drops it.
                    if lines.capacity() <= MAX_KEPT_BUFFER {
                        let _ = spare.try_send(lines);
                    }
                }
                Ok(Update::Durable(now)) => durable = now,
                Ok(Update::Rotated(active)) => {
                    if let Durability::BeforeSigning(_) | Durability::Unavailable = self.durability
                    {
                        self.durability =
                            active.map_or(Durability::Unavailable, Durability::BeforeSigning);
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            if self.range.size() == durable {
                self.maybe_sign(false);
            }
            if self.write_due().is_some_and(|t| t <= Instant::now()) {
                self.write_unwritten();
            }
        }
        if self.range.size() == durable {
            self.maybe_sign(true);
        }
        self.write_unwritten();
        // Checkpoints are appended without a sync while serving (see `write_unwritten`); at
        // shutdown they are made durable once.
        if let Err(e) = self.file.sync_data() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot fdatasync the checkpoints at shutdown");
        }
    }

    /// When an idle tree must sign: the interval after the last checkpoint, if records came and
    /// all of them are durable (otherwise the writer's next update comes first).
    fn due(&self, durable: u64) -> Option<Instant> {
        let size = self.range.size();
        (size > self.signed_size && size == durable)
            .then(|| self.signed_at.checked_add(self.settings.interval))
            .flatten()
    }

    /// Signs and appends a checkpoint of the whole tree if one is due (or `force`d and
    /// anything is new). The caller guarantees every record in the tree is durable.
    fn maybe_sign(&mut self, force: bool) {
        let size = self.range.size();
        if size <= self.signed_size {
            return;
        }
        let due = force
            || size - self.signed_size >= self.settings.every
            || self.signed_at.elapsed() >= self.settings.interval;
        if !due {
            return;
        }
        if self.unwritten.len() >= MAX_UNWRITTEN {
            self.write_unwritten();
            if self.unwritten.len() >= MAX_UNWRITTEN {
                // Signing on would serve checkpoints that may never reach the file.
                self.failed();
                self.signed_at = Instant::now();
                return;
            }
        }
        if let Err(e) = self.make_log_durable() {
            tracing::error!(
                path = %self.path.display(),
                size,
                error = %e,
                "cannot make the records durable; no checkpoint until the next interval"
            );
            self.failed();
            self.signed_at = Instant::now();
            return;
        }
        let checkpoint = Checkpoint {
            origin: self.settings.origin.clone(),
            size,
            root: self.range.root(),
        };
        let note = self.settings.signer.sign(&checkpoint.body());
        self.signed_at = Instant::now();
        self.signed_size = size;
        self.unwritten.push_str(&note);
        // The metric first: whoever sees the new note also sees its size counted.
        if let Some(observer) = &self.observer {
            observer.checkpoint_signed(size);
        }
        if let Ok(mut slot) = self.latest.write() {
            *slot = Some(Arc::from(note));
        }
    }

    fn failed(&self) {
        if let Some(observer) = &self.observer {
            observer.checkpoint_failed();
        }
    }

    /// When the signed notes must be appended to the file.
    fn write_due(&self) -> Option<Instant> {
        (!self.unwritten.is_empty())
            .then(|| self.written_at.checked_add(FILE_WRITE_DELAY))
            .flatten()
    }

    fn make_log_durable(&self) -> io::Result<()> {
        match &self.durability {
            Durability::Writer => Ok(()),
            Durability::BeforeSigning(active) => active.sync_data(),
            Durability::Unavailable => Err(io::Error::other(
                "no handle to the active log file since the last rotation",
            )),
        }
    }

    /// Appends the signed notes to the file; on failure cuts it back to its last whole note and
    /// keeps them for the next try.
    //
    // Neither written at once nor fdatasync'ed while serving, and nothing depends on it: the
    // records a checkpoint covers are durable before it is signed and a restart rebuilds the
    // same tree from them, so a checkpoint lost to a power cut is signed again (Ed25519 is
    // deterministic: the same bytes) and never contradicted.
    fn write_unwritten(&mut self) {
        self.written_at = Instant::now();
        if self.unwritten.is_empty() {
            return;
        }
        match io::Write::write_all(&mut self.file, self.unwritten.as_bytes()) {
            Ok(()) => {
                self.file_len += self.unwritten.len() as u64;
                self.unwritten.clear();
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    bytes = self.unwritten.len(),
                    error = %e,
                    "cannot append checkpoints to the file; retried in a second"
                );
                self.failed();
                let _ = self.file.set_len(self.file_len);
            }
        }
    }
}

/// What the writer tells the tree thread.
enum Update {
    /// The lines of a batch just written (whole records, each ending in `\n`), and how many
    /// records of the chain are durable now.
    Written { lines: Vec<u8>, durable: u64 },
    /// More records became durable: an interval sync, a rotation's sync, shutdown.
    Durable(u64),
    /// The writer rolled to a fresh active file: a handle to it, if one could be had.
    Rotated(Option<File>),
}

/// The writer's end of the tree thread.
pub(super) struct TreeFeed {
    updates: Option<flume::Sender<Update>>,
    /// Buffers the tree thread is done with.
    spare: flume::Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
    /// The durable count the tree thread was last told.
    told: u64,
    /// The tree thread syncs the active file itself, so it needs each new one.
    wants_active_file: bool,
    path: PathBuf,
}

impl TreeFeed {
    /// Starts the tree thread on `state` (fresh from [`open`]).
    pub fn spawn(
        mut state: TreeState,
        observer: Option<Arc<dyn AuditObserver>>,
        health: Arc<super::HealthState>,
    ) -> Result<TreeFeed, AuditError> {
        if let Some(observer) = observer.as_ref().filter(|_| state.signed_size > 0) {
            // The newest stored checkpoint, from before the restart.
            observer.checkpoint_signed(state.signed_size);
        }
        state.observer = observer;
        let (updates, rx) = flume::bounded(FEED_DEPTH);
        let (spare_tx, spare) = flume::bounded(FEED_DEPTH);
        let told = state.range.size();
        let wants_active_file = !matches!(state.durability, Durability::Writer);
        let path = state.path.clone();
        let thread = std::thread::Builder::new()
            .name("ecl-audit-tree".into())
            .spawn(move || {
                let _watch = PanicWatch(health);
                state.run(rx, spare_tx);
            })
            .map_err(AuditError::Spawn)?;
        Ok(TreeFeed {
            updates: Some(updates),
            spare,
            thread: Some(thread),
            told,
            wants_active_file,
            path,
        })
    }

    /// Tells the tree thread about the fresh active file after a rotation.
    pub fn rotated(&mut self, fresh: &File) {
        if self.wants_active_file {
            let handle = fresh
                .try_clone()
                .inspect_err(|e| {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot hand the fresh audit file to the tree thread; no checkpoints until the next rotation")
                })
                .ok();
            self.send(Update::Rotated(handle));
        }
    }

    /// Takes the lines of a batch that was written (the writer's batch buffer, which it swaps
    /// for an empty spent one: no copy), with the durable count after it. Waits when the tree
    /// thread is [`FEED_DEPTH`] batches behind.
    pub fn written(&mut self, lines: &mut Vec<u8>, durable: u64) {
        let mut spare = self.spare.try_recv().unwrap_or_default();
        spare.clear();
        let lines = std::mem::replace(lines, spare);
        self.send(Update::Written { lines, durable });
        self.told = durable;
    }

    /// Tells the tree thread that more records are durable; nothing when it knows already.
    pub fn durable(&mut self, durable: u64) {
        if durable > self.told {
            self.send(Update::Durable(durable));
            self.told = durable;
        }
    }

    fn send(&mut self, update: Update) {
        let gone = self
            .updates
            .as_ref()
            .is_some_and(|tx| tx.send(update).is_err());
        if gone {
            // Only a panic ends the thread early; the records are safe, checkpoints stop.
            tracing::error!(
                path = %self.path.display(),
                "the audit tree thread is gone; no more checkpoints are signed until a restart"
            );
            self.updates = None;
        }
    }

    /// Tells the final durable count, lets the thread sign its last checkpoint, and waits for it.
    pub fn finish(mut self, durable: u64) {
        self.durable(durable);
    }
}

/// Marks the log's health when the tree thread unwinds, so `/readyz` can say checkpoints
/// stopped; a normal end (the log closing) leaves it alone.
struct PanicWatch(Arc<super::HealthState>);

impl Drop for PanicWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .checkpoints_stopped
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for TreeFeed {
    fn drop(&mut self) {
        // Hanging up is the thread's signal to sign once more and stop.
        self.updates = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "the audit tree thread panicked");
            }
        }
    }
}
