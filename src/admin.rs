//! The admin listener, on its own port so the execution surface keeps exactly one route.
//!
//! Endpoints:
//! - `GET /healthz` — the process is alive and serving this listener: always 200.
//! - `GET /readyz` — 200 when the execution listener is bound, the profiles root is readable
//!   and the audit log takes writes; otherwise 503 with the failing checks named. With shadow
//!   candidates configured, a `shadow` member says whether each is evaluated (never a 503). In
//!   proxy mode a 200 also lists, under `warnings`, tools a profile allows without an upstream.
//!   A shared single-use ledger that does not answer makes it 200 `degraded`, naming it.
//! - `GET /metrics` — Prometheus metrics: OpenMetrics text when the scraper's `Accept` asks for
//!   `application/openmetrics-text`, classic Prometheus text 0.0.4 otherwise.
//! - `GET /openapi.yaml` — the API description.
//! - `GET /audit/checkpoint` — the newest signed checkpoint of the audit log's Merkle tree
//!   (C2SP `tlog-checkpoint` note, text/plain); 404 when checkpoints are off, 503 before the
//!   first is signed.
//!
//! It only reads state; nothing here can change a decision.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::canonical::{self, Value};
use crate::server::Gate;

/// The OpenAPI description served at `/openapi.yaml`, compiled in so it always matches.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

pub struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

struct AdminState {
    gate: Arc<Gate>,
    serving: Arc<AtomicBool>,
}

impl Admin {
    /// Binds the admin listener. `serving` is set by the caller once the execution listener
    /// is bound and cleared when it stops, so readiness follows it.
    pub async fn bind(
        addr: SocketAddr,
        gate: Arc<Gate>,
        serving: Arc<AtomicBool>,
    ) -> std::io::Result<Admin> {
        Ok(Admin {
            listener: TcpListener::bind(addr).await?,
            state: Arc::new(AdminState { gate, serving }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let state = Arc::clone(&self.state);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            let connection = graceful.watch(
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
        graceful.shutdown().await;
    }
}

fn route<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &Value::object([(
                "error",
                "method not allowed: the admin endpoints take GET".into(),
            )]),
        );
        // RFC 9110 §15.5.6: a 405 lists what the resource does allow.
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/healthz" => json(StatusCode::OK, &Value::object([("status", "ok".into())])),
        "/readyz" => readiness(state),
        "/metrics" => {
            let metrics = &state.gate.metrics;
            missing_upstreams(state);
            metrics
                .profiles_loaded
                .set(i64::try_from(state.gate.profiles.loaded_count()).unwrap_or(i64::MAX));
            if let Some(ledger) = &state.gate.used_tokens {
                metrics
                    .ledger_up
                    .set(i64::from(ledger.unavailable().is_none()));
            }
            if wants_openmetrics(request) {
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.encode_classic(),
                )
            }
        }
        "/openapi.yaml" => text(StatusCode::OK, "application/yaml", OPENAPI_YAML.to_owned()),
        "/audit/checkpoint" => checkpoint(state),
        _ => json(
            StatusCode::NOT_FOUND,
            &Value::object([(
                "error",
                "not found: /healthz, /readyz, /metrics, /openapi.yaml, /audit/checkpoint".into(),
            )]),
        ),
    }
}

/// Whether the scraper asks for OpenMetrics (Prometheus does, listing it first); anything
/// else, no `Accept` included, gets the classic text every scraper reads.
fn wants_openmetrics<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            // `q=0` means "not this one" (RFC 9110 §12.4.2).
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
}

/// Proxy mode: tools a profile allows without an upstream, also kept in the metric.
fn missing_upstreams(state: &AdminState) -> Vec<crate::proxy::MissingUpstream> {
    let Some(proxy) = &state.gate.proxy else {
        return Vec::new();
    };
    let missing = crate::proxy::tools_without_upstream(&state.gate.profiles, proxy.upstreams());
    state
        .gate
        .metrics
        .tools_without_upstream
        .set(i64::try_from(missing.len()).unwrap_or(i64::MAX));
    missing
}

fn checkpoint(state: &AdminState) -> Response<Full<Bytes>> {
    let audit = &state.gate.audit;
    if !audit.checkpoints_enabled() {
        return json(
            StatusCode::NOT_FOUND,
            &Value::object([(
                "error",
                "checkpoints are off: set `audit.checkpoint_key` to sign them".into(),
            )]),
        );
    }
    match audit.latest_checkpoint() {
        Some(note) => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            note.to_string(),
        ),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Value::object([(
                "error",
                "no checkpoint signed yet: one follows the first records".into(),
            )]),
        ),
    }
}

fn readiness(state: &AdminState) -> Response<Full<Bytes>> {
    let mut failing = Vec::new();
    if !state.serving.load(Ordering::Acquire) {
        failing.push(Value::from("execution listener is not serving"));
    }
    let root = state.gate.profiles.root();
    if std::fs::read_dir(root).is_err() {
        failing.push(Value::from(format!(
            "profiles root `{}` is not readable",
            root.display()
        )));
    }
    let audit = state.gate.audit.health();
    if audit.failing {
        let why = audit
            .last_error
            .unwrap_or_else(|| "writer stopped".to_owned());
        failing.push(Value::from(format!("audit log is failing: {why}")));
    }
    if audit.checkpoints_stopped {
        failing.push(Value::from(
            "audit checkpoints stopped: the tree thread died; records are still written, restart the gate to sign checkpoints again",
        ));
    }
    // Degraded, not unready: calls that need no approval are still decided correctly, and
    // taking every replica out of its Service because the shared database is down would turn
    // a partial outage into a full one. Approved calls are denied meanwhile (fail closed).
    let degraded = state.gate.used_tokens.as_ref().and_then(|ledger| {
        ledger.unavailable().map(|why| {
            Value::from(format!(
                "single-use ledger is unavailable (approved calls are denied): {why}"
            ))
        })
    });
    let mut body = crate::canonical::Map::new();
    let status = if failing.is_empty() {
        match degraded {
            None => {
                body.insert("status".into(), "ready".into());
            }
            Some(why) => {
                body.insert("status".into(), "degraded".into());
                body.insert("degraded".into(), Value::Array(vec![why]));
            }
        }
        // Not a reason to take the gate out of service: every gate running the same profiles
        // would go unready at once. Listed so a rollout or an operator sees it.
        let warnings: Vec<Value> = missing_upstreams(state)
            .iter()
            .map(|gap| Value::from(gap.to_string()))
            .collect();
        if !warnings.is_empty() {
            body.insert("warnings".into(), Value::Array(warnings));
        }
        StatusCode::OK
    } else {
        body.insert("status".into(), "not ready".into());
        body.insert("failing".into(), Value::Array(failing));
        StatusCode::SERVICE_UNAVAILABLE
    };
    // A broken shadow candidate is reported here but never makes the gate unready: taking the
    // gate out of rotation would let a policy nobody enforces change what agents get.
    if !state.gate.shadow.is_empty() {
        let candidates = state
            .gate
            .shadow
            .status(&state.gate.profiles)
            .into_iter()
            .map(|status| {
                let mut entry = crate::canonical::Map::new();
                entry.insert("profile".into(), status.profile.into());
                entry.insert("candidate".into(), status.candidate.into());
                match status.problem {
                    None => entry.insert("state".into(), "evaluated".into()),
                    Some(problem) => {
                        entry.insert("error".into(), problem.into());
                        entry.insert("state".into(), "unavailable".into())
                    }
                };
                Value::Object(entry)
            })
            .collect();
        body.insert("shadow".into(), Value::Array(candidates));
    }
    json(status, &Value::Object(body))
}

fn json(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(canonical::to_canonical(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
