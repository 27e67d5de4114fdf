//! The real binary: helper subcommands, and `serve` end to end on 127.0.0.1:0.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ecl_gate::canonical::{self, Value};

use crate::common::*;

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = gate_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hash_and_canonicalize_follow_the_canonical_form() {
    let (code, out, _) = run(&["hash"], br#"{ "b": 1, "a": 2 }"#);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "sha256:d3626ac30a87e6f7a6428233b3c68299976865fa5508e4267c5415c76af7a772"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    std::fs::write(&file, "{\"z\": [1.50, \"\\u00e9\"], \"a\": null}").unwrap();
    let (code, out, _) = run(&["canonicalize", file.to_str().unwrap()], b"");
    assert_eq!((code, out.as_str()), (0, "{\"a\":null,\"z\":[1.5,\"é\"]}"));

    let (code, _, err) = run(&["hash"], br#"{"a":1,"a":2}"#);
    assert_eq!(code, 1);
    assert!(err.contains("duplicate key"), "{err}");
    let (code, _, err) = run(&["hash", "/nonexistent.json"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.json"), "{err}");
}

#[test]
fn profiles_check_reports_each_profile() {
    let root = shipped_profiles();
    let (code, out, _) = run(&["profiles", "check", root.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok       example 1.0.0 sha256:"), "{out}");
    assert!(out.contains("0 invalid"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("p")).unwrap();
    std::fs::write(dir.path().join("p/1.json"), r#"{"profile_id":"p"}"#).unwrap();
    std::fs::write(
        dir.path().join("p/2.json"),
        r#"{"profile_id":"p","profile_version":"2","default":"DENY","allowed_tools":[]}"#,
    )
    .unwrap();
    // A reference profile with bounds the wrong way round: the rule is named.
    std::fs::write(
        dir.path().join("p/3.json"),
        r#"{"profile_id":"p","profile_version":"3","default":"DENY","allowed_tools":[{"name":"pay","constraints":{"arg_rules":[{"path":"$.amount","type":"number","min":10,"max":1}]}}]}"#,
    )
    .unwrap();
    let (code, out, _) = run(&["profiles", "check", dir.path().to_str().unwrap()], b"");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid  p 1: "), "{out}");
    assert!(out.contains("ok       p 2 "), "{out}");
    assert!(
        out.contains("invalid  p 3: profile `p` version `3` is invalid: `allowed_tools[0].constraints.arg_rules[0]` has `min` 10 above `max` 1"),
        "{out}"
    );
    assert!(out.contains("3 profiles, 2 invalid"), "{out}");
}

#[tokio::test]
async fn audit_verify_accepts_an_intact_log_and_names_the_first_bad_seq() {
    let gate = TestGate::start().await;
    for i in 0..3 {
        gate.execute(bytes_of(&request(
            &format!("r-{i}"),
            "email.send",
            email_args("bob@example.com", "hi"),
        )))
        .await;
    }
    let path = gate.audit_path.clone();
    let (code, out, err) = run(&["audit", "verify", path.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{err}");
    let head = gate.records()[2]["integrity"]["record_hash"]
        .str()
        .to_owned();
    assert!(out.contains("3 records") && out.contains(&head), "{out}");

    // Rewrite the middle record's decision: its hash no longer matches.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replace("\"ALLOW\"", "\"DENY\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&["audit", "verify", path.to_str().unwrap()], b"");
    assert_eq!(code, 1);
    assert!(err.contains("seq 1"), "{err}");
}

/// Starts the binary; returns it and the execution address it reports, read from its log.
pub fn spawn_serve(dir: &Path, envs: &[(&str, &str)]) -> (std::process::Child, String) {
    let (child, addr, _) = spawn_serve_with_admin(dir, envs);
    (child, addr)
}

/// Starts the binary; returns it, the execution address and the admin address from its log.
// The caller owns the child and waits for it; only a failed assertion skips that.
#[allow(clippy::zombie_processes)]
pub fn spawn_serve_with_admin(
    dir: &Path,
    envs: &[(&str, &str)],
) -> (std::process::Child, String, String) {
    let mut child = gate_command()
        .arg("serve")
        .current_dir(dir)
        .env("ECL_LISTEN", "127.0.0.1:0")
        .env("ECL_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PROFILES_ROOT", shipped_profiles())
        .env("ECL_AUDIT__PATH", dir.join("logs/gate-{pid}.log"))
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = BufReader::new(stderr).lines();
    loop {
        assert!(Instant::now() < deadline, "gate did not report its address");
        let line = lines.next().expect("gate exited before serving").unwrap();
        if let Some(rest) = line.split("serving POST http://").nth(1) {
            let addr = rest.split('/').next().unwrap().to_owned();
            let admin = line
                .split("admin on http://")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .to_owned();
            // Keep the log flowing (the gate must never block on a full pipe) and keep it
            // for tests that read it.
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            LOGS.with(|logs| *logs.borrow_mut() = Some(rx));
            return (child, addr, admin);
        }
    }
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_serve(dir.path(), &[("ECL_AUDIT__SYNC", "always")]);
    let body = canonical::to_canonical(&request(
        "cli-1",
        "email.send",
        email_args("bob@example.com", "hi"),
    ));
    let answer = post(&addr, &body);
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // `{pid}` expanded into the log's name, and the record is there.
    let log = dir.path().join(format!("logs/gate-{}.log", child.id()));
    let records = read_records(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["integrity"]["record_hash"],
        answer["audit"]["record_hash"]
    );
}

/// The Dockerfile's HEALTHCHECK: `ecl-gate probe` against the admin listener, exit 0 or 1.
#[test]
fn probe_is_a_health_check_that_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _, admin) = spawn_serve_with_admin(dir.path(), &[]);
    let probe = |url: &str| {
        let out = gate_command()
            .args(["probe", "--timeout", "2s", url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        probe(&format!("http://{admin}/readyz")),
        (Some(0), String::new())
    );
    let (code, err) = probe(&format!("http://{admin}/no-such-page"));
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, err) = probe(&format!("https://{admin}/readyz"));
    assert_eq!(code, Some(1));
    assert!(err.contains("only http://"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing listens any more.
    let (code, err) = probe(&format!("http://{admin}/readyz"));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_configuration_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = gate_command()
        .current_dir(dir.path())
        .env("ECL_AUDIT__SYNC", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.sync") && err.contains("sometimes"),
        "{err}"
    );
}

thread_local! {
    /// The log lines of the gate this thread spawned last.
    static LOGS: std::cell::RefCell<Option<std::sync::mpsc::Receiver<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Every log line the gate spawned by this thread has written so far.
pub fn drain_logs() -> Vec<String> {
    LOGS.with(|logs| {
        logs.borrow()
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    })
}

/// Every log line up to the gate's last one (`stopped`), for a gate that was told to stop:
/// the reader thread forwards lines as they come, so after `wait()` some may still be on the
/// way, and `drain_logs` alone could miss them (a test once flaked on that).
pub fn logs_until_stopped() -> Vec<String> {
    let mut logs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs.iter().any(|l: &String| l.contains("stopped")) {
        assert!(
            Instant::now() < deadline,
            "the gate never logged `stopped`:\n{}",
            logs.join("\n")
        );
        logs.extend(drain_logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    logs
}

/// A minimal HTTP/1.1 GET over a std socket; returns status and body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A minimal HTTP/1.1 POST over a std socket, so this test needs no runtime.
pub fn post(addr: &str, body: &[u8]) -> Value {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /v1/execute HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    canonical::parse(&response[split + 4..]).unwrap()
}

#[test]
// `load --print-body` hands another load generator (wrk, oha) the very request `load` sends,
// and it is the ALLOW its scenario expects.
fn load_prints_the_request_it_would_send() {
    let (code, body, err) = run(&["load", "--scenario", "allow", "--print-body"], b"");
    assert_eq!(code, 0, "{err}");
    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(request["request_id"], "load-1");
    assert_eq!(request["tool"]["name"], "email.send");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    std::fs::write(&file, &body).unwrap();
    let decided = gate_command()
        .env("PROFILES_ROOT", shipped_profiles())
        .args(["decide", "--request"])
        .arg(&file)
        .args(["--expect", "ALLOW"])
        .output()
        .unwrap();
    assert!(
        decided.status.success(),
        "{}{}",
        String::from_utf8_lossy(&decided.stdout),
        String::from_utf8_lossy(&decided.stderr)
    );

    let (code, _, err) = run(&["load", "--scenario", "mixed", "--print-body"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("--print-body prints one request"), "{err}");
}
