//! Chain verification of whole audit files, for `ecl-gate audit verify` (SPEC §8).
//!
//! Owns the rules a reader checks: every line a canonical JSON object, `seq` contiguous,
//! `prev_hash` linking to the previous `record_hash`, `record_hash` recomputing, and across a
//! rotated chain's files, each file continuing the one before it. Files are streamed in blocks
//! of [`BLOCK`] bytes with a bounded line length; the lines of a block are checked on several
//! threads, then linked in order. It must never load a whole file, never write to one, and
//! never report anything but the first failure of a chain in chain order, with file, line and
//! seq.
//!
//! [`verify_files`] checks files as one chain in the order given. [`verify_paths`] takes files
//! and directories, groups them into chains by name (`<name>` and its rolled segments
//! `<name>.<first-seq>`, see `segment`), puts each chain's files in seq order and checks every
//! chain: so a missing segment shows up as a gap, and a renamed one as a name that does not
//! match its first record.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::record::{check_line, Checked, LineError};
use super::{segment, GENESIS};

/// Longest line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Bytes read and checked at a time; lines of a block are checked in parallel.
const BLOCK: usize = 4 * 1024 * 1024;
const MAX_WORKERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    pub records: u64,
    /// The last `record_hash`, or `sha256:GENESIS` when there is no record.
    pub head_hash: String,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// The first place where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub path: PathBuf,
    /// 1-based; 0 when the file could not be read at all.
    pub line: u64,
    pub seq: Option<u64>,
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.path.display())?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for VerifyFailure {}

/// One chain found by [`verify_paths`] and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The active file's path (the configured name), whether or not it was among the files.
    pub name: PathBuf,
    /// In chain order: rolled segments by first seq, then the active file.
    pub files: Vec<PathBuf>,
    pub result: Result<VerifyReport, VerifyFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub chains: Vec<ChainReport>,
    /// Tails moved out of a chain by `--audit-repair`, found in the directories given; not
    /// verified (they are what did not verify).
    pub set_aside: Vec<PathBuf>,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.chains.iter().all(|c| c.result.is_ok())
    }
}

/// Verifies the chain across `paths`, in the order given: one chain, so each file must
/// continue the one before it.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifyReport, VerifyFailure> {
    let files: Vec<(PathBuf, Option<u64>)> = paths.iter().map(|p| (p.clone(), None)).collect();
    verify_chain(&files)
}

/// Verifies every chain among `paths`: files, and the files of directories (not recursing;
/// hidden files skipped). Files are grouped by name into chains and ordered by seq.
pub fn verify_paths(paths: &[PathBuf]) -> Result<Verification, VerifyFailure> {
    let mut files = Vec::new();
    let mut set_aside = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let unreadable = |e: std::io::Error| VerifyFailure {
            path: path.clone(),
            line: 0,
            seq: None,
            reason: format!("cannot read the directory: {e}"),
        };
        for entry in std::fs::read_dir(path).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().map_err(unreadable)?.is_file() {
                continue;
            }
            if segment::is_checkpoints(&name) {
                continue;
            }
            if segment::is_set_aside(&name) {
                set_aside.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files.dedup();
    set_aside.sort();

    // name → (rolled segments by first seq, the active file if given)
    let mut groups: BTreeMap<PathBuf, (BTreeMap<u64, PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    for file in files {
        let rolled = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(segment::split_rolled)
            .map(|(base, seq)| (file.with_file_name(base), seq));
        match rolled {
            Some((name, seq)) => {
                groups.entry(name).or_default().0.insert(seq, file);
            }
            None => {
                let group = groups.entry(file.clone()).or_default();
                group.1 = Some(file);
            }
        }
    }
    let chains = groups
        .into_iter()
        .map(|(name, (rolled, active))| {
            let files: Vec<(PathBuf, Option<u64>)> = rolled
                .into_iter()
                .map(|(seq, path)| (path, Some(seq)))
                .chain(active.map(|a| (a, None)))
                .collect();
            ChainReport {
                name,
                result: verify_chain(&files),
                files: files.into_iter().map(|(p, _)| p).collect(),
            }
        })
        .collect();
    Ok(Verification { chains, set_aside })
}

/// Verifies `files` as one chain in this order; a file may carry the seq its name says its
/// first record has.
fn verify_chain(files: &[(PathBuf, Option<u64>)]) -> Result<VerifyReport, VerifyFailure> {
    let mut chain = Chain::default();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    for (path, named_seq) in files {
        verify_file(path, *named_seq, &mut chain, workers)?;
    }
    Ok(VerifyReport {
        files: files.len(),
        records: chain.records,
        first_seq: chain.first_seq,
        last_seq: chain.last.as_ref().map(|(seq, _)| *seq),
        head_hash: chain
            .last
            .map_or_else(|| GENESIS.to_owned(), |(_, hash)| hash),
    })
}

#[derive(Default)]
struct Chain {
    /// `seq` and `record_hash` of the last record seen.
    last: Option<(u64, String)>,
    /// The file that holds it.
    last_file: Option<PathBuf>,
    first_seq: Option<u64>,
    records: u64,
}

/// Where a record sits, for the link check and its wording.
enum Place<'a> {
    /// Not the first line of its file.
    Within,
    /// The first line of a file, after `previous_file` (if any file came before).
    FileStart {
        previous_file: Option<&'a Path>,
        named_seq: Option<u64>,
    },
}

fn verify_file(
    path: &Path,
    named_seq: Option<u64>,
    chain: &mut Chain,
    workers: usize,
) -> Result<(), VerifyFailure> {
    let fail = |line, seq, reason: String| VerifyFailure {
        path: path.to_owned(),
        line,
        seq,
        reason,
    };
    let mut file = File::open(path).map_err(|e| fail(0, None, format!("cannot open: {e}")))?;
    let previous_file = chain.last_file.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + 64 * 1024);
    let mut line_no = 0u64;
    loop {
        // Top up to a whole block behind the partial line carried over.
        let read = (&mut file)
            .take(BLOCK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| fail(line_no + 1, None, format!("cannot read: {e}")))?;
        let eof = read < BLOCK;
        let mut lines: Vec<&[u8]> = Vec::with_capacity(buf.len() / 256);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf) {
            lines.push(&buf[start..end]);
            start = end + 1;
        }
        let complete = start;
        if let Some(i) = lines.iter().position(|l| l.len() > MAX_LINE) {
            return Err(fail(line_no + 1 + i as u64, None, too_long()));
        }
        let checked = check_lines(&lines, workers);
        // Linked against the previous record of this block, borrowed; owned at block end.
        let mut last: Option<(u64, Cow<'_, str>)> = chain
            .last
            .as_ref()
            .map(|(s, h)| (*s, Cow::Borrowed(h.as_str())));
        for result in checked {
            line_no += 1;
            let record = result.map_err(|e| fail(line_no, e.seq, e.reason))?;
            let place = if line_no == 1 {
                Place::FileStart {
                    previous_file: previous_file.as_deref(),
                    named_seq,
                }
            } else {
                Place::Within
            };
            link(last.as_ref().map(|(s, h)| (*s, h.as_ref())), &record, place)
                .map_err(|reason| fail(line_no, Some(record.seq), reason))?;
            chain.records += 1;
            chain.first_seq.get_or_insert(record.seq);
            last = Some((record.seq, record.record_hash));
        }
        let last = last.map(|(s, h)| (s, h.into_owned()));
        if line_no > 0 {
            chain.last = last;
            chain.last_file = Some(path.to_owned());
        }
        buf.drain(..complete);
        if buf.len() > MAX_LINE {
            return Err(fail(line_no + 1, None, too_long()));
        }
        if eof {
            if !buf.is_empty() {
                return Err(fail(
                    line_no + 1,
                    None,
                    "torn last line (no newline)".into(),
                ));
            }
            if line_no == 0 && named_seq.is_some() {
                return Err(fail(0, None, "the rolled segment is empty".into()));
            }
            return Ok(());
        }
    }
}

fn too_long() -> String {
    format!("line is longer than {MAX_LINE} bytes")
}

/// Checks `lines` on up to `workers` threads; results in line order.
fn check_lines<'a>(lines: &[&'a [u8]], workers: usize) -> Vec<Result<Checked<'a>, LineError>> {
    let check_all = |part: &[&'a [u8]]| {
        let mut scratch = Vec::with_capacity(4096);
        part.iter()
            .map(|line| check_line(line, &mut scratch))
            .collect::<Vec<_>>()
    };
    if workers <= 1 || lines.len() < 256 {
        return check_all(lines);
    }
    let per_worker = lines.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(per_worker)
            .map(|part| scope.spawn(move || check_all(part)))
            .collect();
        let mut out = Vec::with_capacity(lines.len());
        for (handle, part) in handles.into_iter().zip(lines.chunks(per_worker)) {
            match handle.join() {
                Ok(results) => out.extend(results),
                // A bug, not a verdict on the file; still reported as a failure, never a pass.
                Err(_) => out.extend(part.iter().map(|_| {
                    Err(LineError {
                        seq: None,
                        reason: "internal error: a checker thread panicked".into(),
                    })
                })),
            }
        }
        out
    })
}

/// Checks that `record` continues `previous` (`seq`, `record_hash`), the chain's last record.
fn link(
    previous: Option<(u64, &str)>,
    record: &Checked<'_>,
    place: Place<'_>,
) -> Result<(), String> {
    let seq = record.seq;
    if let Place::FileStart {
        named_seq: Some(named),
        ..
    } = place
    {
        if named != seq {
            return Err(format!(
                "the file name says its first record is seq {named}, it is seq {seq} (renamed or out of order?)"
            ));
        }
    }
    let Some((prev_seq, prev_hash)) = previous else {
        if record.prev_hash != GENESIS {
            return Err(format!(
                "prev_hash of the first record is not `{GENESIS}` and no earlier file continues to it"
            ));
        }
        if seq != 0 {
            return Err(format!("the first record has seq {seq}, expected 0"));
        }
        return Ok(());
    };
    let expected = prev_seq.checked_add(1);
    let previous_file = match place {
        Place::FileStart {
            previous_file: Some(f),
            ..
        } => Some(f),
        _ => None,
    };
    match previous_file {
        Some(file) if record.prev_hash == GENESIS => Err(format!(
            "the chain starts again at `{GENESIS}` after seq {prev_seq} of `{}` (was the log replaced?)",
            file.display()
        )),
        Some(file) if expected != Some(seq) => {
            let why = if expected.is_some_and(|e| seq > e) {
                "a file is missing"
            } else {
                "files overlap or are out of order"
            };
            Err(format!(
                "seq {} expected after `{}`, file starts at seq {seq}: {why}",
                prev_seq.saturating_add(1),
                file.display()
            ))
        }
        Some(file) if prev_hash != record.prev_hash => Err(format!(
            "prev_hash does not link to seq {prev_seq}, the last record of `{}`",
            file.display()
        )),
        _ if expected != Some(seq) => Err(format!("seq {seq} follows seq {prev_seq}")),
        _ if prev_hash != record.prev_hash => {
            Err(format!("prev_hash does not link to seq {prev_seq}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::encode;
    use crate::audit::tests::gate_shaped_record;
    use std::io::Write;
    use std::time::Instant;

    /// Writes a chain of `n` records to `path` without the writer thread.
    fn write_chain(path: &Path, n: u64, small: bool) {
        let mut file = std::io::BufWriter::new(File::create(path).unwrap());
        let (mut prev, mut buf) = (GENESIS.to_owned(), Vec::new());
        for i in 0..n {
            buf.clear();
            let at = "2024-05-01T12:00:00.000200Z";
            prev = encode(gate_shaped_record(i, small), i, &prev, at, &mut buf);
            file.write_all(&buf).unwrap();
        }
    }

    // Guards the parallel, multi-block path: results must be linked in file order, and the
    // first failure in file order wins even when a later block also fails.
    #[test]
    fn blocks_are_checked_in_parallel_and_reported_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        write_chain(&path, 8000, false);
        assert!(std::fs::metadata(&path).unwrap().len() > BLOCK as u64);
        let report = verify_files(std::slice::from_ref(&path)).unwrap();
        assert_eq!((report.records, report.last_seq), (8000, Some(7999)));

        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let (early, late) = (
            lines[3000].replace("ALLOW", "DENY!"),
            lines[7000].replace("ALLOW", "DENY!"),
        );
        lines[3000] = &early;
        lines[7000] = &late;
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let f = verify_files(std::slice::from_ref(&path)).unwrap_err();
        assert_eq!((f.line, f.seq), (3001, Some(3000)));
    }

    #[test]
    fn an_overlong_line_is_a_failure_not_a_memory_hog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.log");
        write_chain(&path, 2, true);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        drop(f);
        let failure = verify_files(std::slice::from_ref(&path)).unwrap_err();
        assert_eq!(failure.line, 3);
        assert!(
            failure.reason.starts_with("line is longer than"),
            "{failure}"
        );
    }

    // Throughput figure for the report:
    // cargo test --release --lib verify_throughput -- --ignored --nocapture
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn verify_throughput() {
        const N: u64 = 1_000_000;
        for small in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bench.log");
            write_chain(&path, N, small);
            let bytes = std::fs::metadata(&path).unwrap().len();
            for workers in [1, 0] {
                let start = Instant::now();
                let report = if workers == 1 {
                    let mut chain = Chain::default();
                    verify_file(&path, None, &mut chain, 1)
                        .map(|()| chain.records)
                        .unwrap()
                } else {
                    verify_files(std::slice::from_ref(&path)).unwrap().records
                };
                let secs = start.elapsed().as_secs_f64();
                assert_eq!(report, N);
                println!(
                    "{} threads: verified {N} records ({} bytes/record) in {secs:.3} s: {:.0} records/s, {:.0} MB/s",
                    if workers == 1 { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) },
                    bytes / N,
                    N as f64 / secs,
                    bytes as f64 / secs / 1e6
                );
            }
        }
    }
}
