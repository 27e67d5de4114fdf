//! The upstream HTTP client: hyper-util's pooled client over hyper-rustls (ring provider),
//! HTTP/1.1 and, where the tool's TLS offers it by ALPN, HTTP/2.
//!
//! Owns one call to one upstream: send, bound the answer, time the whole exchange out; and the
//! client certificates presented to upstreams that ask for one (mTLS towards the tool): each
//! such upstream has a client, and a connection pool, of its own, rebuilt when its certificate
//! files change, while every other upstream shares one. It must never fall back from
//! `https://` to plain HTTP, never follow a redirect (a 3xx is the tool's answer, returned as
//! such), never retry a call that may have reached the tool (tool calls are not assumed
//! idempotent), never buffer more than `max_upstream_body_bytes` of an answer, and never log or
//! record a client certificate's key.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::config::proxy::{
    client_cert_fingerprint, read_client_identity, ClientCertFiles, ClientIdentity, ProxyConfig,
    Upstream,
};
use crate::metrics::Metrics;

/// How long an idle pooled connection to a tool is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("ecl-gate/", env!("CARGO_PKG_VERSION"));

/// Why a call produced no answer to return. `kind` is stable, for machines; `Display` is for
/// people and never names the upstream's URL or credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the tool did not answer within {0} ms")]
    Timeout(u128),
    #[error("cannot connect to the tool: {0}")]
    Connect(String),
    /// The tool's certificate did not verify, or the tool refused the gate's (or its absence).
    #[error("TLS with the tool failed: {0}")]
    Tls(String),
    #[error("the call to the tool failed: {0}")]
    Protocol(String),
    #[error("the tool's answer is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("no upstream is configured for tool `{0}`")]
    NoUpstream(String),
    #[error("the grant could not be signed: {0}")]
    Grant(String),
    #[error(
        "the tool has {0} calls in flight already (its `max_concurrent`); this one was not sent"
    )]
    Busy(usize),
    #[error(
        "the gate stopped before the tool answered; the tool may or may not have run the call"
    )]
    Shutdown,
}

impl UpstreamError {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::BodyTooLarge(_) => "body_too_large",
            UpstreamError::NoUpstream(_) => "no_upstream",
            UpstreamError::Grant(_) => "grant",
            UpstreamError::Busy(_) => "upstream_busy",
            UpstreamError::Shutdown => "shutdown",
        }
    }
}

/// The tool's answer, bounded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up TLS for upstreams: {0}")]
    Tls(String),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The pooled clients: one shared, and one per upstream with a client certificate.
#[derive(Clone)]
pub struct UpstreamClient {
    shared: HttpsClient,
    /// By tool name. A pool of its own per certificate: connections are pooled by host, and one
    /// made with another upstream's certificate (or none) must never carry this tool's calls.
    with_cert: BTreeMap<String, Arc<CertClient>>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("with_cert", &self.with_cert.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds every client; reads each upstream's client certificate (an error stops the start).
    pub fn new(config: &ProxyConfig) -> Result<UpstreamClient, ClientError> {
        let mut roots = RootCertStore::empty();
        if config.public_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::debug!(error = %err, "skipping part of the system certificate store");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "system root certificates");
        }
        for cert in &config.extra_roots {
            roots
                .add(cert.clone())
                .map_err(|err| ClientError::Tls(format!("`tls.ca_file`: {err}")))?;
        }
        let shared = https_client(client_tls(&roots, None)?);
        let mut with_cert = BTreeMap::new();
        for (tool, upstream) in &config.upstreams {
            let Some(files) = &upstream.client_cert else {
                continue;
            };
            let identity = read_client_identity(files).map_err(|err| {
                ClientError::Tls(format!("`upstreams.\"{tool}\".client_cert`: {err}"))
            })?;
            let current = Current {
                fingerprint: identity.fingerprint,
                client: https_client(client_tls(&roots, Some(identity))?),
            };
            with_cert.insert(
                tool.clone(),
                Arc::new(CertClient {
                    tool: tool.clone(),
                    files: files.clone(),
                    roots: roots.clone(),
                    current: RwLock::new(current),
                    last_failed: Mutex::new(None),
                }),
            );
        }
        Ok(UpstreamClient {
            shared,
            with_cert,
            max_body_bytes: config.max_upstream_body_bytes,
        })
    }

    /// Checks every upstream client certificate for changes every `interval`; call once,
    /// inside the runtime. A replacement that does not load is counted in `metrics`.
    pub fn spawn_reloaders(&self, interval: Duration, metrics: &Arc<Metrics>) {
        for client in self.with_cert.values() {
            let reload = Arc::new(Reload {
                client: Arc::clone(client),
                metrics: Arc::clone(metrics),
            });
            crate::reload::spawn_every(interval, reload, |reload| {
                reload.client.reload_if_changed(&reload.metrics)
            });
        }
    }

    /// The client for `tool`'s calls: its own, with the newest certificate that loaded, or the
    /// shared one.
    fn client_for(&self, tool: &str) -> HttpsClient {
        match self.with_cert.get(tool) {
            Some(client) => client.current(),
            None => self.shared.clone(),
        }
    }

    /// Sends `body` with `grant` to `upstream`; the timeout covers connecting, sending and
    /// reading the whole answer.
    pub async fn call(
        &self,
        tool: &str,
        upstream: &Upstream,
        body: Bytes,
        grant: &str,
    ) -> (Result<Answer, UpstreamError>, Duration) {
        let started = Instant::now();
        let client = self.client_for(tool);
        let exchange = self.exchange(&client, upstream, body, grant);
        let result = tokio::time::timeout(upstream.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Timeout(upstream.timeout.as_millis())));
        (result, started.elapsed())
    }

    async fn exchange(
        &self,
        client: &HttpsClient,
        upstream: &Upstream,
        body: Bytes,
        grant: &str,
    ) -> Result<Answer, UpstreamError> {
        let grant = HeaderValue::from_str(grant)
            .map_err(|_| UpstreamError::Grant("not a valid header value".into()))?;
        let mut request = Request::builder()
            .method(upstream.method.clone())
            .uri(upstream.url.clone())
            .body(Full::new(body))
            .map_err(|err| UpstreamError::Protocol(err.to_string()))?;
        let headers = request.headers_mut();
        for (name, value) in &upstream.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(crate::grant::GRANT_HEADER, grant);

        let response = client.request(request).await.map_err(classify)?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(UpstreamError::BodyTooLarge(self.max_body_bytes));
        }
        let body = Limited::new(response.into_body(), self.max_body_bytes)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::BodyTooLarge(self.max_body_bytes)
                } else {
                    UpstreamError::Protocol(format!("reading the answer: {err}"))
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

/// The TLS settings for upstreams: `roots` to trust, and the certificate to present, if any.
fn client_tls(
    roots: &RootCertStore,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    // An explicit provider: the process-wide default would be ambiguous if another crate
    // ever enabled a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClientError::Tls(err.to_string()))?
        .with_root_certificates(roots.clone());
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|err| ClientError::Tls(format!("the client certificate: {err}"))),
    }
}

/// A pooled HTTP/1.1 + HTTP/2 client over `tls`.
fn https_client(tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    // The scheme decides: hyper-rustls wraps https:// in TLS and would refuse, never
    // downgrade, a connection whose certificate does not verify.
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// The client of one upstream that presents a client certificate.
struct CertClient {
    tool: String,
    files: ClientCertFiles,
    roots: RootCertStore,
    current: RwLock<Current>,
    /// The last replacement that did not load, so each broken state is reported once.
    last_failed: Mutex<Option<Failed>>,
}

struct Current {
    /// Built with the certificate whose files hash to `fingerprint`. A new client per
    /// certificate also means a new TLS session cache: a resumed session would present the
    /// identity of the handshake it resumes, not the new certificate.
    client: HttpsClient,
    fingerprint: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failed {
    Unreadable(String),
    Broken([u8; 32]),
}

/// What a periodic reload check needs: the client and where to count failures.
struct Reload {
    client: Arc<CertClient>,
    metrics: Arc<Metrics>,
}

impl CertClient {
    fn current(&self) -> HttpsClient {
        match self.current.read() {
            Ok(current) => current.client.clone(),
            Err(poisoned) => poisoned.into_inner().client.clone(),
        }
    }

    fn fingerprint(&self) -> [u8; 32] {
        match self.current.read() {
            Ok(current) => current.fingerprint,
            Err(poisoned) => poisoned.into_inner().fingerprint,
        }
    }

    /// Rebuilds the client when the files' bytes changed and load; a replacement that does
    /// not load keeps the certificate in use, and is logged (naming the file, never the key)
    /// and counted once.
    fn reload_if_changed(&self, metrics: &Metrics) {
        let Ok(mut last_failed) = self.last_failed.lock() else {
            return;
        };
        let fingerprint = match client_cert_fingerprint(&self.files) {
            Ok(fingerprint) => fingerprint,
            Err(err) => {
                self.failed(
                    &mut last_failed,
                    Failed::Unreadable(err.clone()),
                    &err,
                    metrics,
                );
                return;
            }
        };
        if fingerprint == self.fingerprint() {
            *last_failed = None;
            return;
        }
        if *last_failed == Some(Failed::Broken(fingerprint)) {
            return;
        }
        let rebuilt = read_client_identity(&self.files).and_then(|identity| {
            let fingerprint = identity.fingerprint;
            client_tls(&self.roots, Some(identity))
                .map(|tls| Current {
                    client: https_client(tls),
                    fingerprint,
                })
                .map_err(|err| err.to_string())
        });
        match rebuilt {
            Ok(current) => {
                tracing::info!(tool = %self.tool, "upstream client certificate reloaded");
                *last_failed = None;
                if let Ok(mut slot) = self.current.write() {
                    *slot = current;
                }
            }
            Err(err) => self.failed(&mut last_failed, Failed::Broken(fingerprint), &err, metrics),
        }
    }

    fn failed(&self, last: &mut Option<Failed>, failed: Failed, err: &str, metrics: &Metrics) {
        if last.as_ref() == Some(&failed) {
            return;
        }
        tracing::warn!(
            tool = %self.tool,
            error = %err,
            "changed upstream client certificate files do not load; keeping the ones in use"
        );
        metrics.upstream_client_cert_reload_failed(&self.tool);
        *last = Some(failed);
    }
}

/// Sorts a client error into connect / TLS / protocol, by what its source chain holds.
fn classify(err: hyper_util::client::legacy::Error) -> UpstreamError {
    if let Some(tls) = err.source().and_then(find_tls) {
        return UpstreamError::Tls(tls);
    }
    let mut innermost = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        innermost = current.to_string();
        source = current.source();
    }
    if err.is_connect() {
        UpstreamError::Connect(innermost)
    } else {
        UpstreamError::Protocol(innermost)
    }
}

/// The rustls error in `err`'s chain, if any. An `io::Error` wrapping another error reports the
/// wrapped error's *source* as its own, skipping the wrapped error itself (and tokio-rustls's
/// error is wrapped twice), so wrapped errors are opened explicitly.
fn find_tls(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(tls) = find_tls(inner) {
            return Some(tls);
        }
    }
    err.source().and_then(find_tls)
}
