//! The upstream HTTP client: hyper-util's pooled client over hyper-rustls (ring provider),
//! HTTP/1.1 and, where the tool's TLS offers it by ALPN, HTTP/2.
//!
//! Owns one call to one upstream: send, bound the answer, time the whole exchange out. It must
//! never fall back from `https://` to plain HTTP, never follow a redirect (a 3xx is the tool's
//! answer, returned as such), never retry a call that may have reached the tool (tool calls are
//! not assumed idempotent), and never buffer more than `max_upstream_body_bytes` of an answer.

use std::error::Error as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::config::proxy::{ProxyConfig, Upstream};

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
    #[error("the tool's TLS is not trusted: {0}")]
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

/// The shared, pooled client.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
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
        // An explicit provider: the process-wide default would be ambiguous if another crate
        // ever enabled a second one.
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ClientError::Tls(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
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
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(UpstreamClient {
            client,
            max_body_bytes: config.max_upstream_body_bytes,
        })
    }

    /// Sends `body` with `grant` to `upstream`; the timeout covers connecting, sending and
    /// reading the whole answer.
    pub async fn call(
        &self,
        upstream: &Upstream,
        body: Bytes,
        grant: &str,
    ) -> (Result<Answer, UpstreamError>, Duration) {
        let started = Instant::now();
        let result = tokio::time::timeout(upstream.timeout, self.exchange(upstream, body, grant))
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Timeout(upstream.timeout.as_millis())));
        (result, started.elapsed())
    }

    async fn exchange(
        &self,
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

        let response = self.client.request(request).await.map_err(classify)?;
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
