//! demo_tool: the reference implementation of the tool side of ecl-gate's proxy mode.
//!
//! A tool that accepts a call only when its `ECL-Grant` verifies against the exact body bytes
//! received: signed by the gate's key, for this tool's audience, fresh, and not seen before.
//! Anything else is refused with 401 (no grant) or 403 (a grant not good for this call) and a
//! JSON reason, so an agent that bypasses the gate gets nowhere even when the network lets it
//! reach the tool (a Kubernetes sidecar shares the agent's network namespace).
//!
//! ```sh
//! DEMO_TOOL_PUBKEY=keys/<kid>.pub DEMO_TOOL_AUDIENCE=demo-tool cargo run --example demo_tool
//! ```
//!
//! Environment:
//! - `DEMO_TOOL_LISTEN`   address to listen on (default `127.0.0.1:8100`)
//! - `DEMO_TOOL_PUBKEY`   the gate's grant public key file (SPKI PEM, as `ecl-gate keygen` writes)
//! - `DEMO_TOOL_AUDIENCE` the `aud` this tool accepts: the gate's `upstreams.<tool>.audience`
//!   (default there: the upstream URL)
//! - `DEMO_TOOL_NAME`     optional: accept grants for this tool name only
//! - `DEMO_TOOL_API_KEY`  optional: also require `Authorization: Bearer <key>`, the credential the
//!   gate injects from its own configuration (the agent never holds it)
//!
//! Answers 200 `{"ok": true, "tool", "provenance_id", "grant_jti", "received"}` echoing the
//! arguments; a real tool would do its work there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ecl_gate::canonical::{self, Value};
use ecl_gate::grant::{GrantError, GrantVerifier, GRANT_HEADER};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub const ENV_LISTEN: &str = "DEMO_TOOL_LISTEN";
pub const ENV_PUBKEY: &str = "DEMO_TOOL_PUBKEY";
pub const ENV_AUDIENCE: &str = "DEMO_TOOL_AUDIENCE";
pub const ENV_NAME: &str = "DEMO_TOOL_NAME";
pub const ENV_API_KEY: &str = "DEMO_TOOL_API_KEY";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8100";
/// Bodies larger than this are refused before any grant check.
const MAX_BODY: usize = 1024 * 1024;

/// What the tool checks calls against.
pub struct Settings {
    pub verifier: GrantVerifier,
    pub tool: Option<String>,
    pub api_key: Option<String>,
    /// Grant ids seen, with their `exp`: a grant is good for one call.
    seen: Mutex<HashMap<String, u64>>,
}

impl Settings {
    pub fn new(verifier: GrantVerifier, tool: Option<String>, api_key: Option<String>) -> Self {
        Settings {
            verifier,
            tool,
            api_key,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// From the environment; the message names the variable at fault.
    pub fn from_env() -> Result<Settings, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let pubkey = var(ENV_PUBKEY).ok_or_else(|| format!("`{ENV_PUBKEY}` is not set"))?;
        let audience = var(ENV_AUDIENCE).ok_or_else(|| format!("`{ENV_AUDIENCE}` is not set"))?;
        let text = std::fs::read_to_string(&pubkey)
            .map_err(|err| format!("`{ENV_PUBKEY}`: cannot read `{pubkey}`: {err}"))?;
        let key = ecl_gate::approval::parse_public_key(&text)
            .map_err(|err| format!("`{ENV_PUBKEY}`: `{pubkey}`: {err}"))?;
        Ok(Settings::new(
            GrantVerifier::single(key, &audience),
            var(ENV_NAME),
            var(ENV_API_KEY),
        ))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => Arc::new(settings),
        Err(err) => {
            eprintln!("demo_tool: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let listen = std::env::var(ENV_LISTEN).unwrap_or_else(|_| DEFAULT_LISTEN.to_owned());
    let addr: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!(
                "demo_tool: `{ENV_LISTEN}`: `{listen}` is not an address like `0.0.0.0:8100`"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("demo_tool: cannot listen on `{addr}`: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    eprintln!("demo_tool: accepting granted calls on http://{addr}");
    serve(listener, settings, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    std::process::ExitCode::SUCCESS
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<Settings>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let settings = Arc::clone(&settings);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let settings = Arc::clone(&settings);
                async move { Ok::<_, Infallible>(handle(&settings, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(settings: &Settings, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
    }
    // Exactly one grant: two headers could make a proxy and this tool read different ones.
    let grants: Vec<String> = request
        .headers()
        .get_all(GRANT_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is too large or broken",
            )
        }
    };
    let token = match grants.as_slice() {
        [] => return refuse_grant(&GrantError::Missing),
        [token] => token,
        _ => {
            return refuse(
                StatusCode::FORBIDDEN,
                "grant_malformed",
                "more than one `ECL-Grant` header",
            )
        }
    };
    // The grant is checked against the bytes as received, before they are parsed at all.
    let claims = match settings.verifier.verify(token, &body, SystemTime::now()) {
        Ok(claims) => claims,
        Err(err) => return refuse_grant(&err),
    };
    if let Some(tool) = &settings.tool {
        if &claims.tool != tool {
            return refuse(
                StatusCode::FORBIDDEN,
                "grant_wrong_tool",
                &format!("grant is for tool `{}`, not `{tool}`", claims.tool),
            );
        }
    }
    if let Some(key) = &settings.api_key {
        if authorization.as_deref() != Some(format!("Bearer {key}").as_str()) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "credential_invalid",
                "missing or wrong `Authorization`",
            );
        }
    }
    if !first_use(settings, &claims.jti, claims.exp) {
        return refuse(
            StatusCode::FORBIDDEN,
            "grant_replayed",
            "this grant was used before",
        );
    }
    let received = match canonical::parse(&body) {
        Ok(value) => value,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "body_invalid",
                &format!("the body is not JSON: {err}"),
            )
        }
    };
    respond(
        StatusCode::OK,
        &Value::object([
            ("ok", true.into()),
            ("tool", claims.tool.as_str().into()),
            ("provenance_id", claims.provenance_id.as_str().into()),
            ("grant_jti", claims.jti.as_str().into()),
            ("received", received),
        ]),
    )
}

/// Records `jti` until `exp`; false when it was seen already.
fn first_use(settings: &Settings, jti: &str, exp: u64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let Ok(mut seen) = settings.seen.lock() else {
        // A poisoned lock means a panic elsewhere: refuse rather than risk a replay.
        return false;
    };
    // Forget grants well past expiry (and the verifier's skew): they can no longer verify.
    seen.retain(|_, expires| *expires + 60 > now);
    seen.insert(jti.to_owned(), exp).is_none()
}

fn refuse_grant(err: &GrantError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    refuse(status, err.code(), &err.to_string())
}

fn refuse(status: StatusCode, code: &str, reason: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        &Value::object([("error", code.into()), ("reason", reason.into())]),
    )
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(canonical::to_canonical(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
