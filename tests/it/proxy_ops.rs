//! Proxy mode under an operator's conditions, against the real binary (issue 16): a stop while
//! a tool is still working, a secret in an upstream URL, one approval re-sent, a slow tool
//! saturated while other calls are decided, start-time warnings on stderr, and a profile
//! pushed to a running gate followed by a restart.
//!
//! The tools are small std-thread HTTP servers on 127.0.0.1, so each test controls exactly how
//! long a tool takes and counts every call that reached it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ecl_gate::audit::verify_files;
use ecl_gate::canonical::{self, Value};
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};

use crate::cli::post;
use crate::common::*;

/// One call as the tool received it.
#[derive(Debug, Clone)]
struct Received {
    target: String,
    head: String,
}

/// A tool on 127.0.0.1: answers `{"ok":true}`, after `slow` when the path contains `/slow`.
struct Tool {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Received>>>,
}

impl Tool {
    fn start(slow: Duration) -> Tool {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve_one(stream, &seen, slow));
            }
        });
        Tool { addr, calls }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self) -> Vec<Received> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` calls have reached the tool.
    fn wait_for_calls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.calls().len() < n {
            assert!(
                Instant::now() < deadline,
                "the tool got {} calls, expected {n}",
                self.calls().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_one(mut stream: TcpStream, seen: &Mutex<Vec<Received>>, slow: Duration) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
    let is_slow = target.contains("/slow");
    seen.lock().unwrap().push(Received { target, head });
    if is_slow {
        std::thread::sleep(slow);
    }
    let body = b"{\"ok\":true}";
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
}

/// A profile allowing `tools` without constraints; a tool ending in `.approved` needs an
/// approval and escalates without one.
fn write_profile(root: &Path, id: &str, version: &str, tools: &[&str]) {
    let tools: Vec<String> = tools
        .iter()
        .map(|tool| {
            if tool.ends_with(".approved") {
                format!(
                    "{{\"name\":\"{tool}\",\"required_controls\":{{\"approval_token\":true,\"on_missing\":\"ESCALATE\"}}}}"
                )
            } else {
                format!("{{\"name\":\"{tool}\",\"required_controls\":{{\"approval_token\":false}}}}")
            }
        })
        .collect();
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{version}.json")),
        format!(
            "{{\"profile_id\":\"{id}\",\"profile_version\":\"{version}\",\"default\":\"DENY\",\"allowed_tools\":[{}]}}",
            tools.join(",")
        ),
    )
    .unwrap();
}

/// The gate's grant key, a clearly fake test key, written 0600 unless `mode` says otherwise.
fn write_grant_key(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("grant.key");
    let pem = KeypairBytes {
        secret_key: [7; 32],
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    path
}

/// A proxy-mode config: `top` lines, then `[grants]`, then `upstreams` as `(tool, TOML body)`.
fn write_config(dir: &Path, top: &str, upstreams: &[(&str, String)]) -> PathBuf {
    let key = dir.join("grant.key");
    if !key.exists() {
        write_grant_key(dir, 0o600);
    }
    let mut toml = format!(
        "mode = \"proxy\"\n{top}\n[grants]\nsigning_key = \"{}\"\n",
        key.display()
    );
    for (tool, body) in upstreams {
        toml.push_str(&format!("[upstreams.\"{tool}\"]\n{body}\n"));
    }
    let path = dir.join("gate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A running gate binary with every stderr line it writes, from the first.
struct Running {
    child: Child,
    addr: String,
    admin: String,
    /// Lines up to and including the "serving" line.
    start_log: Vec<String>,
    rest: Receiver<String>,
}

impl Running {
    fn spawn(dir: &Path, config: &Path, profiles: &Path) -> Running {
        let mut child = gate_command()
            .arg("--config")
            .arg(config)
            .arg("serve")
            .current_dir(dir)
            .env("ECL_LISTEN", "127.0.0.1:0")
            .env("ECL_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PROFILES_ROOT", profiles)
            .env("ECL_AUDIT__PATH", dir.join("logs/gate-{pid}.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut start_log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = match lines.next() {
                Some(Ok(line)) if Instant::now() < deadline => line,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the gate did not serve: {start_log:#?}");
                }
            };
            start_log.push(line.clone());
            if let Some(rest) = line.split("serving POST http://").nth(1) {
                let addr = rest.split('/').next().unwrap().to_owned();
                let admin = line.split("admin on http://").nth(1).unwrap();
                let admin = admin.split(')').next().unwrap().to_owned();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                });
                return Running {
                    child,
                    addr,
                    admin,
                    start_log,
                    rest: rx,
                };
            }
        }
    }

    fn sigterm(&self) {
        assert!(Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Stops the gate and returns every line it logged after start.
    fn stop(mut self) -> Vec<String> {
        self.sigterm();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        self.rest.try_iter().collect()
    }

    fn audit_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("logs/gate-{}.log", self.child.id()))
    }

    fn post(&self, request: &Value) -> Value {
        post(&self.addr, &canonical::to_canonical(request))
    }

    /// POSTs from a thread of its own, for calls that wait on a slow tool.
    fn post_in_background(&self, request: &Value) -> std::thread::JoinHandle<Value> {
        let (addr, body) = (self.addr.clone(), canonical::to_canonical(request));
        std::thread::spawn(move || post(&addr, &body))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only a failed assertion gets here with the gate still running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET with an optional `Accept`; returns status, head and body.
fn get_with_accept(addr: &str, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_owned(),
        body.to_owned(),
    )
}

fn call(id: &str, version: &str, request_id: &str, tool: &str) -> Value {
    request_for(
        id,
        version,
        request_id,
        tool,
        Value::object([("n", 1i64.into())]),
    )
}

/// The records of one gate's log, its chain verified first.
fn verified(path: &Path) -> Vec<Value> {
    verify_files(&[path.to_path_buf()]).unwrap();
    read_records(path)
}

fn outcomes(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["record_type"].as_str() == Some("outcome"))
        .collect()
}

/// Checks `value` against the OpenAPI document: the answer of `/v1/execute` (`component`
/// `None`) or a named component schema.
fn assert_documented(value: &Value, component: Option<&str>) {
    let doc = crate::schemas::openapi();
    let validator = match component {
        Some(name) => crate::schemas::component(&doc, name),
        None => crate::schemas::execute_response(&doc, 200),
    };
    let json: serde_json::Value = serde_json::from_slice(&canonical::to_canonical(value)).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?} in {json}");
}

fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

// Issue 16 item 1: a tool slower than the grace period used to lose its outcome record and the
// agent's answer at SIGTERM.
#[test]
fn a_stop_cuts_off_a_call_past_the_grace_with_a_shutdown_outcome_and_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.slow"]);
    let tool = Tool::start(Duration::from_secs(30));
    let config = write_config(
        dir.path(),
        "shutdown_grace_ms = 1000",
        &[(
            "tool.slow",
            format!("url = \"{}\"\ntimeout_ms = 25000", tool.url("/slow")),
        )],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    assert!(
        gate.start_log.iter().any(|l| l.contains(
            "upstream `tool.slow` has `timeout_ms` 25000 above `shutdown_grace_ms` 1000"
        )),
        "{:#?}",
        gate.start_log
    );
    let pending = gate.post_in_background(&call("p", "1", "slow-1", "tool.slow"));
    tool.wait_for_calls(1);
    let audit = gate.audit_path(dir.path());
    let logs = gate.stop();
    let answer = pending.join().unwrap();
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
    assert_eq!(answer["execution"]["error"]["kind"].str(), "shutdown");
    assert!(answer["execution"]["status"].is_null());
    assert_documented(&answer, None);
    assert!(
        logs.iter()
            .any(|l| l.contains("recording them as `shutdown`")),
        "{logs:#?}"
    );

    let records = verified(&audit);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["decision_type"].str(), "ALLOW");
    let outcome = &records[1];
    assert_eq!(outcome["record_type"].str(), "outcome");
    assert_eq!(outcome["error"]["kind"].str(), "shutdown");
    assert_eq!(
        outcome["decision"]["record_hash"],
        records[0]["integrity"]["record_hash"]
    );
    assert_eq!(
        answer["execution"]["audit"]["record_hash"],
        outcome["integrity"]["record_hash"]
    );
    assert_eq!(tool.calls().len(), 1);
}

// Issue 16 item 1: within the grace period, a forwarded call finishes and is recorded as usual.
#[test]
fn a_stop_waits_for_a_call_that_ends_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.slow"]);
    let tool = Tool::start(Duration::from_millis(1500));
    let config = write_config(
        dir.path(),
        "shutdown_grace_ms = 20000",
        &[(
            "tool.slow",
            format!("url = \"{}\"\ntimeout_ms = 10000", tool.url("/slow")),
        )],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    assert!(!gate
        .start_log
        .iter()
        .any(|l| l.contains("above `shutdown_grace_ms`")));
    let pending = gate.post_in_background(&call("p", "1", "slow-1", "tool.slow"));
    tool.wait_for_calls(1);
    let audit = gate.audit_path(dir.path());
    gate.stop();
    let answer = pending.join().unwrap();
    assert_eq!(
        answer["execution"]["status"].as_u64_exact(),
        200,
        "{answer:?}"
    );
    assert_eq!(answer["execution"]["body"]["ok"], Value::Bool(true));
    let records = verified(&audit);
    let outcome = outcomes(&records);
    assert_eq!(outcome.len(), 1);
    assert_eq!(outcome[0]["status"].as_u64_exact(), 200);
    assert!(outcome[0]["error"].is_null());
}

// Issue 16 item 2: the default audience was the whole URL, query and all.
#[test]
fn a_secret_in_the_upstream_query_reaches_neither_the_audit_log_nor_the_grant() {
    const SECRET: &str = "SECRET-IN-QUERY-7781";
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.fast"]);
    let tool = Tool::start(Duration::ZERO);
    let config = write_config(
        dir.path(),
        "",
        &[(
            "tool.fast",
            format!("url = \"{}\"", tool.url(&format!("/send?token={SECRET}"))),
        )],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    let answer = gate.post(&call("p", "1", "q-1", "tool.fast"));
    assert_eq!(
        answer["execution"]["status"].as_u64_exact(),
        200,
        "{answer:?}"
    );
    let audit = gate.audit_path(dir.path());
    let mut logs = gate.start_log.clone();
    logs.extend(gate.stop());

    // The tool still gets its query: it is the tool's own credential.
    let calls = tool.calls();
    assert_eq!(calls[0].target, format!("/send?token={SECRET}"));
    let grant = calls[0]
        .head
        .lines()
        .find_map(|l| l.strip_prefix("ecl-grant: "))
        .unwrap();
    let payload = grant.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims = canonical::parse(&claims).unwrap();
    assert_eq!(claims["aud"].str(), tool.url("/send"));

    let records = verified(&audit);
    assert_eq!(
        outcomes(&records)[0]["upstream"]["audience"].str(),
        tool.url("/send")
    );
    assert_eq!(
        outcomes(&records)[0]["upstream"]["url"].str(),
        tool.url("/send")
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(SECRET), "{text}");
    assert!(!logs.iter().any(|l| l.contains(SECRET)), "{logs:#?}");
}

fn keygen(dir: &Path) -> (String, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let out = gate_command()
        .args(["keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let private = dir.join(format!("{kid}.key"));
    (kid, private)
}

/// ESCALATE, then the approver's token on the same request.
fn approved(gate: &Running, dir: &Path, key: &Path, request: &Value) -> Value {
    let escalated = gate.post(request);
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{escalated:?}"
    );
    let saved = dir.join("escalated.json");
    std::fs::write(&saved, canonical::to_canonical(&escalated)).unwrap();
    let out = gate_command()
        .arg("approve")
        .arg("--key")
        .arg(key)
        .arg("--request")
        .arg(&saved)
        .args(["--ttl", "5m", "--approver", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    with(
        request.clone(),
        &["controls"],
        Some(Value::object([("approval_token", token.into())])),
    )
}

fn approval_gate(dir: &Path, tool: &Tool, approvals: &str) -> (Running, PathBuf) {
    let profiles = dir.join("profiles");
    write_profile(&profiles, "p", "1", &["tool.approved"]);
    let keys = dir.join("keys");
    let (kid, private) = keygen(&keys);
    let config = write_config(
        dir,
        &format!(
            "[approvals]\n{approvals}\n[approvals.keys.{kid}]\nfile = \"{}\"",
            keys.join(format!("{kid}.pub")).display()
        ),
        &[(
            "tool.approved",
            format!("url = \"{}\"", tool.url("/approved")),
        )],
    );
    (Running::spawn(dir, &config, &profiles), private)
}

// Issue 16 item 3: one human approval executed the tool once per re-send.
#[test]
fn one_approval_executes_once_by_default_in_proxy_mode() {
    let dir = tempfile::tempdir().unwrap();
    let tool = Tool::start(Duration::ZERO);
    let (gate, key) = approval_gate(dir.path(), &tool, "");
    let request = approved(
        &gate,
        dir.path(),
        &key,
        &call("p", "1", "a-1", "tool.approved"),
    );
    let answers: Vec<Value> = (0..5).map(|_| gate.post(&request)).collect();
    assert_eq!(
        answers[0]["decision_type"].str(),
        "ALLOW",
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[0]["execution"]["status"].as_u64_exact(), 200);
    for again in &answers[1..] {
        assert_eq!(again["decision_type"].str(), "DENY", "{again:?}");
        assert_eq!(again["reason_code"].str(), "APPROVAL_INVALID");
        assert!(again.get("execution").is_none(), "{again:?}");
    }
    let audit = gate.audit_path(dir.path());
    assert!(gate
        .start_log
        .iter()
        .any(|l| l.contains("approvals are single use")));
    gate.stop();
    assert_eq!(tool.calls().len(), 1);
    let records = verified(&audit);
    // ESCALATE, ALLOW, its outcome, four DENYs.
    assert_eq!(records.len(), 7, "{records:#?}");
    assert_eq!(outcomes(&records).len(), 1);
    // The ledger sits beside the audit log, where the gate can always write.
    let ledger = std::fs::read_to_string(dir.path().join("logs/used-approvals.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), 1, "{ledger}");
}

// Issue 16 item 3: reusable approvals only when configured, and then said at start.
#[test]
fn reusable_approvals_must_be_configured_and_are_logged_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tool = Tool::start(Duration::ZERO);
    let (gate, key) = approval_gate(dir.path(), &tool, "single_use = false");
    assert!(
        gate.start_log.iter().any(|l| l
            .contains("`approvals.single_use = false`: one approval may execute its call again")),
        "{:#?}",
        gate.start_log
    );
    let request = approved(
        &gate,
        dir.path(),
        &key,
        &call("p", "1", "a-1", "tool.approved"),
    );
    for _ in 0..2 {
        let answer = gate.post(&request);
        assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
        assert_eq!(answer["execution"]["status"].as_u64_exact(), 200);
    }
    gate.stop();
    assert_eq!(tool.calls().len(), 2);
    assert!(!dir.path().join("logs/used-approvals.jsonl").exists());
}

// Issue 16 items 4 and 5: two calls to a slow tool turned an unrelated call into OVERLOADED,
// and the tool's time was counted as deciding time.
#[test]
fn a_saturated_slow_tool_leaves_other_calls_alone_and_is_measured_apart() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.slow", "tool.fast"]);
    let tool = Tool::start(Duration::from_secs(3));
    let config = write_config(
        dir.path(),
        "max_in_flight = 2",
        &[
            (
                "tool.slow",
                format!("url = \"{}\"\nmax_concurrent = 2", tool.url("/slow")),
            ),
            ("tool.fast", format!("url = \"{}\"", tool.url("/fast"))),
        ],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    let slow: Vec<_> = (0..2)
        .map(|i| gate.post_in_background(&call("p", "1", &format!("slow-{i}"), "tool.slow")))
        .collect();
    tool.wait_for_calls(2);

    // Both `max_in_flight` places were taken by the slow calls before; now they are free.
    let fast = gate.post(&call("p", "1", "fast-1", "tool.fast"));
    assert_eq!(fast["decision_type"].str(), "ALLOW", "{fast:?}");
    assert_eq!(fast["execution"]["status"].as_u64_exact(), 200);
    // The slow tool's own bound is full: this call is allowed, recorded, and never sent.
    let third = gate.post(&call("p", "1", "slow-2", "tool.slow"));
    assert_eq!(third["decision_type"].str(), "ALLOW", "{third:?}");
    assert_eq!(third["execution"]["error"]["kind"].str(), "upstream_busy");
    assert!(third["execution"]["error"]["message"]
        .str()
        .contains("`max_concurrent`"));
    assert_documented(&third, None);
    for pending in slow {
        let answer = pending.join().unwrap();
        assert_eq!(
            answer["execution"]["status"].as_u64_exact(),
            200,
            "{answer:?}"
        );
    }
    let targets: Vec<String> = tool.calls().into_iter().map(|c| c.target).collect();
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert_eq!(targets.iter().filter(|t| *t == "/slow").count(), 2);

    let (status, head, metrics) = get_with_accept(&gate.admin, "/metrics", None);
    assert_eq!(status, 200);
    for (sample, value) in [
        (
            "ecl_upstream_calls_total{tool=\"tool.slow\",outcome=\"2xx\"}",
            2.0,
        ),
        (
            "ecl_upstream_calls_total{tool=\"tool.slow\",outcome=\"upstream_busy\"}",
            1.0,
        ),
        (
            "ecl_upstream_calls_total{tool=\"tool.fast\",outcome=\"2xx\"}",
            1.0,
        ),
        (
            "ecl_upstream_duration_seconds_count{tool=\"tool.slow\"}",
            2.0,
        ),
        (
            "ecl_upstream_duration_seconds_count{tool=\"tool.fast\"}",
            1.0,
        ),
        ("ecl_upstream_in_flight{tool=\"tool.slow\"}", 0.0),
        ("ecl_decision_duration_seconds_count", 4.0),
        ("ecl_decisions_total{decision=\"ALLOW\",reason=\"OK\"}", 4.0),
    ] {
        assert_eq!(
            metric(&metrics, sample),
            Some(value),
            "{sample} in\n{metrics}"
        );
    }
    // The two slow calls spent 3 s each at the tool; deciding them did not.
    let slow_seconds = metric(
        &metrics,
        "ecl_upstream_duration_seconds_sum{tool=\"tool.slow\"}",
    )
    .unwrap();
    let deciding = metric(&metrics, "ecl_decision_duration_seconds_sum").unwrap();
    assert!(slow_seconds >= 6.0, "{slow_seconds}");
    assert!(
        deciding < slow_seconds - 3.0,
        "decisions took {deciding}s in all"
    );
    // Tools by name only: no URL, hence no token, in the metrics.
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    // Classic Prometheus text for a scraper that does not ask for OpenMetrics.
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        metrics.contains("# TYPE ecl_upstream_calls_total counter\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE ecl_build_info gauge\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("# EOF") && !metrics.contains("# UNIT"),
        "{metrics}"
    );

    let audit = gate.audit_path(dir.path());
    gate.stop();
    let records = verified(&audit);
    let busy: Vec<_> = outcomes(&records)
        .into_iter()
        .filter(|o| o["error"]["kind"].as_str() == Some("upstream_busy"))
        .collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0]["request_id"].str(), "slow-2");
    assert!(busy[0]["status"].is_null());
    assert!(!records
        .iter()
        .any(|r| r["reason_code"].as_str() == Some("OVERLOADED")));
}

// Issue 16 item 8: OpenMetrics only for a scraper that asks for it.
#[test]
fn metrics_speak_openmetrics_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.fast"]);
    let tool = Tool::start(Duration::ZERO);
    let config = write_config(
        dir.path(),
        "",
        &[("tool.fast", format!("url = \"{}\"", tool.url("/fast")))],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    gate.post(&call("p", "1", "f-1", "tool.fast"));
    // What Prometheus sends.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (_, head, open) = get_with_accept(&gate.admin, "/metrics", Some(prometheus));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        open.contains("# TYPE ecl_upstream_calls counter\n"),
        "{open}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    let (_, head, refused) = get_with_accept(
        &gate.admin,
        "/metrics",
        Some("application/openmetrics-text;q=0, text/plain"),
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        refused.contains("# TYPE ecl_decisions_total counter\n"),
        "{refused}"
    );
    gate.stop();
}

// Issue 16 item 6: the key warning was emitted before logging existed, and `User-Agent` was
// accepted and silently overwritten.
#[test]
fn start_time_warnings_reach_stderr_and_a_configured_user_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.fast"]);
    write_grant_key(dir.path(), 0o644);
    let config = write_config(
        dir.path(),
        "",
        &[("tool.fast", "url = \"http://127.0.0.1:9/fast\"".into())],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    let warning = gate
        .start_log
        .iter()
        .find(|l| l.contains("grant signing key"))
        .unwrap_or_else(|| panic!("{:#?}", gate.start_log));
    assert!(
        warning.contains("WARN") && warning.contains("readable by other users"),
        "{warning}"
    );
    gate.stop();

    let config = write_config(
        dir.path(),
        "",
        &[(
            "tool.fast",
            "url = \"http://127.0.0.1:9/fast\"\nheaders = { User-Agent = \"agent/1\" }".into(),
        )],
    );
    let out = gate_command()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("PROFILES_ROOT", &profiles)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for `upstreams.\"tool.fast\".headers.User-Agent`: is set by the gate itself"),
        "{stderr}"
    );
}

// Issue 16 item 7: a profile version pushed to a running gate allowed a tool without an
// upstream; it worked at runtime and made the next start exit 3.
#[test]
fn a_profile_pushed_with_an_unrouted_tool_never_crash_loops_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.fast"]);
    let tool = Tool::start(Duration::ZERO);
    let config = write_config(
        dir.path(),
        "",
        &[("tool.fast", format!("url = \"{}\"", tool.url("/fast")))],
    );
    let gate = Running::spawn(dir.path(), &config, &profiles);
    let (status, ready) = crate::cli::get(&gate.admin, "/readyz");
    assert_eq!((status, ready.as_str()), (200, "{\"status\":\"ready\"}"));

    // The push: a new version allowing a tool nobody routed.
    write_profile(&profiles, "p", "2", &["tool.fast", "tool.unrouted"]);
    let answer = gate.post(&call("p", "2", "u-1", "tool.unrouted"));
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
    assert_eq!(answer["execution"]["error"]["kind"].str(), "no_upstream");
    let (status, ready) = crate::cli::get(&gate.admin, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("tool `tool.unrouted` (allowed by profile `p` version `2`)"),
        "{ready}"
    );
    let first = gate.audit_path(dir.path());
    gate.stop();
    let records = verified(&first);
    assert_eq!(outcomes(&records)[0]["error"]["kind"].str(), "no_upstream");

    // The next rollout starts, serves, and says what is missing.
    let gate = Running::spawn(dir.path(), &config, &profiles);
    assert!(
        gate.start_log
            .iter()
            .any(|l| l.contains("WARN") && l.contains("tool `tool.unrouted`")),
        "{:#?}",
        gate.start_log
    );
    let (status, ready) = crate::cli::get(&gate.admin, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("\"warnings\""), "{ready}");
    assert_documented(&canonical::parse(ready.as_bytes()).unwrap(), Some("Ready"));
    let (_, metrics) = crate::cli::get(&gate.admin, "/metrics");
    assert_eq!(
        metric(&metrics, "ecl_tools_without_upstream"),
        Some(1.0),
        "{metrics}"
    );
    let answer = gate.post(&call("p", "1", "f-1", "tool.fast"));
    assert_eq!(
        answer["execution"]["status"].as_u64_exact(),
        200,
        "{answer:?}"
    );
    gate.stop();
    assert_eq!(tool.calls().len(), 1);
}

// Issue 16 item 7: CI can refuse a profile that allows a tool without an upstream, before it
// ships, with the gate's configuration but without its secrets.
#[test]
fn profiles_check_with_a_proxy_config_refuses_an_unrouted_tool_without_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profile(&profiles, "p", "1", &["tool.fast"]);
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        "mode = \"proxy\"\n[grants]\nsigning_key = \"/run/keys/not-here.key\"\n\
         [upstreams.\"tool.fast\"]\nurl = \"https://tool.internal/fast\"\n\
         headers = { Authorization = { env = \"NOT_SET_IN_CI\" } }\n",
    )
    .unwrap();
    let check = || {
        gate_command()
            .arg("--config")
            .arg(&config)
            .args(["profiles", "check"])
            .arg(&profiles)
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok       p 1 "), "{stdout}");

    write_profile(&profiles, "p", "2", &["tool.fast", "tool.unrouted"]);
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("unrouted p 2: no `[upstreams.\"…\"]` for `tool.unrouted`; proxy mode would record its ALLOWs as `no_upstream`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 profiles, 1 invalid or unrouted"),
        "{stdout}"
    );
}
