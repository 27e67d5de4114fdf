//! Hostile clients over raw TCP: slow, disconnecting, pipelining, oversized, deep, many. Every
//! request that reaches the handler ends in exactly one audited decision, and the gate keeps
//! serving.

use std::time::{Duration, Instant};

use ecl_gate::canonical::{self, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::execute::assert_verify_ok;

fn head(len: usize) -> String {
    format!("POST /v1/execute HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
}

/// A raw client connection that keeps what it read past one response for the next.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one HTTP/1.1 response with a Content-Length body; returns status and body.
    async fn response(&mut self) -> (u16, Vec<u8>) {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill(&mut chunk).await;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return (status, body);
            }
            self.fill(&mut chunk).await;
        }
    }

    async fn fill(&mut self, chunk: &mut [u8]) {
        let n = self.stream.read(chunk).await.unwrap();
        assert!(n > 0, "connection closed before a whole response");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

async fn wait_for_records(gate: &TestGate, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = gate.records();
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slow_body_is_denied_and_recorded() {
    let gate = TestGate::start_with(Options {
        body_timeout: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let mut conn = Conn::open(gate.addr).await;
    conn.send(head(100).as_bytes()).await;
    conn.send(b"{\"request_id\":").await;
    let (status, body) = conn.response().await;
    let decision = canonical::parse(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(decision["reason_code"].str(), "REQUEST_PARSE_ERROR");
    assert!(
        decision["detail"].str().contains("within 200 ms"),
        "{decision:?}"
    );
    gate.record_for(&decision);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_still_leaves_one_record() {
    let gate = TestGate::start().await;
    {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        stream.write_all(head(500).as_bytes()).await.unwrap();
        stream.write_all(b"{\"request_id\":\"half").await.unwrap();
    }
    let records = wait_for_records(&gate, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["reason_code"].str(), "REQUEST_PARSE_ERROR");
    assert_eq!(records[0]["decision_type"].str(), "DENY");
    // Still serving.
    let (status, decision) = gate
        .execute(bytes_of(&request(
            "after",
            "email.send",
            email_args("bob@example.com", "hi"),
        )))
        .await;
    assert_eq!((status, decision["decision_type"].str()), (200, "ALLOW"));
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_denied_overloaded_at_once() {
    let gate = TestGate::start_with(Options {
        max_in_flight: 1,
        body_timeout: Duration::from_secs(5),
        ..Options::default()
    })
    .await;
    // The first request holds the only slot while its body trickles in.
    let body = bytes_of(&request(
        "slow",
        "email.send",
        email_args("bob@example.com", "hi"),
    ));
    let mut slow = Conn::open(gate.addr).await;
    slow.send(head(body.len()).as_bytes()).await;
    slow.send(&body[..10]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, shed) = gate
        .execute(bytes_of(&request(
            "shed",
            "email.send",
            email_args("bob@example.com", "hi"),
        )))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (shed["decision_type"].str(), shed["reason_code"].str()),
        ("DENY", "OVERLOADED")
    );
    gate.record_for(&shed);

    slow.send(&body[10..]).await;
    let (status, body) = slow.response().await;
    let decision = canonical::parse(&body).unwrap();
    assert_eq!((status, decision["decision_type"].str()), (200, "ALLOW"));
    gate.record_for(&decision);
}

#[tokio::test]
async fn pipelined_requests_each_get_a_decision_and_a_record() {
    let gate = TestGate::start().await;
    let mut wire = Vec::new();
    for i in 0..5 {
        let body = bytes_of(&request(
            &format!("p-{i}"),
            "email.send",
            email_args("bob@example.com", "hi"),
        ));
        wire.extend_from_slice(head(body.len()).as_bytes());
        wire.extend_from_slice(&body);
    }
    let mut conn = Conn::open(gate.addr).await;
    conn.send(&wire).await;
    for i in 0..5u64 {
        let (status, body) = conn.response().await;
        let decision = canonical::parse(&body).unwrap();
        assert_eq!((status, decision["decision_type"].str()), (200, "ALLOW"));
        assert_eq!(
            decision["audit"]["seq"].as_u64_exact(),
            i,
            "answers in order"
        );
    }
    assert_eq!(gate.records().len(), 5);
}

#[tokio::test]
async fn oversized_headers_are_refused_by_http_and_not_audited() {
    let gate = TestGate::start().await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let request = format!(
        "POST /v1/execute HTTP/1.1\r\nHost: gate\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(100 * 1024)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert!(gate.records().is_empty());
}

#[tokio::test]
async fn abusive_bodies_are_audited_denials() {
    let gate = TestGate::start().await;
    let valid = request("big", "email.send", email_args("bob@example.com", "hi"));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "10,000-deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "900 KB string",
            canonical::to_canonical(&with(
                valid.clone(),
                &["tool", "args", "subject"],
                Some("s".repeat(900 * 1024).into()),
            )),
            "CONSTRAINT_VIOLATION",
        ),
        (
            "100,000-element array",
            canonical::to_canonical(&with(
                valid.clone(),
                &["tool", "args", "attachments"],
                Some(Value::Array(vec![Value::from(0i64); 100_000])),
            )),
            "ALLOW",
        ),
        (
            "300,000 values",
            format!("[{}]", vec!["0"; 300_000].join(",")).into_bytes(),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "lone surrogate in a key",
            br#"{"\udc00":1}"#.to_vec(),
            "REQUEST_PARSE_ERROR",
        ),
        (
            "NUL in a profile id",
            canonical::to_canonical(&with(
                valid.clone(),
                &["profile", "id"],
                Some("example\u{0}".into()),
            )),
            "PROFILE_NOT_FOUND",
        ),
        (
            "BOM",
            [&b"\xef\xbb\xbf"[..], &canonical::to_canonical(&valid)].concat(),
            "REQUEST_PARSE_ERROR",
        ),
    ];
    for (name, body, expected) in cases {
        let (status, decision) = gate.execute(body).await;
        assert_eq!(status, 200, "{name}");
        let got = if decision["decision_type"].str() == "ALLOW" {
            "ALLOW"
        } else {
            decision["reason_code"].str()
        };
        assert_eq!(got, expected, "{name}: {:?}", decision["detail"]);
        gate.record_for(&decision);
    }
    assert_verify_ok(&gate.audit_path, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_each_get_their_record() {
    let gate = TestGate::start().await;
    let addr = gate.addr;
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            tokio::spawn(async move {
                let body = bytes_of(&request(
                    &format!("c-{i}"),
                    "email.send",
                    email_args("bob@example.com", "hi"),
                ));
                let mut conn = Conn::open(addr).await;
                conn.send(head(body.len()).as_bytes()).await;
                conn.send(&body).await;
                conn.response().await.0
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(gate.records().len(), 2000);
    assert_verify_ok(&gate.audit_path, 2000);
}
