//! Issue 9 end to end with the real binary: the gate signs checkpoints while serving; an
//! auditor with only the public key proves a record's inclusion, checks consistency, and
//! detects truncation, an edited record and swapped records, each named.

use std::path::{Path, PathBuf};
use std::process::Command;

use ecl_gate::canonical;

use crate::cli::{get, post, spawn_serve_with_admin};
use crate::common::*;

fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = gate_command().args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], dir: &Path) -> String {
    let (code, out, err) = run(args, dir);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

fn fails(args: &[&str], dir: &Path) -> String {
    let (code, out, err) = run(args, dir);
    assert_eq!(code, 1, "{args:?} should fail: {out}{err}");
    err
}

/// Runs a gate that signs every 3 records (with `more` settings), sends `n` decisions, pins the
/// checkpoint after the first 3, stops it; returns the log, and the pinned checkpoint's file.
fn serve_and_stop(dir: &Path, n: usize, more: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    // TEST FIXTURE ONLY: a key made for this test in its temp dir.
    ok(&["keygen", "--out", "keys", "--kid", "cp"], dir);
    let mut envs = vec![
        ("ECL_AUDIT__CHECKPOINT_KEY", "keys/cp.key"),
        ("ECL_AUDIT__ORIGIN", "ecl-gate/it"),
        ("ECL_AUDIT__CHECKPOINT_EVERY", "3"),
    ];
    envs.extend_from_slice(more);
    let (mut child, addr, admin) = spawn_serve_with_admin(dir, &envs);
    let pinned = dir.join("pinned.cp");
    for i in 0..n {
        let body = canonical::to_canonical(&request(
            &format!("cp-{i}"),
            "email.send",
            email_args("bob@example.com", "hi"),
        ));
        let answer = post(&addr, &body);
        assert_eq!(answer["audit"]["leaf_index"], answer["audit"]["seq"]);
        if i == 2 {
            // Signed just after the answers go out: poll briefly.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let (status, note) = loop {
                let (status, note) = get(&admin, "/audit/checkpoint");
                if status != 503 || std::time::Instant::now() > deadline {
                    break (status, note);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            assert_eq!(status, 200, "{note}");
            assert!(note.starts_with("ecl-gate/it\n3\n"), "{note}");
            assert!(note.contains("\n\n\u{2014} ecl-gate/it "), "{note}");
            let (_, metrics) = get(&admin, "/metrics");
            for line in [
                "ecl_audit_checkpoint_size 3",
                "ecl_audit_checkpoint_failures_total 0",
            ] {
                assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
            }
            std::fs::write(&pinned, note).unwrap();
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    (dir.join(format!("logs/gate-{}.log", child.id())), pinned)
}

/// Writes `lines` as the log `NAME/a.log` under `dir`; returns that relative path.
fn write_log(dir: &Path, name: &str, lines: &[String]) -> String {
    std::fs::create_dir(dir.join(name)).unwrap();
    let log = format!("{name}/a.log");
    std::fs::write(dir.join(&log), format!("{}\n", lines.join("\n"))).unwrap();
    log
}

/// `audit verify LOG --checkpoint CP --pubkey KEY`, which must fail: what it said.
fn refused_against(dir: &Path, log: &str, checkpoint: &str, key: &str) -> String {
    fails(
        &[
            "audit",
            "verify",
            log,
            "--checkpoint",
            checkpoint,
            "--pubkey",
            key,
        ],
        dir,
    )
}

/// What an attacker with write access to the log does after editing records: recomputes every
/// `prev_hash` and `record_hash` (SPEC §8) so that the chain verifies again.
fn rechain(lines: &[String]) -> Vec<String> {
    let mut prev = "sha256:GENESIS".to_owned();
    lines
        .iter()
        .map(|line| {
            let canonical::Value::Object(mut record) = canonical::parse(line.as_bytes()).unwrap()
            else {
                panic!("a record is an object: {line}")
            };
            let integrity = |prev: &str, hash: &str| {
                canonical::Value::object([("prev_hash", prev.into()), ("record_hash", hash.into())])
            };
            record.insert("integrity".into(), integrity(&prev, ""));
            let hash = canonical::hash(&canonical::Value::Object(record.clone()));
            record.insert("integrity".into(), integrity(&prev, &hash));
            prev = hash;
            String::from_utf8(canonical::to_canonical(&canonical::Value::Object(record))).unwrap()
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_auditor_proves_inclusion_and_consistency_and_detects_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, pinned) = serve_and_stop(dir, 7, &[]);
    let cps = PathBuf::from(format!("{}.checkpoints", s(&log)));
    let key = "keys/cp.pub";

    // The log matches every checkpoint signed while serving (3, 6, and 7 at shutdown).
    let out = ok(
        &[
            "audit",
            "verify",
            s(&log),
            "--checkpoint",
            s(&cps),
            "--pubkey",
            key,
        ],
        dir,
    );
    assert!(out.contains("the tree at size 7"), "{out}");
    // Chain-only verification of the directory skips the checkpoints file.
    ok(&["audit", "verify", "logs"], dir);

    // Inclusion: prove seq 4 against the newest checkpoint, check it offline.
    let proof = ok(&["audit", "prove", s(&log), "--seq", "4"], dir);
    assert!(
        proof.starts_with("c2sp.org/tlog-proof@v1\nindex 4\n"),
        "{proof}"
    );
    std::fs::write(dir.join("p4"), &proof).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::write(dir.join("r4"), format!("{}\n", lines[4])).unwrap();
    std::fs::write(dir.join("r5"), format!("{}\n", lines[5])).unwrap();
    let out = ok(
        &[
            "audit",
            "check-proof",
            "p4",
            "--pubkey",
            key,
            "--record",
            "r4",
        ],
        dir,
    );
    assert!(out.contains("leaf 4 of `ecl-gate/it` at size 7"), "{out}");
    let err = fails(
        &[
            "audit",
            "check-proof",
            "p4",
            "--pubkey",
            key,
            "--record",
            "r5",
        ],
        dir,
    );
    assert!(
        err.contains("the record is seq 5, the proof is for index 4"),
        "{err}"
    );
    // The same line with one byte changed is not in the tree.
    std::fs::write(dir.join("r4x"), lines[4].replace("cp-4", "cp-X")).unwrap();
    let err = fails(
        &[
            "audit",
            "check-proof",
            "p4",
            "--pubkey",
            key,
            "--record",
            "r4x",
        ],
        dir,
    );
    assert!(err.contains("not leaf 4"), "{err}");

    // Consistency: the newest checkpoint extends the pinned one.
    let text = std::fs::read_to_string(&cps).unwrap();
    let newest = text
        .rsplit_once("\necl-gate/it\n")
        .map(|(_, n)| format!("ecl-gate/it\n{n}"))
        .unwrap();
    std::fs::write(dir.join("newest.cp"), &newest).unwrap();
    let out = ok(
        &[
            "audit",
            "consistency",
            s(&pinned),
            "newest.cp",
            s(&log),
            "--pubkey",
            key,
        ],
        dir,
    );
    assert!(
        out.contains("ok: the checkpoint at size 7 extends the one at size 3"),
        "{out}"
    );

    // Truncating the last record: the chain still verifies, the checkpoint does not.
    let cut = write_log(dir, "cut", &lines[..6]);
    ok(&["audit", "verify", &cut], dir);
    let err = refused_against(dir, &cut, "newest.cp", key);
    assert!(
        err.contains("log holds 6 records, checkpoint covers 7: truncated (seq 6..=6 missing)"),
        "{err}"
    );

    // Editing a middle record: named by file, line and seq.
    let mut edited = lines.clone();
    edited[3] = edited[3].replace("cp-3", "cp-Z");
    let edit = write_log(dir, "edit", &edited);
    let err = refused_against(dir, &edit, "newest.cp", key);
    assert!(err.contains("`edit/a.log` line 4 (seq 3)"), "{err}");

    // Swapping two records: named too.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let swap = write_log(dir, "swap", &swapped);
    let err = refused_against(dir, &swap, "newest.cp", key);
    assert!(err.contains("`swap/a.log` line 2 (seq 2)"), "{err}");

    // Rewriting a record and recomputing every hash after it: the chain alone is fooled, the
    // checkpoints are not, and the first one that no longer matches says from where.
    let forged = write_log(dir, "rechain", &rechain(&edited));
    ok(&["audit", "verify", &forged], dir);
    let err = refused_against(dir, &forged, s(&cps), key);
    assert!(
        err.contains("against checkpoint 2 of")
            && err.contains("records were rewritten or reordered in seq 3..=5"),
        "{err}"
    );

    // A checkpoint checked with another key is refused.
    ok(&["keygen", "--out", "other", "--kid", "x"], dir);
    let err = refused_against(dir, s(&log), "newest.cp", "other/x.pub");
    assert!(err.contains("not signed by the given key"), "{err}");
}

#[test]
fn proofs_span_rolled_files_and_a_deleted_segment_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // About five records a file.
    let (log, pinned) = serve_and_stop(dir, 20, &[("ECL_AUDIT__ROTATE_BYTES", "4096")]);
    let cps = PathBuf::from(format!("{}.checkpoints", s(&log)));
    let mut rolled: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e.len() == 20))
        .collect();
    rolled.sort();
    assert!(rolled.len() >= 3, "{rolled:?}");
    let key = "keys/cp.pub";

    let out = ok(
        &[
            "audit",
            "verify",
            "logs",
            "--checkpoint",
            s(&cps),
            "--pubkey",
            key,
        ],
        dir,
    );
    assert!(out.contains("20 records; the tree at size 20"), "{out}");
    let out = ok(
        &[
            "audit",
            "consistency",
            s(&pinned),
            s(&cps),
            "logs",
            "--pubkey",
            key,
        ],
        dir,
    );
    assert!(out.contains("extends the one at size 3"), "{out}");

    // Seq 2 lives in the oldest rolled file; its proof checks against the newest checkpoint.
    let proof = ok(&["audit", "prove", "logs", "--seq", "2"], dir);
    std::fs::write(dir.join("p2"), &proof).unwrap();
    let first = std::fs::read_to_string(&rolled[0]).unwrap();
    std::fs::write(
        dir.join("r2"),
        format!("{}\n", first.lines().nth(2).unwrap()),
    )
    .unwrap();
    let out = ok(
        &[
            "audit",
            "check-proof",
            "p2",
            "--pubkey",
            key,
            "--record",
            "r2",
        ],
        dir,
    );
    assert!(out.contains("leaf 2 of `ecl-gate/it` at size 20"), "{out}");

    // Deleting the oldest file for retention: named, not a silent pass.
    std::fs::remove_file(&rolled[0]).unwrap();
    let now_first: u64 = rolled[1]
        .extension()
        .and_then(|e| e.to_str()?.parse().ok())
        .unwrap();
    let err = refused_against(dir, "logs", s(&cps), key);
    assert!(
        err.contains(&format!("(seq {now_first}): prev_hash of the first record is not `sha256:GENESIS` and no earlier file continues to it")),
        "{err}"
    );
}

#[test]
fn the_checkpoint_endpoint_is_404_when_checkpoints_are_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _addr, admin) = spawn_serve_with_admin(tmp.path(), &[]);
    let (status, body) = get(&admin, "/audit/checkpoint");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("audit.checkpoint_key"), "{body}");
}
