//! The admin listener and lifecycle, against the real binary: probes, exact metrics, the
//! OpenAPI document, graceful shutdown, and logs that never carry request contents.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ecl_gate::canonical::{self, Value};

use crate::cli::{get, logs_until_stopped, post, spawn_serve_with_admin};
use crate::common::*;

fn sigterm(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn probes_metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, admin) = spawn_serve_with_admin(dir.path(), &[]);
    assert_eq!(get(&admin, "/healthz").0, 200);
    let (status, body) = get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");

    for i in 0..3 {
        post(
            &addr,
            &canonical::to_canonical(&request(
                &format!("ok-{i}"),
                "email.send",
                email_args("bob@example.com", "hi"),
            )),
        );
    }
    for i in 0..2 {
        post(
            &addr,
            &canonical::to_canonical(&request(
                &format!("no-{i}"),
                "email.send",
                email_args("eve@evil.com", "hi"),
            )),
        );
    }
    post(&addr, b"{broken");

    let (status, metrics) = get(&admin, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "ecl_decisions_total{decision=\"ALLOW\",reason=\"OK\"} 3",
        "ecl_decisions_total{decision=\"DENY\",reason=\"CONSTRAINT_VIOLATION\"} 2",
        "ecl_decisions_total{decision=\"DENY\",reason=\"REQUEST_PARSE_ERROR\"} 1",
        "ecl_decision_duration_seconds_count 6",
        "ecl_audit_append_duration_seconds_count 6",
        "ecl_audit_write_failures_total 0",
        // Every record went through a committed batch; sequential requests, one per batch.
        "ecl_audit_batch_size_sum 6.0",
        "ecl_requests_in_flight 0",
        "ecl_profiles_loaded 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in\n{metrics}"
        );
    }
    assert!(metrics.contains("ecl_build_info{version=\""), "{metrics}");
    let fsyncs: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ecl_audit_fsync_duration_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fsyncs >= 6,
        "sync = always: one fdatasync per batch at least ({fsyncs})"
    );

    let (status, yaml) = get(&admin, "/openapi.yaml");
    assert_eq!(status, 200);
    assert!(
        yaml.starts_with("openapi: 3.1"),
        "{}",
        &yaml[..yaml.len().min(40)]
    );
    assert_eq!(get(&admin, "/v1/execute").0, 404);
    // Found by schemathesis: a 405 must say which methods are allowed (RFC 9110).
    let mut stream = TcpStream::connect(&admin).unwrap();
    write!(
        stream,
        "DELETE /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head"),
        "{answer}"
    );

    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

#[test]
fn readiness_fails_while_the_audit_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, admin) =
        spawn_serve_with_admin(dir.path(), &[("ECL_AUDIT__PATH", "/dev/full")]);
    let answer = post(
        &addr,
        &canonical::to_canonical(&request(
            "full",
            "email.send",
            email_args("bob@example.com", "hi"),
        )),
    );
    assert_eq!(answer["reason_code"].str(), "AUDIT_WRITE_FAILED");
    let (status, body) = get(&admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    let body = canonical::parse(body.as_bytes()).unwrap();
    let failing = format!("{:?}", body["failing"]);
    assert!(failing.contains("audit log is failing"), "{failing}");
    assert_eq!(get(&admin, "/healthz").0, 200, "alive while not ready");
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
}

#[test]
fn requests_in_flight_at_sigterm_get_their_decisions_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = spawn_serve_with_admin(dir.path(), &[]);
    // Five requests whose bodies are half sent when the signal arrives.
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            canonical::to_canonical(&request(
                &format!("late-{i}"),
                "email.send",
                email_args("bob@example.com", "hi"),
            ))
        })
        .collect();
    let mut streams: Vec<TcpStream> = bodies
        .iter()
        .map(|body| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                stream,
                "POST /v1/execute HTTP/1.1\r\nHost: gate\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(&body[..20]).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    sigterm(child.id());
    std::thread::sleep(Duration::from_millis(200));
    for (stream, body) in streams.iter_mut().zip(&bodies) {
        stream.write_all(&body[20..]).unwrap();
    }
    for stream in &mut streams {
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains("\"decision_type\":\"ALLOW\""),
            "{response}"
        );
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = dir.path().join(format!("logs/gate-{}.log", child.id()));
    let records = read_records(&log);
    assert_eq!(records.len(), 5);
    crate::execute::assert_verify_ok(&log, 5);
}

#[test]
fn logs_never_carry_arguments_or_snapshots() {
    const MARKER: &str = "MARKER-7f3a-do-not-log";
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = spawn_serve_with_admin(
        dir.path(),
        &[
            ("ECL_LOG__FORMAT", "json"),
            ("ECL_LOG__LEVEL", "info,ecl_gate::decision=debug"),
        ],
    );
    let mut body = request("log-1", "email.send", email_args("bob@example.com", MARKER));
    body = with(
        body,
        &["context", "snapshot"],
        Some(Value::object([("note", MARKER.into())])),
    );
    let snapshot = body["context"]["snapshot"].clone();
    body = with(
        body,
        &["context", "snapshot_hash"],
        Some(canonical::hash(&snapshot).into()),
    );
    let answer = post(&addr, &canonical::to_canonical(&body));
    assert_eq!(answer["decision_type"].str(), "ALLOW");
    post(
        &addr,
        &canonical::to_canonical(&request("log-2", "email.send", email_args(MARKER, "x"))),
    );
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
    let logs = logs_until_stopped();
    let decisions: Vec<&String> = logs.iter().filter(|l| l.contains("\"decision\"")).collect();
    assert_eq!(
        decisions.len(),
        2,
        "one line per decision:\n{}",
        logs.join("\n")
    );
    assert!(
        decisions[0].contains(answer["provenance_id"].str()),
        "{}",
        decisions[0]
    );
    for line in &logs {
        assert!(
            !line.contains(MARKER),
            "a request's content reached the log: {line}"
        );
    }
}

/// The default configuration writes no line per decision (the audit log has them all; the
/// second copy cost a third of the throughput), but keeps its start-up lines at `info`.
#[test]
fn decisions_are_not_logged_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = spawn_serve_with_admin(dir.path(), &[("ECL_LOG__FORMAT", "json")]);
    let answer = post(
        &addr,
        &canonical::to_canonical(&request(
            "quiet-1",
            "email.send",
            email_args("bob@example.com", "x"),
        )),
    );
    assert_eq!(answer["decision_type"].str(), "ALLOW");
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
    let logs = logs_until_stopped();
    assert!(
        logs.iter().all(|l| !l.contains("\"decision\"")),
        "{}",
        logs.join("\n")
    );
    assert!(
        logs.iter().any(|l| l.contains("\"INFO\"")),
        "{}",
        logs.join("\n")
    );
}
