//! Shared helpers: a gate on 127.0.0.1:0 with its own profiles and audit log, and a client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ecl_gate::approval::{Approvals, UsedTokens};
use ecl_gate::audit::{AuditLog, AuditSettings, SyncMode};
use ecl_gate::canonical::{self, Value};
use ecl_gate::config::{Config, RawAudit, RawConfig};
use ecl_gate::profile::ProfileStore;
use ecl_gate::server::{DecideFn, Gate, Server};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

/// The repository's shipped profiles.
pub fn shipped_profiles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

pub struct TestGate {
    pub addr: SocketAddr,
    pub audit_path: PathBuf,
    pub metrics: Arc<ecl_gate::metrics::Metrics>,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

pub struct Options {
    pub profiles_root: PathBuf,
    pub audit_path: Option<PathBuf>,
    pub sync: SyncMode,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub decide: Option<DecideFn>,
    pub approvals: Approvals,
    pub single_use_ledger: Option<PathBuf>,
    pub include_request: bool,
    pub max_in_flight: u64,
    /// Proxy mode: upstreams and grant signer (tests/it/proxy.rs).
    pub proxy: Option<ecl_gate::proxy::ProxyConfig>,
    /// Caller authentication (tests/it/callers.rs); default: everyone `anonymous`.
    pub auth: ecl_gate::config::auth::AuthConfig,
    pub bindings: Option<ecl_gate::caller::Bindings>,
    /// `shadow` candidates, `"id@version" = "candidate"` (tests/it/shadow.rs).
    pub shadow: Vec<(&'static str, &'static str)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            profiles_root: shipped_profiles(),
            audit_path: None,
            sync: SyncMode::Never,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            decide: None,
            approvals: Approvals::default(),
            single_use_ledger: None,
            include_request: false,
            max_in_flight: 1024,
            proxy: None,
            auth: Default::default(),
            bindings: None,
            shadow: Vec::new(),
        }
    }
}

impl TestGate {
    pub async fn start() -> TestGate {
        TestGate::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestGate {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = options
            .audit_path
            .unwrap_or_else(|| dir.path().join("audit.log"));
        let raw = RawConfig {
            listen: "127.0.0.1:0".into(),
            max_body_bytes: options.max_body_bytes as u64,
            body_timeout_ms: options.body_timeout.as_millis() as u64,
            max_in_flight: options.max_in_flight,
            audit: RawAudit {
                include_request: options.include_request,
                ..RawConfig::default().audit
            },
            shadow: options
                .shadow
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..RawConfig::default()
        };
        let config: Config = raw.validate().unwrap();
        let audit = AuditLog::open(AuditSettings {
            path: audit_path.clone(),
            sync: options.sync,
            sync_interval: Duration::from_millis(50),
            queue_capacity: 4096,
            observer: None,
            checkpoints: None,
        })
        .unwrap();
        let profiles = ProfileStore::new(&options.profiles_root);
        let mut gate = Gate::new(&config, profiles, audit);
        if let Some(decide) = options.decide {
            gate.decide = decide;
        }
        gate.context.approvals = options.approvals;
        if let Some(path) = options.single_use_ledger {
            gate.used_tokens = Some(ecl_gate::ledger::Ledger::File(Arc::new(
                UsedTokens::open(&path).unwrap(),
            )));
        }
        gate.auth =
            ecl_gate::auth::Authenticator::load(&options.auth, Arc::clone(&gate.metrics)).unwrap();
        gate.auth.spawn_reloader();
        gate.context.bindings = options.bindings;
        if let Some(proxy) = &options.proxy {
            let proxy = ecl_gate::proxy::Proxy::new(proxy).unwrap();
            proxy.spawn_reloaders(&gate.metrics);
            gate.proxy = Some(Arc::new(proxy));
        }
        let metrics = Arc::clone(&gate.metrics);
        let server = Server::bind(config.listen, Arc::new(gate)).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestGate {
            addr,
            audit_path,
            metrics,
            _dir: dir,
            stop: Some(stop),
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `body` to `/v1/execute`; returns the status and the parsed JSON answer.
    pub async fn execute(&self, body: impl Into<Bytes>) -> (u16, Value) {
        self.send("POST", "/v1/execute", body.into()).await
    }

    /// Sends `body` to `path_and_query` with extra `headers`; returns status, headers and answer.
    pub async fn send_with(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (u16, http::HeaderMap, Value) {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(self.url(path_and_query))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = canonical::parse(&bytes)
            .unwrap_or_else(|err| panic!("answer is not JSON ({err}): {bytes:?}"));
        (status, headers, value)
    }

    pub async fn send(&self, method: &str, path: &str, body: Bytes) -> (u16, Value) {
        let request = http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = canonical::parse(&bytes)
            .unwrap_or_else(|err| panic!("answer is not JSON ({err}): {bytes:?}"));
        (status, value)
    }

    /// Every record in the audit log, parsed.
    pub fn records(&self) -> Vec<Value> {
        read_records(&self.audit_path)
    }

    /// The audit record a decision's `audit.seq` points at, checked against its hashes.
    pub fn record_for(&self, decision: &Value) -> Value {
        let seq = decision["audit"]["seq"].as_u64_exact();
        let records = self.records();
        let record = records
            .iter()
            .find(|r| r["seq"].as_u64_exact() == seq)
            .unwrap_or_else(|| panic!("no record with seq {seq}"))
            .clone();
        assert_eq!(
            record["integrity"]["record_hash"],
            decision["audit"]["record_hash"]
        );
        assert_eq!(
            record["integrity"]["prev_hash"],
            decision["audit"]["prev_hash"]
        );
        assert_eq!(record["provenance_id"], decision["provenance_id"]);
        assert_eq!(record["request_hash"], decision["request_hash"]);
        assert_eq!(record["decision_type"], decision["decision_type"]);
        assert_eq!(record["reason_code"], decision["reason_code"]);
        assert_eq!(record["approved_call"], decision["approved_call"]);
        assert_eq!(
            record["profile_ref_hash"],
            decision["profile"]["profile_ref_hash"]
        );
        assert_eq!(record["profile_id"], decision["profile"]["id"]);
        assert_eq!(record["profile_version"], decision["profile"]["version"]);
        record
    }
}

impl Drop for TestGate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn read_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| canonical::parse(line.as_bytes()).unwrap())
        .collect()
}

/// Indexing and small conveniences so assertions read like the JSON they check.
pub trait ValueExt {
    fn as_u64_exact(&self) -> u64;
    fn str(&self) -> &str;
}

impl ValueExt for Value {
    fn as_u64_exact(&self) -> u64 {
        match self {
            Value::Number(n) => n.as_i64().and_then(|i| u64::try_from(i).ok()).unwrap(),
            other => panic!("expected an integer, found {other:?}"),
        }
    }

    fn str(&self) -> &str {
        self.as_str()
            .unwrap_or_else(|| panic!("expected a string, found {self:?}"))
    }
}

/// A valid request for the example profile; `args` and `tool` vary per test.
pub fn request(request_id: &str, tool: &str, args: Value) -> Value {
    request_for("example", "1.0.0", request_id, tool, args)
}

pub fn request_for(
    profile: &str,
    version: &str,
    request_id: &str,
    tool: &str,
    args: Value,
) -> Value {
    let snapshot = Value::object([("session", "s-1".into()), ("turn", 3i64.into())]);
    Value::object([
        ("request_id", request_id.into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:7".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([("name", tool.into()), ("args", args)]),
        ),
        (
            "profile",
            Value::object([("id", profile.into()), ("version", version.into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
    ])
}

pub fn email_args(to: &str, subject: &str) -> Value {
    Value::object([("to", to.into()), ("subject", subject.into())])
}

pub fn bytes_of(value: &Value) -> Bytes {
    Bytes::from(canonical::to_canonical(value))
}

/// Replaces the member at `path` (object keys) with `new`; `None` removes it.
pub fn with(mut value: Value, path: &[&str], new: Option<Value>) -> Value {
    fn go(value: &mut Value, path: &[&str], new: Option<Value>) {
        let Value::Object(map) = value else {
            panic!("not an object at {path:?}")
        };
        match path {
            [last] => {
                match new {
                    Some(v) => map.insert((*last).to_owned(), v),
                    None => map.remove(*last),
                };
            }
            [first, rest @ ..] => go(map.get_mut(*first).unwrap(), rest, new),
            [] => panic!("empty path"),
        }
    }
    go(&mut value, path, new);
    value
}

/// The gate's binary with a clean environment. Tests that use `figment::Jail` set `ECL_*` and
/// other variables for the whole test process; a gate spawned at that moment by another test
/// would inherit them (a CI run once failed on the Dockerfile's `PROFILES_ROOT`). Every spawned
/// gate therefore starts from nothing and is given what it needs explicitly.
pub fn gate_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ecl-gate"));
    command.env_clear();
    // Only what a process needs to run at all, never an `ECL_*` or profile variable.
    for name in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}
