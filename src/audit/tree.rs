//! The Merkle tree over a stream's records and the signed checkpoints of it (issue 9).
//!
//! Owns the writer's tree state (a compact range, O(log n) hashes), the checkpoints file
//! `<log>.checkpoints` beside the log, and the start-up rebuild: the tree is rebuilt by
//! streaming the leaf hashes of every record of the chain (rolled segments, then the active
//! file), and the newest stored checkpoint must be a prefix of it before anything new is
//! signed. It must never sign a checkpoint over records that are not durable (the writer calls
//! it only when every record in the tree is), and never sign two checkpoints that are
//! inconsistent with each other: the tree only grows, and a start on a log that no longer
//! matches its newest checkpoint is refused.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::checkpoint::{split_notes, verify_checkpoint, Checkpoint, NoteSigner};
use crate::merkle::{leaf_hash, CompactRange, Hash};

use super::{segment, AuditError};

/// Longest record line read back (as in verification).
const MAX_LINE: usize = 16 * 1024 * 1024;

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

/// The writer's tree and checkpoint state.
pub(super) struct TreeState {
    pub range: CompactRange,
    settings: CheckpointSettings,
    file: File,
    path: PathBuf,
    /// Length of the checkpoints file after the last whole note: a failed append is cut back.
    file_len: u64,
    signed_size: u64,
    signed_at: Instant,
    latest: Latest,
    sync: bool,
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
    sync: bool,
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
        signed_size,
        signed_at: Instant::now(),
        latest,
        sync,
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
    /// When an idle writer must sign: the interval after the last checkpoint, if records came.
    pub fn due(&self) -> Option<Instant> {
        (self.range.size() > self.signed_size)
            .then(|| self.signed_at.checked_add(self.settings.interval))
            .flatten()
    }

    /// Signs and appends a checkpoint of the whole tree if one is due (or `force`d and
    /// anything is new). The caller guarantees every record in the tree is durable.
    pub fn maybe_sign(&mut self, force: bool) {
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
        let checkpoint = Checkpoint {
            origin: self.settings.origin.clone(),
            size,
            root: self.range.root(),
        };
        let note = self.settings.signer.sign(&checkpoint.body());
        self.signed_at = Instant::now();
        match self.append(&note) {
            Ok(()) => {
                self.signed_size = size;
                if let Ok(mut slot) = self.latest.write() {
                    *slot = Some(Arc::from(note));
                }
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    size,
                    error = %e,
                    "cannot append a checkpoint; retried at the next interval"
                );
                let _ = self.file.set_len(self.file_len);
            }
        }
    }

    fn append(&mut self, note: &str) -> io::Result<()> {
        io::Write::write_all(&mut self.file, note.as_bytes())?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.file_len += note.len() as u64;
        Ok(())
    }
}
