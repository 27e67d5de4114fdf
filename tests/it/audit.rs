//! The audit log over HTTP: one record per attempt under load, restarts, and failing disks.

use std::collections::BTreeSet;

use ecl_gate::audit::SyncMode;

use crate::common::*;
use crate::execute::assert_verify_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_request_under_concurrency() {
    let gate = std::sync::Arc::new(
        TestGate::start_with(Options {
            sync: SyncMode::Always,
            ..Options::default()
        })
        .await,
    );
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move {
                let to = if i % 3 == 0 {
                    "eve@evil.com"
                } else {
                    "bob@example.com"
                };
                let body = bytes_of(&request(
                    &format!("r-{i}"),
                    "email.send",
                    email_args(to, "hi"),
                ));
                gate.execute(body).await
            })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    let mut allowed = 0;
    for task in tasks {
        let (status, decision) = task.await.unwrap();
        assert_eq!(status, 200);
        if decision["decision_type"].str() == "ALLOW" {
            allowed += 1;
        }
        assert!(
            seqs.insert(decision["audit"]["seq"].as_u64_exact()),
            "seq answered twice"
        );
    }
    assert_eq!(allowed, 666);
    assert_eq!(
        seqs,
        (0..1000).collect::<BTreeSet<u64>>(),
        "seq contiguous from 0"
    );
    let records = gate.records();
    assert_eq!(records.len(), 1000);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record["seq"].as_u64_exact(),
            i as u64,
            "records in seq order"
        );
    }
    assert_verify_ok(&gate.audit_path, 1000);
}

#[tokio::test]
async fn the_chain_continues_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.log");
    let mut last_hash = String::new();
    for run in 0..3u64 {
        let gate = TestGate::start_with(Options {
            audit_path: Some(path.clone()),
            ..Options::default()
        })
        .await;
        let (_, decision) = gate
            .execute(bytes_of(&request(
                &format!("run-{run}"),
                "email.send",
                email_args("bob@example.com", "hi"),
            )))
            .await;
        assert_eq!(decision["audit"]["seq"].as_u64_exact(), run);
        if run > 0 {
            assert_eq!(decision["audit"]["prev_hash"].str(), last_hash);
        }
        last_hash = decision["audit"]["record_hash"].str().to_owned();
        drop(gate);
        // The stopped gate keeps the log locked until its server task has wound down.
        wait_until_unlocked(&path).await;
    }
    assert_verify_ok(&path, 3);
}

async fn wait_until_unlocked(path: &std::path::Path) {
    for _ in 0..500 {
        if std::fs::File::open(path).unwrap().try_lock().is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("`{}` is still locked", path.display());
}

#[tokio::test]
async fn a_full_disk_denies_everything_and_the_gate_keeps_serving() {
    let gate = TestGate::start_with(Options {
        audit_path: Some("/dev/full".into()),
        sync: SyncMode::Always,
        ..Options::default()
    })
    .await;
    for i in 0..5 {
        let allowed_otherwise = bytes_of(&request(
            &format!("r-{i}"),
            "email.send",
            email_args("bob@example.com", "hi"),
        ));
        let (status, decision) = gate.execute(allowed_otherwise).await;
        assert_eq!(status, 503);
        assert_eq!(decision["decision_type"].str(), "DENY");
        assert_eq!(decision["reason_code"].str(), "AUDIT_WRITE_FAILED");
        assert!(decision["approved_call"].is_null());
        assert!(decision["audit"].is_null());
        // The decision's identity survives: it is the same attempt, only unrecorded.
        assert!(decision["provenance_id"].str().starts_with("prov_"));
    }
    let (status, decision) = gate.execute(bytes::Bytes::from_static(b"garbage")).await;
    assert_eq!(
        (status, decision["reason_code"].str()),
        (503, "AUDIT_WRITE_FAILED")
    );
}
