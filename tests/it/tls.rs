//! TLS and mTLS on the execution listener, with real handshakes against the real binary and
//! certificates made here (rcgen): HTTP/1.1 and HTTP/2 by ALPN, client certificates of every
//! kind, and certificate files replaced while connections are open.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ecl_gate::canonical::{self, Value};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::callers::serve;
use crate::common::{bytes_of, email_args, request, ValueExt};

const SPIFFE: &str = "spiffe://cluster.local/ns/agents/sa/finance";

pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub(crate) fn root(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf signed by this CA: (certificate PEM, key PEM, certificate DER, key DER).
    pub(crate) fn leaf(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    pub(crate) fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        self.leaf(params)
    }
}

pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

fn spiffe_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(SPIFFE.try_into().unwrap()));
    params
        .subject_alt_names
        .push(SanType::DnsName("finance.agents.svc".try_into().unwrap()));
    params
}

/// Files of a gate with TLS (and mTLS when `client_ca` is given).
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(server: &Leaf, client_ca: Option<&Ca>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nprofiles_root = \"{}\"\n\
             [audit]\npath = \"{}\"\nsync = \"never\"\n\
             [listen_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval_ms = 100\n",
            crate::common::shipped_profiles().display(),
            dir.path().join("audit.log").display(),
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display(),
        );
        if let Some(ca) = client_ca {
            std::fs::write(dir.path().join("clients.pem"), ca.pem()).unwrap();
            text.push_str(&format!(
                "client_ca_file = \"{}\"\n[auth]\nmethods = [\"mtls\"]\n\
                 [[bindings]]\ncaller = \"spiffe://cluster.local/ns/agents/*\"\nprofiles = [\"example@1.*\"]\nprincipals = [\"agent:*\"]\n",
                dir.path().join("clients.pem").display()
            ));
        }
        let config = dir.path().join("gate.toml");
        std::fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn records(&self) -> Vec<Value> {
        crate::common::read_records(&self.path("audit.log"))
    }
}

fn connector(trust: &[&Ca], client: Option<&Leaf>, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in trust {
        roots.add(ca.root()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(
    addr: &str,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// An HTTP/1.1 or HTTP/2 sender over an established TLS stream.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(stream: TlsStream<tokio::net::TcpStream>) -> Sender {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::H1(sender)
        }
    }

    /// POSTs `body`; returns status and answer, or `None` when the connection is gone.
    async fn post(&mut self, body: Bytes) -> Option<(u16, Value)> {
        let (status, _, answer) = self.post_as("/v1/execute", None, body).await?;
        Some((status, answer))
    }

    /// POSTs `body` to `path` with an optional `Authorization` value; returns status,
    /// `WWW-Authenticate` and answer, or `None` when the connection is gone.
    async fn post_as(
        &mut self,
        path: &str,
        authorization: Option<&str>,
        body: Bytes,
    ) -> Option<(u16, Option<String>, Value)> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost{path}"))
            .header("host", "localhost");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let request = request.body(Full::new(body)).unwrap();
        let response = match self {
            Sender::H1(sender) => sender.send_request(request).await.ok()?,
            Sender::H2(sender) => sender.send_request(request).await.ok()?,
        };
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, challenge, canonical::parse(&bytes).unwrap()))
    }
}

fn allow_body() -> Bytes {
    bytes_of(&request(
        "r-tls",
        "email.send",
        email_args("bob@example.com", "hi"),
    ))
}

fn host(url: &str) -> String {
    url.trim_start_matches("https://").to_owned()
}

#[tokio::test]
// Plain TLS: the same gate answers HTTP/1.1 and HTTP/2, picked by ALPN.
async fn tls_serves_http1_and_http2_by_alpn() {
    let ca = Ca::new("server CA");
    let setup = Setup::new(&ca.server(), None);
    let (mut child, url, _log) = serve(&setup.config);
    assert!(url.starts_with("https://"), "{url}");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let stream = connect(&host(&url), &connector(&[&ca], None, alpn))
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let mut sender = Sender::open(stream).await;
        let (status, answer) = sender.post(allow_body()).await.unwrap();
        assert_eq!((status, answer["reason_code"].str()), (200, "OK"));
        // Keep-alive: a second request on the same connection.
        let (status, _) = sender.post(allow_body()).await.unwrap();
        assert_eq!(status, 200);
    }
    // A client that does not trust the gate's CA never gets to send anything.
    let stranger = Ca::new("other");
    assert!(connect(&host(&url), &connector(&[&stranger], None, b"h2"))
        .await
        .is_err());
    child.kill().unwrap();
    child.wait().unwrap();
    let records = setup.records();
    assert_eq!(records.len(), 4);
    assert!(records
        .iter()
        .all(|r| r["caller"]["id"].str() == "anonymous"));
}

#[tokio::test]
// mTLS: the caller is the certificate's URI SAN, else DNS SAN, else CN; no certificate is an
// audited 401; a certificate from another CA, expired or not yet valid fails the handshake.
async fn mtls_callers_table() {
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let setup = Setup::new(&server_ca.server(), Some(&clients));
    let (mut child, url, _log) = serve(&setup.config);
    let addr = host(&url);

    let spiffe = clients.leaf(spiffe_params());
    let dns_only =
        clients.leaf(CertificateParams::new(vec!["finance.agents.svc".to_owned()]).unwrap());
    let mut cn_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    cn_params
        .distinguished_name
        .push(DnType::CommonName, "finance-agent");
    let cn_only = clients.leaf(cn_params);
    let other_ca = Ca::new("someone else").leaf(spiffe_params());
    let mut expired_params = spiffe_params();
    expired_params.not_before = date_time_ymd(2020, 1, 1);
    expired_params.not_after = date_time_ymd(2021, 1, 1);
    let expired = clients.leaf(expired_params);
    let mut future_params = spiffe_params();
    future_params.not_before = date_time_ymd(2099, 1, 1);
    future_params.not_after = date_time_ymd(2100, 1, 1);
    let not_yet = clients.leaf(future_params);

    // (name, client certificate, Some((status, reason, caller id)) or None: handshake refused)
    type Expected<'a> = Option<(u16, &'a str, &'a str)>;
    let cases: Vec<(&str, Option<&Leaf>, Expected<'_>)> = vec![
        ("SPIFFE URI SAN", Some(&spiffe), Some((200, "OK", SPIFFE))),
        (
            "only a DNS SAN",
            Some(&dns_only),
            Some((200, "CALLER_NOT_PERMITTED", "finance.agents.svc")),
        ),
        (
            "only a CN",
            Some(&cn_only),
            Some((200, "CALLER_NOT_PERMITTED", "finance-agent")),
        ),
        (
            "no certificate",
            None,
            Some((401, "CALLER_UNAUTHENTICATED", "anonymous")),
        ),
        ("another CA", Some(&other_ca), None),
        ("expired", Some(&expired), None),
        ("not yet valid", Some(&not_yet), None),
    ];
    let mut seen = 0;
    for (name, client, want) in cases {
        let connector = connector(&[&server_ca], client, b"http/1.1");
        // TLS 1.3: a refused client certificate surfaces on the first read, not in connect.
        let outcome = match connect(&addr, &connector).await {
            Ok(stream) => Sender::open(stream).await.post(allow_body()).await,
            Err(_) => None,
        };
        match (want, outcome) {
            (None, None) => {}
            (Some((status, reason, caller)), Some((got_status, answer))) => {
                assert_eq!(
                    (got_status, answer["reason_code"].str()),
                    (status, reason),
                    "{name}"
                );
                let records = setup.records();
                assert_eq!(records.len(), seen + 1, "{name}: one record");
                seen += 1;
                let record = records.last().unwrap();
                assert_eq!(record["caller"]["id"].str(), caller, "{name}");
                let method = if caller == "anonymous" {
                    "none"
                } else {
                    "mtls"
                };
                assert_eq!(record["caller"]["method"].str(), method, "{name}");
                if status == 401 {
                    assert_eq!(
                        answer["request_hash"].str(),
                        canonical::sha256_prefixed(b""),
                        "{name}"
                    );
                }
            }
            (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
    }
    assert_eq!(
        setup.records().len(),
        4,
        "refused handshakes write no record"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
// cert-manager and SPIRE rotate files under a running gate: an open connection keeps going,
// the next handshake uses the new certificate and CA, and a corrupt replacement keeps the old.
async fn certificate_and_ca_files_replaced_while_connections_are_open() {
    let old_server_ca = Ca::new("server CA 1");
    let old_clients = Ca::new("client CA 1");
    let setup = Setup::new(&old_server_ca.server(), Some(&old_clients));
    let (mut child, url, log) = serve(&setup.config);
    let addr = host(&url);
    let old_client = old_clients.leaf(spiffe_params());
    let stream = connect(
        &addr,
        &connector(&[&old_server_ca], Some(&old_client), b"h2"),
    )
    .await
    .unwrap();
    let mut open = Sender::open(stream).await;
    assert_eq!(
        open.post(allow_body()).await.unwrap().1["reason_code"].str(),
        "OK"
    );

    // A corrupt replacement: logged, and the old certificate keeps being served.
    std::fs::write(
        setup.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stream = connect(
        &addr,
        &connector(&[&old_server_ca], Some(&old_client), b"h2"),
    )
    .await;
    let mut again = Sender::open(stream.expect("old certificate still served")).await;
    assert_eq!(
        again.post(allow_body()).await.unwrap().1["reason_code"].str(),
        "OK"
    );
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("do not load; keeping the ones in use")),
        "the broken file is logged"
    );

    // Rotation: new server certificate from a new CA, new client CA.
    let new_server_ca = Ca::new("server CA 2");
    let new_clients = Ca::new("client CA 2");
    let new_server = new_server_ca.server();
    std::fs::write(setup.path("server.key"), &new_server.key_pem).unwrap();
    std::fs::write(setup.path("server.pem"), &new_server.cert_pem).unwrap();
    std::fs::write(setup.path("clients.pem"), new_clients.pem()).unwrap();
    let new_client = new_clients.leaf(spiffe_params());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = connect(
            &addr,
            &connector(&[&new_server_ca], Some(&new_client), b"h2"),
        )
        .await;
        if let Ok(stream) = attempt {
            let mut sender = Sender::open(stream).await;
            if let Some((200, answer)) = sender.post(allow_body()).await {
                assert_eq!(answer["reason_code"].str(), "OK");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the rotation still works...
    let (status, answer) = open.post(allow_body()).await.expect("open connection kept");
    assert_eq!((status, answer["reason_code"].str()), (200, "OK"));
    // ...while new handshakes with the old trust or the old client certificate fail.
    assert!(connect(
        &addr,
        &connector(&[&old_server_ca], Some(&old_client), b"h2")
    )
    .await
    .is_err());
    let old_client_now = match connect(
        &addr,
        &connector(&[&new_server_ca], Some(&old_client), b"h2"),
    )
    .await
    {
        Ok(stream) => Sender::open(stream).await.post(allow_body()).await,
        Err(_) => None,
    };
    assert!(
        old_client_now.is_none(),
        "the old client CA is no longer trusted"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
// Both methods: a bearer token, when sent, is the only credential judged (a bad one is refused
// beside a good certificate, never passed over for it); without one, the verified client
// certificate names the caller; with neither, a 401 with a `Bearer` challenge.
async fn mtls_and_jwt_combined() {
    use crate::callers::{claims, fixture, read, sign, AUDIENCE, FINANCE, ISSUER};
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let setup = Setup::new(&server_ca.server(), Some(&clients));
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let combined = format!(
        "methods = [\"mtls\", \"jwt\"]\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         [auth.jwt.keys.\"ed-1\"]\nfile = \"{}\"\nalg = \"EdDSA\"\n\
         [[bindings]]\ncaller = \"system:serviceaccount:agents:*\"\nprofiles = [\"example@1.*\"]\nprincipals = [\"agent:*\"]\n",
        fixture("ed.pub.pem").display()
    );
    let text = text.replace("methods = [\"mtls\"]\n", &combined);
    std::fs::write(&setup.config, text).unwrap();
    let (mut child, url, _log) = serve(&setup.config);
    let addr = host(&url);
    let ed = jsonwebtoken::EncodingKey::from_ed_pem(&read("ed.key.pem")).unwrap();
    let good = format!(
        "Bearer {}",
        sign(
            jsonwebtoken::Algorithm::EdDSA,
            "ed-1",
            &ed,
            &claims(FINANCE)
        )
    );
    let mut wrong_issuer = claims(FINANCE);
    wrong_issuer["iss"] = "https://someone.else".into();
    let bad = format!(
        "Bearer {}",
        sign(jsonwebtoken::Algorithm::EdDSA, "ed-1", &ed, &wrong_issuer)
    );
    let spiffe = clients.leaf(spiffe_params());

    // (name, certificate, path, Authorization, status, reason, caller method, caller id, challenge)
    type Case<'a> = (
        &'a str,
        Option<&'a Leaf>,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "certificate only",
            Some(&spiffe),
            "/v1/execute",
            None,
            200,
            "OK",
            "mtls",
            SPIFFE,
            None,
        ),
        (
            "token only",
            None,
            "/v1/execute",
            Some(&good),
            200,
            "OK",
            "jwt",
            FINANCE,
            None,
        ),
        (
            "certificate and token: the token decides",
            Some(&spiffe),
            "/v1/execute",
            Some(&good),
            200,
            "OK",
            "jwt",
            FINANCE,
            None,
        ),
        (
            "good certificate, bad token",
            Some(&spiffe),
            "/v1/execute",
            Some(&bad),
            401,
            "CALLER_UNAUTHENTICATED",
            "none",
            "anonymous",
            Some("error=\"invalid_token\""),
        ),
        (
            "good certificate, token in the query string",
            Some(&spiffe),
            "/v1/execute?access_token=x",
            None,
            401,
            "CALLER_UNAUTHENTICATED",
            "none",
            "anonymous",
            Some("error=\"invalid_request\""),
        ),
        (
            "neither",
            None,
            "/v1/execute",
            None,
            401,
            "CALLER_UNAUTHENTICATED",
            "none",
            "anonymous",
            Some("Bearer realm=\"ecl-gate\""),
        ),
    ];
    for (seen, (name, cert, path, authorization, status, reason, method, id, challenge)) in
        cases.into_iter().enumerate()
    {
        let stream = connect(&addr, &connector(&[&server_ca], cert, b"http/1.1"))
            .await
            .unwrap();
        let (got_status, got_challenge, answer) = Sender::open(stream)
            .await
            .post_as(path, authorization, allow_body())
            .await
            .unwrap();
        assert_eq!(
            (got_status, answer["reason_code"].str()),
            (status, reason),
            "{name}: {answer:?}"
        );
        match challenge {
            None => assert_eq!(got_challenge, None, "{name}"),
            Some(part) => {
                let got = got_challenge.unwrap_or_else(|| panic!("{name}: no challenge"));
                assert!(
                    got.starts_with("Bearer realm=\"ecl-gate\""),
                    "{name}: {got}"
                );
                assert!(got.contains(part), "{name}: {got}");
            }
        }
        let records = setup.records();
        assert_eq!(records.len(), seen + 1, "{name}: one record each");
        let record = records.last().unwrap();
        assert_eq!(record["reason_code"].str(), reason, "{name}");
        assert_eq!(record["caller"]["method"].str(), method, "{name}");
        assert_eq!(record["caller"]["id"].str(), id, "{name}");
        if method == "jwt" {
            assert_eq!(record["caller"]["iss"].str(), ISSUER, "{name}");
        }
        if status == 401 {
            assert_eq!(
                record["request_hash"].str(),
                canonical::sha256_prefixed(b""),
                "{name}: decided without reading the body"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn run_load(args: &[&str]) -> (bool, String) {
    let output = crate::common::gate_command()
        .arg("load")
        .args(["--requests", "60", "--concurrency", "3", "--quiet"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
// `ecl-gate load` reaches an mTLS gate with a CA file and a client certificate, and a TLS gate
// that wants bearer tokens with a token file; each run is all OK and every request audited
// under its caller. Without credentials the same runs FAIL.
fn load_speaks_tls_client_certificates_and_bearer_tokens() {
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let setup = Setup::new(&server_ca.server(), Some(&clients));
    let client = clients.leaf(spiffe_params());
    std::fs::write(setup.path("ca.pem"), server_ca.pem()).unwrap();
    std::fs::write(setup.path("client.pem"), &client.cert_pem).unwrap();
    std::fs::write(setup.path("client.key"), &client.key_pem).unwrap();
    let (mut child, url, _log) = serve(&setup.config);
    let path = |name: &str| setup.path(name).display().to_string();
    let (ok, text) = {
        run_load(&[
            "--url",
            &url,
            "--cacert",
            &path("ca.pem"),
            "--cert",
            &path("client.pem"),
            "--key",
            &path("client.key"),
        ])
    };
    assert!(ok, "{text}");
    assert!(text.contains("60 OK, 0 FAIL"), "{text}");
    let (ok, text) = {
        run_load(&[
            "--url",
            &url,
            "--cacert",
            &path("ca.pem"),
            "--new-connections",
        ])
    };
    assert!(!ok, "no client certificate must fail: {text}");
    child.kill().unwrap();
    child.wait().unwrap();
    let records = setup.records();
    assert!(
        records
            .iter()
            .filter(|r| r["caller"]["id"].str() == SPIFFE)
            .count()
            >= 60
    );

    // TLS without client certificates, bearer tokens instead.
    let jwt_setup = Setup::new(&server_ca.server(), None);
    let mut config = std::fs::read_to_string(&jwt_setup.config).unwrap();
    config.push_str(&format!(
        "[auth]\nmethods = [\"jwt\"]\n[auth.jwt]\nissuer = \"https://issuer.test\"\naudience = \"ecl-gate\"\n\
         [auth.jwt.keys.\"ed-1\"]\nfile = \"{}\"\nalg = \"EdDSA\"\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/callers/ed.pub.pem")
            .display()
    ));
    std::fs::write(&jwt_setup.config, config).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": "https://issuer.test", "aud": "ecl-gate", "sub": "agent:7", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_ed_pem(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/callers/ed.key.pem"),
            )
            .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(jwt_setup.path("token"), format!("{token}\n")).unwrap();
    std::fs::write(jwt_setup.path("ca.pem"), server_ca.pem()).unwrap();
    let (mut child, url, _log) = serve(&jwt_setup.config);
    let path = |name: &str| jwt_setup.path(name).display().to_string();
    let (ok, text) = {
        run_load(&[
            "--url",
            &url,
            "--cacert",
            &path("ca.pem"),
            "--bearer-file",
            &path("token"),
        ])
    };
    assert!(ok && text.contains("60 OK, 0 FAIL"), "{text}");
    let (ok, text) = run_load(&["--url", &url, "--cacert", &path("ca.pem")]);
    assert!(
        !ok && text.contains("status 4xx"),
        "without a token: {text}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let records = jwt_setup.records();
    assert!(
        records
            .iter()
            .filter(|r| r["caller"]["id"].str() == "agent:7")
            .count()
            >= 60
    );
    assert!(!std::fs::read_to_string(jwt_setup.path("audit.log"))
        .unwrap()
        .contains(&token));
}
