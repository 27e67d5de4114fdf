//! The audit log through the real binary: a tampered tail refuses `serve`, `--audit-repair`
//! moves it aside, a second gate on one log is refused, and `audit verify` reports a missing
//! rotated segment with a failing exit code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ecl_gate::audit::{AuditLog, AuditSettings, FileOptions, SyncMode};
use ecl_gate::canonical::Value;

use crate::common::*;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

fn setup(rotate_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit").join("gate.log");
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nprofiles_root = {:?}\n\
             [audit]\npath = {:?}\nsync = \"always\"\nrotate_bytes = {rotate_bytes}\n",
            shipped_profiles().display().to_string(),
            log.display().to_string(),
        ),
    )
    .unwrap();
    Setup { dir, config, log }
}

/// Writes `n` records with the library, as a gate would have.
async fn write_records(path: &Path, n: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let log = AuditLog::open_with(
        AuditSettings {
            path: path.to_owned(),
            sync: SyncMode::Never,
            sync_interval: Duration::from_millis(50),
            queue_capacity: 16,
            observer: None,
            checkpoints: None,
        },
        FileOptions::default(),
    )
    .unwrap();
    for i in 0..n {
        let Value::Object(record) = Value::object([
            ("request_id", format!("seed-{i}").into()),
            ("decision_type", "DENY".into()),
        ]) else {
            unreachable!()
        };
        log.append(record).await.unwrap();
    }
}

fn tamper_last_line(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap().replace("DENY", "ALLOW");
    lines.push(&last);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn serve(config: &Path, extra: &[&str]) -> Command {
    let mut command = gate_command();
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// A gate started in the background; killed when dropped.
struct Running {
    child: Child,
    addr: String,
    /// Everything it logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(config: &Path, extra: &[&str]) -> Running {
        let mut child = serve(config, extra).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, addr) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (pipe, lines) = (child.stderr.take().unwrap(), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.find("serving POST http://") {
                    let rest = &line[at + "serving POST ".len()..];
                    let _ = tx.send(rest[..rest.find("/v1/execute").unwrap()].to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the gate did not start: {:#?}", log.lock().unwrap()));
        Running { child, addr, log }
    }

    fn logged(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    async fn execute(&self, request_id: &str) -> (u16, Value) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let body = bytes_of(&request(
            request_id,
            "email.send",
            email_args("bob@example.com", "hi"),
        ));
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("{}/v1/execute", self.addr))
            .body(http_body_util::Full::new(body))
            .unwrap();
        let response = client.request(req).await.unwrap();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, ecl_gate::canonical::parse(&bytes).unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output(command: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = command.stderr(Stdio::piped()).output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn verify(paths: &[&Path]) -> (i32, String, String) {
    let out = gate_command()
        .arg("audit")
        .arg("verify")
        .args(paths)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set_aside_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".tampered-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_tail_refuses_serve_and_audit_repair_moves_it_aside() {
    let s = setup(0);
    write_records(&s.log, 3).await;
    tamper_last_line(&s.log);
    let tampered = std::fs::read_to_string(&s.log).unwrap();

    let (code, stderr) = output(&mut serve(&s.config, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("`{}`", s.log.display()))
            && stderr.contains("does not verify at seq 2")
            && stderr.contains("--audit-repair"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&s.log).unwrap(), tampered);

    let gate = Running::start(&s.config, &["--audit-repair"]);
    let logged = gate.logged();
    assert!(logged.contains("moved the audit log's tail"), "{logged}");
    let aside = set_aside_in(s.log.parent().unwrap());
    assert_eq!(aside.len(), 1);
    assert!(logged.contains(&aside[0].display().to_string()), "{logged}");
    assert_eq!(
        std::fs::read_to_string(&aside[0]).unwrap(),
        tampered.lines().last().unwrap().to_owned() + "\n"
    );

    let (status, decision) = gate.execute("after-repair").await;
    assert_eq!(status, 200);
    assert_eq!(decision["audit"]["seq"].as_u64_exact(), 2);
    drop(gate);

    let (code, stdout, stderr) = verify(&[s.log.parent().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 records (seq 0..=2)"), "{stdout}");
    assert!(
        stderr.contains("skipped") && stderr.contains(".tampered-"),
        "{stderr}"
    );
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gate_on_the_same_log_is_refused() {
    let s = setup(0);
    let first = Running::start(&s.config, &[]);
    let (code, stderr) = output(&mut serve(&s.config, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("in use by another process") && stderr.contains("gate.log"),
        "{stderr}"
    );
    // The first gate is unharmed.
    assert_eq!(first.execute("still-serving").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_rotates_and_audit_verify_reports_a_missing_segment() {
    let s = setup(4096);
    let gate = Running::start(&s.config, &[]);
    for i in 0..24 {
        assert_eq!(gate.execute(&format!("r-{i}")).await.0, 200);
    }
    drop(gate);
    let dir = s.log.parent().unwrap();
    let (code, stdout, stderr) = verify(&[dir]);
    assert_eq!(code, 0, "{stderr}");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &s.log)
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    assert!(stdout.contains("24 records (seq 0..=23)"), "{stdout}");

    // The active file alone does not start the chain; the hint says where the rest is.
    let (code, _, stderr) = verify(&[&s.log]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("rolled segment(s) of this chain were not given"),
        "{stderr}"
    );

    std::fs::remove_file(&segments[1]).unwrap();
    let (code, _, stderr) = verify(&[dir]);
    assert_eq!(code, 1);
    assert!(stderr.contains("a file is missing"), "{stderr}");
    // Naming the files one by one, in any order, finds the same gap.
    let mut files: Vec<&Path> = segments.iter().map(PathBuf::as_path).collect();
    files.remove(1);
    files.insert(0, &s.log);
    let (code, _, stderr) = verify(&files);
    assert_eq!(code, 1);
    assert!(stderr.contains("a file is missing"), "{stderr}");
}

#[test]
fn audit_verify_of_a_directory_without_logs_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = verify(&[dir.path()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no audit log files found"), "{stderr}");
    // A path that does not exist is a failing chain, not an empty pass.
    let (code, _, stderr) = verify(&[&dir.path().join("missing.log")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot open"), "{stderr}");
}
