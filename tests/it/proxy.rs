//! Proxy mode over real HTTP: the gate on 127.0.0.1:0 forwarding to wiremock tools, a TLS tool
//! with a CA made in the test, and the reference demo tool refusing every bypass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ecl_gate::audit::verify_files;
use ecl_gate::canonical::{self, Value};
use ecl_gate::config::proxy::{validate, FileRef, RawGrants, RawHeaderValue, RawTls, RawUpstream};
use ecl_gate::grant::{verify_grant, GrantSigner, GrantVerifier, GrantedCall};
use ecl_gate::proxy::ProxyConfig;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{SigningKey, VerifyingKey};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;
use crate::demo_tool;

const API_KEY: &str = "Bearer s3cret-injected-by-the-gate";
const GATE_SEED: [u8; 32] = [42; 32];

fn gate_key() -> SigningKey {
    SigningKey::from_bytes(&GATE_SEED)
}

/// Writes the gate's grant key (a clearly fake test key) and the API credential into `dir`.
pub(crate) fn write_secrets(dir: &Path) -> (PathBuf, PathBuf) {
    let key_path = dir.join("grant.key");
    let pem = KeypairBytes {
        secret_key: GATE_SEED,
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .unwrap();
    std::fs::write(&key_path, pem.as_bytes()).unwrap();
    let credential = dir.join("api-key");
    std::fs::write(&credential, format!("{API_KEY}\n")).unwrap();
    (key_path, credential)
}

pub(crate) fn upstream(url: &str) -> RawUpstream {
    RawUpstream {
        url: url.to_owned(),
        method: None,
        timeout_ms: Some(5_000),
        audience: None,
        max_concurrent: None,
        headers: BTreeMap::new(),
        client_cert: None,
        client_key: None,
    }
}

/// A validated proxy configuration, through the same path `serve` uses.
pub(crate) fn proxy_config(
    dir: &Path,
    upstreams: Vec<(&str, RawUpstream)>,
    tls: RawTls,
) -> ProxyConfig {
    let (key, credential) = write_secrets(dir);
    let upstreams = upstreams
        .into_iter()
        .map(|(tool, mut raw)| {
            raw.headers.insert(
                "Authorization".into(),
                RawHeaderValue::File(FileRef {
                    file: credential.clone(),
                    prefix: None,
                }),
            );
            (tool.to_owned(), raw)
        })
        .collect();
    validate(
        upstreams,
        RawGrants {
            signing_key: Some(key),
            ..RawGrants::default()
        },
        tls,
        64 * 1024,
    )
    .unwrap()
}

/// A tool that fails the test (at `tool.verify()`) if anything reaches it.
async fn tool_that_must_not_be_called() -> MockServer {
    let tool = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&tool)
        .await;
    tool
}

pub(crate) async fn proxy_gate(config: ProxyConfig) -> TestGate {
    TestGate::start_with(Options {
        proxy: Some(config),
        ..Options::default()
    })
    .await
}

/// A gate whose every example and ops tool goes to `url` (+ the tool name as path).
async fn gate_to(server_uri: &str, dir: &Path) -> TestGate {
    let tools = ["email.send", "storage.put", "deploy.run", "deploy.rollback"];
    let upstreams = tools
        .iter()
        .map(|tool| (*tool, upstream(&format!("{server_uri}/{tool}"))))
        .collect();
    proxy_gate(proxy_config(dir, upstreams, RawTls::default())).await
}

pub(crate) fn allowed_email() -> Value {
    request("r-allow", "email.send", email_args("bob@example.com", "hi"))
}

/// Every record of the gate's log, checked as a chain.
pub(crate) fn verified_records(gate: &TestGate) -> Vec<Value> {
    verify_files(std::slice::from_ref(&gate.audit_path)).unwrap();
    gate.records()
}

#[tokio::test]
async fn an_allow_reaches_the_tool_once_with_the_credential_and_a_grant_for_the_exact_body() {
    let tool = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email.send"))
        .and(header("authorization", API_KEY))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "m-1"})))
        .expect(1)
        .mount(&tool)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_to(&tool.uri(), dir.path()).await;

    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(status, 200, "{answer:?}");
    assert_eq!(answer["decision_type"].str(), "ALLOW");
    let execution = &answer["execution"];
    assert_eq!(execution["status"].as_u64_exact(), 200);
    assert_eq!(execution["body"], Value::object([("id", "m-1".into())]));
    assert_eq!(execution["body_encoding"].str(), "json");
    assert!(execution.get("duration_ms").is_some());

    // What the tool received: the canonical args, and a grant that verifies against them.
    let received = tool.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    let args = email_args("bob@example.com", "hi");
    assert_eq!(sent.body, canonical::to_canonical(&args));
    let token = sent.headers.get("ecl-grant").unwrap().to_str().unwrap();
    let audience = format!("{}/email.send", tool.uri());
    let claims = verify_grant(
        token,
        &sent.body,
        &gate_key().verifying_key(),
        &audience,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(claims.provenance_id, answer["provenance_id"].str());
    assert_eq!(claims.request_hash, answer["request_hash"].str());
    assert_eq!(claims.tool, "email.send");
    assert_eq!(claims.exp - claims.iat, 30);
    // The agent never sees the grant: it could not replay it anyway, but it has no use for it.
    assert!(!canonical::to_canonical(&answer)
        .windows(token.len())
        .any(|w| w == token.as_bytes()));

    // Decision first, then the outcome, linked and chained in the same log.
    let records = verified_records(&gate);
    assert_eq!(records.len(), 2);
    let decision = gate.record_for(&answer);
    assert_eq!(decision["record_type"].str(), "decision");
    assert_eq!(decision["seq"].as_u64_exact(), 0);
    let outcome = &records[1];
    assert_eq!(outcome["record_type"].str(), "outcome");
    assert_eq!(outcome["provenance_id"], answer["provenance_id"]);
    assert_eq!(outcome["request_id"].str(), "r-allow");
    assert_eq!(outcome["decision"]["seq"].as_u64_exact(), 0);
    assert_eq!(
        outcome["decision"]["record_hash"],
        decision["integrity"]["record_hash"]
    );
    assert_eq!(outcome["status"].as_u64_exact(), 200);
    assert_eq!(
        outcome["body_sha256"].str(),
        canonical::sha256_prefixed(br#"{"id":"m-1"}"#)
    );
    assert_eq!(outcome["request_body_sha256"].str(), claims.body_sha256);
    assert_eq!(outcome["grant"]["jti"].str(), claims.jti);
    assert_eq!(outcome["grant"]["kid"].str(), claims.kid);
    assert!(outcome["error"].is_null());
    assert_eq!(outcome["upstream"]["url"].str(), audience);
    assert_eq!(execution["audit"]["seq"].as_u64_exact(), 1);
    assert_eq!(
        execution["audit"]["record_hash"],
        outcome["integrity"]["record_hash"]
    );
    // The credential is in no record.
    let log = std::fs::read_to_string(&gate.audit_path).unwrap();
    assert!(!log.contains("s3cret"));
    tool.verify().await;
}

#[tokio::test]
async fn deny_never_contacts_the_tool() {
    let tool = tool_that_must_not_be_called().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_to(&tool.uri(), dir.path()).await;

    let denied = [
        // An argument rule.
        bytes_of(&request(
            "r-1",
            "email.send",
            email_args("eve@evil.com", "hi"),
        )),
        // A tool the profile does not list (and no upstream either).
        bytes_of(&request(
            "r-2",
            "shell.exec",
            Value::object([("cmd", "id".into())]),
        )),
        // Approval required and absent.
        bytes_of(&request(
            "r-3",
            "storage.put",
            Value::object([("key", "k".into())]),
        )),
        // Not even JSON.
        Bytes::from_static(b"{not json"),
    ];
    for body in denied {
        let (status, answer) = gate.execute(body).await;
        assert_eq!(status, 200);
        assert_eq!(answer["decision_type"].str(), "DENY", "{answer:?}");
        assert!(answer.get("execution").is_none(), "{answer:?}");
    }
    let records = verified_records(&gate);
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r["record_type"].str() == "decision"));
    tool.verify().await;
}

#[tokio::test]
async fn escalate_never_contacts_the_tool() {
    let tool = tool_that_must_not_be_called().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_to(&tool.uri(), dir.path()).await;
    let deploy = request_for(
        "ops",
        "1.0.0",
        "r-esc",
        "deploy.run",
        Value::object([("service", "billing".into()), ("version", "1.4.2".into())]),
    );
    let (status, answer) = gate.execute(bytes_of(&deploy)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision_type"].str(), "ESCALATE", "{answer:?}");
    assert!(answer.get("execution").is_none());
    assert_eq!(verified_records(&gate).len(), 1);
    tool.verify().await;
}

#[tokio::test]
async fn an_allow_whose_decision_record_failed_is_never_forwarded() {
    // /dev/full refuses every write: the ALLOW cannot be recorded, so it must not happen.
    let tool = tool_that_must_not_be_called().await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy_config(
        dir.path(),
        vec![(
            "email.send",
            upstream(&format!("{}/email.send", tool.uri())),
        )],
        RawTls::default(),
    );
    let gate = TestGate::start_with(Options {
        proxy: Some(config),
        audit_path: Some(PathBuf::from("/dev/full")),
        ..Options::default()
    })
    .await;
    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(status, 503);
    assert_eq!(answer["reason_code"].str(), "AUDIT_WRITE_FAILED");
    assert!(answer.get("execution").is_none());
    tool.verify().await;
}

/// Sends the allowed email through a gate whose only upstream is `raw`; returns the answer and
/// the outcome record.
async fn forward_to(raw: RawUpstream, tls: RawTls) -> (u16, Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let gate = proxy_gate(proxy_config(dir.path(), vec![("email.send", raw)], tls)).await;
    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
    let records = verified_records(&gate);
    assert_eq!(records.len(), 2, "{records:?}");
    let outcome = records[1].clone();
    assert_eq!(outcome["record_type"].str(), "outcome");
    assert_eq!(outcome["provenance_id"], answer["provenance_id"]);
    // Proxy answers, tool errors included, are what openapi.yaml says they are.
    let doc = crate::schemas::openapi();
    crate::schemas::assert_valid(
        &crate::schemas::execute_response(&doc, status),
        &crate::schemas::to_json(&answer),
        "proxy answer",
    );
    (status, answer, outcome)
}

#[tokio::test]
async fn a_5xx_is_returned_and_recorded_as_the_tools_answer() {
    let tool = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("content-type", "text/plain")
                .set_body_string("mail relay down"),
        )
        .expect(1)
        .mount(&tool)
        .await;
    let (status, answer, outcome) = forward_to(upstream(&tool.uri()), RawTls::default()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["execution"]["status"].as_u64_exact(), 503);
    assert_eq!(answer["execution"]["body"].str(), "mail relay down");
    assert_eq!(answer["execution"]["body_encoding"].str(), "text");
    assert_eq!(outcome["status"].as_u64_exact(), 503);
    assert_eq!(
        outcome["body_sha256"].str(),
        canonical::sha256_prefixed(b"mail relay down")
    );
    assert!(outcome["error"].is_null());
}

#[tokio::test]
async fn a_timeout_is_an_outcome_error() {
    let tool = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&tool)
        .await;
    let raw = RawUpstream {
        timeout_ms: Some(200),
        ..upstream(&tool.uri())
    };
    let (status, answer, outcome) = forward_to(raw, RawTls::default()).await;
    assert_eq!(status, 200);
    let error = &answer["execution"]["error"];
    assert_eq!(error["kind"].str(), "timeout", "{answer:?}");
    assert_eq!(
        error["message"].str(),
        "the tool did not answer within 200 ms"
    );
    assert!(answer["execution"].get("status").is_none());
    assert_eq!(outcome["error"]["kind"].str(), "timeout");
    assert!(outcome["status"].is_null());
    assert!(outcome["duration_ms"].as_u64_exact() >= 200);
}

#[tokio::test]
async fn a_refused_connection_is_an_outcome_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (_, answer, outcome) = forward_to(
        upstream(&format!("http://127.0.0.1:{port}/send")),
        RawTls::default(),
    )
    .await;
    assert_eq!(
        answer["execution"]["error"]["kind"].str(),
        "connect",
        "{answer:?}"
    );
    assert_eq!(outcome["error"]["kind"].str(), "connect");
}

#[tokio::test]
async fn an_oversized_answer_is_an_outcome_error() {
    let tool = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 100 * 1024]))
        .mount(&tool)
        .await;
    let (_, answer, outcome) = forward_to(upstream(&tool.uri()), RawTls::default()).await;
    assert_eq!(answer["execution"]["error"]["kind"].str(), "body_too_large");
    assert_eq!(outcome["error"]["kind"].str(), "body_too_large");
}

#[tokio::test]
async fn an_allowed_tool_without_upstream_is_recorded_and_never_forwarded() {
    // Only reachable with a profile version loaded after start (`serve` refuses to start when a
    // loaded profile allows a tool without upstream); the call goes nowhere.
    let tool = tool_that_must_not_be_called().await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy_config(
        dir.path(),
        vec![("storage.put", upstream(&tool.uri()))],
        RawTls::default(),
    );
    let gate = proxy_gate(config).await;
    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision_type"].str(), "ALLOW");
    assert_eq!(answer["execution"]["error"]["kind"].str(), "no_upstream");
    let records = verified_records(&gate);
    assert_eq!(records[1]["error"]["kind"].str(), "no_upstream");
    assert!(records[1]["grant"].is_null());
    tool.verify().await;
}

// ---- TLS, with a CA made in the test ----

struct TlsTool {
    addr: SocketAddr,
    ca_pem: PathBuf,
    hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// A tool on 127.0.0.1 serving HTTP/1.1 and HTTP/2 over TLS with a certificate for 127.0.0.1,
/// issued by a throwaway CA; it answers with the HTTP version it saw.
async fn tls_tool() -> TlsTool {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ecl-gate test CA (throwaway)");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // A handshake the client aborts (untrusted certificate) ends here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let version = format!("{:?}", request.version());
                    let granted = request.headers().contains_key("ecl-grant");
                    async move {
                        let body = serde_json::json!({"version": version, "granted": granted});
                        let mut response =
                            http::Response::new(Full::new(Bytes::from(body.to_string())));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsTool {
        addr,
        ca_pem,
        hits,
        _dir: dir,
    }
}

#[tokio::test]
async fn tls_with_the_configured_ca_speaks_http2() {
    let tool = tls_tool().await;
    let tls = RawTls {
        ca_file: Some(tool.ca_pem.clone()),
        public_roots: false,
        ..RawTls::default()
    };
    let (status, answer, outcome) =
        forward_to(upstream(&format!("https://{}/send", tool.addr)), tls).await;
    assert_eq!(status, 200);
    let execution = &answer["execution"];
    assert_eq!(execution["status"].as_u64_exact(), 200, "{answer:?}");
    assert_eq!(execution["body"]["version"].str(), "HTTP/2.0");
    assert_eq!(execution["body"]["granted"], Value::Bool(true));
    assert_eq!(outcome["status"].as_u64_exact(), 200);
    assert_eq!(tool.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_fails_the_call() {
    let tool = tls_tool().await;
    // Public roots only: the test CA is not among them.
    let (status, answer, outcome) = forward_to(
        upstream(&format!("https://{}/send", tool.addr)),
        RawTls::default(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["execution"]["error"]["kind"].str(),
        "tls",
        "{answer:?}"
    );
    assert_eq!(outcome["error"]["kind"].str(), "tls");
    assert!(outcome["status"].is_null());
    assert_eq!(
        tool.hits.load(Ordering::SeqCst),
        0,
        "no request over an untrusted TLS"
    );
}

#[tokio::test]
async fn https_never_falls_back_to_plain_http() {
    // A plain-HTTP tool behind an https:// URL: the handshake fails and nothing is sent.
    let tool = tool_that_must_not_be_called().await;
    let url = tool.uri().replace("http://", "https://");
    let (_, answer, outcome) = forward_to(upstream(&url), RawTls::default()).await;
    let kind = answer["execution"]["error"]["kind"].str();
    assert!(
        kind == "tls" || kind == "connect" || kind == "protocol",
        "{answer:?}"
    );
    assert!(!outcome["error"].is_null());
    tool.verify().await;
}

#[tokio::test]
async fn a_deny_stays_uncalled_whatever_the_upstream_state() {
    // Failing upstreams (refused, untrusted TLS) change nothing for a DENY: no outcome at all.
    let tool = tls_tool().await;
    let dir = tempfile::tempdir().unwrap();
    let config = proxy_config(
        dir.path(),
        vec![(
            "email.send",
            upstream(&format!("https://{}/send", tool.addr)),
        )],
        RawTls::default(),
    );
    let gate = proxy_gate(config).await;
    let denied = request("r-d", "email.send", email_args("eve@evil.com", "x"));
    let (_, answer) = gate.execute(bytes_of(&denied)).await;
    assert_eq!(answer["decision_type"].str(), "DENY");
    assert!(answer.get("execution").is_none());
    assert_eq!(verified_records(&gate).len(), 1);
    assert_eq!(tool.hits.load(Ordering::SeqCst), 0);
}

// ---- The demo tool: the tool side, and bypass attempts against it ----

const DEMO_AUDIENCE: &str = "demo-tool";

async fn start_demo_tool(api_key: Option<&str>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let settings = demo_tool::Settings::new(
        GrantVerifier::single(gate_key().verifying_key(), DEMO_AUDIENCE),
        Some("email.send".into()),
        api_key.map(str::to_owned),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(demo_tool::serve(listener, Arc::new(settings), async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Calls the demo tool directly, as an agent bypassing the gate would.
async fn call_tool(addr: SocketAddr, body: &[u8], grants: &[&str]) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/call"))
        .header("content-type", "application/json");
    for grant in grants {
        request = request.header("ECL-Grant", *grant);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, canonical::parse(&bytes).unwrap())
}

fn demo_body() -> Vec<u8> {
    canonical::to_canonical(&email_args("bob@example.com", "hi"))
}

fn sign(key: SigningKey, body: &[u8], audience: &str, issued: SystemTime) -> String {
    GrantSigner::new(key, "gate".into(), Duration::from_secs(30))
        .sign(
            &GrantedCall {
                provenance_id: "prov_test",
                request_hash: "sha256:test",
                tool: "email.send",
                body,
                audience,
            },
            issued,
        )
        .unwrap()
        .0
}

#[tokio::test]
async fn the_demo_tool_refuses_every_bypass() {
    let (addr, _stop) = start_demo_tool(None).await;
    let body = demo_body();
    let now = SystemTime::now();

    let expect_refusal = |(status, answer): (u16, Value), code: &str, want: u16| {
        assert_eq!(status, want, "{code}: {answer:?}");
        assert_eq!(answer["error"].str(), code);
        assert!(!answer["reason"].str().is_empty());
    };
    // No grant at all: the agent calls the tool directly.
    expect_refusal(call_tool(addr, &body, &[]).await, "grant_missing", 401);
    // A grant for another body: the agent swaps the arguments after the gate approved others.
    let other = canonical::to_canonical(&email_args("eve@evil.com", "hi"));
    let grant = sign(gate_key(), &other, DEMO_AUDIENCE, now);
    expect_refusal(
        call_tool(addr, &body, &[&grant]).await,
        "grant_body_mismatch",
        403,
    );
    // An expired grant: replayed later.
    let old = now - Duration::from_secs(120);
    let grant = sign(gate_key(), &body, DEMO_AUDIENCE, old);
    expect_refusal(
        call_tool(addr, &body, &[&grant]).await,
        "grant_expired",
        403,
    );
    // Signed by another key: the agent made its own.
    let grant = sign(SigningKey::from_bytes(&[1; 32]), &body, DEMO_AUDIENCE, now);
    expect_refusal(
        call_tool(addr, &body, &[&grant]).await,
        "grant_bad_signature",
        403,
    );
    // For another audience: a grant taken from one tool and shown to another.
    let grant = sign(gate_key(), &body, "payments-tool", now);
    expect_refusal(
        call_tool(addr, &body, &[&grant]).await,
        "grant_wrong_audience",
        403,
    );
    // Garbage, and two grants at once.
    expect_refusal(
        call_tool(addr, &body, &["x.y.z"]).await,
        "grant_malformed",
        403,
    );
    let good = sign(gate_key(), &body, DEMO_AUDIENCE, now);
    expect_refusal(
        call_tool(addr, &body, &[&good, &good]).await,
        "grant_malformed",
        403,
    );

    // A good grant works once; the same grant again is a replay.
    let (status, answer) = call_tool(addr, &body, &[&good]).await;
    assert_eq!(status, 200, "{answer:?}");
    assert_eq!(answer["received"], email_args("bob@example.com", "hi"));
    expect_refusal(
        call_tool(addr, &body, &[&good]).await,
        "grant_replayed",
        403,
    );
}

#[tokio::test]
async fn the_gate_and_the_demo_tool_work_end_to_end() {
    let (addr, _stop) = start_demo_tool(Some("s3cret-injected-by-the-gate")).await;
    let dir = tempfile::tempdir().unwrap();
    let raw = RawUpstream {
        audience: Some(DEMO_AUDIENCE.into()),
        ..upstream(&format!("http://{addr}/call"))
    };
    let (status, answer, outcome) = {
        let config = proxy_config(dir.path(), vec![("email.send", raw)], RawTls::default());
        let gate = proxy_gate(config).await;
        let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
        let records = verified_records(&gate);
        (status, answer, records[1].clone())
    };
    assert_eq!(status, 200);
    let execution = &answer["execution"];
    assert_eq!(execution["status"].as_u64_exact(), 200, "{answer:?}");
    assert_eq!(execution["body"]["ok"], Value::Bool(true));
    assert_eq!(execution["body"]["provenance_id"], answer["provenance_id"]);
    assert_eq!(execution["body"]["grant_jti"], outcome["grant"]["jti"]);
    assert_eq!(
        execution["body"]["received"],
        email_args("bob@example.com", "hi")
    );
}

// ---- The command line ----

fn write_pub(dir: &Path, key: &VerifyingKey) -> PathBuf {
    let path = dir.join("gate.pub");
    std::fs::write(&path, key.to_public_key_pem(Default::default()).unwrap()).unwrap();
    path
}

#[test]
fn grant_verify_from_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let pubkey = write_pub(dir.path(), &gate_key().verifying_key());
    let body = demo_body();
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, &body).unwrap();
    let grant = sign(gate_key(), &body, DEMO_AUDIENCE, SystemTime::now());
    let run = |extra: &[&str], token: &str| {
        gate_command()
            .args(["grant", "verify", "--pubkey"])
            .arg(&pubkey)
            .arg("--body")
            .arg(&body_file)
            .args(extra)
            .arg(token)
            .output()
            .unwrap()
    };
    let out = run(&["--audience", DEMO_AUDIENCE], &grant);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("ok: grant `"), "{stdout}");
    assert!(stdout.contains("tool `email.send`"), "{stdout}");

    let out = run(&["--audience", "payments-tool"], &grant);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout.trim(),
        "refused: grant is for audience `demo-tool`, not `payments-tool`"
    );

    // Without --audience everything else is still checked, and the note says so.
    let out = run(&[], &grant);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audience was not checked"));

    std::fs::write(&body_file, b"{\"to\":\"eve@evil.com\"}").unwrap();
    let out = run(&[], &grant);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("different body"));
}

#[test]
fn grant_verify_honours_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let pubkey = write_pub(dir.path(), &gate_key().verifying_key());
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, demo_body()).unwrap();
    let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let grant = sign(gate_key(), &demo_body(), DEMO_AUDIENCE, issued);
    let out = gate_command()
        .args(["grant", "verify", "--pubkey"])
        .arg(&pubkey)
        .arg("--body")
        .arg(&body_file)
        .args(["--at", "1700000010", &grant])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = gate_command()
        .args(["grant", "verify", "--pubkey"])
        .arg(&pubkey)
        .arg("--body")
        .arg(&body_file)
        .args(["--at", "1700000100", &grant])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused: grant has expired"
    );
}

/// Writes a proxy-mode config with upstreams for `tools` and a real profiles root.
fn serve_config(dir: &Path, tools: &[&str]) -> PathBuf {
    let (key, _) = write_secrets(dir);
    let mut toml = format!(
        "mode = \"proxy\"\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:1\"\nprofiles_root = \"{}\"\n\
         [audit]\npath = \"{}\"\n[grants]\nsigning_key = \"{}\"\n",
        shipped_profiles().display(),
        dir.join("audit.log").display(),
        key.display()
    );
    for tool in tools {
        toml.push_str(&format!(
            "[upstreams.\"{tool}\"]\nurl = \"http://127.0.0.1:9/{tool}\"\n"
        ));
    }
    let path = dir.join("gate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn serve_refuses_to_start_with_a_missing_credential() {
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(dir.path(), &["email.send"]);
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("headers = { Authorization = { env = \"DEMO_UNSET_CREDENTIAL_42\" } }\n");
    std::fs::write(&config, toml).unwrap();
    let out = gate_command()
        .arg("--config")
        .arg(&config)
        .env_remove("DEMO_UNSET_CREDENTIAL_42")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`upstreams.\"email.send\".headers.Authorization`")
            && stderr.contains("`DEMO_UNSET_CREDENTIAL_42` is not set"),
        "{stderr}"
    );
}
