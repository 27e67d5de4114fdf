//! Opening an existing chain: find where it ends and continue it (SPEC §8).
//!
//! Owns the start-up checks of the active file, which the caller has already locked: finish a
//! rotation a crash interrupted, cut a torn last line (a write interrupted by a crash, never
//! acknowledged), then check that the last record verifies and links to the record before it
//! (the previous line, or the last record of the newest rolled segment, or GENESIS). When it
//! does not, start-up is refused, or, when asked to repair, the bad tail is copied to a
//! `.tampered-<unix-seconds>` file beside the log and only then cut off. It reads backwards in
//! chunks and must never read the whole file (logs can be GiBs), never touch a non-regular
//! file, never write to a rolled segment, and never cut anything but an unterminated last line
//! unless told to repair, and then only after the cut bytes are durable elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::record::check_line;
use super::{segment, AuditError, GENESIS};

/// Bytes read per step when scanning backwards.
const CHUNK: usize = 64 * 1024;
/// Longest last line (torn or complete) recovery accepts; longer means the file is not ours.
const MAX_TAIL_LINE: u64 = 64 * 1024 * 1024;

/// Where the chain continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tail {
    pub next_seq: u64,
    pub prev_hash: String,
    /// File length once the tail is repaired: where the next record starts.
    pub offset: u64,
    /// The seq the active file's first record has (or will have): its name once rolled.
    pub first_seq: u64,
}

impl Tail {
    pub(super) fn genesis() -> Tail {
        Tail {
            next_seq: 0,
            prev_hash: GENESIS.to_owned(),
            offset: 0,
            first_seq: 0,
        }
    }
}

/// What the active file continues: the newest rolled segment's last record, or GENESIS.
#[derive(Debug, Clone)]
struct Anchor {
    /// `None` for GENESIS.
    seq: Option<u64>,
    /// `None` when not known (the first line of a rolled segment, whose predecessor lives in an
    /// older segment that start-up does not read).
    hash: Option<String>,
    file: Option<PathBuf>,
}

impl Anchor {
    fn genesis() -> Anchor {
        Anchor {
            seq: None,
            hash: Some(GENESIS.to_owned()),
            file: None,
        }
    }

    fn next_seq(&self) -> Option<u64> {
        self.seq.map_or(Some(0), |s| s.checked_add(1))
    }
}

/// A record that verified and links to its predecessor.
struct Good {
    seq: u64,
    record_hash: String,
}

/// Why the record ending at some offset is not a good chain head.
struct Bad {
    seq: Option<u64>,
    /// Where the offending line starts.
    offset: u64,
    reason: String,
}

/// Repairs the tail of the regular, locked file `file` at `path` and returns where its chain
/// continues. With `repair`, a last record that does not verify is moved aside instead of
/// refusing.
pub(super) fn recover(file: &mut File, path: &Path, repair: bool) -> Result<Tail, AuditError> {
    let io_err = |source| AuditError::Recover {
        path: path.to_owned(),
        source,
    };
    let mut rolled = segment::rolled_segments(path).map_err(io_err)?;
    finish_interrupted_rotation(file, path, &mut rolled).map_err(io_err)?;
    let len = cut_torn_line(file, path)?;
    let anchor = match rolled.last() {
        Some((first_seq, newest)) => rolled_anchor(newest, *first_seq)?,
        None => Anchor::genesis(),
    };
    let first_seq = anchor.next_seq().ok_or_else(|| largest_seq(path))?;
    let after_anchor = || Tail {
        next_seq: first_seq,
        prev_hash: anchor.hash.clone().unwrap_or_default(),
        offset: 0,
        first_seq,
    };
    if len == 0 {
        return Ok(after_anchor());
    }

    let bad = match head_at(file, path, len, &anchor)? {
        (_, Ok(good)) => return tail_after(path, good, len, first_seq),
        (_, Err(bad)) => bad,
    };
    if !repair {
        return Err(AuditError::Tampered {
            path: path.to_owned(),
            seq: bad.seq,
            offset: bad.offset,
            reason: bad.reason,
        });
    }

    // Walk back to the last record that verifies and links; everything behind it goes.
    let mut end = len;
    let mut good = None;
    while end > 0 {
        match head_at(file, path, end, &anchor)? {
            (_, Ok(head)) => {
                good = Some(head);
                break;
            }
            (start, Err(_)) => end = start,
        }
    }
    let aside = set_aside(file, path, end, len)?;
    let continues_at = good.as_ref().map_or(first_seq, |g| g.seq.saturating_add(1));
    tracing::warn!(
        path = %path.display(),
        moved_to = %aside.display(),
        bytes = len - end,
        first_bad_seq = bad.seq.map_or_else(|| "unreadable".to_owned(), |s| s.to_string()),
        first_bad_offset = bad.offset,
        reason = %bad.reason,
        continues_at_seq = continues_at,
        "--audit-repair: moved the audit log's tail that does not verify aside; the chain continues from the last good record"
    );
    match good {
        Some(good) => tail_after(path, good, end, first_seq),
        None => Ok(after_anchor()),
    }
}

fn largest_seq(path: &Path) -> AuditError {
    AuditError::Corrupt {
        path: path.to_owned(),
        reason: "the last seq is the largest possible".into(),
    }
}

fn tail_after(path: &Path, good: Good, offset: u64, first_seq: u64) -> Result<Tail, AuditError> {
    Ok(Tail {
        next_seq: good.seq.checked_add(1).ok_or_else(|| largest_seq(path))?,
        prev_hash: good.record_hash,
        offset,
        first_seq,
    })
}

/// A crash between giving the active file its rolled name and putting a fresh file in its
/// place leaves one file under two names; the rolled name goes (the records stay, under the
/// active name), and so does an empty `.next` file that never got its name.
fn finish_interrupted_rotation(
    file: &File,
    path: &Path,
    rolled: &mut Vec<(u64, PathBuf)>,
) -> io::Result<()> {
    let active = file.metadata()?;
    if let Some((_, newest)) = rolled.last() {
        let meta = std::fs::symlink_metadata(newest)?;
        if (meta.dev(), meta.ino()) == (active.dev(), active.ino()) {
            std::fs::remove_file(newest)?;
            tracing::warn!(
                path = %path.display(),
                removed_name = %newest.display(),
                "finished an audit log rotation interrupted by a crash: removed the second name of the active file"
            );
            rolled.pop();
        }
    }
    let next = segment::next_path(path);
    if let Ok(meta) = std::fs::symlink_metadata(&next) {
        if meta.is_file() && meta.len() == 0 {
            std::fs::remove_file(&next)?;
        } else {
            tracing::warn!(path = %next.display(), "ignoring an unexpected file beside the audit log");
        }
    }
    Ok(())
}

/// Cuts an unterminated last line off; returns the file's length afterwards.
fn cut_torn_line(file: &File, path: &Path) -> Result<u64, AuditError> {
    let io_err = |source| AuditError::Recover {
        path: path.to_owned(),
        source,
    };
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Ok(0);
    }
    let end = match rfind_newline(file, len, MAX_TAIL_LINE).map_err(io_err)? {
        Scan::Found(pos) => pos + 1,
        Scan::Start => 0,
        Scan::TooFar => {
            return Err(AuditError::Corrupt {
                path: path.to_owned(),
                reason: format!("no line break in its last {MAX_TAIL_LINE} bytes"),
            })
        }
    };
    if end < len {
        file.set_len(end).map_err(io_err)?;
        // The cut must be durable before new records land behind it.
        file.sync_data().map_err(io_err)?;
        tracing::warn!(
            path = %path.display(),
            bytes_cut = len - end,
            "cut a torn last line off the audit log (a write interrupted by a crash; it was never acknowledged)"
        );
    }
    Ok(end)
}

/// The chain head of a rolled segment: its last record, checked against the line before it.
/// Segments are complete when rolled, so a torn one is reported, not cut.
fn rolled_anchor(path: &Path, first_seq: u64) -> Result<Anchor, AuditError> {
    let io_err = |source| AuditError::Recover {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut last = [0u8];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1).map_err(io_err)?;
    }
    if len == 0 || last[0] != b'\n' {
        return Err(AuditError::Corrupt {
            path: path.to_owned(),
            reason: "the rolled segment is empty or its last line is torn".into(),
        });
    }
    // The segment's first line links to an older segment start-up does not read, or, for the
    // chain's first segment, to GENESIS.
    let before = match first_seq.checked_sub(1) {
        None => Anchor::genesis(),
        seq => Anchor {
            seq,
            hash: None,
            file: None,
        },
    };
    match head_at(&file, path, len, &before)? {
        (_, Ok(good)) => Ok(Anchor {
            seq: Some(good.seq),
            hash: Some(good.record_hash),
            file: Some(path.to_owned()),
        }),
        // Repair only ever cuts the active file; a rolled segment is left as it is.
        (_, Err(bad)) => Err(AuditError::Tampered {
            path: path.to_owned(),
            seq: bad.seq,
            offset: bad.offset,
            reason: format!(
                "{} (the newest rolled segment, where the chain continues from; it is never repaired)",
                bad.reason
            ),
        }),
    }
}

/// Checks the record on the line ending just before `end` (`file[end - 1]` is its `\n`): it
/// verifies, and links to the line before it or, for the first line, to `anchor`. Returns the
/// offset where that line starts, and the verdict.
fn head_at(
    file: &File,
    path: &Path,
    end: u64,
    anchor: &Anchor,
) -> Result<(u64, Result<Good, Bad>), AuditError> {
    let (start, line) = line_before(file, path, end)?;
    let mut scratch = Vec::with_capacity(line.len());
    let record = match check_line(&line, &mut scratch) {
        Ok(record) => record,
        Err(e) => {
            let bad = Bad {
                seq: e.seq,
                offset: start,
                reason: e.reason,
            };
            return Ok((start, Err(bad)));
        }
    };
    let (pred_seq, pred_hash, pred_name) = if start == 0 {
        let name = match &anchor.file {
            Some(f) => format!("the last record of `{}`", f.display()),
            None if anchor.seq.is_none() => format!("`{GENESIS}`"),
            None => "the previous segment".to_owned(),
        };
        (anchor.seq, anchor.hash.clone(), name)
    } else {
        let (pred_start, pred_line) = line_before(file, path, start)?;
        match check_line(&pred_line, &mut scratch) {
            Ok(pred) => (
                Some(pred.seq),
                Some(pred.record_hash.into_owned()),
                format!("seq {}", pred.seq),
            ),
            Err(e) => {
                let bad = Bad {
                    seq: e.seq,
                    offset: pred_start,
                    reason: e.reason,
                };
                return Ok((start, Err(bad)));
            }
        }
    };
    let bad = |reason: String| {
        Ok((
            start,
            Err(Bad {
                seq: Some(record.seq),
                offset: start,
                reason,
            }),
        ))
    };
    let expected = pred_seq.map_or(Some(0), |s| s.checked_add(1));
    if expected != Some(record.seq) {
        return bad(match pred_seq {
            Some(p) => format!("seq {} follows seq {p}", record.seq),
            None => format!("the first record has seq {}, expected 0", record.seq),
        });
    }
    if pred_hash.is_some_and(|h| h != record.prev_hash) {
        return bad(format!("prev_hash does not link to {pred_name}"));
    }
    Ok((
        start,
        Ok(Good {
            seq: record.seq,
            record_hash: record.record_hash.into_owned(),
        }),
    ))
}

/// The line ending just before `end` (whose `\n` is at `end - 1`) and its start offset.
fn line_before(file: &File, path: &Path, end: u64) -> Result<(u64, Vec<u8>), AuditError> {
    let io_err = |source| AuditError::Recover {
        path: path.to_owned(),
        source,
    };
    let newline = end.saturating_sub(1);
    let start = match rfind_newline(file, newline, MAX_TAIL_LINE).map_err(io_err)? {
        Scan::Found(pos) => pos + 1,
        Scan::Start => 0,
        Scan::TooFar => {
            return Err(AuditError::Corrupt {
                path: path.to_owned(),
                reason: format!("a line near its end is longer than {MAX_TAIL_LINE} bytes"),
            })
        }
    };
    // INVARIANT: newline - start <= MAX_TAIL_LINE, which fits a usize on supported platforms.
    let mut line = vec![0u8; usize::try_from(newline - start).unwrap_or(0)];
    file.read_exact_at(&mut line, start).map_err(io_err)?;
    Ok((start, line))
}

/// Copies `file[from..len]` to a new `.tampered-<unix-seconds>` file beside `path`, makes the
/// copy durable, then cuts it off `file`. Returns the copy's path.
fn set_aside(file: &File, path: &Path, from: u64, len: u64) -> Result<PathBuf, AuditError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = segment::set_aside_path(path, now);
    let fail = |source| AuditError::Repair {
        path: path.to_owned(),
        aside: aside.clone(),
        source,
    };
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&aside)
        .map_err(fail)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < len {
        // INVARIANT: the chunk is at most CHUNK bytes, so the cast cannot truncate.
        let n = (len - at).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).map_err(fail)?;
        out.write_all(&buf[..n]).map_err(fail)?;
        at += n as u64;
    }
    out.sync_all().map_err(fail)?;
    sync_dir(segment::dir_of(path)).map_err(fail)?;
    // Only now that the copy is durable may the original bytes go.
    file.set_len(from).map_err(fail)?;
    file.sync_data().map_err(fail)?;
    Ok(aside)
}

/// Makes entries created, renamed or removed in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

enum Scan {
    /// Offset of the last `\n` before the end.
    Found(u64),
    /// No `\n` between the start of the file and the end.
    Start,
    /// No `\n` within `limit` bytes before the end.
    TooFar,
}

/// Finds the last `\n` in `file[..end]`, reading backwards in chunks, looking at most `limit`
/// bytes back.
fn rfind_newline(file: &File, end: u64, limit: u64) -> io::Result<Scan> {
    let mut buf = vec![0u8; CHUNK];
    let stop = end.saturating_sub(limit);
    let mut hi = end;
    while hi > 0 {
        if hi <= stop {
            return Ok(Scan::TooFar);
        }
        let lo = hi.saturating_sub(CHUNK as u64);
        // INVARIANT: hi - lo <= CHUNK, so the cast cannot truncate.
        let chunk = &mut buf[..(hi - lo) as usize];
        file.read_exact_at(chunk, lo)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(Scan::Found(lo + i as u64));
        }
        hi = lo;
    }
    Ok(Scan::Start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        (dir, path, f)
    }

    #[test]
    fn rfind_newline_crosses_chunks() {
        let mut bytes = vec![b'x'; 3 * CHUNK + 17];
        bytes[5] = b'\n';
        let (_dir, _path, f) = file_with(&bytes);
        let len = bytes.len() as u64;
        assert!(matches!(
            rfind_newline(&f, len, u64::MAX).unwrap(),
            Scan::Found(5)
        ));
        assert!(matches!(
            rfind_newline(&f, 5, u64::MAX).unwrap(),
            Scan::Start
        ));
        assert!(matches!(
            rfind_newline(&f, len, 1000).unwrap(),
            Scan::TooFar
        ));
    }

    #[test]
    fn a_file_of_one_torn_line_restarts_at_genesis() {
        let (_dir, path, mut f) = file_with(b"{\"seq\":0,\"integ");
        assert_eq!(recover(&mut f, &path, false).unwrap(), Tail::genesis());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn an_unreadable_last_line_is_refused_naming_its_offset() {
        let (_dir, path, mut f) = file_with(b"not json\n");
        let err = recover(&mut f, &path, false).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Tampered {
                    seq: None,
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("byte 0"), "{err}");
    }

    #[test]
    fn an_empty_leftover_next_file_is_removed_and_another_is_kept() {
        let (dir, path, mut f) = file_with(b"");
        let next = segment::next_path(&path);
        std::fs::write(&next, "").unwrap();
        recover(&mut f, &path, false).unwrap();
        assert!(!next.exists());
        std::fs::write(&next, "someone else's").unwrap();
        recover(&mut f, &path, false).unwrap();
        assert!(next.exists());
        drop(dir);
    }

    #[test]
    fn set_aside_copies_before_it_cuts() {
        let (dir, path, f) = file_with(b"good\nbad\n");
        let aside = set_aside(&f, &path, 5, 9).unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"bad\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"good\n");
        assert_eq!(aside.parent(), Some(dir.path()));
    }
}
