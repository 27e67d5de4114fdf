//! The approval loop with a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver. A person signs in, opens the inbox, reads the
//! call's arguments, clicks Approve; the agent's `wait-approval` gets the token and the resent
//! call is ALLOWed and forwarded to the tool exactly once (proxy mode). Then the same with
//! Reject: the agent's wait fails with the reason and the tool is never called.
//!
//! Without chromium the test says so loudly and passes, except under `CI=true`, where a missing
//! browser is a failure (`.ci/run` installs it). `ECL_SCREENSHOT_DIR=docs` also saves the
//! README's screenshots there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::approver::*;
use crate::common::ValueExt;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            b"",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    // The process is owned by the returned handle, which kills and reaps it.
    #[allow(clippy::zombie_processes)]
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // A phone-sized window: the inbox must be usable there.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=430,1000", "--hide-scrollbars"]
            }
        }}});
        let mut driver = Driver {
            child,
            addr,
            session: String::new(),
        };
        let created = driver.call("POST", "/session", Some(capabilities));
        driver.session = created["sessionId"].as_str().unwrap().to_owned();
        driver
    }

    fn call(&self, method: &str, path: &str, body: Option<Json>) -> Json {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let answer = http(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let value: Json = serde_json::from_str(&answer.body).unwrap_or(Json::Null);
        assert_eq!(
            answer.status, 200,
            "webdriver {method} {path}: {}",
            answer.body
        );
        value["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Json>) -> Json {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects, waiting up to 10 s for it: a click that submits a form may
    /// return before the next page has loaded.
    fn find(&self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css}).to_string();
        let path = format!("/session/{}/element", self.session);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = http(
                &self.addr,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
            let value: Json = serde_json::from_str(&answer.body).unwrap_or(Json::Null);
            if answer.status == 200 {
                if let Some(id) = value["value"][ELEMENT].as_str() {
                    return id.to_owned();
                }
            }
            if Instant::now() > deadline {
                panic!("no element `{css}` ({}) on {}", answer.body, self.source());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.session_call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn source(&self) -> String {
        self.session_call("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Saves a PNG screenshot as `dir/name` when `ECL_SCREENSHOT_DIR` names a directory.
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("ECL_SCREENSHOT_DIR") else {
            return;
        };
        let png = self.session_call("GET", "/screenshot", None);
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(Path::new(&dir).join(name), bytes).unwrap();
    }
}

/// A stand-in tool: answers every call 200 and counts them.
fn tool() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}");
        }
    });
    (addr, calls)
}

fn browser_available() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let message = format!(
        "BROWSER TEST NOT RUN: `{CHROMIUM}` or `{CHROMEDRIVER}` is missing; install them with \
         `apt-get install -y chromium chromium-driver` (.ci/run does)"
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    // Straight to the process's stderr: the harness captures `eprintln!` of passing tests,
    // and this must be seen.
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!!\n{message}\n!!!!!!!!\n");
    false
}

#[test]
fn a_person_approves_and_rejects_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let world = World::new();
    let approver = world.approver();
    let (tool_addr, calls) = tool();
    // Proxy mode over a profiles root with the ops profile only: every tool needs an upstream.
    let profiles = world.dir.path().join("profiles/ops");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::copy(shipped_profiles_ops(), profiles.join("1.0.0.json")).unwrap();
    let root = world.dir.path().join("profiles");
    let mut tables = format!(
        "[grants]\nsigning_key = \"{}\"\n",
        world.keys.join("gate1.key").display()
    );
    for tool in ["deploy.run", "email.send", "metrics.query"] {
        tables.push_str(&format!(
            "[upstreams.\"{tool}\"]\nurl = \"http://{tool_addr}/{tool}\"\n"
        ));
    }
    let (_gate, gate) = world.gate_with(
        &approver.agent,
        "1h",
        "mode = \"proxy\"",
        &tables,
        &[("PROFILES_ROOT", root.to_str().unwrap())],
    );

    let request = deploy("deploy-1", "billing");
    let escalated = execute(&gate, &request);
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{escalated:?}"
    );
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    let refused = deploy("deploy-2", "payments");
    let refused_intent = execute(&gate, &refused)["escalation"]["intent_hash"]
        .str()
        .to_owned();
    let mail = crate::common::request_for(
        "ops",
        "1.0.0",
        "mail-1",
        "email.send",
        ecl_gate::canonical::Value::object([
            ("to", "partner@elsewhere.org".into()),
            ("subject", "Q3 numbers".into()),
        ]),
    );
    let mail_escalated = execute(&gate, &mail);
    assert_eq!(
        mail_escalated["decision_type"].str(),
        "ESCALATE",
        "{mail_escalated:?}"
    );
    for hash in [
        &intent,
        &refused_intent,
        mail_escalated["escalation"]["intent_hash"].str(),
    ] {
        wait_known(&approver.agent, hash);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing ran before approval"
    );

    let agent = approver.agent.clone();
    let waiting = {
        let intent = intent.clone();
        std::thread::spawn(move || wait_approval(&agent, &intent, "120s"))
    };

    let browser = Driver::start();
    let inbox = format!("http://{}/", approver.inbox);
    browser.go(&inbox);
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.type_into("#user", "alice");
    browser.type_into("#password", PASSWORD);
    browser.click("#sign-in");
    browser.find("tr.escalation");
    let page = browser.source();
    assert!(page.contains("Pending escalations (3)"), "{page}");
    browser.screenshot("approver-inbox.png");

    browser.click(&format!("a[href=\"/escalations/{intent}\"]"));
    browser.find("#approve");
    let args = browser.text("#args");
    assert!(
        args.contains("\"service\": \"billing\"") && args.contains("\"version\": \"1.4.2\""),
        "{args}"
    );
    assert!(browser
        .text("#rules")
        .contains("required_controls.approval_token"));
    browser.screenshot("approver-detail.png");
    browser.click("#ttl option[value=\"900\"]");
    browser.click("#approve");
    let message = browser.text("#message");
    assert!(message.contains("approved for 15m"), "{message}");

    let (code, token, stderr) = waiting.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    let allowed = execute(&gate, &with_token(&request, &token));
    assert_eq!(allowed["decision_type"].str(), "ALLOW", "{allowed:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the approved call ran exactly once"
    );

    // Reject, in the browser too.
    browser.go(&format!("{inbox}escalations/{refused_intent}"));
    browser.type_into("#reason", "payments is frozen until Monday");
    browser.click("#reject");
    assert!(browser.text("#message").contains("rejected"));
    let (code, no_token, stderr) = wait_approval(&approver.agent, &refused_intent, "10s");
    assert_eq!((code, no_token.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("payments is frozen until Monday"),
        "{stderr}"
    );
    let still = execute(&gate, &refused);
    assert_eq!(still["decision_type"].str(), "ESCALATE");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the rejected call never ran"
    );

    // The inbox now lists the rest: one pending, two decided.
    browser.go(&inbox);
    let page = browser.source();
    assert!(
        page.contains("Pending escalations (1)") && page.contains("Decided"),
        "{page}"
    );
}

fn shipped_profiles_ops() -> std::path::PathBuf {
    crate::common::shipped_profiles().join("ops/1.0.0.json")
}
