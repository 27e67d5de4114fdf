//! The writer against a sink that misbehaves as disks do: short writes, writes of nothing,
//! interrupted writes, and the readiness flag through failure and recovery.

use super::*;

#[test]
fn short_writes_are_continued_into_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Always);
    faults.lock().unwrap().max_write = Some(7);
    let receipts = append_n(&log, &rt, 0, 20);
    drop(log);
    assert!(
        faults.lock().unwrap().writes > 20 * 50,
        "each record took many short writes"
    );
    assert_eq!(receipts.len(), 20);
    assert_whole_records(&path);
    assert_eq!(verify_files(&[path]).unwrap().records, 20);
}

#[test]
fn interrupted_writes_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Always);
    faults.lock().unwrap().interrupted_writes = 3;
    let r = rt.block_on(log.append(record(0))).unwrap();
    drop(log);
    assert_eq!(r.seq, 0);
    assert_eq!(verify_files(&[path]).unwrap().records, 1);
}

// A write(2) that returns 0 would loop forever if taken as progress; it refuses the batch.
#[test]
fn a_write_of_nothing_refuses_the_batch_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Never);
    append_n(&log, &rt, 0, 2);
    {
        let mut f = faults.lock().unwrap();
        // The batch gets 100 bytes in, then the disk takes nothing more.
        f.max_write = Some(100);
        f.zero_write_at = Some(f.writes + 2);
    }
    let refused = rt.block_on(log.append(record(2)));
    match refused {
        Err(AuditError::Write(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
        other => panic!("expected a refused write, got {other:?}"),
    }
    assert_chain_goes_on(log, &rt, &path, 2);
}

#[test]
fn failing_is_set_by_a_refused_batch_and_cleared_by_the_next_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let (log, faults) = open_faulty(&path, SyncMode::Always);
    assert!(!log.is_failing());
    assert_eq!(
        log.health(),
        AuditHealth {
            failing: false,
            failures: 0,
            last_error: None,
            checkpoints_stopped: false
        }
    );
    faults.lock().unwrap().fail_syncs = 1;
    assert!(rt.block_on(log.append(record(0))).is_err());
    assert!(log.is_failing());
    let health = log.health();
    assert!(health.failing);
    assert_eq!(health.failures, 1);
    assert_eq!(
        health.last_error.as_deref(),
        Some("injected fdatasync failure")
    );

    rt.block_on(log.append(record(1))).unwrap();
    assert!(!log.is_failing());
    // The error stays for diagnosis after recovery.
    assert_eq!(log.health().failures, 1);
    assert!(log.health().last_error.is_some());
}

// Readiness that waits for a successful batch would never see one once the load balancer has
// stopped sending traffic; the probe ends the failing state on its own.
#[test]
fn a_failing_log_recovers_without_traffic_once_the_disk_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let timers = Timers {
        probe: Duration::from_millis(20),
        ..QUIET
    };
    let (log, faults) = open_faulty_with(&path, SyncMode::Always, FileOptions::default(), timers);
    append_n(&log, &rt, 0, 2);
    // The batch and the next probes fail.
    faults.lock().unwrap().fail_syncs = 4;
    assert!(rt.block_on(log.append(record(2))).is_err());
    assert!(log.is_failing());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.is_failing() {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never ended the failing state"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    {
        let f = faults.lock().unwrap();
        assert_eq!(f.fail_syncs, 0, "every failing probe was tried");
        assert!(f.writes >= 5, "the probes wrote: {} writes", f.writes);
    }
    // The probe left nothing behind: the file is the two good records, and the chain goes on.
    assert_chain_goes_on(log, &rt, &path, 2);
}

#[test]
fn a_probe_that_cannot_cut_its_bytes_keeps_the_log_failing_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let timers = Timers {
        probe: Duration::from_millis(20),
        ..QUIET
    };
    let (log, faults) = open_faulty_with(&path, SyncMode::Never, FileOptions::default(), timers);
    append_n(&log, &rt, 0, 1);
    {
        let mut f = faults.lock().unwrap();
        f.fail_writes = 1;
        // The batch's cut-back and the first probes' cuts fail.
        f.fail_set_len = 3;
    }
    assert!(rt.block_on(log.append(record(1))).is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.is_failing() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(faults.lock().unwrap().fail_set_len, 0);
    assert_whole_records(&path);
    assert_eq!(lines(&path).len(), 1);
    drop(log);
}

#[test]
fn dev_full_reports_failing_and_no_probe_writes_to_a_device() {
    let rt = rt();
    let log = AuditLog::open(settings(Path::new("/dev/full"), SyncMode::Always)).unwrap();
    assert!(!log.is_failing());
    assert!(rt.block_on(log.append(record(0))).is_err());
    assert!(log.is_failing());
    assert!(log.health().last_error.unwrap().contains("No space left"));
}
