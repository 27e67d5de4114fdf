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
        let all = leaves(&[path.clone()]);
        let cps = checkpoints(&path);
        // Interval mode signs only after a sync, which these quick appends may not see.
        let least = if sync == SyncMode::Interval { 1 } else { 2 };
        assert!(cps.len() >= least, "{sync:?}: {cps:?}");
        let last = cps.last().unwrap();
        assert_eq!(
            last.size, 10,
            "{sync:?}: the shutdown checkpoint covers everything"
        );
        for cp in &cps {
            assert_eq!(
                cp.root,
                root(&all[..cp.size as usize]),
                "{sync:?} size {}",
                cp.size
            );
            assert_eq!(cp.origin, "ecl-gate/test");
        }
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
        let all = leaves(&[path.clone()]);
        let last = checkpoints(&path).pop().unwrap();
        assert_eq!((last.size, last.root), (13, root(&all)));
    }
}

#[test]
fn the_tree_spans_rolled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let rt = rt();
    let options = FileOptions {
        rotate_bytes: 4096,
        ..FileOptions::default()
    };
    let log =
        AuditLog::open_with(with_checkpoints(&path, SyncMode::Always, 1000), options).unwrap();
    for i in 0..60 {
        append_n(&log, &rt, i, 1);
    }
    drop(log);
    let mut files: Vec<PathBuf> = segment::rolled_segments(&path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(!files.is_empty(), "rotation happened");
    files.push(path.clone());
    let all = leaves(&files);
    assert_eq!(all.len(), 60);
    let last = checkpoints(&path).pop().unwrap();
    assert_eq!((last.size, last.root), (60, root(&all)));
    // And a restart rebuilds it across the segments.
    let log =
        AuditLog::open_with(with_checkpoints(&path, SyncMode::Always, 1000), options).unwrap();
    drop(log);
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
