//! Opening an existing audit file: find where the chain ends and continue it (SPEC §8).
//!
//! Owns the tail scan of a regular file: cut a torn last line (a write interrupted by a crash,
//! never acknowledged), then check the last complete record and take its `seq` and
//! `record_hash`. It reads backwards in chunks and must never read the whole file (logs can be
//! GiBs), never touch a non-regular file, and never cut anything but an unterminated last line:
//! a last record that does not verify stops the gate instead of being repaired.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{check_line, LineError};
use super::{AuditError, GENESIS};

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
}

impl Tail {
    pub(super) fn genesis() -> Tail {
        Tail {
            next_seq: 0,
            prev_hash: GENESIS.to_owned(),
            offset: 0,
        }
    }
}

/// Repairs the tail of the regular file `file` and returns where its chain continues.
pub(super) fn recover(file: &mut File, path: &Path) -> Result<Tail, AuditError> {
    let io_err = |source| AuditError::Recover {
        path: path.to_owned(),
        source,
    };
    let corrupt = |reason: String| AuditError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Ok(Tail::genesis());
    }

    let last_newline = match rfind_newline(file, len, MAX_TAIL_LINE).map_err(io_err)? {
        Scan::Found(pos) => Some(pos),
        Scan::Start => None,
        Scan::TooFar => {
            return Err(corrupt(format!(
                "no line break in its last {MAX_TAIL_LINE} bytes"
            )))
        }
    };
    let end = last_newline.map_or(0, |pos| pos + 1);
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
    let Some(last_newline) = last_newline else {
        return Ok(Tail::genesis());
    };

    let start = match rfind_newline(file, last_newline, MAX_TAIL_LINE).map_err(io_err)? {
        Scan::Found(pos) => pos + 1,
        Scan::Start => 0,
        Scan::TooFar => {
            return Err(corrupt(format!(
                "its last line is longer than {MAX_TAIL_LINE} bytes"
            )))
        }
    };
    let line_len = usize::try_from(last_newline - start)
        .map_err(|_| corrupt("last line is too long".into()))?;
    let mut line = vec![0u8; line_len];
    file.read_exact_at(&mut line, start).map_err(io_err)?;

    match check_line(&line, &mut Vec::with_capacity(line_len)) {
        Ok(last) => Ok(Tail {
            next_seq: last
                .seq
                .checked_add(1)
                .ok_or_else(|| corrupt("the last seq is the largest possible".into()))?,
            prev_hash: last.record_hash,
            offset: end,
        }),
        Err(LineError {
            seq: Some(seq),
            reason,
        }) => Err(AuditError::Tampered {
            path: path.to_owned(),
            seq,
            reason,
        }),
        Err(LineError { seq: None, reason }) => {
            Err(corrupt(format!("its last record is unreadable: {reason}")))
        }
    }
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
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Scan::Found(lo + i as u64));
        }
        hi = lo;
    }
    Ok(Scan::Start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(tmp.path())
            .unwrap();
        (tmp, f)
    }

    #[test]
    fn rfind_newline_crosses_chunks() {
        let mut bytes = vec![b'x'; 3 * CHUNK + 17];
        bytes[5] = b'\n';
        let (_tmp, f) = file_with(&bytes);
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
        let (tmp, mut f) = file_with(b"{\"seq\":0,\"integ");
        assert_eq!(recover(&mut f, tmp.path()).unwrap(), Tail::genesis());
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().len(), 0);
    }

    #[test]
    fn an_unreadable_last_line_is_corrupt() {
        let (tmp, mut f) = file_with(b"not json\n");
        let err = recover(&mut f, tmp.path()).unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    }
}
