//! Rotation: rolled segments continue one chain, restart finds its head, a crash at any step
//! of a roll is recoverable, a failed roll loses nothing, and verify sees missing segments.

use super::*;

fn by_size(bytes: u64) -> FileOptions {
    FileOptions {
        rotate_bytes: bytes,
        ..FileOptions::default()
    }
}

/// Appends records `from..from + n` one at a time (one batch each), then closes the log, which
/// waits for a roll in progress.
fn write_rotating(path: &Path, options: FileOptions, from: u64, n: u64) -> Vec<Receipt> {
    let rt = rt();
    let log = AuditLog::open_with(settings(path, SyncMode::Always), options).unwrap();
    let receipts = (from..from + n)
        .map(|i| rt.block_on(log.append(record(i))).unwrap())
        .collect();
    drop(log);
    receipts
}

fn rolled(path: &Path) -> Vec<(u64, PathBuf)> {
    segment::rolled_segments(path).unwrap()
}

fn verify_dir(dir: &Path) -> Verification {
    verify_paths(&[dir.to_owned()]).unwrap()
}

#[test]
fn rolled_segments_continue_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let receipts = write_rotating(&path, by_size(1000), 0, 30);
    let segments = rolled(&path);
    assert!(segments.len() >= 5, "{segments:?}");

    let mut previous_last: Option<Value> = None;
    for (first_seq, file) in &segments {
        assert!(fs::metadata(file).unwrap().len() >= 1000);
        let lines = lines(file);
        let first = line_value(&lines[0]);
        assert_eq!(
            first["seq"],
            Value::from(*first_seq),
            "named by its first seq"
        );
        if let Some(last) = &previous_last {
            assert_eq!(
                first["integrity"]["prev_hash"],
                last["integrity"]["record_hash"]
            );
        }
        previous_last = Some(line_value(lines.last().unwrap()));
    }

    let verification = verify_dir(dir.path());
    assert_eq!(verification.chains.len(), 1);
    let chain = &verification.chains[0];
    assert_eq!(chain.name, path);
    assert_eq!(
        chain.files.last(),
        Some(&path),
        "the active file comes last"
    );
    let report = chain.result.as_ref().unwrap();
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (30, Some(0), Some(29))
    );
    assert_eq!(report.head_hash, receipts[29].record_hash);
}

// The issue's own acceptance case.
#[test]
fn three_rotated_files_verify_as_one_chain_and_a_missing_middle_one_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    // Rolled once 1000 bytes are reached: two segments of 3 records, 2 in the active file.
    write_rotating(&path, by_size(1000), 0, 8);
    let segments = rolled(&path);
    let seqs: Vec<u64> = segments.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [0, 3], "record size changed? adjust rotate_bytes");
    assert_eq!(lines(&path).len(), 2);
    let report = verify_dir(dir.path()).chains.remove(0).result.unwrap();
    assert_eq!((report.files, report.records), (3, 8));

    fs::remove_file(&segments[1].1).unwrap();
    let chain = verify_dir(dir.path()).chains.remove(0);
    let failure = chain.result.unwrap_err();
    assert_eq!(
        (failure.path.as_path(), failure.line, failure.seq),
        (path.as_path(), 1, Some(6))
    );
    assert_eq!(
        failure.reason,
        format!(
            "seq 3 expected after `{}`, file starts at seq 6: a file is missing",
            segments[0].1.display()
        )
    );
}

#[test]
fn files_given_in_any_order_are_verified_in_chain_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    write_rotating(&path, by_size(1000), 0, 10);
    let mut files: Vec<PathBuf> = rolled(&path).into_iter().map(|(_, p)| p).collect();
    files.insert(0, path.clone());
    files.reverse();
    let verification = verify_paths(&files).unwrap();
    assert!(verification.is_ok(), "{verification:?}");
    // verify_files takes the order as given, and says what is wrong with it.
    let failure = verify_files(&files).unwrap_err();
    assert!(
        failure.reason.contains("prev_hash of the first record"),
        "{failure}"
    );
}

#[test]
fn a_renamed_segment_is_reported_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    write_rotating(&path, by_size(1000), 0, 10);
    let (_, second) = rolled(&path).remove(1);
    fs::rename(&second, segment::rolled_path(&path, 5)).unwrap();
    let failure = verify_dir(dir.path()).chains.remove(0).result.unwrap_err();
    assert_eq!(
        failure.reason,
        "the file name says its first record is seq 5, it is seq 3 (renamed or out of order?)"
    );
}

#[test]
fn restart_continues_from_the_newest_rolled_segment_when_the_active_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    // 3 records reach 1000 bytes: the roll after the 3rd leaves the active file empty.
    let receipts = write_rotating(&path, by_size(1000), 0, 3);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(rolled(&path).len(), 1);

    let more = write_rotating(&path, by_size(1000), 3, 2);
    assert_eq!(more[0].seq, 3);
    assert_eq!(more[0].prev_hash, receipts[2].record_hash);
    let report = verify_dir(dir.path()).chains.remove(0).result.unwrap();
    assert_eq!(report.records, 5);
}

#[test]
fn a_tampered_newest_segment_stops_a_start_that_continues_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    write_rotating(&path, by_size(1000), 0, 3);
    let (_, segment) = rolled(&path).remove(0);
    let mut lines = lines(&segment);
    lines[2] = lines[2].replace("ALLOW", "DENY");
    fs::write(&segment, lines.join("\n") + "\n").unwrap();
    for repair_tail in [false, true] {
        let options = FileOptions {
            repair_tail,
            ..by_size(1000)
        };
        let err = AuditLog::open_with(settings(&path, SyncMode::Never), options).unwrap_err();
        assert!(
            matches!(&err, AuditError::Tampered { path: p, seq: Some(2), .. } if *p == segment),
            "{err:?}"
        );
        assert!(err.to_string().contains("never repaired"), "{err}");
    }
}

// A crash after the active file got its rolled name and before the fresh file replaced it
// leaves one file under two names.
#[test]
fn a_roll_interrupted_after_the_link_is_undone_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    write_rotating(&path, FileOptions::default(), 0, 3);
    fs::hard_link(&path, segment::rolled_path(&path, 0)).unwrap();
    fs::write(segment::next_path(&path), "").unwrap();

    let more = write_rotating(&path, FileOptions::default(), 3, 1);
    assert_eq!(more[0].seq, 3);
    assert!(rolled(&path).is_empty());
    assert!(!segment::next_path(&path).exists());
    let chain = verify_dir(dir.path()).chains.remove(0);
    assert_eq!(chain.files, [path]);
    assert_eq!(chain.result.unwrap().records, 4);
}

// Also a regression test: a size-based due time computed as `Instant::now()` made the timer
// loop spin on the CPU without ever retrying the roll.
#[test]
fn a_failed_roll_keeps_writing_to_the_current_file_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    // Something already has the name the first segment needs.
    let obstacle = segment::rolled_path(&path, 0);
    fs::create_dir(&obstacle).unwrap();
    let timers = Timers {
        rotate_retry: Duration::from_millis(50),
        ..QUIET
    };
    let (log, _faults) = open_faulty_with(&path, SyncMode::Always, by_size(1000), timers);
    append_n(&log, &rt, 0, 8);
    // The writer tries the roll right after the batch that crossed the size, before it takes
    // this record: once it is answered, a roll has failed.
    append_n(&log, &rt, 8, 1);
    assert!(!log.is_failing(), "a failed roll refuses no record");
    assert_eq!(lines(&path).len(), 9, "everything went to the active file");
    assert!(rolled(&path).is_empty());

    // Retried on the timer, without waiting for the next record.
    fs::remove_dir(&obstacle).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rolled(&path).is_empty() {
        assert!(std::time::Instant::now() < deadline, "never retried");
        std::thread::sleep(Duration::from_millis(5));
    }
    append_n(&log, &rt, 9, 1);
    drop(log);
    let segments = rolled(&path);
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(lines(&segments[0].1).len(), 9);
    assert_eq!(lines(&path).len(), 1);
    assert_eq!(
        verify_dir(dir.path()).chains[0]
            .result
            .as_ref()
            .unwrap()
            .records,
        10
    );
}

#[test]
fn rotation_by_age_needs_no_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let options = FileOptions {
        rotate_interval: Some(Duration::from_millis(50)),
        ..FileOptions::default()
    };
    let log = AuditLog::open_with(settings(&path, SyncMode::Always), options).unwrap();
    rt.block_on(log.append(record(0))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rolled(&path).is_empty() {
        assert!(std::time::Instant::now() < deadline, "never rolled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // An empty active file is not rolled, however old.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rolled(&path).len(), 1);
    rt.block_on(log.append(record(1))).unwrap();
    drop(log);
    assert_eq!(
        verify_dir(dir.path()).chains[0]
            .result
            .as_ref()
            .unwrap()
            .records,
        2
    );
}

#[test]
fn the_fresh_active_file_is_locked_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let log = AuditLog::open_with(settings(&path, SyncMode::Always), by_size(1000)).unwrap();
    append_n(&log, &rt, 0, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rolled(&path).is_empty() {
        assert!(std::time::Instant::now() < deadline, "never rolled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    drop(log);
}

#[test]
fn verify_paths_groups_chains_and_skips_set_aside_tails() {
    let dir = tempfile::tempdir().unwrap();
    write_rotating(&dir.path().join("a.log"), by_size(1000), 0, 6);
    write_rotating(&dir.path().join("b.log"), FileOptions::default(), 0, 2);
    fs::write(dir.path().join("a.log.tampered-1"), "junk\n").unwrap();
    fs::write(dir.path().join(".hidden"), "junk\n").unwrap();
    let verification = verify_dir(dir.path());
    assert!(verification.is_ok(), "{verification:?}");
    let names: Vec<&Path> = verification
        .chains
        .iter()
        .map(|c| c.name.as_path())
        .collect();
    assert_eq!(names, [dir.path().join("a.log"), dir.path().join("b.log")]);
    assert_eq!(
        verification.set_aside,
        [dir.path().join("a.log.tampered-1")]
    );

    // A directory that cannot be read is an error, not an empty pass.
    let missing = verify_paths(&[dir.path().join("nope")]).unwrap();
    assert!(!missing.is_ok());
}

#[test]
fn an_empty_or_torn_newest_segment_is_corrupt_not_a_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let segment = segment::rolled_path(&path, 0);
    for content in ["", "{\"torn"] {
        fs::write(&segment, content).unwrap();
        let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
        assert!(
            matches!(&err, AuditError::Corrupt { path: p, reason } if *p == segment && reason.contains("empty or its last line is torn")),
            "{err:?}"
        );
    }
    // Nothing was cut from the segment: it is not the gate's to repair.
    assert_eq!(fs::read_to_string(&segment).unwrap(), "{\"torn");
    fs::write(&segment, "").unwrap();
    let failure = verify_dir(dir.path()).chains.remove(0).result.unwrap_err();
    assert_eq!(failure.reason, "the rolled segment is empty");
}

// A segment swapped in from another chain has the right seqs and valid hashes of its own;
// only the link to the previous file gives it away.
#[test]
fn a_segment_from_another_chain_does_not_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("a.log");
    write_rotating(&path, by_size(1000), 0, 8);
    write_rotating(&other, by_size(1000), 100, 8);
    let (seq, theirs) = rolled(&other).remove(1);
    let (_, ours) = rolled(&path).remove(1);
    assert_eq!(seq, 3);
    fs::copy(&theirs, &ours).unwrap();
    let failure = verify_dir(dir.path()).chains.remove(0).result.unwrap_err();
    assert_eq!(
        (failure.path, failure.line, failure.seq),
        (ours, 1, Some(3))
    );
    assert_eq!(
        failure.reason,
        format!(
            "prev_hash does not link to seq 2, the last record of `{}`",
            segment::rolled_path(&path, 0).display()
        )
    );
}
