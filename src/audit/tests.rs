//! Tests of the audit log as the gate uses it: open, append, restart, failures, verify.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::writer::Sink;
use super::*;
use crate::canonical::{parse, Value};

mod faults;
mod repair;
mod rotation;
mod tree;

pub(super) fn settings(path: &Path, sync: SyncMode) -> AuditSettings {
    AuditSettings {
        path: path.to_owned(),
        sync,
        sync_interval: Duration::from_millis(50),
        queue_capacity: 1024,
        observer: None,
        checkpoints: None,
    }
}

pub(super) fn record(i: u64) -> Map {
    let Value::Object(m) = Value::object([
        ("request_id", format!("req-{i}").into()),
        ("decision_type", "ALLOW".into()),
        ("reason_code", "OK".into()),
        (
            "timestamps",
            Value::object([("received_at", "2024-01-01T00:00:00Z".into())]),
        ),
    ]) else {
        unreachable!()
    };
    m
}

/// A decision record shaped like the gate's: ~900 bytes once chained (four 71-byte hashes),
/// ~600 when `small` (a DENY without `approved_call`, `runtime`, `record_type`).
pub(super) fn gate_shaped_record(i: u64, small: bool) -> Map {
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

/// After a refused batch or a failed probe: the file holds the `good` records acknowledged
/// before, whole and nothing else, and the chain goes on from there.
pub(super) fn assert_chain_goes_on(
    log: AuditLog,
    rt: &tokio::runtime::Runtime,
    path: &Path,
    good: u64,
) {
    assert_whole_records(path);
    assert_eq!(lines(path).len() as u64, good);
    let next = rt.block_on(log.append(record(good + 1))).unwrap();
    assert_eq!(next.seq, good);
    drop(log);
    assert_eq!(verify_files(&[path.to_owned()]).unwrap().records, good + 1);
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn line_value(line: &str) -> Value {
    parse(line.as_bytes()).unwrap()
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

pub(super) fn append_n(
    log: &AuditLog,
    rt: &tokio::runtime::Runtime,
    from: u64,
    n: u64,
) -> Vec<Receipt> {
    rt.block_on(async {
        let tasks: Vec<_> = (from..from + n)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(record(i)).await })
            })
            .collect();
        let mut receipts = Vec::new();
        for t in tasks {
            receipts.push(t.await.unwrap().unwrap());
        }
        receipts
    })
}

fn check_receipts_match_lines(path: &Path, receipts: &[Receipt]) {
    let lines = lines(path);
    for r in receipts {
        let v = line_value(&lines[usize::try_from(r.seq).unwrap()]);
        assert_eq!(v.get("seq"), Some(&Value::from(r.seq)));
        let integrity = v.get("integrity").unwrap();
        assert_eq!(
            integrity.get("prev_hash").unwrap().as_str(),
            Some(r.prev_hash.as_str())
        );
        assert_eq!(
            integrity.get("record_hash").unwrap().as_str(),
            Some(r.record_hash.as_str())
        );
    }
}

#[test]
fn concurrent_appends_form_one_contiguous_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecl_audit_1.log");
    let rt = rt();
    let log = AuditLog::open(settings(&path, SyncMode::Always)).unwrap();
    assert_eq!(log.stream(), "ecl_audit_1.log");
    assert!(!log.is_disabled());
    let receipts = append_n(&log, &rt, 0, 1000);
    drop(log);

    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    assert!(receipts.iter().all(|r| &*r.stream == "ecl_audit_1.log"));
    assert_eq!(lines(&path).len(), 1000);
    check_receipts_match_lines(&path, &receipts);
    let report = verify_files(std::slice::from_ref(&path)).unwrap();
    assert_eq!(
        (report.files, report.records, report.last_seq),
        (1, 1000, Some(999))
    );
    let last = receipts.iter().find(|r| r.seq == 999).unwrap();
    assert_eq!(report.head_hash, last.record_hash);
}

#[test]
fn writer_sets_seq_logged_at_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let log = AuditLog::open(settings(&path, SyncMode::Never)).unwrap();
    let mut without_timestamps = record(1);
    without_timestamps.remove("timestamps");
    without_timestamps.insert("seq".into(), 99u64.into());
    rt.block_on(log.append(record(0))).unwrap();
    rt.block_on(log.append(without_timestamps)).unwrap();
    drop(log);

    let lines = lines(&path);
    let first = line_value(&lines[0]);
    assert_eq!(first.get("request_id").unwrap().as_str(), Some("req-0"));
    assert_eq!(
        first
            .get("integrity")
            .unwrap()
            .get("prev_hash")
            .unwrap()
            .as_str(),
        Some(GENESIS)
    );
    let ts = first.get("timestamps").unwrap();
    assert_eq!(
        ts.get("received_at").unwrap().as_str(),
        Some("2024-01-01T00:00:00Z")
    );
    let logged_at = ts.get("logged_at").unwrap().as_str().unwrap();
    // e.g. 2024-05-01T12:34:56.123456Z
    assert_eq!(
        (logged_at.len(), logged_at.ends_with('Z')),
        (27, true),
        "{logged_at}"
    );
    let second = line_value(&lines[1]);
    assert_eq!(second.get("seq"), Some(&Value::from(1u64)));
    assert!(second.get("timestamps").unwrap().get("logged_at").is_some());
}

#[test]
fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let first = append_n(
        &AuditLog::open(settings(&path, SyncMode::Interval)).unwrap(),
        &rt,
        0,
        10,
    );
    let head = first
        .iter()
        .find(|r| r.seq == 9)
        .unwrap()
        .record_hash
        .clone();

    let log = AuditLog::open(settings(&path, SyncMode::Interval)).unwrap();
    let r = rt.block_on(log.append(record(10))).unwrap();
    drop(log);
    assert_eq!((r.seq, r.prev_hash.as_str()), (10, head.as_str()));
    let report = verify_files(&[path]).unwrap();
    assert_eq!((report.records, report.last_seq), (11, Some(10)));
}

#[test]
fn torn_tail_is_cut_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    append_n(
        &AuditLog::open(settings(&path, SyncMode::Never)).unwrap(),
        &rt,
        0,
        5,
    );
    let good_len = fs::metadata(&path).unwrap().len();
    let torn = b"{\"approved_call\":null,\"decision_type\":\"AL";
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    assert!(verify_files(std::slice::from_ref(&path))
        .unwrap_err()
        .reason
        .contains("torn last line"));

    let log = AuditLog::open(settings(&path, SyncMode::Never)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    let r = rt.block_on(log.append(record(5))).unwrap();
    drop(log);
    assert_eq!(r.seq, 5);
    assert_eq!(verify_files(&[path]).unwrap().records, 6);
}

#[test]
fn tampered_last_record_stops_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    append_n(
        &AuditLog::open(settings(&path, SyncMode::Never)).unwrap(),
        &rt,
        0,
        3,
    );
    let text = fs::read_to_string(&path).unwrap();
    let cut = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    let tampered = format!("{}{}", &text[..cut], text[cut..].replace("ALLOW", "DENY"));
    fs::write(&path, tampered).unwrap();

    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: Some(2), .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("a.log") && msg.contains("seq 2"), "{msg}");
    // Nothing was cut or appended.
    assert!(fs::read_to_string(&path).unwrap().contains("DENY"));
}

#[test]
fn non_canonical_last_record_stops_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    append_n(
        &AuditLog::open(settings(&path, SyncMode::Never)).unwrap(),
        &rt,
        0,
        2,
    );
    let text = fs::read_to_string(&path).unwrap();
    let cut = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    fs::write(
        &path,
        format!("{}{}", &text[..cut], text[cut..].replacen(':', ": ", 1)),
    )
    .unwrap();
    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: Some(1), ref reason, .. } if reason.contains("canonical")),
        "{err:?}"
    );
}

#[test]
fn tampered_middle_record_fails_verify_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    append_n(
        &AuditLog::open(settings(&path, SyncMode::Never)).unwrap(),
        &rt,
        0,
        10,
    );
    let mut lines = lines(&path);
    lines[4] = lines[4].replace("ALLOW", "DENY");
    fs::write(&path, lines.join("\n") + "\n").unwrap();

    let failure = verify_files(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!((failure.line, failure.seq), (5, Some(4)));
    assert_eq!(failure.reason, "record_hash does not match its content");
    let shown = failure.to_string();
    assert!(
        shown.contains("a.log") && shown.contains("line 5") && shown.contains("seq 4"),
        "{shown}"
    );
    // The last record is intact, so the gate itself still starts.
    assert!(AuditLog::open(settings(&path, SyncMode::Never)).is_ok());
}

#[test]
fn dev_full_refuses_every_append_and_the_writer_survives() {
    let rt = rt();
    let log = AuditLog::open(settings(Path::new("/dev/full"), SyncMode::Always)).unwrap();
    assert_eq!(log.stream(), "full");
    for i in 0..3 {
        let answer = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), log.append(record(i))).await
            })
            .expect("append must answer, not hang");
        assert!(matches!(answer, Err(AuditError::Write(_))), "{answer:?}");
    }
}

#[test]
fn dev_null_disables_persistence_but_still_chains() {
    let rt = rt();
    let log = AuditLog::open(settings(Path::new("/dev/null"), SyncMode::Always)).unwrap();
    assert!(log.is_disabled());
    let a = rt.block_on(log.append(record(0))).unwrap();
    let b = rt.block_on(log.append(record(1))).unwrap();
    assert_eq!((a.seq, b.seq), (0, 1));
    assert_eq!(b.prev_hash, a.record_hash);
}

#[test]
fn open_names_the_path_when_it_fails() {
    let err = AuditLog::open(settings(
        Path::new("/nonexistent-dir/x.log"),
        SyncMode::Never,
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string().split(':').next(),
        Some("cannot open audit log `/nonexistent-dir/x.log`")
    );
}

#[test]
fn new_file_gets_mode_0640() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    drop(AuditLog::open(settings(&path, SyncMode::Never)).unwrap());
    // The umask may only remove bits.
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "{mode:o}");
}

#[test]
fn expand_path_fills_pid_and_hostname() {
    assert_eq!(
        expand_path("/var/log/ecl_{hostname}_{pid}.log", 42, "pod-7.ns"),
        PathBuf::from("/var/log/ecl_pod-7.ns_42.log")
    );
    // A host name can never add a directory.
    assert_eq!(
        expand_path("{hostname}.log", 1, "../x"),
        PathBuf::from(".._x.log")
    );
}

// ---- fault injection through the sink ----

#[derive(Default)]
pub(super) struct Faults {
    /// The next n batches: half is written, then the write fails.
    pub fail_writes: usize,
    /// Set while a failing write has written its half.
    half_written: bool,
    /// Each write(2) takes at most this many bytes (short writes).
    pub max_write: Option<usize>,
    /// The write(2) call with this number (counted in `writes`) writes nothing and returns 0.
    pub zero_write_at: Option<usize>,
    /// The next n write(2) calls are interrupted (EINTR) before writing anything.
    pub interrupted_writes: usize,
    /// The next n fdatasyncs fail.
    pub fail_syncs: usize,
    /// The next n truncations fail.
    pub fail_set_len: usize,
    pub sync_delay: Duration,
    /// write(2) calls.
    pub writes: usize,
    pub syncs: usize,
    /// Complete lines in the file at the last successful fdatasync.
    pub synced_lines: usize,
}

pub(super) struct FaultySink {
    file: File,
    path: PathBuf,
    faults: Arc<Mutex<Faults>>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl Sink for FaultySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.faults.lock().unwrap();
        f.writes += 1;
        if f.fail_writes > 0 {
            if f.half_written {
                f.fail_writes -= 1;
                f.half_written = false;
                return Err(injected("write"));
            }
            f.half_written = true;
            return Write::write(&mut self.file, &buf[..buf.len().div_ceil(2)]);
        }
        if f.zero_write_at == Some(f.writes) {
            return Ok(0);
        }
        if f.interrupted_writes > 0 {
            f.interrupted_writes -= 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = f.max_write.map_or(buf.len(), |m| m.min(buf.len()));
        Write::write(&mut self.file, &buf[..n])
    }

    fn sync(&mut self) -> io::Result<()> {
        let delay = {
            let mut f = self.faults.lock().unwrap();
            f.syncs += 1;
            f.sync_delay
        };
        std::thread::sleep(delay);
        let mut f = self.faults.lock().unwrap();
        if f.fail_syncs > 0 {
            f.fail_syncs -= 1;
            return Err(injected("fdatasync"));
        }
        self.file.sync_data()?;
        f.synced_lines = fs::read(&self.path)
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        if f.fail_set_len > 0 {
            f.fail_set_len -= 1;
            return Err(injected("truncate"));
        }
        self.file.set_len(len)
    }
}

/// Timers that never fire during a test: nothing happens behind the test's back.
pub(super) const QUIET: Timers = Timers {
    probe: Duration::from_secs(3600),
    rotate_retry: Duration::from_secs(3600),
};

pub(super) fn open_faulty_with(
    path: &Path,
    sync: SyncMode,
    options: FileOptions,
    timers: Timers,
) -> (AuditLog, Arc<Mutex<Faults>>) {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let shared = faults.clone();
    let owned = path.to_owned();
    let log = AuditLog::open_sink(
        settings(path, sync),
        options,
        Box::new(move |file| FaultySink {
            file,
            path: owned.clone(),
            faults: shared.clone(),
        }),
        timers,
    )
    .unwrap();
    (log, faults)
}

fn open_faulty(path: &Path, sync: SyncMode) -> (AuditLog, Arc<Mutex<Faults>>) {
    open_faulty_with(path, sync, FileOptions::default(), QUIET)
}

pub(super) fn assert_whole_records(path: &Path) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "half a record left behind"
    );
    verify_files(&[path.to_owned()]).unwrap();
}

#[test]
fn failed_write_leaves_no_partial_record_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Never);
    let before = append_n(&log, &rt, 0, 3);
    faults.lock().unwrap().fail_writes = 1;
    let refused = rt.block_on(log.append(record(3)));
    assert!(matches!(refused, Err(AuditError::Write(_))), "{refused:?}");
    assert_whole_records(&path);
    assert_eq!(lines(&path).len(), 3);

    let next = rt.block_on(log.append(record(4))).unwrap();
    let head = &before.iter().find(|r| r.seq == 2).unwrap().record_hash;
    assert_eq!((next.seq, &next.prev_hash), (3, head));
    drop(log);
    assert_whole_records(&path);
    assert_eq!(verify_files(&[path]).unwrap().records, 4);
}

#[test]
fn failed_fdatasync_refuses_the_batch_and_cuts_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Always);
    append_n(&log, &rt, 0, 2);
    faults.lock().unwrap().fail_syncs = 1;
    assert!(matches!(
        rt.block_on(log.append(record(2))),
        Err(AuditError::Write(_))
    ));
    // The whole batch was written, then cut off again: the sync failed, so it is not durable.
    assert_chain_goes_on(log, &rt, &path, 2);
}

#[test]
fn a_refused_batch_that_cannot_be_cut_blocks_writes_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Never);
    append_n(&log, &rt, 0, 1);
    {
        let mut f = faults.lock().unwrap();
        f.fail_writes = 1;
        f.fail_set_len = 2; // the cut-back and the retry before the next batch
    }
    assert!(rt.block_on(log.append(record(1))).is_err());
    // Half a record is still there; writing behind it would corrupt the chain.
    assert!(rt.block_on(log.append(record(2))).is_err());
    let ok = rt.block_on(log.append(record(3))).unwrap();
    assert_eq!(ok.seq, 1);
    drop(log);
    assert_whole_records(&path);
    assert_eq!(verify_files(&[path]).unwrap().records, 2);
}

#[test]
fn always_mode_answers_only_after_the_batch_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Always);
    faults.lock().unwrap().sync_delay = Duration::from_millis(5);
    rt.block_on(async {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let (log, faults) = (log.clone(), faults.clone());
                tokio::spawn(async move {
                    let r = log.append(record(i)).await.unwrap();
                    let synced = faults.lock().unwrap().synced_lines;
                    assert!(
                        synced > usize::try_from(r.seq).unwrap(),
                        "seq {} answered before its sync",
                        r.seq
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(log);
    let f = faults.lock().unwrap();
    assert_eq!(f.syncs, f.writes, "one write and one fdatasync per batch");
    assert!(
        f.writes < 500,
        "records were not grouped: {} batches",
        f.writes
    );
}

#[test]
fn interval_mode_syncs_when_idle_and_not_more_often() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Interval);
    rt.block_on(log.append(record(0))).unwrap();
    // Normally 0: the write came less than an interval after open (1 on a stalled machine).
    let inline = faults.lock().unwrap().syncs;
    std::thread::sleep(Duration::from_millis(200));
    assert!(inline <= 1);
    // When `inline` is 0, this sync is the idle one: nothing else could have triggered it.
    assert_eq!(
        faults.lock().unwrap().syncs,
        1,
        "idle data must be synced within the interval, once"
    );
    assert_eq!(faults.lock().unwrap().synced_lines, 1);

    // A burst over ~150 ms: at most one sync per 50 ms interval.
    let start = std::time::Instant::now();
    for i in 0..30 {
        rt.block_on(log.append(record(i))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(120));
    let elapsed = start.elapsed().as_millis();
    let syncs = faults.lock().unwrap().syncs - 1;
    assert!(
        syncs >= 2 && u128::try_from(syncs).unwrap() <= elapsed / 50 + 1,
        "{syncs} syncs in {elapsed} ms"
    );
    assert_eq!(
        faults.lock().unwrap().synced_lines,
        31,
        "everything synced once idle"
    );
}

// ---- verify_files ----

/// A file of `n` records whose request ids start at `from`.
fn chain_file(dir: &Path, name: &str, from: u64, n: u64) -> PathBuf {
    let path = dir.join(name);
    let rt = rt();
    let log = AuditLog::open(settings(&path, SyncMode::Never)).unwrap();
    // One at a time, so line order is request order.
    for i in from..from + n {
        rt.block_on(log.append(record(i))).unwrap();
    }
    path
}

#[test]
fn verify_follows_a_rotated_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let whole = chain_file(dir.path(), "whole.log", 0, 10);
    let lines = lines(&whole);
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    fs::write(&a, lines[..6].join("\n") + "\n").unwrap();
    fs::write(&b, lines[6..].join("\n") + "\n").unwrap();

    let report = verify_files(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(
        (report.files, report.records, report.last_seq),
        (2, 10, Some(9))
    );
    assert_eq!(
        report.head_hash,
        verify_files(std::slice::from_ref(&whole))
            .unwrap()
            .head_hash
    );

    // The second part alone does not start at GENESIS.
    let f = verify_files(std::slice::from_ref(&b)).unwrap_err();
    assert_eq!((f.line, f.seq), (1, Some(6)));
    // Out of order: b does not continue `whole`'s last record.
    let f = verify_files(&[whole.clone(), b]).unwrap_err();
    assert_eq!(
        f.reason,
        format!(
            "seq 10 expected after `{}`, file starts at seq 6: files overlap or are out of order",
            whole.display()
        )
    );
    // One chain does not start again at GENESIS.
    let other = chain_file(dir.path(), "other.log", 100, 3);
    let f = verify_files(&[a, other]).unwrap_err();
    assert!(
        f.reason
            .starts_with("the chain starts again at `sha256:GENESIS` after seq 5 of `"),
        "{f}"
    );
}

#[test]
fn verify_reports_gaps_broken_links_and_torn_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = chain_file(dir.path(), "a.log", 0, 8);
    let lines = lines(&path);
    let write = |ls: &[String], tail: &str| {
        let p = dir.path().join("t.log");
        fs::write(&p, ls.join("\n") + tail).unwrap();
        verify_files(&[p]).unwrap_err()
    };

    let mut gap = lines.clone();
    gap.remove(6);
    let f = write(&gap, "\n");
    assert_eq!(
        (f.line, f.seq, f.reason.as_str()),
        (7, Some(7), "seq 7 follows seq 5")
    );

    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let f = write(&swapped, "\n");
    assert_eq!((f.line, f.reason.as_str()), (3, "seq 3 follows seq 1"));

    let f = write(&lines, "");
    assert_eq!(
        (f.line, f.reason.as_str()),
        (8, "torn last line (no newline)")
    );

    let mut spaced = lines.clone();
    spaced[1] = spaced[1].replacen(',', ", ", 1);
    assert_eq!(write(&spaced, "\n").reason, "line is not canonical JSON");

    // Relinking a record to the wrong predecessor with a valid hash of its own.
    let other = chain_file(dir.path(), "b.log", 100, 8);
    let mut mixed = lines.clone();
    mixed[4] = self::lines(&other)[4].clone();
    let f = write(&mixed, "\n");
    assert_eq!(
        (f.seq, f.reason.as_str()),
        (Some(4), "prev_hash does not link to seq 3")
    );

    let mut blank = lines;
    blank.insert(2, String::new());
    assert!(write(&blank, "\n")
        .reason
        .starts_with("line is not valid JSON"));
}

#[test]
fn verify_of_nothing_is_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("e.log");
    fs::write(&empty, "").unwrap();
    let report = verify_files(&[empty]).unwrap();
    assert_eq!(
        (report.records, report.last_seq, report.head_hash.as_str()),
        (0, None, GENESIS)
    );
    let missing = verify_files(&[dir.path().join("missing.log")]).unwrap_err();
    assert_eq!(missing.line, 0);
    assert!(missing.reason.starts_with("cannot open"));
}

// Group-commit figure for the report, on the real file and fdatasync:
// cargo test --release --lib group_commit_throughput -- --ignored --nocapture
#[test]
#[ignore = "benchmark; run in release mode"]
fn group_commit_throughput() {
    const N: u64 = 20_000;
    let rt = rt();
    for concurrency in [1u64, 64, 512] {
        for sync in [SyncMode::Always, SyncMode::Interval, SyncMode::Never] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bench.log");
            let log = AuditLog::open(settings(&path, sync)).unwrap();
            // Fewer records for one-at-a-time fdatasync: each costs a disk flush.
            let n = if concurrency == 1 && sync == SyncMode::Always {
                N / 10
            } else {
                N
            };
            let start = std::time::Instant::now();
            rt.block_on(async {
                let per_task = n / concurrency;
                let tasks: Vec<_> = (0..concurrency)
                    .map(|t| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                log.append(record(t * per_task + i)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let secs = start.elapsed().as_secs_f64();
            drop(log);
            let records = verify_files(&[path]).unwrap().records;
            println!(
                "sync={sync:?} concurrency={concurrency}: {records} records in {secs:.3} s: {:.0} records/s",
                records as f64 / secs
            );
        }
    }
}
