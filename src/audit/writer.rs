//! The audit writer thread: the only code that writes to the audit file (SPEC §8).
//!
//! Owns the chain state (`seq`, `prev_hash`, file offset) and group commit: it takes the first
//! waiting record, drains whatever else is queued (up to [`MAX_BATCH`]), chains the batch, writes
//! it with one `write(2)`, fdatasyncs as `audit.sync` demands, and only then answers each
//! record. It must never answer `Ok` for a record that is not written (and synced, under
//! `always`), never advance the chain past a refused batch, and never leave a refused batch's
//! bytes in the file. It keeps running after a failure: the next batch is tried afresh.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::recover::Tail;
use super::{record, AuditError, Receipt, SyncMode};
use crate::canonical::Map;

/// Most records written by one `write(2)`.
const MAX_BATCH: usize = 512;

/// Where batches go: a [`File`] in production; a fault-injecting wrapper in tests.
pub(super) trait Sink: Send + 'static {
    /// Writes all of `buf` at the end of the file (`write(2)`, looping on short writes).
    fn append_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync(2)`.
    fn sync(&mut self) -> io::Result<()>;
    /// Truncates the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn append_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, buf)
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
    pub record: Map,
    pub reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

pub(super) struct Config {
    pub path: PathBuf,
    pub stream: Arc<str>,
    /// A regular file: offsets and truncation are meaningful.
    pub regular: bool,
    pub sync: SyncMode,
    pub sync_interval: Duration,
}

pub(super) struct Writer<S> {
    sink: S,
    cfg: Config,
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
}

impl<S: Sink> Writer<S> {
    pub(super) fn new(sink: S, cfg: Config, tail: Tail) -> Self {
        Writer {
            sink,
            cfg,
            next_seq: tail.next_seq,
            prev_hash: tail.prev_hash,
            offset: tail.offset,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
            last_sync: Instant::now(),
            dirty_tail: false,
            sync_unsupported: false,
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
        }
        if self.unsynced {
            self.sync_idle();
        }
    }

    /// Waits for the next record; in interval mode, syncs pending data when its time comes.
    fn next(&mut self, rx: &flume::Receiver<Pending>) -> Option<Pending> {
        loop {
            let deadline = self
                .unsynced
                .then(|| self.last_sync.checked_add(self.cfg.sync_interval))
                .flatten();
            let Some(deadline) = deadline else {
                return rx.recv().ok();
            };
            match rx.recv_deadline(deadline) {
                Ok(pending) => return Some(pending),
                Err(flume::RecvTimeoutError::Timeout) => self.sync_idle(),
                Err(flume::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Chains, writes, syncs and answers one batch; empties `batch`.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        let logged_at = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut seq = self.next_seq;
        let mut prev_hash = self.prev_hash.clone();
        let mut answers = Vec::with_capacity(batch.len());
        self.buf.clear();
        for pending in batch.drain(..) {
            let record_hash =
                record::encode(pending.record, seq, &prev_hash, &logged_at, &mut self.buf);
            let receipt = Receipt {
                stream: self.cfg.stream.clone(),
                seq,
                prev_hash: std::mem::replace(&mut prev_hash, record_hash.clone()),
                record_hash,
            };
            answers.push((pending.reply, receipt));
            seq += 1;
        }

        match self.persist() {
            Ok(()) => {
                self.offset += self.buf.len() as u64;
                self.next_seq = seq;
                self.prev_hash = prev_hash;
                for (reply, receipt) in answers {
                    // The requester may have gone away; its record is written all the same.
                    let _ = reply.send(Ok(receipt));
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

    /// Writes `buf` and syncs it as the mode demands; `Err` means the batch is refused.
    fn persist(&mut self) -> io::Result<()> {
        if self.dirty_tail {
            self.sink.truncate(self.offset)?;
            self.dirty_tail = false;
        }
        self.sink.append_all(&self.buf)?;
        match self.cfg.sync {
            SyncMode::Always => self.sync(),
            SyncMode::Interval if self.last_sync.elapsed() >= self.cfg.sync_interval => self.sync(),
            SyncMode::Interval => {
                self.unsynced = true;
                Ok(())
            }
            SyncMode::Never => Ok(()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.sync_unsupported {
            return Ok(());
        }
        match self.sink.sync() {
            Ok(()) => {}
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
}
