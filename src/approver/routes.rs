//! The approver's HTTP handlers: the agent listener (notifications in, approvals out) and the
//! inbox listener (sign-in, inbox, detail, approve, reject).
//!
//! Owns mapping every outcome to a status and a clear message. Every decision goes through
//! the store's `decide`, which holds the entry (a lock, or a locked database row) from check
//! to write, so two approvers racing get one token between them; every token and rejection is
//! audited before it exists anywhere else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::approval::{sign, Grant};
use crate::canonical::{Map, Value};
use crate::notify::wire::{self, Notification, NotificationError};

use super::auth::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::pages;
use super::store::{
    Cursor, DecideError, DecideFailure, ReceiveFailure, Received, Status, StoreError,
};
use super::{now_secs, App};

type Shared = State<Arc<App>>;

/// `POST /v1/notifications` and `GET /v1/approvals/{intent_hash}`: for the gate and agents.
pub fn agent_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/notifications", post(notification))
        .route("/v1/approvals/{intent_hash}", get(approval))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(DefaultBodyLimit::max(wire::MAX_NOTIFICATION_BYTES + 1024))
        .with_state(app)
}

/// The HTML inbox: for approvers only.
pub fn inbox_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(inbox))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/escalations/{intent_hash}", get(detail))
        .route("/escalations/{intent_hash}/approve", post(approve))
        .route("/escalations/{intent_hash}/reject", post(reject))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn error_json(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_answer(status, json!({ "error": message.to_string() }))
}

// ---------------------------------------------------------------- agent listener

async fn notification(State(app): Shared, body: Bytes) -> Response {
    let Ok(token) = std::str::from_utf8(&body) else {
        return error_json(StatusCode::BAD_REQUEST, "notification is not UTF-8 text");
    };
    let token = token.trim();
    if token.is_empty() {
        return error_json(
            StatusCode::BAD_REQUEST,
            "notification is empty: expected the gate's signed JWS",
        );
    }
    let notification = match wire::verify(token, &app.gate_keys) {
        Ok(n) => n,
        Err(err) => {
            let status = match err {
                NotificationError::BadSignature
                | NotificationError::UnknownKey(_)
                | NotificationError::Algorithm(_)
                | NotificationError::WrongType => StatusCode::FORBIDDEN,
                NotificationError::Malformed(_) | NotificationError::Claim(_) => {
                    StatusCode::BAD_REQUEST
                }
            };
            tracing::warn!(error = %err, "notification refused");
            return error_json(status, err);
        }
    };
    let now = now_secs();
    if notification.expires_at <= now {
        return error_json(
            StatusCode::GONE,
            format!(
                "escalation `{}` expired at {}",
                notification.intent_hash,
                pages::utc(notification.expires_at)
            ),
        );
    }
    let intent_hash = notification.intent_hash.clone();
    let (tool, request_id) = (
        notification.tool_name.clone(),
        notification.request_id.clone(),
    );
    let record = received_record(&notification, token, now);
    let audit = || async {
        match app.audit.append(record).await {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(error = %err, "approver audit record could not be written; notification refused");
                false
            }
        }
    };
    match app.store.receive(notification, token, now, audit).await {
        Ok(Received::New) => {}
        Ok(Received::Duplicate) => {
            return json_answer(
                StatusCode::OK,
                json!({"status": "duplicate", "intent_hash": intent_hash}),
            )
        }
        Err(ReceiveFailure::Audit) => {
            return error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "the approver's audit log cannot be written; retry later",
            )
        }
        Err(ReceiveFailure::Store(err)) => {
            tracing::error!(error = %err, "escalation could not be stored; notification refused");
            return error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "the approver's state cannot be written; retry later",
            );
        }
    }
    app.bump();
    tracing::info!(intent_hash = %intent_hash, tool = %tool, request_id = %request_id, "escalation received");
    json_answer(
        StatusCode::CREATED,
        json!({"status": "pending", "intent_hash": intent_hash}),
    )
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    /// Seconds to hold the request open while the escalation is pending.
    #[serde(default)]
    wait: Option<u64>,
}

async fn approval(
    State(app): Shared,
    Path(intent_hash): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Response {
    if !wire::is_hash(&intent_hash) {
        return error_json(
            StatusCode::BAD_REQUEST,
            "`intent_hash` must be `sha256:` and 64 lowercase hex digits",
        );
    }
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(app.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.changed.subscribe();
    loop {
        let now = now_secs();
        let status = match app.store.get(&intent_hash, now).await {
            Ok(entry) => entry.map(|e| (e.expires_at(), e.status)),
            Err(err) => {
                tracing::error!(error = %err, "escalation could not be read for a waiting agent");
                return error_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the approver's state cannot be read; retry later",
                );
            }
        };
        match status {
            None => {
                return json_answer(
                    StatusCode::NOT_FOUND,
                    json!({"status": "unknown", "intent_hash": intent_hash,
                           "error": format!("no escalation `{intent_hash}` is known here, or it has expired")}),
                )
            }
            Some((
                _,
                Status::Approved {
                    token,
                    by,
                    expires_at,
                    ..
                },
            )) => {
                return json_answer(
                    StatusCode::OK,
                    json!({"status": "approved", "intent_hash": intent_hash, "approval_token": token,
                           "approver": by, "expires_at": expires_at}),
                )
            }
            Some((_, Status::Rejected { by, reason, .. })) => {
                return json_answer(
                    StatusCode::FORBIDDEN,
                    json!({"status": "rejected", "intent_hash": intent_hash, "approver": by, "reason": reason}),
                )
            }
            Some((expires_at, Status::Pending)) => {
                // Another replica may decide it (shared store): look again now and then.
                let wake = if app.store.is_shared() {
                    deadline.min(tokio::time::Instant::now() + SHARED_POLL)
                } else {
                    deadline
                };
                let _ = tokio::time::timeout_at(wake, changes.changed()).await;
                if now_secs() >= expires_at {
                    continue;
                }
                if tokio::time::Instant::now() >= deadline {
                    let mut response = json_answer(
                        StatusCode::ACCEPTED,
                        json!({"status": "pending", "intent_hash": intent_hash, "expires_at": expires_at}),
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return response;
                }
            }
        }
    }
}

/// How often a waiting agent's escalation is read again when replicas share the store.
const SHARED_POLL: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------- inbox listener

/// The approver behind a request, and what their CSRF tokens are bound to.
struct Approver {
    identity: String,
    binding: String,
    csrf: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn who(app: &App, headers: &HeaderMap) -> Option<Approver> {
    if let Some(name) = &app.identity_header {
        if let Some(identity) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| auth::is_identity(v))
        {
            let binding = format!("header:{identity}");
            return Some(Approver {
                identity: identity.to_owned(),
                csrf: app.sessions.csrf_token(&binding),
                binding,
            });
        }
    }
    app.passwords.as_ref()?;
    let session = cookie(headers, SESSION_COOKIE)?;
    let identity = app.sessions.identity(session)?;
    let binding = format!("session:{session}");
    Some(Approver {
        identity,
        csrf: app.sessions.csrf_token(&binding),
        binding,
    })
}

fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    // No framing (clickjacking an Approve button), no caching of what an agent asked.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn unauthenticated(app: &App) -> Response {
    redirect_or_refuse(app, true)
}

/// A form sent without a signed-in approver is refused outright, never redirected.
fn unauthenticated_post(app: &App) -> Response {
    redirect_or_refuse(app, false)
}

fn redirect_or_refuse(app: &App, may_redirect: bool) -> Response {
    if app.passwords.is_some() && !may_redirect {
        return page(
            StatusCode::UNAUTHORIZED,
            pages::message(
                "Not signed in",
                None,
                "sign in first: nothing was decided",
                false,
            ),
        );
    }
    if app.passwords.is_some() {
        let mut response = StatusCode::SEE_OTHER.into_response();
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/login"));
        response
    } else {
        page(
            StatusCode::UNAUTHORIZED,
            pages::message(
                "Not signed in",
                None,
                "this inbox trusts the identity set by the authenticating proxy in front of it, and none arrived",
                false,
            ),
        )
    }
}

/// A POST must come from the inbox itself: when the browser names an origin, it must be this
/// host; and the form's CSRF token must belong to this approver.
fn check_form(
    app: &App,
    headers: &HeaderMap,
    approver: &Approver,
    csrf: Option<&str>,
) -> Result<(), Box<Response>> {
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin != "null" && origin_host != host {
            return Err(Box::new(page(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Refused",
                    None,
                    &format!("the form was sent from another site (`{origin}`)"),
                    false,
                ),
            )));
        }
    }
    match csrf {
        Some(token) if app.sessions.csrf_ok(&approver.binding, token) => Ok(()),
        _ => Err(Box::new(page(
            StatusCode::FORBIDDEN,
            pages::message(
                "Refused",
                Some((&approver.identity, &approver.csrf)),
                "the form carries no valid CSRF token; reload the page and try again",
                false,
            ),
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    /// The "Older" link's cursor: show what was asked before it.
    #[serde(default)]
    before: Option<String>,
}

async fn inbox(
    State(app): Shared,
    headers: HeaderMap,
    Query(query): Query<InboxQuery>,
) -> Response {
    let Some(approver) = who(&app, &headers) else {
        return unauthenticated(&app);
    };
    let identity = (approver.identity.as_str(), approver.csrf.as_str());
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => match Cursor::parse(text) {
            Some(cursor) => Some(cursor),
            None => {
                return page(
                    StatusCode::BAD_REQUEST,
                    pages::message(
                        "Refused",
                        Some(identity),
                        "`before` must be the inbox's own `ASKED_AT.INTENT_HASH` cursor: follow its Older link",
                        false,
                    ),
                )
            }
        },
    };
    let now = now_secs();
    match app.store.page(now, before.as_ref()).await {
        Ok(inbox) => page(
            StatusCode::OK,
            pages::inbox(&inbox, before.is_some(), now, identity),
        ),
        Err(err) => store_unavailable(identity, &err),
    }
}

/// The state could not be read: nothing shown, nothing decided.
fn store_unavailable(identity: (&str, &str), err: &StoreError) -> Response {
    tracing::error!(error = %err, "escalations could not be read");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            "Unavailable",
            Some(identity),
            "the escalations cannot be read right now; try again",
            false,
        ),
    )
}

async fn detail(
    State(app): Shared,
    headers: HeaderMap,
    Path(intent_hash): Path<String>,
) -> Response {
    let Some(approver) = who(&app, &headers) else {
        return unauthenticated(&app);
    };
    let identity = (approver.identity.as_str(), approver.csrf.as_str());
    let now = now_secs();
    match app.store.get(&intent_hash, now).await {
        Err(err) => store_unavailable(identity, &err),
        Ok(Some(entry)) => page(
            StatusCode::OK,
            pages::detail(&entry, now, app.max_ttl.as_secs(), identity),
        ),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            pages::message(
                "Not found",
                Some(identity),
                &DecideError::Unknown(intent_hash).to_string(),
                false,
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ApproveForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RejectForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn decide_error(approver: &Approver, err: &DecideError) -> Response {
    let status = match err {
        DecideError::Unknown(_) => StatusCode::NOT_FOUND,
        DecideError::Expired(_) => StatusCode::GONE,
        DecideError::AlreadyDecided { .. } => StatusCode::CONFLICT,
    };
    page(
        status,
        pages::message(
            "Refused",
            Some((&approver.identity, &approver.csrf)),
            &err.to_string(),
            false,
        ),
    )
}

fn decide_failure(approver: &Approver, failure: DecideFailure, what: &str) -> Response {
    match failure {
        DecideFailure::Refused(err) => decide_error(approver, &err),
        DecideFailure::NotRecorded(what) => unavailable(approver, what),
        DecideFailure::Store(err) => {
            tracing::error!(error = %err, "escalation state could not be written; {what} refused");
            unavailable(approver, what)
        }
    }
}

fn unavailable(approver: &Approver, what: &str) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            "Not recorded",
            Some((&approver.identity, &approver.csrf)),
            &format!("{what} could not be written; nothing was decided, try again"),
            false,
        ),
    )
}

async fn approve(
    State(app): Shared,
    headers: HeaderMap,
    Path(intent_hash): Path<String>,
    Form(form): Form<ApproveForm>,
) -> Response {
    let Some(approver) = who(&app, &headers) else {
        return unauthenticated_post(&app);
    };
    if let Err(refused) = check_form(&app, &headers, &approver, form.csrf.as_deref()) {
        return *refused;
    }
    let max = app.max_ttl.as_secs();
    let ttl = match form.ttl.as_deref().map(str::parse::<u64>) {
        Some(Ok(ttl)) if (1..=max).contains(&ttl) => ttl,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Refused",
                    Some((&approver.identity, &approver.csrf)),
                    &format!("the approval's lifetime must be 1 to {max} seconds (the gate's approvals.max_ttl)"),
                    false,
                ),
            )
        }
    };
    let now = now_secs();
    let (app_ref, who, intent) = (&app, &approver, &intent_hash);
    let decision = |entry: super::store::Entry| async move {
        let (app, approver, intent_hash) = (app_ref, who, intent);
        let jti = match auth::random_token() {
            Ok(jti) => jti[..32].to_owned(),
            Err(_) => return Err(DecideFailure::NotRecorded("a token id")),
        };
        let expires_at = now + ttl;
        let token = sign(
            &app.key,
            &app.kid,
            &Grant {
                issuer: &approver.identity,
                intent_hash,
                issued_at: now,
                expires_at,
                jti: &jti,
            },
        );
        let record = decision_record(
            "approval",
            &entry.notification,
            &approver.identity,
            now,
            |m| {
                m.insert("jti".into(), jti.as_str().into());
                m.insert("kid".into(), app.kid.as_str().into());
                m.insert("expires_at".into(), expires_at.into());
            },
        );
        if let Err(err) = app.audit.append(record).await {
            tracing::error!(error = %err, "approver audit record could not be written; approval refused");
            return Err(DecideFailure::NotRecorded("the audit record"));
        }
        Ok(Status::Approved {
            at: now,
            by: approver.identity.clone(),
            token,
            jti,
            expires_at,
        })
    };
    let jti = match app.store.decide(&intent_hash, now, decision).await {
        Ok(Status::Approved { jti, .. }) => jti,
        Ok(_) => String::new(),
        Err(failure) => return decide_failure(&approver, failure, "the approval"),
    };
    app.bump();
    tracing::info!(intent_hash = %intent_hash, approver = %approver.identity, jti = %jti, ttl, "escalation approved");
    page(
        StatusCode::OK,
        pages::message(
            "Approved",
            Some((&approver.identity, &approver.csrf)),
            &format!(
                "approved for {}; the waiting agent receives the token",
                humantime::format_duration(Duration::from_secs(ttl))
            ),
            true,
        ),
    )
}

/// Longest rejection reason kept.
const MAX_REASON: usize = 500;

async fn reject(
    State(app): Shared,
    headers: HeaderMap,
    Path(intent_hash): Path<String>,
    Form(form): Form<RejectForm>,
) -> Response {
    let Some(approver) = who(&app, &headers) else {
        return unauthenticated_post(&app);
    };
    if let Err(refused) = check_form(&app, &headers, &approver, form.csrf.as_deref()) {
        return *refused;
    }
    let reason = form.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return page(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Refused",
                Some((&approver.identity, &approver.csrf)),
                &format!("a rejection needs a reason of 1 to {MAX_REASON} characters: the agent is told it"),
                false,
            ),
        );
    }
    let now = now_secs();
    let (app_ref, who) = (&app, &approver);
    let decision = |entry: super::store::Entry| async move {
        let (app, approver) = (app_ref, who);
        let record = decision_record(
            "rejection",
            &entry.notification,
            &approver.identity,
            now,
            |m| {
                m.insert("reason".into(), reason.into());
            },
        );
        if let Err(err) = app.audit.append(record).await {
            tracing::error!(error = %err, "approver audit record could not be written; rejection refused");
            return Err(DecideFailure::NotRecorded("the audit record"));
        }
        Ok(Status::Rejected {
            at: now,
            by: approver.identity.clone(),
            reason: reason.to_owned(),
        })
    };
    if let Err(failure) = app.store.decide(&intent_hash, now, decision).await {
        return decide_failure(&approver, failure, "the rejection");
    }
    app.bump();
    tracing::info!(intent_hash = %intent_hash, approver = %approver.identity, "escalation rejected");
    page(
        StatusCode::OK,
        pages::message(
            "Rejected",
            Some((&approver.identity, &approver.csrf)),
            "rejected; the waiting agent is told the reason",
            true,
        ),
    )
}

fn set_cookie(app: &App, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The sign-in form with a fresh double-submit nonce (cookie and hidden field must match).
fn login_form(app: &App, status: StatusCode, error: Option<&str>) -> Response {
    let Ok(nonce) = auth::random_token() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message("Unavailable", None, "no randomness", false),
        );
    };
    let mut response = page(status, pages::login(&nonce, error));
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, LOGIN_COOKIE, &nonce, 3600),
    );
    response
}

async fn login_page(State(app): Shared) -> Response {
    if app.passwords.is_none() {
        return unauthenticated(&app);
    }
    login_form(&app, StatusCode::OK, None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

async fn login(State(app): Shared, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if app.passwords.is_none() {
        return unauthenticated(&app);
    }
    let nonce_ok = match (cookie(&headers, LOGIN_COOKIE), form.csrf.as_deref()) {
        (Some(cookie), Some(field)) => !cookie.is_empty() && cookie == field,
        _ => false,
    };
    if !nonce_ok {
        return login_form(
            &app,
            StatusCode::FORBIDDEN,
            Some("the sign-in form carries no valid CSRF token; try again"),
        );
    }
    let user = form.user.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    if let Some(wait) = app.failures.locked(&user) {
        tracing::warn!(user = %user.chars().take(64).collect::<String>(), "sign-in refused: too many failures");
        return login_form(
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed sign-ins for this name; try again in {} min",
                wait.as_secs().div_ceil(60)
            )),
        );
    }
    let checking = Arc::clone(&app);
    let name = user.clone();
    let ok = tokio::task::spawn_blocking(move || {
        checking
            .passwords
            .as_ref()
            .is_some_and(|p| p.check(&name, &password))
    })
    .await
    .unwrap_or(false);
    if !ok {
        app.failures.failed(&user);
        tracing::warn!(user = %user.chars().take(64).collect::<String>(), "failed sign-in");
        return login_form(
            &app,
            StatusCode::UNAUTHORIZED,
            Some("wrong name or password"),
        );
    }
    app.failures.succeeded(&user);
    let Ok(session) = app.sessions.start(&user) else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message("Unavailable", None, "cannot start a session", false),
        );
    };
    tracing::info!(approver = %user, "signed in");
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            &app,
            SESSION_COOKIE,
            &session,
            auth::SESSION_LIFETIME.as_secs(),
        ),
    );
    headers.append(header::SET_COOKIE, set_cookie(&app, LOGIN_COOKIE, "", 0));
    response
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

async fn logout(State(app): Shared, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Response {
    let Some(approver) = who(&app, &headers) else {
        return unauthenticated_post(&app);
    };
    if let Err(refused) = check_form(&app, &headers, &approver, form.csrf.as_deref()) {
        return *refused;
    }
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        app.sessions.end(session);
    }
    let mut response = page(
        StatusCode::OK,
        pages::message("Signed out", None, "you are signed out", true),
    );
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&app, SESSION_COOKIE, "", 0));
    response
}

// ---------------------------------------------------------------- audit records

fn rfc3339(secs: u64) -> Value {
    pages::utc(secs).into()
}

fn gate_record(n: &Notification) -> Value {
    Value::object([
        ("stream", n.record.stream.as_str().into()),
        ("seq", n.record.seq.into()),
        ("record_hash", n.record.record_hash.as_str().into()),
    ])
}

/// `escalation_received`: what the gate reported, bound by the notification's hash.
fn received_record(n: &Notification, token: &str, now: u64) -> Map {
    let mut record = common(n, "escalation_received", now);
    record.insert("gate_kid".into(), n.gate_kid.as_str().into());
    record.insert(
        "notification_hash".into(),
        crate::canonical::sha256_prefixed(token.as_bytes()).into(),
    );
    record.insert(
        "rules".into(),
        Value::Array(n.rules.iter().map(|r| r.as_str().into()).collect()),
    );
    record.insert("expires_at".into(), n.expires_at.into());
    if let Some(caller) = &n.caller {
        let mut who = Map::new();
        who.insert("method".into(), caller.method.as_str().into());
        who.insert("id".into(), caller.id.as_ref().into());
        if let Some(issuer) = &caller.issuer {
            who.insert("iss".into(), issuer.as_ref().into());
        }
        record.insert("caller".into(), Value::Object(who));
    }
    record
}

fn decision_record(
    kind: &str,
    n: &Notification,
    approver: &str,
    now: u64,
    extra: impl FnOnce(&mut Map),
) -> Map {
    let mut record = common(n, kind, now);
    record.insert("approver".into(), approver.into());
    extra(&mut record);
    record
}

fn common(n: &Notification, kind: &str, now: u64) -> Map {
    let mut record = Map::new();
    record.insert("record_type".into(), kind.into());
    record.insert("intent_hash".into(), n.intent_hash.as_str().into());
    record.insert("request_id".into(), n.request_id.as_str().into());
    record.insert("provenance_id".into(), n.provenance_id.as_str().into());
    record.insert("tool_name".into(), n.tool_name.as_str().into());
    record.insert("gate_record".into(), gate_record(n));
    record.insert(
        "timestamps".into(),
        Value::object([("received_at", rfc3339(now))]),
    );
    record
}
