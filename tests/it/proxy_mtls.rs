//! Proxy mode towards a tool that authenticates the gate by mTLS: real handshakes with a tool on
//! 127.0.0.1 that requires a client certificate from its own CA (certificates made here with
//! rcgen), the refusal without one, and the certificate files rotated under a running gate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecl_gate::config::proxy::{RawTls, RawUpstream};
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use rcgen::{CertificateParams, SanType};

use crate::common::{bytes_of, TestGate, ValueExt};
use crate::proxy::{allowed_email, proxy_config, proxy_gate, upstream, verified_records};
use crate::tls::{Ca, Leaf};

const GATE_A: &str = "spiffe://cluster.local/ns/gates/sa/ecl-gate";
const GATE_B: &str = "spiffe://cluster.local/ns/gates/sa/ecl-gate-rotated";

/// A tool that requires a client certificate issued by `clients`, over HTTP/1.1, and answers
/// with the caller its certificate names. It closes every connection after one answer, so each
/// call is a new handshake with whatever certificate the gate presents then.
struct MtlsTool {
    url: String,
    server_ca: PathBuf,
    /// Requests that reached the tool (past the handshake).
    hits: Arc<AtomicUsize>,
    /// Handshakes the tool refused.
    refused: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn mtls_tool(clients: &Ca) -> MtlsTool {
    let server_ca = Ca::new("tool server CA (throwaway)");
    let server = server_ca.server();
    let dir = tempfile::tempdir().unwrap();
    let server_ca_pem = dir.path().join("tool-ca.pem");
    std::fs::write(&server_ca_pem, server_ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(clients.root()).unwrap();
    // No `allow_unauthenticated`: a connection without a certificate from `clients` fails.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert.clone()], server.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hits, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (hit_count, refused_count) = (Arc::clone(&hits), Arc::clone(&refused));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (hits, refused) = (Arc::clone(&hit_count), Arc::clone(&refused_count));
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let client = ecl_gate::server::peer_caller(tls.get_ref().1.peer_certificates())
                    .map(|caller| caller.id.to_string());
                let service = hyper::service::service_fn(move |_request: http::Request<_>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({ "client": client });
                    async move {
                        let response = http::Response::builder()
                            .header("content-type", "application/json")
                            .header("connection", "close")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                // A certificate refused after the handshake (TLS 1.3) surfaces here.
                let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                if served.is_err() {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    MtlsTool {
        url: format!("https://{addr}/send"),
        server_ca: server_ca_pem,
        hits,
        refused,
        _dir: dir,
    }
}

fn gate_params(id: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(id.try_into().unwrap()));
    params
}

fn tls_trusting(tool: &MtlsTool) -> RawTls {
    RawTls {
        ca_file: Some(tool.server_ca.clone()),
        public_roots: false,
        reload_interval_ms: 100,
    }
}

/// `dir/current` → `dir/<version>`, holding `tls.crt` and `tls.key`; swapped in one rename,
/// as Kubernetes updates a mounted Secret, so a reload never sees half a pair.
fn publish(dir: &Path, version: &str, cert_pem: &str, key_pem: &str) {
    let target = dir.join(version);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("tls.crt"), cert_pem).unwrap();
    std::fs::write(target.join("tls.key"), key_pem).unwrap();
    let staged = dir.join("current.staged");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&target, &staged).unwrap();
    std::fs::rename(&staged, dir.join("current")).unwrap();
}

fn with_client_cert(url: &str, dir: &Path) -> RawUpstream {
    RawUpstream {
        client_cert: Some(dir.join("current/tls.crt")),
        client_key: Some(dir.join("current/tls.key")),
        ..upstream(url)
    }
}

/// Sends the allowed email; returns the caller id the tool saw, and checks the ALLOW and its
/// outcome record.
async fn identity_seen(gate: &TestGate) -> Option<String> {
    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
    let execution = &answer["execution"];
    assert_eq!(execution["status"].as_u64_exact(), 200, "{answer:?}");
    let client = &execution["body"]["client"];
    (!client.is_null()).then(|| client.str().to_owned())
}

fn reload_failures(gate: &TestGate) -> u64 {
    let text = gate.metrics.encode();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(
                "ecl_upstream_client_cert_reload_failures_total{tool=\"email.send\"} ",
            )
        })
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
// Item 5: a tool that authenticates the gate by mTLS gets the configured certificate.
async fn the_gate_presents_its_client_certificate_to_a_tool_that_requires_one() {
    let clients = Ca::new("tool clients CA");
    let tool = mtls_tool(&clients).await;
    let dir = tempfile::tempdir().unwrap();
    let gate_cert = clients.leaf(gate_params(GATE_A));
    publish(dir.path(), "v1", &gate_cert.cert_pem, &gate_cert.key_pem);
    let config = proxy_config(
        dir.path(),
        vec![("email.send", with_client_cert(&tool.url, dir.path()))],
        tls_trusting(&tool),
    );
    let gate = proxy_gate(config).await;
    assert_eq!(identity_seen(&gate).await.as_deref(), Some(GATE_A));
    let records = verified_records(&gate);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["record_type"].str(), "outcome");
    assert_eq!(records[1]["status"].as_u64_exact(), 200);
    assert!(records[1]["error"].is_null());
    assert_eq!(tool.hits.load(Ordering::SeqCst), 1);
    assert_eq!(tool.refused.load(Ordering::SeqCst), 0);
}

#[tokio::test]
// Without `client_cert` the tool refuses the handshake: the call is the usual `tls` execution
// error, recorded in the outcome record, and nothing reaches the tool.
async fn without_a_client_certificate_the_tool_refuses_the_handshake() {
    let clients = Ca::new("tool clients CA");
    let tool = mtls_tool(&clients).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = proxy_gate(proxy_config(
        dir.path(),
        vec![("email.send", upstream(&tool.url))],
        tls_trusting(&tool),
    ))
    .await;
    let (status, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision_type"].str(), "ALLOW");
    let error = &answer["execution"]["error"];
    assert_eq!(error["kind"].str(), "tls", "{answer:?}");
    assert!(
        error["message"]
            .str()
            .starts_with("TLS with the tool failed")
            && error["message"].str().contains("CertificateRequired"),
        "{answer:?}"
    );
    let records = verified_records(&gate);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["record_type"].str(), "outcome");
    assert_eq!(records[1]["error"]["kind"].str(), "tls");
    assert!(records[1]["status"].is_null());
    assert_eq!(
        tool.hits.load(Ordering::SeqCst),
        0,
        "no request without mTLS"
    );
    assert_eq!(tool.refused.load(Ordering::SeqCst), 1);

    // A certificate from a CA the tool does not trust is refused the same way.
    let dir = tempfile::tempdir().unwrap();
    let stranger = Ca::new("someone else").leaf(gate_params(GATE_A));
    publish(dir.path(), "v1", &stranger.cert_pem, &stranger.key_pem);
    let gate = proxy_gate(proxy_config(
        dir.path(),
        vec![("email.send", with_client_cert(&tool.url, dir.path()))],
        tls_trusting(&tool),
    ))
    .await;
    let (_, answer) = gate.execute(bytes_of(&allowed_email())).await;
    assert_eq!(
        answer["execution"]["error"]["kind"].str(),
        "tls",
        "{answer:?}"
    );
    assert_eq!(tool.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
// cert-manager or SPIRE rotate the gate's client certificate: the next new connection presents
// the new one, and a broken replacement keeps the one in use and is counted.
async fn a_rotated_client_certificate_is_presented_and_a_broken_one_keeps_the_old() {
    let clients = Ca::new("tool clients CA");
    let tool = mtls_tool(&clients).await;
    let dir = tempfile::tempdir().unwrap();
    let first: Leaf = clients.leaf(gate_params(GATE_A));
    publish(dir.path(), "v1", &first.cert_pem, &first.key_pem);
    let gate = proxy_gate(proxy_config(
        dir.path(),
        vec![("email.send", with_client_cert(&tool.url, dir.path()))],
        tls_trusting(&tool),
    ))
    .await;
    assert_eq!(identity_seen(&gate).await.as_deref(), Some(GATE_A));

    let rotated = clients.leaf(gate_params(GATE_B));
    publish(dir.path(), "v2", &rotated.cert_pem, &rotated.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = identity_seen(&gate).await;
        if seen.as_deref() == Some(GATE_B) {
            break;
        }
        assert_eq!(
            seen.as_deref(),
            Some(GATE_A),
            "only the old or the new identity"
        );
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reload_failures(&gate),
        0,
        "a whole-pair swap is not a failure"
    );

    // A corrupt certificate beside a good key: kept out, counted once, the rotated one stays.
    publish(
        dir.path(),
        "v3",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        &rotated.key_pem,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while reload_failures(&gate) == 0 {
        assert!(
            Instant::now() < deadline,
            "the broken replacement was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(identity_seen(&gate).await.as_deref(), Some(GATE_B));
    // Checked again and again, the same broken files are counted once.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(reload_failures(&gate), 1);

    // A key that does not belong to the certificate is refused as well.
    let other = clients.leaf(gate_params(GATE_A));
    publish(dir.path(), "v4", &rotated.cert_pem, &other.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reload_failures(&gate) < 2 {
        assert!(
            Instant::now() < deadline,
            "the mismatched pair was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(identity_seen(&gate).await.as_deref(), Some(GATE_B));
    assert!(tool.refused.load(Ordering::SeqCst) == 0);
}

#[tokio::test]
// The real binary, configured in TOML: `serve` wires the reload loop, a broken replacement is
// a WARN line naming the tool and the file (never key material), and a good one is presented.
async fn the_binary_reloads_upstream_client_certificates() {
    let clients = Ca::new("tool clients CA");
    let tool = mtls_tool(&clients).await;
    let dir = tempfile::tempdir().unwrap();
    let (grant_key, _) = crate::proxy::write_secrets(dir.path());
    let first = clients.leaf(gate_params(GATE_A));
    publish(dir.path(), "v1", &first.cert_pem, &first.key_pem);
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmode = \"proxy\"\n\
             profiles_root = \"{profiles}\"\n\
             [audit]\npath = \"{audit}\"\nsync = \"never\"\n\
             [grants]\nsigning_key = \"{grant_key}\"\n\
             [tls]\nca_file = \"{ca}\"\npublic_roots = false\nreload_interval_ms = 100\n\
             [upstreams.\"email.send\"]\nurl = \"{url}\"\n\
             client_cert = \"{dir}/current/tls.crt\"\nclient_key = \"{dir}/current/tls.key\"\n",
            profiles = crate::common::shipped_profiles().display(),
            audit = dir.path().join("audit.log").display(),
            grant_key = grant_key.display(),
            ca = tool.server_ca.display(),
            url = tool.url,
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let (mut child, url, log) = crate::callers::serve(&config);
    let seen = || async {
        let (status, _, answer) =
            crate::callers::post(&url, None, bytes_of(&allowed_email())).await;
        assert_eq!(status, 200, "{answer:?}");
        assert_eq!(
            answer["execution"]["status"].as_u64_exact(),
            200,
            "{answer:?}"
        );
        answer["execution"]["body"]["client"].str().to_owned()
    };
    assert_eq!(seen().await, GATE_A);
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("upstream is called with a client certificate")));

    publish(dir.path(), "v2", "not a certificate\n", &first.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("upstream client certificate files do not load"))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no warning: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("email.send"), "{warning}");
    assert!(warning.contains("current/tls.crt"), "{warning}");
    assert!(!warning.contains("PRIVATE KEY"), "{warning}");
    assert_eq!(seen().await, GATE_A, "the certificate in use stays");

    let rotated = clients.leaf(gate_params(GATE_B));
    publish(dir.path(), "v3", &rotated.cert_pem, &rotated.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen().await != GATE_B {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|l| !l.contains("PRIVATE KEY")));
    child.kill().unwrap();
    child.wait().unwrap();
}
