//! The writer's tree and checkpoints: signed only over durable records, spanning rotation,
//! and a restart refused when the log no longer extends its newest checkpoint.

use super::*;
use crate::checkpoint::{split_notes, verify_checkpoint, NoteSigner};
use crate::merkle::{leaf_hash, root};

/// TEST FIXTURE ONLY: a fixed-seed key.
fn signer() -> Arc<NoteSigner> {
    Arc::new(
        NoteSigner::new(
            "ecl-gate/test",
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        )
        .unwrap(),
    )
}

fn with_checkpoints(path: &Path, sync: SyncMode, every: u64) -> AuditSettings {
    AuditSettings {
        checkpoints: Some(crate::audit::tree::CheckpointSettings {
            origin: "ecl-gate/test".into(),
            signer: signer(),
            every,
            interval: Duration::from_secs(3600),
        }),
        ..settings(path, sync)
    }
}

fn leaves(files: &[PathBuf]) -> Vec<crate::merkle::Hash> {
    files
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| leaf_hash(l.as_bytes()))
        .collect()
}

fn checkpoints(log: &Path) -> Vec<crate::checkpoint::Checkpoint> {
    let text = fs::read_to_string(crate::audit::tree::checkpoints_path(log)).unwrap();
    let (notes, torn) = split_notes(&text);
    assert!(!torn);
    notes
        .iter()
        .map(|n| verify_checkpoint(n, &signer().verifying_key()).unwrap())
        .collect()
}

/// Every checkpoint is of this log and has the root of the tree of its size.
fn assert_each_root_matches(
    cps: &[crate::checkpoint::Checkpoint],
    leaves: &[crate::merkle::Hash],
    sync: SyncMode,
) {
    for cp in cps {
        assert_eq!(cp.origin, "ecl-gate/test");
        assert_eq!(
            cp.root,
            root(&leaves[..cp.size as usize]),
            "{sync:?} size {}",
            cp.size
        );
    }
}

#[test]
fn checkpoints_cover_the_records_and_one_is_signed_at_shutdown() {
    for sync in [SyncMode::Always, SyncMode::Interval, SyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let rt = rt();
        let log = AuditLog::open(with_checkpoints(&path, sync, 4)).unwrap();
        for i in 0..10 {
            append_n(&log, &rt, i, 1);
        }
        drop(log);
        let all = leaves(std::slice::from_ref(&path));
        let cps = checkpoints(&path);
        // Interval mode signs only after a sync, which these quick appends may not see.
        let least = if sync == SyncMode::Interval { 1 } else { 2 };
        assert!(cps.len() >= least, "{sync:?}: {cps:?}");
        let last = cps.last().unwrap();
        assert_eq!(
            last.size, 10,
            "{sync:?}: the shutdown checkpoint covers everything"
        );
        assert_each_root_matches(&cps, &all, sync);
        let sizes: Vec<u64> = cps.iter().map(|c| c.size).collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");

        // A restart continues the tree: the next checkpoint extends the old ones.
        let log = AuditLog::open(with_checkpoints(&path, sync, 4)).unwrap();
        assert!(log
            .latest_checkpoint()
            .unwrap()
            .starts_with("ecl-gate/test\n10\n"));
        append_n(&log, &rt, 10, 3);
        drop(log);
        let all = leaves(std::slice::from_ref(&path));
        let last = checkpoints(&path).pop().unwrap();
        assert_eq!((last.size, last.root), (13, root(&all)));
    }
}

#[test]
fn an_idle_log_is_signed_after_the_interval_whatever_the_sync_mode() {
    // Far fewer records than `checkpoint_every`: only the interval timer can sign them, and
    // under `interval` only once the writer's own sync has made them durable.
    for sync in [SyncMode::Always, SyncMode::Interval, SyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let rt = rt();
        let mut settings = with_checkpoints(&path, sync, 1000);
        if let Some(cp) = &mut settings.checkpoints {
            cp.interval = Duration::from_millis(100);
        }
        let log = AuditLog::open(settings).unwrap();
        append_n(&log, &rt, 0, 3);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let note = loop {
            match log.latest_checkpoint() {
                Some(note) => break note,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                None => panic!("{sync:?}: no checkpoint while the log was idle"),
            }
        };
        assert!(note.starts_with("ecl-gate/test\n3\n"), "{sync:?}: {note}");
        drop(log);
    }
}

#[test]
fn the_tree_spans_rolled_segments() {
    // Under `never` the tree thread syncs the active file itself before signing, so it must
    // follow the writer to each fresh file: checkpoints go on after a roll.
    for sync in [SyncMode::Always, SyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let rt = rt();
        let options = FileOptions {
            rotate_bytes: 4096,
            ..FileOptions::default()
        };
        let log = AuditLog::open_with(with_checkpoints(&path, sync, 7), options).unwrap();
        for i in 0..60 {
            append_n(&log, &rt, i, 1);
        }
        drop(log);
        let mut files: Vec<PathBuf> = segment::rolled_segments(&path)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert!(
            files.len() > 2,
            "{sync:?}: rotation happened more than once"
        );
        files.push(path.clone());
        let all = leaves(&files);
        assert_eq!(all.len(), 60);
        let cps = checkpoints(&path);
        assert!(cps.len() >= 60 / 7, "{sync:?}: {} checkpoints", cps.len());
        assert_each_root_matches(&cps, &all, sync);
        assert_eq!(cps.last().unwrap().size, 60, "{sync:?}");
        // And a restart rebuilds it across the segments.
        let log = AuditLog::open_with(with_checkpoints(&path, sync, 7), options).unwrap();
        drop(log);
        // Without the oldest segment (deleted for retention) there is no tree to rebuild.
        fs::remove_file(&files[0]).unwrap();
        let msg = AuditLog::open_with(with_checkpoints(&path, sync, 7), options)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("not 0: the tree needs every record since seq 0"),
            "{msg}"
        );
    }
}

#[test]
fn a_restart_on_a_log_that_no_longer_extends_its_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let log = AuditLog::open(with_checkpoints(&path, SyncMode::Always, 1000)).unwrap();
    append_n(&log, &rt, 0, 5);
    drop(log);
    let original = fs::read_to_string(&path).unwrap();

    // Truncated: the last whole record is gone (the chain alone still verifies).
    let kept: Vec<&str> = original.lines().take(4).collect();
    fs::write(&path, format!("{}\n", kept.join("\n"))).unwrap();
    let err = AuditLog::open(with_checkpoints(&path, SyncMode::Always, 1000)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("holds 4 records, its newest checkpoint covers 5: truncated"),
        "{msg}"
    );

    // Rewritten, with every hash after the edit recomputed so that the chain alone verifies
    // again: the tree still tells.
    let mut prev = crate::audit::GENESIS.to_owned();
    let mut forged = Vec::new();
    for (seq, line) in original.lines().enumerate() {
        let Value::Object(mut record) = line_value(line) else {
            unreachable!()
        };
        if seq == 2 {
            record.insert("reason_code".into(), "FORGED".into());
        }
        let logged_at = record
            .get("timestamps")
            .and_then(|t| t.get("logged_at"))
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        prev = crate::audit::record::encode(record, seq as u64, &prev, &logged_at, &mut forged);
    }
    fs::write(&path, &forged).unwrap();
    crate::audit::verify_files(std::slice::from_ref(&path)).unwrap();
    let msg = AuditLog::open(with_checkpoints(&path, SyncMode::Always, 1000))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "the log's first 5 records do not have the root of its newest checkpoint: rewritten"
        ),
        "{msg}"
    );

    // A checkpoint signed by another key is not trusted as ours.
    fs::write(&path, &original).unwrap();
    let mut other = with_checkpoints(&path, SyncMode::Always, 1000);
    if let Some(cp) = &mut other.checkpoints {
        cp.signer = Arc::new(
            NoteSigner::new(
                "ecl-gate/test",
                ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
            )
            .unwrap(),
        );
    }
    let msg = AuditLog::open(other).unwrap_err().to_string();
    assert!(
        msg.contains("does not verify with `audit.checkpoint_key`"),
        "{msg}"
    );
    AuditLog::open(with_checkpoints(&path, SyncMode::Always, 1000)).unwrap();
}

// Append throughput with the tree and checkpoints on vs the chain alone, for the report:
// cargo test --release --lib tree_append_throughput -- --ignored --nocapture
// BENCH_RECORDS (records per run under `never`; a fifth of it under `always`), BENCH_ROUNDS
// (runs per side) and BENCH_EVERY (`checkpoint_every`) tune it.
#[test]
#[ignore = "benchmark; run in release mode"]
fn tree_append_throughput() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let records = env("BENCH_RECORDS", 200_000);
    let rounds = env("BENCH_ROUNDS", 5);
    let every = env("BENCH_EVERY", 1000);
    const CONCURRENCY: u64 = 64;
    let rt = rt();
    for sync in [SyncMode::Never, SyncMode::Always] {
        let n = if sync == SyncMode::Always {
            records / 5
        } else {
            records
        };
        let per_task = n / CONCURRENCY;
        let (mut chain, mut tree) = (Vec::new(), Vec::new());
        // Alternated, so drift of a shared machine does not favour one side.
        for round in 0..2 * rounds {
            let with_tree = round % 2 == 1;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bench.log");
            let settings = if with_tree {
                with_checkpoints(&path, sync, every)
            } else {
                settings(&path, sync)
            };
            let log = AuditLog::open(settings).unwrap();
            let start = std::time::Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..CONCURRENCY)
                    .map(|t| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                log.append(gate_shaped_record(t * per_task + i, false))
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            // The last acknowledged record ends the run; the shutdown checkpoint is not in it.
            let rate = (per_task * CONCURRENCY) as f64 / start.elapsed().as_secs_f64();
            drop(log);
            if with_tree {
                tree.push(rate);
            } else {
                chain.push(rate);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (chain, tree) = (median(&mut chain), median(&mut tree));
        println!(
            "sync={sync:?} concurrency={CONCURRENCY} checkpoint_every={every}, median of {rounds} runs: chain only {chain:.0} records/s, tree+checkpoints {tree:.0} records/s ({:+.1}%)",
            (tree / chain - 1.0) * 100.0
        );
    }
}

/// Panics on the first signed checkpoint, as a bug in the tree thread would.
#[derive(Debug)]
struct PanicsOnCheckpoint;

impl AuditObserver for PanicsOnCheckpoint {
    fn batch_committed(&self, _records: usize) {}
    fn synced(&self, _took: Duration) {}
    #[allow(clippy::panic)]
    fn checkpoint_signed(&self, _size: u64) {
        panic!("test: the tree thread dies");
    }
}

/// `/readyz` reads `checkpoints_stopped`: with checkpoints configured, a dead tree thread must
/// not leave the gate looking healthy while nothing is signed any more.
#[test]
fn a_dead_tree_thread_is_reported_and_records_are_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let mut settings = with_checkpoints(&path, SyncMode::Always, 2);
    settings.observer = Some(Arc::new(PanicsOnCheckpoint));
    let log = AuditLog::open(settings).unwrap();
    assert!(!log.health().checkpoints_stopped);
    append_n(&log, &rt, 0, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log.health().checkpoints_stopped {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead tree thread was never reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!log.health().failing, "records are still taken");
    append_n(&log, &rt, 2, 3);
    drop(log);
    assert_eq!(lines(&path).len(), 5);
}
