//! `audit ship` and `audit verify --db` against a real PostgreSQL: every record exactly once
//! through SIGKILLs of the shipper and crashes and rotations of the gate; tampering with the
//! files or the rows is detected and named.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ecl_gate::canonical::{self, Value};

use crate::cli::{post, spawn_serve};
use crate::common::*;
use crate::pg;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn sql(url: &str, statement: &str) {
    block_on(async {
        let client = pg::connect(url).await.unwrap();
        client.batch_execute(statement).await.unwrap();
    });
}

fn count(url: &str, query: &str) -> i64 {
    block_on(async {
        let client = pg::connect(url).await.unwrap();
        client.query_one(query, &[]).await.unwrap().get(0)
    })
}

fn gate(dir: &Path, name: &str) -> (Child, String) {
    let log = dir.join("logs").join(name);
    let key = dir.join("cp.key");
    if !key.exists() {
        let out = gate_command()
            .args(["keygen", "--kid", "cp", "--out"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    spawn_serve(
        dir,
        &[
            ("ECL_AUDIT__PATH", log.to_str().unwrap()),
            ("ECL_AUDIT__SYNC", "always"),
            ("ECL_AUDIT__ROTATE_BYTES", "8192"),
            ("ECL_AUDIT__CHECKPOINT_KEY", key.to_str().unwrap()),
            ("ECL_AUDIT__CHECKPOINT_EVERY", "25"),
            ("ECL_AUDIT__CHECKPOINT_INTERVAL_MS", "200"),
        ],
    )
}

fn ship_command(url: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut command = gate_command();
    command
        .args([
            "audit", "ship", "--to", url, "--batch", "20", "--poll", "20ms",
        ])
        .args(extra)
        .arg(dir.join("logs"));
    command
}

fn ship_once(url: &str, dir: &Path) -> Output {
    ship_command(url, dir, &["--once"]).output().unwrap()
}

fn verify_db(url: &str) -> Output {
    gate_command()
        .args(["audit", "verify", "--db", url])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn send(addr: &str, n: usize, tag: &str) {
    for i in 0..n {
        let body = canonical::to_canonical(&request(
            &format!("{tag}-{i}"),
            "email.send",
            email_args("bob@example.com", "hi"),
        ));
        post(addr, &body);
    }
}

/// Every local record of the chain `name`, in seq order.
fn local_records(dir: &Path, name: &str) -> Vec<Value> {
    let active = dir.join("logs").join(name);
    let mut files: Vec<PathBuf> = ecl_gate::audit::segment::rolled_segments(&active)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(active);
    files
        .iter()
        .filter(|f| f.exists())
        .flat_map(|f| read_records(f))
        .collect()
}

#[test]
fn shipper_killed_mid_batch_while_gates_rotate_and_crash_ships_every_record_once() {
    let test = "shipper_killed_mid_batch_while_gates_rotate_and_crash_ships_every_record_once";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut gate_a, addr_a) = gate(dir.path(), "gate-a.log");
    // Load in the background: rotations every 8 KiB, checkpoints every 25 records.
    let load = {
        let addr = addr_a.clone();
        std::thread::spawn(move || send(&addr, 300, "a1"))
    };
    let mut shipper = ship_command(&db.url, dir.path(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // SIGKILL the shipper while it ships (batches of 20), then restart it.
    while kills < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(150 + 70 * kills));
        kill9(&mut shipper);
        kills += 1;
        shipper = ship_command(&db.url, dir.path(), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    }
    load.join().unwrap();
    // The gate crashes (SIGKILL) and comes back on the same stream; a second stream appears.
    kill9(&mut gate_a);
    let (mut gate_a, addr_a) = gate(dir.path(), "gate-a.log");
    let (mut gate_b, addr_b) = gate(dir.path(), "gate-b.log");
    let more_a = std::thread::spawn(move || send(&addr_a, 150, "a2"));
    send(&addr_b, 150, "b1");
    more_a.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    kill9(&mut shipper);
    kill9(&mut gate_a);
    kill9(&mut gate_b);

    // A last run catches up; then every local record is in the database exactly once.
    let out = ship_once(&db.url, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    for name in ["gate-a.log", "gate-b.log"] {
        let local = local_records(dir.path(), name);
        assert!(local.len() >= 150, "{name}: {} records", local.len());
        let stored = count(
            &db.url,
            &format!("SELECT count(*) FROM ecl_audit_records WHERE stream = '{name}'"),
        );
        assert_eq!(stored as usize, local.len(), "{name}");
        let contiguous = count(
            &db.url,
            &format!(
                "SELECT count(*) FROM ecl_audit_records WHERE stream = '{name}' AND seq < {}",
                local.len()
            ),
        );
        assert_eq!(contiguous as usize, local.len(), "{name}: seqs 0..n");
        // The exact line is kept: compare one.
        let last = local.last().unwrap();
        let line = block_on(async {
            let client = pg::connect(&db.url).await.unwrap();
            client
                .query_one(
                    "SELECT line FROM ecl_audit_records WHERE stream = $1 AND seq = $2",
                    &[&name, &last["seq"].as_i64().unwrap()],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        });
        assert_eq!(line.as_bytes(), canonical::to_canonical(last));
    }
    let checkpoints = count(&db.url, "SELECT count(*) FROM ecl_audit_checkpoints");
    assert!(checkpoints > 0, "checkpoints shipped");
    let out = gate_command()
        .args(["audit", "verify", "--db", &db.url, "--pubkey"])
        .arg(dir.path().join("cp.pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok: stream `gate-a.log`"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("signatures valid"), "{}", text(&out));
}

/// A gate's log of `n` records, shipped to a fresh database.
fn shipped_log(test: &str, n: usize) -> Option<(pg::Database, tempfile::TempDir)> {
    let db = block_on(pg::database(test))?;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = gate(dir.path(), "gate-a.log");
    send(&addr, n, "t");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let out = ship_once(&db.url, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let out = verify_db(&db.url);
    assert!(out.status.success(), "{}", text(&out));
    Some((db, dir))
}

#[test]
fn an_edited_a_deleted_a_reordered_or_a_truncated_row_is_named_by_verify_db() {
    let test = "an_edited_a_deleted_a_reordered_or_a_truncated_row_is_named_by_verify_db";
    let Some((db, _dir)) = shipped_log(test, 60) else {
        return;
    };
    let cases = [
        (
            "edited",
            "UPDATE ecl_audit_records SET line = replace(line, '\"ALLOW\"', '\"DENY\"') WHERE seq = 5",
            "seq 5: the stored line does not verify",
        ),
        (
            "deleted",
            "DELETE FROM ecl_audit_records WHERE seq = 7",
            "seq 7..=7 missing",
        ),
        (
            "reordered",
            "UPDATE ecl_audit_records r SET line = o.line FROM ecl_audit_records o
              WHERE (r.seq, o.seq) IN ((10, 11), (11, 10)) AND r.stream = o.stream",
            "seq 10: the row's columns disagree with its line",
        ),
        (
            "truncated",
            "DELETE FROM ecl_audit_records WHERE seq >= 30",
            "truncated: the checkpoint covers",
        ),
    ];
    for (what, tamper, named) in cases {
        sql(
            &db.url,
            "CREATE TABLE saved AS SELECT * FROM ecl_audit_records",
        );
        sql(&db.url, tamper);
        let out = verify_db(&db.url);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(text(&out).contains(named), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("stream `gate-a.log`"),
            "{what}: {}",
            text(&out)
        );
        sql(
            &db.url,
            "DELETE FROM ecl_audit_records; INSERT INTO ecl_audit_records SELECT * FROM saved; DROP TABLE saved",
        );
        assert!(verify_db(&db.url).status.success(), "{what}: restored");
    }
}

/// Rewrites `name`'s active file with record `seq`'s decision changed and the chain
/// recomputed from there: what someone covering their tracks would do.
fn rewrite_and_rechain(dir: &Path, name: &str, seq: i64) {
    let path = file_holding(dir, name, seq);
    let mut prev: Option<String> = None;
    let mut out = Vec::new();
    for mut record in read_records(&path) {
        let this = record["seq"].as_i64().unwrap();
        if this == seq {
            record = with(record, &["decision_type"], Some("DENY".into()));
        }
        if this >= seq {
            if let Some(prev) = &prev {
                record = with(
                    record,
                    &["integrity", "prev_hash"],
                    Some(prev.as_str().into()),
                );
            }
            record = with(record, &["integrity", "record_hash"], Some("".into()));
            let hash = canonical::hash(&record);
            record = with(
                record,
                &["integrity", "record_hash"],
                Some(hash.as_str().into()),
            );
        }
        prev = Some(record["integrity"]["record_hash"].str().to_owned());
        out.extend(canonical::to_canonical(&record));
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

/// The file of chain `name` (rolled segment or active file) that holds `seq`.
fn file_holding(dir: &Path, name: &str, seq: i64) -> PathBuf {
    let active = dir.join("logs").join(name);
    let mut files: Vec<PathBuf> = ecl_gate::audit::segment::rolled_segments(&active)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(active);
    files
        .into_iter()
        .find(|f| {
            read_records(f)
                .iter()
                .any(|r| r["seq"].as_i64() == Some(seq))
        })
        .unwrap()
}

#[test]
fn a_file_rewritten_after_shipping_and_a_deleted_row_stop_the_stream_and_are_named() {
    let test = "a_file_rewritten_after_shipping_and_a_deleted_row_stop_the_stream_and_are_named";
    let Some((db, dir)) = shipped_log(test, 20) else {
        return;
    };
    // Rewritten with a recomputed chain: every line verifies, but seq 4 is not what was shipped.
    rewrite_and_rechain(dir.path(), "gate-a.log", 4);
    let out = ship_once(&db.url, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("stream `gate-a.log` stopped"), "{said}");
    assert!(said.contains("seq 4"), "{said}");
    assert!(
        said.contains("the file was rewritten after shipping"),
        "{said}"
    );
    // Recorded in the database, and reported again by the next run.
    let stopped = count(
        &db.url,
        "SELECT count(*) FROM ecl_audit_streams WHERE stopped_reason LIKE '%seq 4%'",
    );
    assert_eq!(stopped, 1);
    assert_eq!(ship_once(&db.url, dir.path()).status.code(), Some(1));

    // A row deleted (with later rows kept): the shipper re-reading the files names it.
    let Some((db, dir)) = shipped_log(test, 20) else {
        return;
    };
    sql(&db.url, "DELETE FROM ecl_audit_records WHERE seq = 3");
    let out = ship_once(&db.url, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("seq 3"), "{}", text(&out));
    assert!(text(&out).contains("a row was deleted"), "{}", text(&out));
    // Never re-inserted behind the auditor's back.
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) FROM ecl_audit_records WHERE seq = 3"
        ),
        0
    );

    // A local line edited without recomputing its hash: named by file and seq.
    let Some((db, dir)) = shipped_log(test, 20) else {
        return;
    };
    let path = file_holding(dir.path(), "gate-a.log", 2);
    let text_before = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text_before.lines().map(str::to_owned).collect();
    let at = lines.iter().position(|l| l.contains("\"seq\":2,")).unwrap();
    lines[at] = lines[at].replace("\"ALLOW\"", "\"DENY\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = ship_once(&db.url, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("(seq 2)"), "{}", text(&out));
    assert!(
        text(&out).contains("record_hash does not match"),
        "{}",
        text(&out)
    );
}
