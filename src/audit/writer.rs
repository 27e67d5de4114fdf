//! The audit writer thread: the only code that writes to the audit file (SPEC §8).
//!
//! Owns the chain state (`seq`, `prev_hash`, file offset), group commit and rotation: it takes
//! the first waiting record, drains whatever else is queued (up to [`MAX_BATCH`]), chains the
//! batch, writes it (looping over short writes), fdatasyncs as `audit.sync` demands, and only
//! then answers each record. It must never answer `Ok` for a record that is not written (and
//! synced, under `always`), never advance the chain past a refused batch, and never leave a
//! refused batch's bytes in the file. It keeps running after a failure: the next batch is tried
//! afresh, and while the log is failing a probe checks every [`PROBE_INTERVAL`] whether the
//! disk took writes again, so readiness recovers even when no traffic arrives.
//!
//! Rotation happens between batches, never inside one: the active file gets its rolled name as
//! a second hard link, a fresh locked file is renamed over the active name, and the directory
//! is synced before any record lands in the fresh file (see `segment` for the names).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::record::{self, PreparedRecord};
use super::recover::{sync_dir, Tail};
use super::tree::TreeFeed;
use super::{segment, AuditError, HealthState, Receipt, SyncMode};

/// Most records written by one batch.
const MAX_BATCH: usize = 512;

/// How often a failing log is probed for recovery when no batch comes.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a failed rotation waits before it is tried again (records keep going to the
/// current file meanwhile).
pub(super) const ROTATE_RETRY: Duration = Duration::from_secs(10);

/// The probe: an unterminated line, so that if the gate dies before cutting it off, the next
/// start cuts it as a torn tail. A block's worth, so a nearly full disk does not pass.
const PROBE: [u8; 4096] = [b' '; 4096];

/// Where batches go: a [`File`] in production; a fault-injecting wrapper in tests.
pub(super) trait Sink: Send + 'static {
    /// One `write(2)` at the end of the file; may write fewer bytes than given.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// `fdatasync(2)`.
    fn sync(&mut self) -> io::Result<()>;
    /// Truncates the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// One `append` waiting for the writer.
pub(super) struct Pending {
    pub record: PreparedRecord,
    pub reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

/// Writes all of `buf`: a short write is continued, an interrupted one retried, and a write of
/// nothing is an error (the disk takes no more), so no caller ever mistakes half a batch for
/// a whole one.
fn write_all<S: Sink>(sink: &mut S, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match sink.write(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) struct Config {
    pub path: PathBuf,
    pub stream: Arc<str>,
    /// A regular file: offsets and truncation are meaningful.
    pub regular: bool,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    /// Roll once the active file reaches this many bytes; 0: never.
    pub rotate_bytes: u64,
    /// Roll once the active file is this old (and not empty).
    pub rotate_interval: Option<Duration>,
    /// [`PROBE_INTERVAL`] except in tests.
    pub probe_interval: Duration,
    /// [`ROTATE_RETRY`] except in tests.
    pub rotate_retry: Duration,
    pub observer: Option<Arc<dyn super::AuditObserver>>,
}

/// Turns a freshly created active file into the sink (the identity in production).
pub(super) type Wrap<S> = Box<dyn FnMut(File) -> S + Send>;

pub(super) struct Writer<S> {
    sink: S,
    wrap: Wrap<S>,
    cfg: Config,
    health: Arc<HealthState>,
    next_seq: u64,
    prev_hash: String,
    /// End of the last good record: where a refused batch is cut back to.
    offset: u64,
    /// Reused for every batch.
    buf: Vec<u8>,
    /// Written but not yet fdatasync'ed (interval mode only).
    unsynced: bool,
    last_sync: Instant,
    /// A refused batch could not be cut off yet; nothing may be written behind it.
    dirty_tail: bool,
    /// The (non-regular) file rejected fdatasync as unsupported; don't ask again.
    sync_unsupported: bool,
    /// The seq of the active file's first record: its name once rolled.
    file_first_seq: u64,
    /// When this process started writing the active file.
    file_since: Instant,
    /// After a failed rotation: not tried again before then.
    rotate_not_before: Option<Instant>,
    /// A rotation's directory entries may not be durable yet; no record goes into the fresh
    /// file (which a power loss could leave nameless) before they are.
    dir_unsynced: bool,
    /// While the log is failing: when to probe it next.
    next_probe: Option<Instant>,
    /// The Merkle tree's thread, when checkpoints are on.
    tree: Option<TreeFeed>,
    /// Records written to the file (the chain's size after the last successful write).
    written: u64,
    /// Records known durable: `written` as of the last successful fdatasync (or write, in
    /// never mode). A checkpoint is signed only when it equals the tree's size.
    durable: u64,
}

impl<S: Sink> Writer<S> {
    pub(super) fn new(
        sink: S,
        wrap: Wrap<S>,
        cfg: Config,
        tail: Tail,
        health: Arc<HealthState>,
        tree: Option<TreeFeed>,
    ) -> Self {
        Writer {
            tree,
            written: tail.next_seq,
            durable: tail.next_seq,
            sink,
            wrap,
            cfg,
            health,
            next_seq: tail.next_seq,
            prev_hash: tail.prev_hash,
            offset: tail.offset,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
            last_sync: Instant::now(),
            dirty_tail: false,
            sync_unsupported: false,
            file_first_seq: tail.first_seq,
            file_since: Instant::now(),
            rotate_not_before: None,
            dir_unsynced: false,
            next_probe: None,
        }
    }

    /// The thread's body; returns when every [`super::AuditLog`] is dropped.
    pub(super) fn run(mut self, rx: flume::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.next(&rx) {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            // Between batches, so no answered batch waits for it.
            if self.rotation_due().is_some_and(|t| t <= Instant::now()) {
                self.rotate();
            }
        }
        // At shutdown the log is synced whatever the mode: `never` only means no sync per batch.
        if self.unsynced || (self.cfg.sync == SyncMode::Never && self.cfg.regular) {
            self.sync_idle();
        }
        if let Some(tree) = self.tree.take() {
            tree.finish(self.durable);
        }
    }

    /// Tells the tree thread when a sync outside a batch made more records durable.
    fn tell_durable(&mut self) {
        if let Some(tree) = &mut self.tree {
            tree.durable(self.durable);
        }
    }

    /// Waits for the next record; meanwhile does what falls due: the interval mode's sync, the
    /// failing log's probe, the age-based rotation.
    fn next(&mut self, rx: &flume::Receiver<Pending>) -> Option<Pending> {
        loop {
            let deadline = [self.sync_due(), self.probe_due(), self.rotation_due()]
                .into_iter()
                .flatten()
                .min();
            let Some(deadline) = deadline else {
                return rx.recv().ok();
            };
            match rx.recv_deadline(deadline) {
                Ok(pending) => return Some(pending),
                Err(flume::RecvTimeoutError::Timeout) => self.on_timer(),
                Err(flume::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn sync_due(&self) -> Option<Instant> {
        self.unsynced
            .then(|| self.last_sync.checked_add(self.cfg.sync_interval))
            .flatten()
    }

    fn probe_due(&self) -> Option<Instant> {
        self.next_probe.filter(|_| self.cfg.regular)
    }

    /// Enters (or stays in) the failing state: readiness reports it, a probe is scheduled.
    fn fail(&mut self, error: &io::Error) {
        self.health.set_failing(error);
        self.next_probe = Some(Instant::now() + self.cfg.probe_interval);
    }

    /// Leaves the failing state.
    fn recovered(&mut self) {
        if self.next_probe.take().is_some() {
            tracing::info!(path = %self.cfg.path.display(), "the audit log takes writes again");
        }
        self.health.set_ok();
    }

    fn rotation_due(&self) -> Option<Instant> {
        if !self.may_rotate() {
            return None;
        }
        let by_age = self
            .cfg
            .rotate_interval
            .and_then(|age| self.file_since.checked_add(age));
        // INVARIANT: a due time is a fixed instant, never `Instant::now()`: the timer loop
        // compares it with a `now` taken earlier and would otherwise spin without rolling.
        let by_size = (self.cfg.rotate_bytes > 0 && self.offset >= self.cfg.rotate_bytes)
            .then_some(self.file_since);
        let due = by_size.into_iter().chain(by_age).min()?;
        Some(self.rotate_not_before.map_or(due, |t| due.max(t)))
    }

    /// A file is rolled only when it is regular, holds a record and ends with a whole one.
    fn may_rotate(&self) -> bool {
        self.cfg.regular && self.offset > 0 && !self.dirty_tail
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.sync_due().is_some_and(|t| t <= now) {
            self.sync_idle();
        }
        if self.probe_due().is_some_and(|t| t <= now) {
            self.probe();
        }
        if self.rotation_due().is_some_and(|t| t <= now) {
            self.rotate();
        }
        self.tell_durable();
    }

    /// Chains, writes, syncs and answers one batch; empties `batch`.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        let logged_at = crate::rfc3339::micros(SystemTime::now());
        let mut seq = self.next_seq;
        let mut prev_hash = self.prev_hash.clone();
        let mut answers = Vec::with_capacity(batch.len());
        self.buf.clear();
        for pending in batch.drain(..) {
            let record_hash = record::encode_prepared(
                &pending.record,
                seq,
                &prev_hash,
                &logged_at,
                &mut self.buf,
            );
            let receipt = Receipt {
                stream: self.cfg.stream.clone(),
                seq,
                prev_hash: std::mem::replace(&mut prev_hash, record_hash.clone()),
                record_hash,
            };
            answers.push((pending.reply, receipt));
            seq += 1;
        }

        match self.persist(seq) {
            Ok(()) => {
                self.offset += self.buf.len() as u64;
                self.next_seq = seq;
                self.prev_hash = prev_hash;
                self.recovered();
                if let Some(observer) = &self.cfg.observer {
                    observer.batch_committed(answers.len());
                }
                for (reply, receipt) in answers {
                    // The requester may have gone away; its record is written all the same.
                    let _ = reply.send(Ok(receipt));
                }
                // After the answers: the tree must not delay the decisions it covers.
                if let Some(tree) = &mut self.tree {
                    tree.written(&mut self.buf, self.durable);
                }
            }
            Err(e) => {
                tracing::error!(
                    path = %self.cfg.path.display(),
                    records = answers.len(),
                    first_seq = self.next_seq,
                    error = %e,
                    "audit batch refused: write or fdatasync failed"
                );
                self.fail(&e);
                self.written = self.next_seq;
                self.cut_back();
                for (reply, _) in answers {
                    let _ = reply.send(Err(AuditError::Write(io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                }
            }
        }
    }

    /// Writes `buf` (the records up to `end_seq`) and syncs it as the mode demands; `Err` means
    /// the batch is refused.
    fn persist(&mut self, end_seq: u64) -> io::Result<()> {
        if self.dirty_tail {
            self.sink.truncate(self.offset)?;
            self.dirty_tail = false;
        }
        if self.dir_unsynced {
            sync_dir(segment::dir_of(&self.cfg.path))?;
            self.dir_unsynced = false;
        }
        write_all(&mut self.sink, &self.buf)?;
        self.written = end_seq;
        match self.cfg.sync {
            SyncMode::Always => self.sync(),
            SyncMode::Interval if self.last_sync.elapsed() >= self.cfg.sync_interval => self.sync(),
            SyncMode::Interval => {
                self.unsynced = true;
                Ok(())
            }
            SyncMode::Never => {
                // The writer never waits for the disk here; the tree thread syncs the file
                // itself before a checkpoint covers these records (`Durability::BeforeSigning`).
                self.durable = self.written;
                Ok(())
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.sync_unsupported {
            return Ok(());
        }
        let started = Instant::now();
        match self.sink.sync() {
            Ok(()) => {
                if let Some(observer) = &self.cfg.observer {
                    observer.synced(started.elapsed());
                }
            }
            // EINVAL: a pipe or device that cannot be synced; there is nothing to make durable.
            Err(e) if !self.cfg.regular && e.kind() == io::ErrorKind::InvalidInput => {
                tracing::warn!(
                    path = %self.cfg.path.display(),
                    "the audit log is not a regular file and cannot be fdatasync'ed; durability is left to its reader"
                );
                self.sync_unsupported = true;
            }
            // INVARIANT (fsyncgate): after a failed fdatasync the written data is not durable,
            // and a later fdatasync may wrongly succeed; the caller refuses the batch.
            Err(e) => return Err(e),
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.durable = self.written;
        Ok(())
    }

    /// Interval mode: syncs data that was written and acknowledged earlier.
    fn sync_idle(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!(
                path = %self.cfg.path.display(),
                error = %e,
                "audit fdatasync failed; acknowledged records may not be durable"
            );
            self.fail(&e);
            // Try again an interval later, not in a busy loop.
            self.last_sync = Instant::now();
        }
    }

    /// Cuts a refused batch off, so no half record stays in the file.
    fn cut_back(&mut self) {
        if let Err(e) = self.sink.truncate(self.offset) {
            if self.cfg.regular {
                tracing::error!(
                    path = %self.cfg.path.display(),
                    offset = self.offset,
                    error = %e,
                    "cannot cut a refused batch off the audit log; refusing records until it can"
                );
                self.dirty_tail = true;
            } else {
                tracing::warn!(
                    path = %self.cfg.path.display(),
                    error = %e,
                    "cannot truncate the (non-regular) audit log after a failed write; ignored"
                );
            }
        }
    }

    /// Checks whether a failing log takes writes again, without a record: writes the probe
    /// behind the last good record, syncs, cuts it off, syncs. Success ends the failing state.
    fn probe(&mut self) {
        match self.try_probe() {
            Ok(()) => self.recovered(),
            Err(e) => {
                tracing::debug!(path = %self.cfg.path.display(), error = %e, "audit log probe failed");
                self.fail(&e);
            }
        }
    }

    fn try_probe(&mut self) -> io::Result<()> {
        if self.dirty_tail {
            self.sink.truncate(self.offset)?;
            self.dirty_tail = false;
        }
        let written = write_all(&mut self.sink, &PROBE).and_then(|()| self.sink.sync());
        if let Err(e) = self.sink.truncate(self.offset) {
            self.dirty_tail = true;
            return Err(e);
        }
        written?;
        self.sink.sync()
    }

    /// Rolls the active file; on failure keeps writing to it and tries again later.
    fn rotate(&mut self) {
        match self.try_rotate() {
            Ok(rolled) => {
                self.rotate_not_before = None;
                tracing::info!(
                    path = %self.cfg.path.display(),
                    rolled = %rolled.display(),
                    next_seq = self.next_seq,
                    "rolled the audit log"
                );
            }
            Err(e) => {
                self.rotate_not_before = Some(Instant::now() + self.cfg.rotate_retry);
                tracing::error!(
                    path = %self.cfg.path.display(),
                    error = %e,
                    retry_in_ms = self.cfg.rotate_retry.as_millis(),
                    "cannot roll the audit log; records keep going to the current file"
                );
            }
        }
        // The segment is synced before it is rolled, even when the roll itself fails.
        self.tell_durable();
    }

    fn try_rotate(&mut self) -> Result<PathBuf, RotateError> {
        let path = self.cfg.path.clone();
        let rolled = segment::rolled_path(&path, self.file_first_seq);
        let next = segment::next_path(&path);
        // A rolled segment is final: everything in it must be durable first.
        if let Err(e) = self.sink.sync() {
            self.fail(&e);
            return Err(RotateError::new(
                "cannot fdatasync the segment before rolling it",
                &path,
                e,
            ));
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.durable = self.written;

        std::fs::hard_link(&path, &rolled)
            .map_err(|e| RotateError::new("cannot create the rolled segment", &rolled, e))?;
        // Undoing only ever removes the second name of the active file or the empty fresh
        // file: no record is deleted.
        let undo = |created_next: bool| {
            let _ = std::fs::remove_file(&rolled);
            if created_next {
                let _ = std::fs::remove_file(&next);
            }
        };
        let fresh = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o640)
            .open(&next)
        {
            Ok(file) => file,
            Err(e) => {
                undo(false);
                return Err(RotateError::new("cannot create the next file", &next, e));
            }
        };
        // Locked before it gets the active name, so no other process can ever lock it.
        if let Err(e) = fresh.try_lock() {
            undo(true);
            return Err(RotateError::new(
                "cannot lock the next file",
                &next,
                io::Error::other(e.to_string()),
            ));
        }
        if let Err(e) = std::fs::rename(&next, &path) {
            undo(true);
            return Err(RotateError::new("cannot rename the next file", &path, e));
        }
        // The active name now points at the fresh file; the old one lives on as `rolled`.
        if let Some(tree) = &mut self.tree {
            tree.rotated(&fresh);
        }
        self.sink = (self.wrap)(fresh);
        self.offset = 0;
        self.file_first_seq = self.next_seq;
        self.file_since = Instant::now();
        if let Err(e) = sync_dir(segment::dir_of(&path)) {
            self.dir_unsynced = true;
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot sync the audit directory after rolling; retried before the next record"
            );
        }
        Ok(rolled)
    }
}

/// Why a rotation did not happen, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what} `{}`: {source}", .path.display())]
struct RotateError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl RotateError {
    fn new(what: &'static str, path: &Path, source: io::Error) -> Self {
        RotateError {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
