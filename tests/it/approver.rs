//! Escalations reach a human, end to end with the real binaries: the gate notifies
//! `ecl-gate approver serve`, an approver signs in and decides over HTTP, the agent's
//! `wait-approval` gets the token (or the reason), and the resent request is ALLOWed. Also
//! every refusal: forged or unsigned notifications, no sign-in, no CSRF token, an expired
//! escalation, approving twice, two approvers racing; and the approver's audit log verifies
//! and shows tampering. The browser drives the same flow in `browser.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecl_gate::canonical::{self, Value};

use crate::cli::spawn_serve_with_admin;
use crate::common::*;

pub const PASSWORD: &str = "correct horse battery";

/// A plain HTTP/1.1 exchange (one connection, closed after), enough for HTML and JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` of the `Set-Cookie` for `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next())
            .find(|pair| pair.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        canonical::parse(self.body.as_bytes()).unwrap_or(Value::Null)
    }
}

pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    // Read the head, then exactly Content-Length bytes: some servers (chromedriver) keep the
    // connection open despite `Connection: close`.
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the answer's head");
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = response[split + 4..].to_vec();
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed before the whole body");
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            stream.read_to_end(&mut body).unwrap();
        }
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A spawned `approver serve`, killed when dropped; its log kept for assertions.
pub struct ApproverProcess {
    child: Child,
    pub inbox: String,
    pub agent: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for ApproverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys, passwords and config files of one test world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub keys: PathBuf,
    pub state: PathBuf,
    admin: Mutex<Option<String>>,
}

fn keygen(dir: &Path, kid: &str) {
    let out = gate_command()
        .args(["keygen", "--out"])
        .arg(dir)
        .args(["--kid", kid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn passwd(name: &str) -> String {
    let mut child = gate_command()
        .args(["approver", "passwd", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        keygen(&keys, "gate1");
        keygen(&keys, "approver1");
        let passwords = format!(
            "# approvers\n{}{}{}",
            passwd("alice"),
            passwd("bob"),
            passwd("carol")
        );
        std::fs::write(dir.path().join("passwords"), passwords).unwrap();
        let state = dir.path().join("approver-state");
        World {
            dir,
            keys,
            state,
            admin: Mutex::new(None),
        }
    }

    pub fn approver(&self) -> ApproverProcess {
        self.approver_on("127.0.0.1:0")
    }

    /// `approver serve` with this world's keys, passwords and `state`, inbox on a free port.
    pub fn approver_command(&self, agent_listen: &str, state: &Path) -> std::process::Command {
        let mut command = gate_command();
        command
            .args([
                "approver",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--agent-listen",
                agent_listen,
            ])
            .arg("--key")
            .arg(self.keys.join("approver1.key"))
            .arg("--gate-key")
            .arg(format!("gate1={}", self.keys.join("gate1.pub").display()))
            .arg("--passwords")
            .arg(self.dir.path().join("passwords"))
            .arg("--state-dir")
            .arg(state);
        command
    }

    pub fn approver_on(&self, agent_listen: &str) -> ApproverProcess {
        self.approver_with(agent_listen, &self.state, &[], &[])
    }

    /// An approver with its own state directory, more arguments and environment.
    // The process is owned by the returned handle, which kills and reaps it.
    #[allow(clippy::zombie_processes)]
    pub fn approver_with(
        &self,
        agent_listen: &str,
        state: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> ApproverProcess {
        let mut child = self
            .approver_command(agent_listen, state)
            .args(["--kid", "approver1", "--max-ttl", "1h"])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "approver did not report its addresses"
            );
            let line = match lines.next() {
                Some(line) => line.unwrap(),
                None => panic!("approver exited before serving: {:?}", child.wait()),
            };
            if let Some(rest) = line.split("inbox on http://").nth(1) {
                let inbox = rest.split('/').next().unwrap().to_owned();
                let agent = line
                    .split("notifications on http://")
                    .nth(1)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned();
                let logs = Arc::new(Mutex::new(Vec::new()));
                let keep = Arc::clone(&logs);
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        keep.lock().unwrap().push(line);
                    }
                });
                return ApproverProcess {
                    child,
                    inbox,
                    agent,
                    logs,
                };
            }
        }
    }

    /// A gate (real binary) that reports escalations to `approver` and trusts its key.
    pub fn gate(&self, agent: &str, max_ttl: &str, extra_toml: &str) -> (GateProcess, String) {
        self.gate_with(agent, max_ttl, "", extra_toml, &[])
    }

    /// [`World::gate`] with top-level keys (`top`), more tables and environment.
    pub fn gate_with(
        &self,
        agent: &str,
        max_ttl: &str,
        top: &str,
        tables: &str,
        envs: &[(&str, &str)],
    ) -> (GateProcess, String) {
        let config = self.dir.path().join("gate.toml");
        std::fs::write(
            &config,
            format!(
                "{top}\n[approvals]\nmax_ttl = \"{max_ttl}\"\n[approvals.keys.approver1]\nfile = \"{}\"\n\
                 [escalations]\nnotify = \"http://{}/v1/notifications\"\nsigning_key = \"{}\"\nkid = \"gate1\"\n{tables}",
                self.keys.join("approver1.pub").display(),
                agent,
                self.keys.join("gate1.key").display(),
            ),
        )
        .unwrap();
        let gate_dir = self.dir.path().join("gate");
        std::fs::create_dir_all(&gate_dir).unwrap();
        let mut all = vec![
            ("ECL_CONFIG", config.to_str().unwrap()),
            ("ECL_AUDIT__INCLUDE_REQUEST", "true"),
        ];
        all.extend_from_slice(envs);
        let (child, addr, admin) = spawn_serve_with_admin(&gate_dir, &all);
        self.admin.lock().unwrap().replace(admin);
        (GateProcess(child), addr)
    }

    /// The admin address of the last gate started.
    pub fn gate_admin(&self) -> String {
        self.admin.lock().unwrap().clone().unwrap()
    }
}

pub struct GateProcess(pub Child);

impl Drop for GateProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn deploy(request_id: &str, service: &str) -> Value {
    request_for(
        "ops",
        "1.0.0",
        request_id,
        "deploy.run",
        Value::object([("service", service.into()), ("version", "1.4.2".into())]),
    )
}

pub fn execute(gate: &str, request: &Value) -> Value {
    crate::cli::post(gate, &canonical::to_canonical(request))
}

pub fn with_token(request: &Value, token: &str) -> Value {
    with(
        request.clone(),
        &["controls"],
        Some(Value::object([("approval_token", token.into())])),
    )
}

/// Waits until the approver knows `intent` (the notification arrived).
pub fn wait_known(agent: &str, intent: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http(agent, "GET", &format!("/v1/approvals/{intent}"), &[], b"");
        if answer.status != 404 {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the notification for {intent} never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signs in through the form; returns the session cookie (`name=value`).
pub fn sign_in(inbox: &str, user: &str, password: &str) -> Result<String, Answer> {
    let page = http(inbox, "GET", "/login", &[], b"");
    assert_eq!(page.status, 200);
    let nonce_cookie = page.cookie("ecl_approver_login").unwrap();
    let nonce = nonce_cookie.split('=').nth(1).unwrap();
    let body = form(&[("csrf", nonce), ("user", user), ("password", password)]);
    let answer = http(
        inbox,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &nonce_cookie),
        ],
        body.as_bytes(),
    );
    match answer.cookie("ecl_approver_session") {
        Some(session) if answer.status == 303 => Ok(session),
        _ => Err(answer),
    }
}

/// The CSRF token in a page's forms.
pub fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

pub fn post_form(inbox: &str, path: &str, session: &str, pairs: &[(&str, &str)]) -> Answer {
    http(
        inbox,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", session),
        ],
        form(pairs).as_bytes(),
    )
}

pub fn wait_approval(agent: &str, intent: &str, timeout: &str) -> (i32, String, String) {
    let out = gate_command()
        .args([
            "wait-approval",
            "--approver",
            &format!("http://{agent}"),
            "--intent-hash",
            intent,
        ])
        .args(["--timeout", timeout, "--poll", "5s"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn approver_records(world: &World) -> Vec<Value> {
    read_records(&world.state.join("approver-audit.log"))
}

/// The gate's ESCALATE record (its log is the one file in `gate/logs`).
fn gate_escalate_record(world: &World) -> Value {
    let log = std::fs::read_dir(world.dir.path().join("gate/logs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    read_records(&log)
        .into_iter()
        .find(|r| r["decision_type"].str() == "ESCALATE")
        .unwrap()
}

fn audit_verify(path: &Path) -> (i32, String) {
    let out = gate_command()
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_approval_in_the_inbox_lets_the_agent_resume_and_a_rejection_stops_it() {
    let world = World::new();
    let approver = world.approver();
    let (_gate, gate) = world.gate(&approver.agent, "1h", "");

    // Agent: ESCALATE.
    let request = deploy("deploy-1", "billing");
    let escalated = execute(&gate, &request);
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{escalated:?}"
    );
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();

    // The notification arrives without anyone copying anything.
    let pending = wait_known(&approver.agent, &intent);
    assert_eq!(pending.status, 202, "{}", pending.body);
    assert_eq!(pending.json()["status"].str(), "pending");

    // The agent waits in the background while alice decides.
    let agent = approver.agent.clone();
    let waiting = {
        let intent = intent.clone();
        std::thread::spawn(move || wait_approval(&agent, &intent, "60s"))
    };

    let session = sign_in(&approver.inbox, "alice", PASSWORD).unwrap();
    let inbox = http(&approver.inbox, "GET", "/", &[("Cookie", &session)], b"");
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.body.contains("deploy.run") && inbox.body.contains(&intent),
        "{}",
        inbox.body
    );
    let detail = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", &session)],
        b"",
    );
    assert_eq!(detail.status, 200);
    // Exactly what would run: the arguments, pretty-printed, and why it was escalated.
    assert!(
        detail
            .body
            .contains("&quot;service&quot;: &quot;billing&quot;"),
        "{}",
        detail.body
    );
    assert!(
        detail.body.contains("required_controls.approval_token"),
        "{}",
        detail.body
    );
    assert!(detail.body.contains("ops@1.0.0"));
    // Who called the gate, as authenticated there (here: no authentication).
    assert!(
        detail.body.contains(
            "<dt>Caller</dt><dd id=\"caller\"><code>anonymous</code> <small>(not authenticated; method <code>none</code>)</small>"
        ),
        "{}",
        detail.body
    );
    let csrf = csrf_of(&detail.body);
    let approved = post_form(
        &approver.inbox,
        &format!("/escalations/{intent}/approve"),
        &session,
        &[("csrf", &csrf), ("ttl", "900")],
    );
    assert_eq!(approved.status, 200, "{}", approved.body);

    let (code, token, stderr) = waiting.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("approved by `alice`"), "{stderr}");
    let allowed = execute(&gate, &with_token(&request, &token));
    assert_eq!(allowed["decision_type"].str(), "ALLOW", "{allowed:?}");

    // The token is the gate's own kind: iss is alice, sub the intent, kid the approver's key.
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let claims = canonical::parse(&claims).unwrap();
    assert_eq!(claims["iss"].str(), "alice");
    assert_eq!(claims["sub"].str(), intent);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    // Reject: the agent's wait fails with the reason, and nothing is allowed.
    let other = deploy("deploy-2", "payments");
    let escalated = execute(&gate, &other);
    let rejected_intent = escalated["escalation"]["intent_hash"].str().to_owned();
    wait_known(&approver.agent, &rejected_intent);
    let detail = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{rejected_intent}"),
        &[("Cookie", &session)],
        b"",
    );
    let rejected = post_form(
        &approver.inbox,
        &format!("/escalations/{rejected_intent}/reject"),
        &session,
        &[
            ("csrf", &csrf_of(&detail.body)),
            ("reason", "payments is frozen until Monday"),
        ],
    );
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    let answer = http(
        &approver.agent,
        "GET",
        &format!("/v1/approvals/{rejected_intent}"),
        &[],
        b"",
    );
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.json()["reason"].str(),
        "payments is frozen until Monday"
    );
    let (code, no_token, stderr) = wait_approval(&approver.agent, &rejected_intent, "10s");
    assert_eq!((code, no_token.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("rejected by `alice`: payments is frozen until Monday"),
        "{stderr}"
    );

    // The approver's audit log: received, approved, received, rejected — chained, verifiable.
    let records = approver_records(&world);
    let kinds: Vec<&str> = records.iter().map(|r| r["record_type"].str()).collect();
    assert_eq!(
        kinds,
        [
            "escalation_received",
            "approval",
            "escalation_received",
            "rejection"
        ]
    );
    assert_eq!(records[1]["approver"].str(), "alice");
    assert_eq!(records[1]["intent_hash"].str(), intent);
    assert_eq!(records[1]["jti"].str(), claims["jti"].str());
    assert_eq!(
        records[3]["reason"].str(),
        "payments is frozen until Monday"
    );
    // The received record cites the gate's ESCALATE record.
    let escalate = gate_escalate_record(&world);
    assert_eq!(
        records[0]["gate_record"]["record_hash"],
        escalate["integrity"]["record_hash"]
    );
    assert!(
        !std::fs::read_to_string(world.state.join("approver-audit.log"))
            .unwrap()
            .contains(&token),
        "the token itself never reaches the audit log"
    );
    let (code, out) = audit_verify(&world.state.join("approver-audit.log"));
    assert_eq!(code, 0, "{out}");

    // The notification on the wire, as the approver stored it, matches its published schema.
    let state = std::fs::read_to_string(world.state.join("state.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(state.lines().next().unwrap()).unwrap();
    let claims_b64 = first["jws"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let wire: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64)
            .unwrap(),
    )
    .unwrap();
    let schema = crate::schemas::schema_file("schemas/escalation-notification.schema.json");
    crate::schemas::assert_valid(&schema, &wire, "the gate's notification");
    assert_eq!(wire["intent_hash"].as_str(), Some(intent.as_str()));
    assert_eq!(wire["tool"]["args"]["service"].as_str(), Some("billing"));
    assert_eq!(
        wire["caller"],
        serde_json::json!({"method": "none", "id": "anonymous"})
    );
    assert_eq!(
        records[0]["caller"],
        Value::object([("id", "anonymous".into()), ("method", "none".into())])
    );
    for required in ["intent_hash", "caller"] {
        let mut broken = wire.clone();
        broken.as_object_mut().unwrap().remove(required);
        assert!(
            !schema.is_valid(&broken),
            "the schema requires `{required}`"
        );
    }
    let mut broken = wire.clone();
    broken["caller"]["method"] = "password".into();
    assert!(!schema.is_valid(&broken), "the schema knows the methods");

    // Tampering (alice becomes mallory) is detected.
    let path = world.state.join("approver-audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"approver\":\"alice\"", "\"approver\":\"mallory\"", 1),
    )
    .unwrap();
    let (code, out) = audit_verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 1"), "{out}");
}

#[test]
fn notifications_without_a_valid_gate_signature_are_refused() {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let world = World::new();
    let approver = world.approver();
    let post = |body: &[u8]| {
        http(
            &approver.agent,
            "POST",
            "/v1/notifications",
            &[("Content-Type", "application/jose")],
            body,
        )
    };

    let missing = post(b"");
    assert_eq!(missing.status, 400);
    assert!(
        missing.json()["error"]
            .str()
            .contains("notification is empty"),
        "{}",
        missing.body
    );
    let garbage = post(b"{\"intent_hash\":\"sha256:00\"}");
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.json()["error"].str().contains("not a valid JWS"),
        "{}",
        garbage.body
    );

    let notification = sample_notification();
    // Signed by a key the approver does not trust, under the trusted kid.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let forged = post(ecl_gate::notify::wire::sign(&stranger, "gate1", &notification).as_bytes());
    assert_eq!(forged.status, 403);
    assert_eq!(
        forged.json()["error"].str(),
        "notification signature does not verify"
    );
    let unknown = post(ecl_gate::notify::wire::sign(&stranger, "gate9", &notification).as_bytes());
    assert_eq!(unknown.status, 403);
    assert_eq!(
        unknown.json()["error"].str(),
        "notification is signed with unknown gate key `gate9`"
    );
    // The gate's own key, but an approval token instead of a notification.
    let pem = std::fs::read_to_string(world.keys.join("gate1.key")).unwrap();
    let gate_key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let wrong_kind = ecl_gate::approval::sign(
        &gate_key,
        "gate1",
        &ecl_gate::approval::Grant {
            issuer: "x",
            intent_hash: &notification.intent_hash,
            issued_at: 1,
            expires_at: 2,
            jti: "j",
        },
    );
    let answer = post(wrong_kind.as_bytes());
    assert_eq!(answer.status, 403);
    assert!(
        answer.json()["error"]
            .str()
            .contains("not an escalation notification"),
        "{}",
        answer.body
    );

    // Nothing reached the inbox or the audit log.
    assert_eq!(
        http(
            &approver.agent,
            "GET",
            &format!("/v1/approvals/{}", notification.intent_hash),
            &[],
            b""
        )
        .status,
        404
    );
    assert!(approver_records(&world).is_empty());

    // Each refusal is logged for the operator.
    let deadline = Instant::now() + Duration::from_secs(5);
    while approver
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("notification refused"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "refusals not logged");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The genuine one is accepted once, then recognized as a retry.
    let genuine = ecl_gate::notify::wire::sign(&gate_key, "gate1", &notification);
    assert_eq!(post(genuine.as_bytes()).status, 201);
    let again = post(genuine.as_bytes());
    assert_eq!(
        (again.status, again.json()["status"].str()),
        (200, "duplicate")
    );
    assert_eq!(approver_records(&world).len(), 1);
}

pub fn sample_notification() -> ecl_gate::notify::Notification {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ecl_gate::notify::Notification {
        gate_kid: String::new(),
        intent_hash: format!("sha256:{}", "5a".repeat(32)),
        request_id: "r-1".into(),
        provenance_id: "prov_x".into(),
        actor: Value::object([
            ("principal_id", "agent:7".into()),
            ("principal_type", "agent".into()),
        ]),
        caller: Some(ecl_gate::caller::Caller::anonymous()),
        tool_name: "deploy.run".into(),
        tool_args: Value::object([("service", "<script>alert(1)</script>".into())]),
        profile_id: "ops".into(),
        profile_version: "1.0.0".into(),
        profile_ref_hash: "sha256:00".into(),
        rules: vec!["required_controls.approval_token".into()],
        detail: "approval required".into(),
        record: ecl_gate::notify::RecordRef {
            stream: "gate.log".into(),
            seq: 0,
            record_hash: "sha256:11".into(),
        },
        decided_at: now,
        expires_at: now + 3600,
    }
}

#[test]
fn the_inbox_refuses_strangers_forms_without_csrf_double_and_racing_approvals() {
    let world = World::new();
    let approver = world.approver();
    let (_gate, gate) = world.gate(&approver.agent, "1h", "");
    let escalated = execute(&gate, &deploy("deploy-7", "search"));
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    wait_known(&approver.agent, &intent);
    let approve_path = format!("/escalations/{intent}/approve");

    // Not signed in: the inbox sends to the sign-in page; a form post is refused outright.
    let inbox = http(&approver.inbox, "GET", "/", &[], b"");
    assert_eq!(
        (inbox.status, inbox.header("location")),
        (303, Some("/login"))
    );
    let anonymous = post_form(&approver.inbox, &approve_path, "x=y", &[("ttl", "900")]);
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .body
            .contains("sign in first: nothing was decided"),
        "{}",
        anonymous.body
    );
    let forged_session = post_form(
        &approver.inbox,
        &approve_path,
        "ecl_approver_session=00ff",
        &[("ttl", "900")],
    );
    assert_eq!(forged_session.status, 401);
    // A wrong password, an unknown name, a sign-in form without its nonce.
    let wrong = sign_in(&approver.inbox, "alice", "guess").unwrap_err();
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("wrong name or password"));
    assert_eq!(
        sign_in(&approver.inbox, "mallory", PASSWORD)
            .unwrap_err()
            .status,
        401
    );
    // Guessing stops: after five failures even the right password is refused for a while.
    for _ in 0..5 {
        assert_eq!(
            sign_in(&approver.inbox, "carol", "guess")
                .unwrap_err()
                .status,
            401
        );
    }
    let locked = sign_in(&approver.inbox, "carol", PASSWORD).unwrap_err();
    assert_eq!(locked.status, 429);
    assert!(
        locked.body.contains("too many failed sign-ins"),
        "{}",
        locked.body
    );
    let no_nonce = http(
        &approver.inbox,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form(&[("user", "alice"), ("password", PASSWORD)]).as_bytes(),
    );
    assert_eq!(no_nonce.status, 403);
    assert!(no_nonce.body.contains("no valid CSRF token"));

    // Signed in, but the form has no CSRF token, or another approver's, or comes from
    // another site: refused, nothing decided.
    let alice = sign_in(&approver.inbox, "alice", PASSWORD).unwrap();
    let bob = sign_in(&approver.inbox, "bob", PASSWORD).unwrap();
    let no_csrf = post_form(&approver.inbox, &approve_path, &alice, &[("ttl", "900")]);
    assert_eq!(no_csrf.status, 403);
    assert!(
        no_csrf
            .body
            .contains("the form carries no valid CSRF token"),
        "{}",
        no_csrf.body
    );
    let bobs_page = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", &bob)],
        b"",
    );
    let bobs_csrf = csrf_of(&bobs_page.body);
    let stolen = post_form(
        &approver.inbox,
        &approve_path,
        &alice,
        &[("csrf", &bobs_csrf), ("ttl", "900")],
    );
    assert_eq!(stolen.status, 403);
    let cross_site = http(
        &approver.inbox,
        "POST",
        &approve_path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &bob),
            ("Origin", "https://evil.example"),
        ],
        form(&[("csrf", &bobs_csrf), ("ttl", "900")]).as_bytes(),
    );
    assert_eq!(cross_site.status, 403);
    assert!(
        cross_site.body.contains("sent from another site"),
        "{}",
        cross_site.body
    );
    // A lifetime beyond max_ttl.
    let too_long = post_form(
        &approver.inbox,
        &approve_path,
        &bob,
        &[("csrf", &bobs_csrf), ("ttl", "3601")],
    );
    assert_eq!(too_long.status, 400);
    assert_eq!(
        http(
            &approver.agent,
            "GET",
            &format!("/v1/approvals/{intent}"),
            &[],
            b""
        )
        .status,
        202
    );

    // Alice and Bob race: one token between them.
    let alices_page = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", &alice)],
        b"",
    );
    let alices_csrf = csrf_of(&alices_page.body);
    let racers: Vec<_> = [
        (alice.clone(), alices_csrf.clone()),
        (bob.clone(), bobs_csrf.clone()),
    ]
    .into_iter()
    .map(|(session, csrf)| {
        let inbox = approver.inbox.clone();
        let path = approve_path.clone();
        std::thread::spawn(move || {
            post_form(&inbox, &path, &session, &[("csrf", &csrf), ("ttl", "900")])
        })
    })
    .collect();
    let mut statuses: Vec<(u16, String)> = racers
        .into_iter()
        .map(|r| {
            let a = r.join().unwrap();
            (a.status, a.body)
        })
        .collect();
    statuses.sort_by_key(|(s, _)| *s);
    assert_eq!(statuses[0].0, 200, "{}", statuses[0].1);
    assert_eq!(statuses[1].0, 409, "{}", statuses[1].1);
    assert!(
        statuses[1].1.contains("was already approved by"),
        "{}",
        statuses[1].1
    );
    assert!(
        statuses[1].1.contains("no second decision is recorded"),
        "{}",
        statuses[1].1
    );

    // Approving (or rejecting) again afterwards: refused, still one token.
    let twice = post_form(
        &approver.inbox,
        &approve_path,
        &alice,
        &[("csrf", &alices_csrf), ("ttl", "900")],
    );
    assert_eq!(twice.status, 409);
    let reject_after = post_form(
        &approver.inbox,
        &format!("/escalations/{intent}/reject"),
        &alice,
        &[("csrf", &alices_csrf), ("reason", "no")],
    );
    assert_eq!(reject_after.status, 409);
    let approvals: Vec<Value> = approver_records(&world)
        .into_iter()
        .filter(|r| r["record_type"].str() != "escalation_received")
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    let first = http(
        &approver.agent,
        "GET",
        &format!("/v1/approvals/{intent}"),
        &[],
        b"",
    )
    .json();
    assert_eq!(first["approver"].str(), approvals[0]["approver"].str());
}

#[test]
fn an_expired_escalation_cannot_be_approved() {
    let world = World::new();
    let approver = world.approver();
    // The gate's max_ttl bounds how long an escalation waits.
    let (_gate, gate) = world.gate(&approver.agent, "2s", "");
    let escalated = execute(&gate, &deploy("deploy-9", "billing"));
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    wait_known(&approver.agent, &intent);
    let alice = sign_in(&approver.inbox, "alice", PASSWORD).unwrap();
    let page = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", &alice)],
        b"",
    );
    let csrf = csrf_of(&page.body);
    std::thread::sleep(Duration::from_millis(3100));
    let late = post_form(
        &approver.inbox,
        &format!("/escalations/{intent}/approve"),
        &alice,
        &[("csrf", &csrf), ("ttl", "1")],
    );
    assert_eq!(late.status, 410, "{}", late.body);
    assert!(
        late.body.contains("has expired; the agent must ask again"),
        "{}",
        late.body
    );
    let answer = http(
        &approver.agent,
        "GET",
        &format!("/v1/approvals/{intent}"),
        &[],
        b"",
    );
    assert_eq!(answer.status, 404);
    let (code, _, stderr) = wait_approval(&approver.agent, &intent, "5s");
    assert_eq!(code, 1, "{stderr}");
    assert!(approver_records(&world)
        .iter()
        .all(|r| r["record_type"].str() == "escalation_received"));
}

#[test]
fn pending_escalations_survive_an_approver_restart_and_notifications_are_retried() {
    let world = World::new();
    let approver = world.approver();
    let (_gate, gate) = world.gate(&approver.agent, "1h", "");
    let first = execute(&gate, &deploy("deploy-a", "billing"));
    let first_intent = first["escalation"]["intent_hash"].str().to_owned();
    wait_known(&approver.agent, &first_intent);
    let agent_addr = approver.agent.clone();
    drop(approver);

    // While the approver is down, the gate keeps answering and keeps the notification.
    let second = execute(&gate, &deploy("deploy-b", "billing"));
    assert_eq!(second["decision_type"].str(), "ESCALATE");
    let second_intent = second["escalation"]["intent_hash"].str().to_owned();

    // Back on the same port: the stored escalation is there, and the retried one arrives.
    let approver = world.approver_on(&agent_addr);
    assert_eq!(wait_known(&approver.agent, &first_intent).status, 202);
    assert_eq!(wait_known(&approver.agent, &second_intent).status, 202);
    let kinds: Vec<String> = approver_records(&world)
        .iter()
        .map(|r| r["record_type"].str().to_owned())
        .collect();
    assert_eq!(kinds, ["escalation_received", "escalation_received"]);
}

/// Reads `ecl_escalation_notifications_total{outcome=…}` from the gate's metrics.
fn notifications(admin: &str, outcome: &str) -> u64 {
    let (_, text) = crate::cli::get(admin, "/metrics");
    text.lines()
        .find(|l| {
            l.starts_with(&format!(
                "ecl_escalation_notifications_total{{outcome=\"{outcome}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_for_count(admin: &str, outcome: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = notifications(admin, outcome);
        if n > 0 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no `{outcome}` notification counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_receiver_never_changes_the_answer_and_is_counted() {
    let world = World::new();
    let approver = world.approver();
    // Receiver down: the ESCALATE is answered at once; the delivery is retried and counted.
    let down = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("127.0.0.1:{port}")
    };
    let (gate_process, gate) = world.gate(&down, "1h", "");
    let escalated = execute(&gate, &deploy("deploy-x", "billing"));
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{escalated:?}"
    );
    assert!(wait_for_count(&world.gate_admin(), "retried") >= 1);
    drop(gate_process);

    // A receiver that refuses (here: the inbox listener, which has no such route) is not
    // retried: the refusal is counted once.
    let refusing = approver.inbox.clone();
    let (_gate, gate) = world.gate(&refusing, "1h", "");
    let escalated = execute(&gate, &deploy("deploy-y", "billing"));
    assert_eq!(escalated["decision_type"].str(), "ESCALATE");
    assert_eq!(wait_for_count(&world.gate_admin(), "refused"), 1);
    assert_eq!(notifications(&world.gate_admin(), "delivered"), 0);
}

// The notification says who called the gate as its record does: a JWT caller's `sub` and
// `iss` reach the approver's inbox and audit log, not only what the agent claims in `actor`.
#[test]
fn an_authenticated_caller_reaches_the_inbox_and_the_approvers_audit_log() {
    let world = World::new();
    let approver = world.approver();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/callers");
    let auth = format!(
        "[auth]\nmethods = [\"jwt\"]\n[auth.jwt]\nissuer = \"https://issuer.test\"\naudience = \"ecl-gate\"\n\
         [auth.jwt.keys.\"ed-1\"]\nalg = \"EdDSA\"\nfile = \"{}\"\n",
        fixtures.join("ed.pub.pem").display()
    );
    let (_gate, gate) = world.gate(&approver.agent, "1h", &auth);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let bearer = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": "https://issuer.test", "aud": "ecl-gate",
                            "sub": "system:serviceaccount:agents:deployer",
                            "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_ed_pem(
            &std::fs::read(fixtures.join("ed.key.pem")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let answer = http(
        &gate,
        "POST",
        "/v1/execute",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {bearer}")),
        ],
        &canonical::to_canonical(&deploy("deploy-jwt", "billing")),
    );
    let escalated = answer.json();
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{}",
        answer.body
    );
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    wait_known(&approver.agent, &intent);

    let expected = Value::object([
        ("id", "system:serviceaccount:agents:deployer".into()),
        ("iss", "https://issuer.test".into()),
        ("method", "jwt".into()),
    ]);
    let received = approver_records(&world);
    assert_eq!(received[0]["caller"], expected);
    let escalate = gate_escalate_record(&world);
    assert_eq!(escalate["caller"], expected, "the gate recorded the same");

    let session = sign_in(&approver.inbox, "alice", PASSWORD).unwrap();
    let detail = http(
        &approver.inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", &session)],
        b"",
    );
    assert!(
        detail.body.contains(
            "<code>system:serviceaccount:agents:deployer</code> <small>(JWT from https://issuer.test; method <code>jwt</code>)</small>"
        ),
        "{}",
        detail.body
    );
}

/// Runs `approver serve` expecting it to refuse to start; returns its stderr.
fn approver_refuses(world: &World, envs: &[(&str, &str)]) -> String {
    let out = world
        .approver_command("127.0.0.1:0", &world.state)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "it must not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// Only the approver's exact variable names are let through: a typo stops both the gate and
// the approver, named, instead of being silently ignored.
#[test]
fn a_misspelt_approver_variable_stops_the_gate_and_the_approver_and_the_real_ones_work() {
    let world = World::new();

    // The approver refuses the typo, naming it (and what it reads).
    let refused = approver_refuses(&world, &[("ECL_APPROVER_LISTN", "127.0.0.1:8399")]);
    assert!(
        refused.contains("unknown environment variable `ECL_APPROVER_LISTN`"),
        "{refused}"
    );
    assert!(refused.contains("ECL_APPROVER_LISTEN"), "{refused}");
    // So does wait-approval.
    let out = gate_command()
        .args([
            "wait-approval",
            "--approver",
            "http://127.0.0.1:9",
            "--intent-hash",
        ])
        .arg(format!("sha256:{}", "ab".repeat(32)))
        .env("ECL_APPROVER_TIMEOUT", "5s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown environment variable `ECL_APPROVER_TIMEOUT`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The real names are read: the approver takes its setting from one.
    let approver = world.approver_with(
        "127.0.0.1:0",
        &world.state,
        &[],
        &[
            ("ECL_APPROVER_SECURE_COOKIES", "true"),
            ("ECL_APPROVER_URL", "http://unused"),
        ],
    );
    let login = http(&approver.inbox, "GET", "/login", &[], b"");
    let set_cookie = login.header("set-cookie").unwrap_or_default();
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
    drop(approver);

    // The gate starts with every real name exported, and refuses the typo, naming it.
    let gate_dir = world.dir.path().join("typo-gate");
    std::fs::create_dir_all(&gate_dir).unwrap();
    let all: Vec<(&str, &str)> = ecl_gate::config::APPROVER_VARIABLES
        .iter()
        .map(|name| (*name, "1"))
        .collect();
    let (mut started, _, _) = spawn_serve_with_admin(&gate_dir, &all);
    let _ = started.kill();
    let _ = started.wait();
    let refused = gate_command()
        .current_dir(&gate_dir)
        .env("ECL_APPROVER_LISTEN", "1")
        .env("ECL_APPROVER_LISTN", "1")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ECL_APPROVER_LISTN"), "{stderr}");
    assert!(!stderr.contains("ECL_APPROVER_LISTEN"), "{stderr}");
}
