//! Proxy-mode configuration: `[upstreams."tool"]`, `[grants]`, `[tls]` and
//! `max_upstream_body_bytes`, from raw keys to a validated [`ProxyConfig`].
//!
//! Owns resolving credentials (`{ env = "X" }`, `{ file = "…" }`) and loading the signing key
//! and CA file, all at start, so the gate never starts half-configured. It must never put a
//! credential into a message, a log line or a `Debug` output: header values are marked
//! sensitive, and errors name the key, never the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ConfigError;
use crate::grant::{GrantSigner, MAX_LIFETIME};
use crate::reload::read_bounded;

/// Default for `upstreams.*.timeout_ms`: connect, send and the whole answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default for `max_upstream_body_bytes`.
pub const DEFAULT_MAX_UPSTREAM_BODY_BYTES: u64 = 1024 * 1024;
/// Upper bound for `max_upstream_body_bytes`: the answer is buffered to hash and record it.
pub const MAX_UPSTREAM_BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// Default for `upstreams.*.max_concurrent`: calls waiting on one tool at once.
pub const DEFAULT_MAX_CONCURRENT: u64 = 64;

/// Headers the gate sets itself; a configured one would forge or break the call.
const RESERVED_HEADERS: &[&str] = &[
    crate::grant::GRANT_HEADER,
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "trailer",
    // The gate names itself; a configured value would be overwritten without a word.
    "user-agent",
];

/// `[upstreams."tool.name"]`, exactly as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(deserialize_with = "super::text")]
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The grant's `aud`; default: `url` without its query and fragment.
    #[serde(default)]
    pub audience: Option<String>,
    /// Calls waiting on this tool at once; one more is not sent (`upstream_busy`).
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderValue>,
    /// PEM certificate chain (leaf first) the gate presents to this tool in the TLS handshake;
    /// `https://` only, with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// A header value: literal, or read at start from the environment or a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawHeaderValue {
    Literal(String),
    Env(EnvRef),
    File(FileRef),
}

/// By hand rather than `untagged`, whose only message is "data did not match any variant":
/// this one says which of the three forms was meant and what is wrong with it.
impl<'de> Deserialize<'de> for RawHeaderValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            #[serde(deserialize_with = "super::text")]
            Text(String),
            Table(BTreeMap<String, String>),
        }
        const FORMS: &str =
            "a header value is text, `{ env = \"VAR\" }` or `{ file = \"/path\" }` (each with an optional `prefix`)";
        let table = match Shape::deserialize(deserializer) {
            Ok(Shape::Text(text)) => return Ok(RawHeaderValue::Literal(text)),
            Ok(Shape::Table(table)) => table,
            Err(_) => return Err(D::Error::custom(FORMS)),
        };
        if let Some(unknown) = table
            .keys()
            .find(|k| !matches!(k.as_str(), "env" | "file" | "prefix"))
        {
            return Err(D::Error::custom(format!(
                "unknown key `{unknown}`: {FORMS}"
            )));
        }
        let prefix = table.get("prefix").cloned();
        match (table.get("env"), table.get("file")) {
            (Some(env), None) => Ok(RawHeaderValue::Env(EnvRef {
                env: env.clone(),
                prefix,
            })),
            (None, Some(file)) => Ok(RawHeaderValue::File(FileRef {
                file: PathBuf::from(file),
                prefix,
            })),
            (Some(_), Some(_)) => Err(D::Error::custom(
                "give `env` or `file`, not both: the value comes from one place",
            )),
            (None, None) => Err(D::Error::custom(format!(
                "neither `env` nor `file`: {FORMS}"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRef {
    pub env: String,
    /// Put before the value, e.g. `"Bearer "` when the secret holds the bare token.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: PathBuf,
    /// Put before the value, e.g. `"Bearer "` when the secret holds the bare token.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `[grants]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// PKCS#8 PEM Ed25519 private key (`ecl-gate keygen` writes one); required in proxy mode.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Key id in the grant header; default: derived from the public key (the id `keygen` picks
    /// when not given `--kid`).
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(deserialize_with = "super::text")]
    pub ttl: String,
}

impl Default for RawGrants {
    fn default() -> Self {
        RawGrants {
            signing_key: None,
            kid: None,
            ttl: "30s".into(),
        }
    }
}

/// `[tls]`: trust for `https://` upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Extra PEM CA certificates, e.g. an internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Also trust the public web PKI (Mozilla's roots, built in) and the system's store.
    pub public_roots: bool,
    /// How often upstream client certificate files are checked for changes.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    1000
}

impl RawTls {
    /// `reload_interval_ms`, checked in every mode: a typo should not wait for proxy mode.
    pub fn reload_interval(&self) -> Result<Duration, ConfigError> {
        super::in_range(
            "tls.reload_interval_ms",
            self.reload_interval_ms,
            100..=600_000,
        )
        .map(Duration::from_millis)
    }
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            ca_file: None,
            public_roots: true,
            reload_interval_ms: default_reload_interval_ms(),
        }
    }
}

/// Everything proxy mode runs on, validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub upstreams: BTreeMap<String, Upstream>,
    pub signer: GrantSigner,
    pub max_upstream_body_bytes: usize,
    /// Certificates from `tls.ca_file`.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub public_roots: bool,
    /// How often upstream client certificate files are checked for changes.
    pub reload_interval: Duration,
    /// For the operator, logged at start (validation runs before logging is set up).
    pub warnings: Vec<String>,
}

/// One tool's real endpoint.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: Uri,
    pub method: Method,
    pub timeout: Duration,
    pub audience: String,
    /// Calls waiting on this tool at once (`max_concurrent`).
    pub max_concurrent: usize,
    /// Values are marked sensitive: `Debug` prints `Sensitive`, never the credential.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The certificate the gate presents to this tool (mTLS towards the tool).
    pub client_cert: Option<ClientCertFiles>,
}

/// `client_cert` and `client_key` of one upstream: the files, re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A client certificate chain and its key, read from [`ClientCertFiles`] and checked to
/// belong together. `Debug` never shows the key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 over both files' bytes: a reload rebuilds only when it changes.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 over both files' bytes, without parsing them: what a reload check compares.
pub fn client_cert_fingerprint(files: &ClientCertFiles) -> Result<[u8; 32], String> {
    let mut digest = Sha256::new();
    digest.update(read_bounded(&files.cert_file)?);
    digest.update(read_bounded(&files.key_file)?);
    Ok(digest.finalize().into())
}

/// Reads and checks a client certificate and its key. Errors name the file and the problem,
/// never the key's bytes.
pub fn read_client_identity(files: &ClientCertFiles) -> Result<ClientIdentity, String> {
    let cert_bytes = read_bounded(&files.cert_file)?;
    let key_bytes = read_bounded(&files.key_file)?;
    let mut digest = Sha256::new();
    digest.update(&cert_bytes);
    digest.update(&key_bytes);
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("`{}`: {err}", files.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate",
            files.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| {
        format!(
            "`{}`: no usable private key: {err}",
            files.key_file.display()
        )
    })?;
    // The same check rustls makes when the key is used: it parses the key and compares it with
    // the certificate's public key, so a mismatched pair is refused here, not at a handshake.
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |err| {
            format!(
                "`{}` and `{}` do not make a certificate and its key: {err}",
                files.cert_file.display(),
                files.key_file.display()
            )
        },
    )?;
    Ok(ClientIdentity {
        chain,
        key,
        fingerprint: digest.finalize().into(),
    })
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidKey {
        key,
        message: message.into(),
    }
}

/// Validates the proxy keys (called for `mode = "proxy"` only). Reads the environment, the
/// signing key, the CA file and credential files.
pub fn validate(
    upstreams: BTreeMap<String, RawUpstream>,
    grants: RawGrants,
    tls: RawTls,
    max_upstream_body_bytes: u64,
) -> Result<ProxyConfig, ConfigError> {
    if upstreams.is_empty() {
        return Err(invalid(
            "upstreams".into(),
            "proxy mode needs at least one `[upstreams.\"tool.name\"]` with a `url`",
        ));
    }
    if max_upstream_body_bytes == 0 || max_upstream_body_bytes > MAX_UPSTREAM_BODY_LIMIT {
        return Err(invalid(
            "max_upstream_body_bytes".into(),
            format!("{max_upstream_body_bytes} is outside 1..={MAX_UPSTREAM_BODY_LIMIT}"),
        ));
    }
    let max_upstream_body_bytes = usize::try_from(max_upstream_body_bytes).map_err(|_| {
        invalid(
            "max_upstream_body_bytes".into(),
            "does not fit this platform",
        )
    })?;
    let reload_interval = tls.reload_interval()?;
    let mut warnings = Vec::new();
    let signer = signing_key(grants, &mut warnings)?;
    let extra_roots = match &tls.ca_file {
        Some(path) => ca_file(path)?,
        None => Vec::new(),
    };
    let mut validated = BTreeMap::new();
    for (tool, raw) in upstreams {
        let upstream = upstream(&tool, raw)?;
        if upstream.url.scheme_str() == Some("https") && !tls.public_roots && extra_roots.is_empty()
        {
            return Err(invalid(
                "tls.ca_file".into(),
                format!("tool `{tool}` is https, but `tls.public_roots` is off and no CA file is set: nothing would be trusted"),
            ));
        }
        validated.insert(tool, upstream);
    }
    Ok(ProxyConfig {
        upstreams: validated,
        signer,
        max_upstream_body_bytes,
        extra_roots,
        public_roots: tls.public_roots,
        reload_interval,
        warnings,
    })
}

fn signing_key(grants: RawGrants, warnings: &mut Vec<String>) -> Result<GrantSigner, ConfigError> {
    let key = || "grants.signing_key".to_owned();
    let ttl = humantime::parse_duration(&grants.ttl).map_err(|err| {
        invalid(
            "grants.ttl".into(),
            format!("`{}` is not a duration like `30s`: {err}", grants.ttl),
        )
    })?;
    if ttl < Duration::from_secs(1) || ttl > MAX_LIFETIME {
        return Err(invalid(
            "grants.ttl".into(),
            format!(
                "`{}` is outside 1s..={}s: a grant is for one call, now",
                grants.ttl,
                MAX_LIFETIME.as_secs()
            ),
        ));
    }
    if let Some(kid) = &grants.kid {
        if !crate::profile::is_valid_ref(kid) {
            return Err(invalid(
                "grants.kid".into(),
                format!("`{kid}` must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"),
            ));
        }
    }
    let Some(path) = grants.signing_key.filter(|p| !p.as_os_str().is_empty()) else {
        return Err(invalid(
            key(),
            "proxy mode signs every forwarded call: set it to a PKCS#8 PEM Ed25519 key (`ecl-gate keygen --out DIR` writes one)",
        ));
    };
    let pem = std::fs::read_to_string(&path)
        .map_err(|err| invalid(key(), format!("cannot read `{}`: {err}", path.display())))?;
    if readable_by_others(&path) {
        warnings.push(format!(
            "grant signing key `{}` is readable by other users; whoever reads it can forge \
             grants (chmod 0600)",
            path.display()
        ));
    }
    GrantSigner::from_pem(&pem, grants.kid, ttl)
        .map_err(|err| invalid(key(), format!("`{}`: {err}", path.display())))
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> bool {
    false
}

pub(crate) fn ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let key = || "tls.ca_file".to_owned();
    let bytes = std::fs::read(path)
        .map_err(|err| invalid(key(), format!("cannot read `{}`: {err}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(key(), format!("`{}`: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key(),
            format!("`{}` holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn upstream(tool: &str, raw: RawUpstream) -> Result<Upstream, ConfigError> {
    let key = |field: &str| format!("upstreams.\"{tool}\".{field}");
    let url: Uri = raw
        .url
        .parse()
        .map_err(|_| invalid(key("url"), format!("`{}` is not a URL", raw.url)))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                key("url"),
                format!("`{}` must start with `https://` or `http://`", raw.url),
            ))
        }
    }
    let Some(authority) = url.authority() else {
        return Err(invalid(key("url"), format!("`{}` has no host", raw.url)));
    };
    if authority.as_str().contains('@') {
        // Credentials in a URL end up in logs and in the grant's audience.
        return Err(invalid(
            key("url"),
            "must not carry credentials; put them in `headers` with `{ env = \"…\" }` or `{ file = \"…\" }`",
        ));
    }
    let method = match raw.method.as_deref().unwrap_or("POST") {
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        other => {
            return Err(invalid(
                key("method"),
                format!("`{other}`, expected `POST`, `PUT` or `PATCH` (the call has a JSON body)"),
            ))
        }
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(invalid(
            key("timeout_ms"),
            format!("{timeout_ms} is outside 1..=600000"),
        ));
    }
    // The default audience is written into every grant and outcome record: a token in the
    // URL's query must not travel with it.
    let audience = raw.audience.unwrap_or_else(|| url_without_query(&url));
    if audience.is_empty() {
        return Err(invalid(key("audience"), "must not be empty"));
    }
    let max_concurrent = raw.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
    if !(1..=100_000).contains(&max_concurrent) {
        return Err(invalid(
            key("max_concurrent"),
            format!("{max_concurrent} is outside 1..=100000"),
        ));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        let header_key = key(&format!("headers.{name}"));
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(header_key.clone(), "is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(invalid(
                header_key,
                "is set by the gate itself and cannot be configured",
            ));
        }
        let text = resolve(&header_key, value)?;
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            // Never echo the value: it is probably a credential.
            invalid(
                header_key.clone(),
                "the value is not a valid header value (control characters or a newline?)",
            )
        })?;
        value.set_sensitive(true);
        headers.push((header, value));
    }
    let client_cert = client_cert(tool, &url, raw.client_cert, raw.client_key)?;
    Ok(Upstream {
        url,
        method,
        timeout: Duration::from_millis(timeout_ms),
        audience,
        max_concurrent: usize::try_from(max_concurrent).unwrap_or(usize::MAX),
        headers,
        client_cert,
    })
}

/// `client_cert` and `client_key`: both or neither, `https://` only, read and checked now so a
/// bad pair stops the start instead of failing every call.
fn client_cert(
    tool: &str,
    url: &Uri,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ClientCertFiles>, ConfigError> {
    let key_name = |field: &str| format!("upstreams.\"{tool}\".{field}");
    let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let files = match (set(cert), set(key)) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(invalid(
                key_name("client_key"),
                "must name the private key of `client_cert` (set both or neither)",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                key_name("client_cert"),
                "must name the certificate of `client_key` (set both or neither)",
            ))
        }
        (Some(cert_file), Some(key_file)) => ClientCertFiles {
            cert_file,
            key_file,
        },
    };
    if url.scheme_str() != Some("https") {
        return Err(invalid(
            key_name("client_cert"),
            "a client certificate is presented in a TLS handshake: the `url` must be `https://`",
        ));
    }
    // Unreadable files are named by their own key; a pair that does not load, by `client_cert`.
    read_bounded(&files.cert_file).map_err(|err| invalid(key_name("client_cert"), err))?;
    read_bounded(&files.key_file).map_err(|err| invalid(key_name("client_key"), err))?;
    read_client_identity(&files).map_err(|err| invalid(key_name("client_cert"), err))?;
    Ok(Some(files))
}

/// `scheme://authority/path`: what may be written down about an upstream. The query may hold
/// a token and the fragment is never sent; credentials in the authority are refused earlier.
pub fn url_without_query(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}

/// Resolves a header value; a file's trailing newline (as `echo` and most editors write) is
/// dropped, nothing else.
fn resolve(key: &str, value: RawHeaderValue) -> Result<String, ConfigError> {
    match value {
        RawHeaderValue::Literal(text) => Ok(text),
        RawHeaderValue::Env(EnvRef { env, prefix }) => match std::env::var(&env) {
            Ok(text) if !text.is_empty() => Ok(prefix.unwrap_or_default() + &text),
            Ok(_) => Err(invalid(
                key.to_owned(),
                format!("environment variable `{env}` is empty"),
            )),
            Err(_) => Err(invalid(
                key.to_owned(),
                format!("environment variable `{env}` is not set"),
            )),
        },
        RawHeaderValue::File(FileRef { file, prefix }) => {
            let text = std::fs::read_to_string(&file).map_err(|err| {
                invalid(
                    key.to_owned(),
                    format!("cannot read `{}`: {err}", file.display()),
                )
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.is_empty() {
                return Err(invalid(
                    key.to_owned(),
                    format!("`{}` is empty", file.display()),
                ));
            }
            Ok(prefix.unwrap_or_default() + text)
        }
    }
}
