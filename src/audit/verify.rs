//! Chain verification of whole audit files, for `ecl-gate audit verify` (SPEC §8).
//!
//! Owns the rules a reader checks: every line a canonical JSON object, `seq` contiguous,
//! `prev_hash` linking to the previous `record_hash`, `record_hash` recomputing. Files are
//! streamed in blocks of [`BLOCK`] bytes with a bounded line length; the lines of a block are
//! checked on several threads, then linked in order. It must never load a whole file, never
//! write to one, and never report anything but the first failure in file order, with file,
//! line and seq.
//!
//! Several files are checked in the order given. A file whose first `prev_hash` is not
//! `sha256:GENESIS` continues the previous file's chain (log rotation); one that starts at
//! GENESIS starts a new chain.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::record::{check_line, Checked, LineError};
use super::GENESIS;

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

/// Verifies the chain across `paths`, in order.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifyReport, VerifyFailure> {
    let mut chain = Chain {
        last: None,
        records: 0,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    for path in paths {
        verify_file(path, &mut chain, workers)?;
    }
    Ok(VerifyReport {
        files: paths.len(),
        records: chain.records,
        last_seq: chain.last.as_ref().map(|(seq, _)| *seq),
        head_hash: chain
            .last
            .map_or_else(|| GENESIS.to_owned(), |(_, hash)| hash),
    })
}

struct Chain {
    /// `seq` and `record_hash` of the last record seen.
    last: Option<(u64, String)>,
    records: u64,
}

fn verify_file(path: &Path, chain: &mut Chain, workers: usize) -> Result<(), VerifyFailure> {
    let fail = |line, seq, reason: String| VerifyFailure {
        path: path.to_owned(),
        line,
        seq,
        reason,
    };
    let mut file = File::open(path).map_err(|e| fail(0, None, format!("cannot open: {e}")))?;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + 64 * 1024);
    let mut line_no = 0u64;
    loop {
        // Top up to a whole block behind the partial line carried over.
        let read = (&mut file)
            .take(BLOCK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| fail(line_no + 1, None, format!("cannot read: {e}")))?;
        let eof = read < BLOCK;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<&[u8]> = buf[..complete].split(|&b| b == b'\n').collect();
        // `split` yields an empty piece after the final `\n`.
        let lines = &lines[..lines.len().saturating_sub(1)];
        if let Some(i) = lines.iter().position(|l| l.len() > MAX_LINE) {
            return Err(fail(line_no + 1 + i as u64, None, too_long()));
        }
        let checked = check_lines(lines, workers);
        for result in checked {
            line_no += 1;
            let record = result.map_err(|e| fail(line_no, e.seq, e.reason))?;
            link(chain, &record, line_no == 1)
                .map_err(|reason| fail(line_no, Some(record.seq), reason))?;
            chain.records += 1;
            chain.last = Some((record.seq, record.record_hash));
        }
        buf.drain(..complete);
        if buf.len() > MAX_LINE {
            return Err(fail(line_no + 1, None, too_long()));
        }
        if eof {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(fail(
                    line_no + 1,
                    None,
                    "torn last line (no newline)".into(),
                ))
            };
        }
    }
}

fn too_long() -> String {
    format!("line is longer than {MAX_LINE} bytes")
}

/// Checks `lines` on up to `workers` threads; results in line order.
fn check_lines(lines: &[&[u8]], workers: usize) -> Vec<Result<Checked, LineError>> {
    let check_all = |part: &[&[u8]]| {
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

/// Checks that `record` continues `chain`.
fn link(chain: &Chain, record: &Checked, first_in_file: bool) -> Result<(), String> {
    let previous = match &chain.last {
        // A file that starts at GENESIS starts a new chain.
        Some(_) if first_in_file && record.prev_hash == GENESIS => None,
        last => last.as_ref(),
    };
    match previous {
        None if record.prev_hash != GENESIS => Err(format!(
            "prev_hash of the first record is not `{GENESIS}` and no earlier file continues to it"
        )),
        None if record.seq != 0 => Err(format!(
            "the first record has seq {}, expected 0",
            record.seq
        )),
        None => Ok(()),
        Some((seq, _)) if seq.checked_add(1) != Some(record.seq) => {
            Err(format!("seq {} follows seq {seq}", record.seq))
        }
        Some((seq, hash)) if *hash != record.prev_hash => {
            Err(format!("prev_hash does not link to seq {seq}"))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::encode;
    use crate::canonical::{Map, Value};
    use std::io::Write;
    use std::time::Instant;

    /// A decision record shaped like the gate's: ~900 bytes once chained (four 71-byte hashes),
    /// ~600 when `small` (a DENY without `approved_call`, `runtime`, `record_type`).
    fn realistic(i: u64, small: bool) -> Map {
        let h = |tag: &str| format!("sha256:{:064x}", u128::from(i) * 7919 + tag.len() as u128);
        let Value::Object(mut m) = Value::object([
            (
                "approved_call",
                Value::object([
                    ("tool_name", "email.send".into()),
                    (
                        "tool_args",
                        Value::object([
                            ("to", format!("user{i}@example.com").into()),
                            ("subject", "Quarterly report for the finance team".into()),
                        ]),
                    ),
                ]),
            ),
            ("decision_type", "ALLOW".into()),
            ("profile_id", "example".into()),
            ("profile_ref_hash", h("p").into()),
            ("profile_version", "1.0.0".into()),
            ("provenance_id", format!("prov_{i:032x}").into()),
            ("reason_code", "OK".into()),
            ("record_type", "decision".into()),
            ("request_hash", h("request").into()),
            ("request_id", format!("req-{i:012}").into()),
            (
                "runtime",
                Value::object([
                    ("build", "local".into()),
                    ("name", "ecl-gate".into()),
                    ("version", "0.1.0".into()),
                ]),
            ),
            (
                "timestamps",
                Value::object([
                    ("decided_at", "2024-05-01T12:00:00.000123Z".into()),
                    ("received_at", "2024-05-01T12:00:00.000100Z".into()),
                ]),
            ),
        ]) else {
            unreachable!()
        };
        if small {
            m.remove("runtime");
            m.remove("record_type");
            m.insert("approved_call".into(), Value::Null);
            m.insert("decision_type".into(), "DENY".into());
            m.insert("reason_code".into(), "TOOL_NOT_ALLOWED".into());
        }
        m
    }

    /// Writes a chain of `n` records to `path` without the writer thread.
    fn write_chain(path: &Path, n: u64, small: bool) {
        let mut file = std::io::BufWriter::new(File::create(path).unwrap());
        let (mut prev, mut buf) = (GENESIS.to_owned(), Vec::new());
        for i in 0..n {
            buf.clear();
            let at = "2024-05-01T12:00:00.000200Z";
            prev = encode(realistic(i, small), i, &prev, at, &mut buf);
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
                    let mut chain = Chain {
                        last: None,
                        records: 0,
                    };
                    verify_file(&path, &mut chain, 1)
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
