//! The hash-chained audit log (SPEC §8): one append-only JSON Lines file per process, each line
//! the canonical JSON of one record, each record linked to the previous one by `prev_hash`.
//!
//! Owns the file, the chain state (`seq`, `prev_hash`) and the only thread that writes to the
//! file. Requests hand a record to [`AuditLog::append`] and get back a [`Receipt`] once the record
//! is written (and fdatasync'ed when `sync = always`). This module must never acknowledge a
//! record that was not written, never leave half a record in the file for the next append, and
//! never advance the chain past a record that was refused.
//!
//! - `writer`: the writer thread, group commit, failure handling.
//! - `recover`: opening an existing file, cutting a torn tail, checking the last record.
//! - `verify`: streaming verification of whole files for `ecl-gate audit verify`.
//! - `record`: the encoding and hashing of one line, shared by the three above.

mod record;
mod recover;
mod verify;
mod writer;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::canonical::Map;

pub use verify::{verify_files, VerifyFailure, VerifyReport};

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
    #[error("cannot recover the tail of audit log `{}`: {source}", .path.display())]
    Recover { path: PathBuf, source: io::Error },
    #[error("audit log `{}` was tampered with at seq {seq}: {reason}", .path.display())]
    Tampered {
        path: PathBuf,
        seq: u64,
        reason: String,
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

impl AuditLog {
    /// Blocking. Opens/creates the file (append, mode 0o640), recovers the tail, spawns the
    /// writer thread.
    pub fn open(settings: AuditSettings) -> Result<AuditLog, AuditError> {
        Self::open_with(settings, |file| file)
    }

    /// [`AuditLog::open`] with the file wrapped in another sink (fault injection in tests).
    fn open_with<S: writer::Sink>(
        settings: AuditSettings,
        wrap: impl FnOnce(std::fs::File) -> S,
    ) -> Result<AuditLog, AuditError> {
        let path = settings.path.clone();
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(open_err)?;
        let regular = file.metadata().map_err(open_err)?.file_type().is_file();
        let disabled = path == Path::new(DEV_NULL);
        if disabled {
            tracing::warn!(
                path = DEV_NULL,
                "AUDIT PERSISTENCE IS DISABLED: audit records are discarded; use this for benchmarks only"
            );
        }
        let tail = if regular {
            recover::recover(&mut file, &path)?
        } else {
            // Never read a device or pipe: /dev/full reads as endless zeros.
            recover::Tail::genesis()
        };
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
        let (tx, rx) = flume::bounded(settings.queue_capacity.max(1));
        let state = writer::Writer::new(
            wrap(file),
            writer::Config {
                path: path.clone(),
                stream: stream.clone(),
                regular,
                sync,
                sync_interval: settings.sync_interval,
            },
            tail,
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

    /// True when the path is `/dev/null`: records are chained but discarded.
    pub fn is_disabled(&self) -> bool {
        self.shared.disabled
    }
}

#[cfg(test)]
mod tests;
