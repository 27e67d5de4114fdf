//! Start-up against a tail that does not verify: refusal by default, `repair_tail` moving the
//! bad tail aside, and the lock that keeps a second writer out.

use super::*;

fn repairing() -> FileOptions {
    FileOptions {
        repair_tail: true,
        ..FileOptions::default()
    }
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| segment::is_set_aside(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    found.sort();
    found
}

/// A log of `n` records; returns its lines.
fn log_of(path: &Path, n: u64) -> Vec<String> {
    let rt = rt();
    let log = AuditLog::open(settings(path, SyncMode::Never)).unwrap();
    for i in 0..n {
        rt.block_on(log.append(record(i))).unwrap();
    }
    drop(log);
    lines(path)
}

#[test]
fn a_tampered_tail_is_refused_and_repair_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let mut lines = log_of(&path, 5);
    let head = line_value(&lines[3])["integrity"]["record_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    lines[4] = lines[4].replace("ALLOW", "DENY");
    write_lines(&path, &lines);
    let before = fs::read(&path).unwrap();

    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("a.log") && msg.contains("seq 4") && msg.contains("does not match"),
        "{msg}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "a refused start changes nothing"
    );
    assert!(set_aside_files(dir.path()).is_empty());

    let rt = rt();
    let log = AuditLog::open_with(settings(&path, SyncMode::Never), repairing()).unwrap();
    let aside = set_aside_files(dir.path());
    assert_eq!(aside.len(), 1);
    assert_eq!(
        fs::read_to_string(&aside[0]).unwrap(),
        format!("{}\n", lines[4])
    );
    let next = rt.block_on(log.append(record(5))).unwrap();
    drop(log);
    assert_eq!((next.seq, next.prev_hash.as_str()), (4, head.as_str()));
    assert_eq!(verify_files(&[path]).unwrap().records, 5);
}

#[test]
fn repair_moves_every_bad_line_behind_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let mut lines = log_of(&path, 3);
    lines.push("garbage".into());
    lines.push("{}".into());
    write_lines(&path, &lines);

    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: None, ref reason, .. } if reason.contains("seq is missing")),
        "{err:?}"
    );
    let rt = rt();
    let log = AuditLog::open_with(settings(&path, SyncMode::Never), repairing()).unwrap();
    assert_eq!(rt.block_on(log.append(record(3))).unwrap().seq, 3);
    drop(log);
    let aside = set_aside_files(dir.path());
    assert_eq!(fs::read_to_string(&aside[0]).unwrap(), "garbage\n{}\n");
    assert_eq!(verify_files(&[path]).unwrap().records, 4);
}

// A last record with a valid hash of its own that does not continue the chain (spliced in
// from another log) is as much a break as a bad hash.
#[test]
fn a_last_record_that_does_not_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let other = dir.path().join("other.log");
    let mut lines = log_of(&path, 5);
    lines[4] = self::log_of(&other, 5)[4].clone();
    fs::remove_file(&other).unwrap();
    write_lines(&path, &lines);
    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: Some(4), ref reason, .. } if reason == "prev_hash does not link to seq 3"),
        "{err:?}"
    );
    let log = AuditLog::open_with(settings(&path, SyncMode::Never), repairing()).unwrap();
    drop(log);
    assert_eq!(verify_files(&[path]).unwrap().records, 4);
}

#[test]
fn a_seq_gap_at_the_tail_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let mut lines = log_of(&path, 5);
    lines.remove(3);
    write_lines(&path, &lines);
    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: Some(4), ref reason, .. } if reason == "seq 4 follows seq 2"),
        "{err:?}"
    );
}

#[test]
fn a_first_record_that_does_not_start_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let lines = log_of(&path, 3);
    write_lines(&path, &lines[2..]);
    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(
        matches!(err, AuditError::Tampered { seq: Some(2), ref reason, .. } if reason == "the first record has seq 2, expected 0"),
        "{err:?}"
    );
    // Nothing in the file verifies, so repair moves all of it and the chain starts afresh.
    let rt = rt();
    let log = AuditLog::open_with(settings(&path, SyncMode::Never), repairing()).unwrap();
    let first = rt.block_on(log.append(record(0))).unwrap();
    drop(log);
    assert_eq!((first.seq, first.prev_hash.as_str()), (0, GENESIS));
    assert_eq!(
        fs::read_to_string(&set_aside_files(dir.path())[0]).unwrap(),
        format!("{}\n", lines[2])
    );
}

#[test]
fn repair_never_overwrites_an_earlier_set_aside_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    for round in 0..3 {
        let mut lines = log_of(&path, 2);
        let last = lines.len() - 1;
        lines[last] = lines[last].replace("ALLOW", &format!("X{round}"));
        write_lines(&path, &lines);
        drop(AuditLog::open_with(settings(&path, SyncMode::Never), repairing()).unwrap());
    }
    let aside = set_aside_files(dir.path());
    assert_eq!(aside.len(), 3, "{aside:?}");
    let all: String = aside
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    for round in 0..3 {
        assert!(all.contains(&format!("X{round}")));
    }
}

#[test]
fn a_second_writer_is_refused_by_the_lock_before_it_touches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let first = AuditLog::open(settings(&path, SyncMode::Never)).unwrap();
    rt.block_on(first.append(record(0))).unwrap();
    // Half a line, as if the first writer were in the middle of a write.
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"half")
        .unwrap();
    let before = fs::read(&path).unwrap();

    let err = AuditLog::open(settings(&path, SyncMode::Never)).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("a.log") && msg.contains("in use by another process"),
        "{msg}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the live writer's tail was left alone"
    );

    drop(first);
    let second = AuditLog::open(settings(&path, SyncMode::Never)).unwrap();
    assert_eq!(rt.block_on(second.append(record(1))).unwrap().seq, 1);
}
