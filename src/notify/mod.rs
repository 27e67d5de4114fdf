//! Escalation notifications, the gate's side: after an ESCALATE's record is written, its
//! signed report is POSTed to `escalations.notify` from a bounded queue.
//!
//! Owns the queue, the delivery tasks and their retries. At-least-once: a delivery is retried
//! with backoff until the receiver answers 2xx, refuses it for good (4xx), or the escalation
//! could no longer be approved (`approvals.max_ttl` after the decision); the receiver
//! de-duplicates by the intent hash, sent as `Idempotency-Key`. It must never make a decision
//! wait (enqueueing is `try_send`; a full queue drops and counts), never change an answer, and
//! never put tool arguments into a log line.

pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::canonical::Value;
use crate::config::escalations::EscalationConfig;
use crate::decision::{AuditBlock, Decision, DecisionType};
use crate::metrics::Metrics;

pub use wire::{Notification, RecordRef};

/// Deliveries in progress at once (each may be sleeping between retries).
const MAX_CONCURRENT_DELIVERIES: usize = 64;
/// First retry after this; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An answer body is read only to log a refusal's reason; more is not kept.
const MAX_ANSWER_BYTES: usize = 4096;

/// Handle the request path uses to report an ESCALATE; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: flume::Sender<Job>,
    key: Arc<ed25519_dalek::SigningKey>,
    kid: Arc<str>,
    max_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

struct Job {
    token: String,
    intent_hash: String,
    expires_at: SystemTime,
    queued: Instant,
}

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Notifier {
    /// Starts the delivery loop on the current tokio runtime.
    pub fn spawn(
        config: &EscalationConfig,
        max_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Notifier, String> {
        let client = client(config)?;
        let (tx, rx) = flume::bounded(config.queue_capacity);
        let delivery = Delivery {
            client,
            url: config.url.clone(),
            timeout: config.timeout,
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(deliver_all(rx, Arc::new(delivery)));
        Ok(Notifier {
            tx,
            key: Arc::new(config.key.clone()),
            kid: Arc::from(config.kid.as_str()),
            max_ttl,
            metrics,
        })
    }

    /// Reports `decision` (an ESCALATE whose record `block` was written at `decided`).
    /// Never blocks and never fails the caller: a full queue drops the report, counted.
    pub fn escalated(&self, decision: &Decision, block: &AuditBlock, decided: SystemTime) {
        let Some(notification) = notification(decision, block, decided, self.max_ttl) else {
            return;
        };
        let token = wire::sign(&self.key, &self.kid, &notification);
        let job = Job {
            token,
            intent_hash: notification.intent_hash,
            expires_at: UNIX_EPOCH + Duration::from_secs(notification.expires_at),
            queued: Instant::now(),
        };
        if let Err(err) = self.tx.try_send(job) {
            self.metrics.notification("dropped");
            tracing::error!(
                intent_hash = %err.into_inner().intent_hash,
                "escalation notification dropped: the queue is full (escalations.queue_capacity)"
            );
        }
    }
}

/// The notification for an ESCALATE decision; `None` for anything else.
pub fn notification(
    decision: &Decision,
    block: &AuditBlock,
    decided: SystemTime,
    max_ttl: Duration,
) -> Option<Notification> {
    if decision.decision_type != DecisionType::Escalate {
        return None;
    }
    let escalation = decision.escalation.as_ref()?;
    let request = decision.normalized_request.as_deref();
    let field = |path: &[&str]| -> Value {
        let mut at = request;
        for key in path {
            at = at.and_then(|v| v.get(key));
        }
        at.cloned().unwrap_or(Value::Null)
    };
    let (profile_id, profile_version) = decision.profile.clone().unwrap_or_default();
    let decided_at = decided
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(Notification {
        gate_kid: String::new(),
        intent_hash: escalation.intent_hash.clone(),
        request_id: decision.request_id.clone().unwrap_or_default(),
        provenance_id: decision.provenance_id.clone(),
        actor: field(&["actor"]),
        caller: Some(decision.caller.clone()),
        tool_name: field(&["tool", "name"])
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        tool_args: field(&["tool", "args"]),
        profile_id,
        profile_version,
        profile_ref_hash: decision.profile_ref_hash.clone(),
        rules: escalation.rules.clone(),
        detail: decision.detail.clone().unwrap_or_default(),
        record: RecordRef {
            stream: block.stream.clone(),
            seq: block.seq,
            record_hash: block.record_hash.clone(),
        },
        decided_at,
        expires_at: decided_at + max_ttl.as_secs().max(1),
    })
}

struct Delivery {
    client: HttpClient,
    url: http::Uri,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

async fn deliver_all(rx: flume::Receiver<Job>, delivery: Arc<Delivery>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES));
    while let Ok(job) = rx.recv_async().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let delivery = Arc::clone(&delivery);
        tokio::spawn(async move {
            delivery.deliver(job).await;
            drop(slot);
        });
    }
}

enum Attempt {
    Delivered,
    /// The receiver refused it for good: retrying the same bytes cannot help.
    Refused(String),
    Failed(String),
}

impl Delivery {
    async fn deliver(&self, job: Job) {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(&job).await {
                Attempt::Delivered => {
                    self.metrics.notification("delivered");
                    self.metrics
                        .notification_latency
                        .observe(job.queued.elapsed().as_secs_f64());
                    tracing::debug!(intent_hash = %job.intent_hash, attempts, "escalation notification delivered");
                    return;
                }
                Attempt::Refused(why) => {
                    self.metrics.notification("refused");
                    tracing::error!(intent_hash = %job.intent_hash, attempts, reason = %why, "escalation notification refused by the receiver; not retried");
                    return;
                }
                Attempt::Failed(why) => {
                    if SystemTime::now() + backoff >= job.expires_at {
                        self.metrics.notification("expired");
                        tracing::error!(intent_hash = %job.intent_hash, attempts, reason = %why, "escalation notification given up: the escalation expires before the next attempt");
                        return;
                    }
                    self.metrics.notification("retried");
                    tracing::warn!(intent_hash = %job.intent_hash, attempts, reason = %why, retry_in_ms = backoff.as_millis() as u64, "escalation notification failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn attempt(&self, job: &Job) -> Attempt {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jose"),
            )
            .header(
                header::USER_AGENT,
                HeaderValue::from_static(concat!("ecl-gate/", env!("CARGO_PKG_VERSION"))),
            )
            .header("idempotency-key", job.intent_hash.as_str())
            .body(Full::new(Bytes::from(job.token.clone())));
        let request = match request {
            Ok(request) => request,
            Err(err) => return Attempt::Refused(format!("cannot build the request: {err}")),
        };
        let exchange = async {
            let answer = self.client.request(request).await.map_err(|err| {
                use std::error::Error as _;
                match err.source() {
                    Some(source) => format!("{err}: {source}"),
                    None => err.to_string(),
                }
            })?;
            let status = answer.status();
            let body = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::Failed(format!("no answer within {} ms", self.timeout.as_millis())),
            Ok(Err(why)) => Attempt::Failed(why),
            Ok(Ok((status, _))) if status.is_success() => Attempt::Delivered,
            Ok(Ok((status, body)))
                if status.is_client_error()
                    && status != http::StatusCode::REQUEST_TIMEOUT
                    && status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Attempt::Refused(format!("HTTP {status}: {}", body.trim()))
            }
            Ok(Ok((status, body))) => Attempt::Failed(format!("HTTP {status}: {}", body.trim())),
        }
    }
}

fn client(config: &EscalationConfig) -> Result<HttpClient, String> {
    http_client(&config.extra_roots, config.public_roots, config.timeout)
}

/// A pooled HTTP/1.1 client for `http://` and `https://` (rustls, ring): trusts `extra_roots`
/// and, with `public_roots`, Mozilla's roots and the system store. Also used by
/// `ecl-gate wait-approval`.
pub fn http_client(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
    public_roots: bool,
    connect_timeout: Duration,
) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
    }
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|err| format!("`tls.ca_file`: {err}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector))
}
