//! Knowing who calls: bearer JWTs (every way a token can be wrong), bindings of callers to
//! profiles and principals, the audit record's `caller`, and replay over several callers.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ecl_gate::caller::{Binding, Bindings, Pattern, PrincipalPattern, ProfilePattern};
use ecl_gate::canonical::{self, Value};
use ecl_gate::config::auth::{AuthConfig, JwtAlgorithm, JwtConfig, PemKey};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::{bytes_of, email_args, request_for, with, Options, TestGate, ValueExt};

pub(crate) const ISSUER: &str = "https://issuer.test";
pub(crate) const AUDIENCE: &str = "ecl-gate";
pub(crate) const FINANCE: &str = "system:serviceaccount:agents:finance";

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/callers")
        .join(name)
}

pub(crate) fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(&format!("{name}.key.pem"))).unwrap()
}

/// A JWKS with both RSA fixture keys (so the verifier must pick by `kid`) and an `oct` key
/// that must never be used.
fn jwks(kids: &[&str]) -> String {
    let keys = kids
        .iter()
        .map(|kid| {
            let mut jwk = Jwk::from_encoding_key(&rsa_key(kid), Algorithm::RS256).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    let mut set = serde_json::to_value(JwkSet { keys }).unwrap();
    set["keys"].as_array_mut().unwrap().push(serde_json::json!({
        "kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(b"shared secret")
    }));
    set.to_string()
}

struct Keys {
    _dir: tempfile::TempDir,
    jwks_file: PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&["rsa-a", "rsa-b"])).unwrap();
    Keys {
        _dir: dir,
        jwks_file,
    }
}

fn auth(keys: &Keys) -> AuthConfig {
    AuthConfig {
        jwt: Some(JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_file: Some(keys.jwks_file.clone()),
            pem_keys: vec![
                PemKey {
                    kid: "ec-1".into(),
                    alg: JwtAlgorithm::Es256,
                    file: fixture("ec.pub.pem"),
                },
                PemKey {
                    kid: "ed-1".into(),
                    alg: JwtAlgorithm::EdDsa,
                    file: fixture("ed.pub.pem"),
                },
            ],
            clock_skew: Duration::from_secs(30),
            cache_entries: 100,
            max_token_bytes: 8192,
            reload_interval: Duration::from_millis(100),
        }),
        mtls: false,
    }
}

fn bindings() -> Bindings {
    Bindings {
        bindings: vec![
            Binding {
                caller: Pattern::new("system:serviceaccount:agents:*"),
                profiles: vec![ProfilePattern::parse("example@1.*").unwrap()],
                principals: vec![PrincipalPattern::parse("{caller}")],
            },
            Binding {
                caller: Pattern::new("system:serviceaccount:ops:console"),
                profiles: vec![ProfilePattern::parse("ops@*").unwrap()],
                principals: vec![PrincipalPattern::parse("user:*")],
            },
        ],
    }
}

async fn gate(keys: &Keys) -> TestGate {
    TestGate::start_with(Options {
        auth: auth(keys),
        bindings: Some(bindings()),
        include_request: true,
        ..Options::default()
    })
    .await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
        "iat": now(), "exp": now() + 600,
    })
}

pub(crate) fn sign(
    alg: Algorithm,
    kid: &str,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(kid: &str, claims: &serde_json::Value) -> String {
    sign(Algorithm::RS256, kid, &rsa_key(kid), claims)
}

/// A compact JWS with any header, signed (or not) by hand: for what libraries refuse to make.
fn forged(header: serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A request for `profile@version` claiming `principal`.
fn asking(profile: &str, version: &str, principal: &str) -> bytes::Bytes {
    let request = request_for(
        profile,
        version,
        "req-callers",
        "email.send",
        email_args("bob@example.com", "hi"),
    );
    bytes_of(&with(
        request,
        &["actor", "principal_id"],
        Some(principal.into()),
    ))
}

fn finance_request() -> bytes::Bytes {
    asking("example", "1.0.0", FINANCE)
}

fn empty_hash() -> String {
    canonical::sha256_prefixed(b"")
}

#[tokio::test]
// Every way a bearer token can be wrong ends in one audited DENY CALLER_UNAUTHENTICATED (401,
// RFC 6750 challenge, request hash of zero bytes: the body was never read), and every good
// token in an ALLOW whose record names the caller.
async fn jwt_table() {
    let keys = keys();
    let gate = gate(&keys).await;
    let good = claims(FINANCE);
    let ec = EncodingKey::from_ec_pem(&read("ec.key.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&read("ed.key.pem")).unwrap();
    let bearer = |token: &str| format!("Bearer {token}");
    let mut aud_array = good.clone();
    aud_array["aud"] = serde_json::json!(["someone-else", AUDIENCE]);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = "https://evil.test".into();
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "another-service".into();
    let mut expired = good.clone();
    expired["exp"] = (now() - 3600).into();
    let mut not_yet = good.clone();
    not_yet["nbf"] = (now() + 3600).into();
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut future_iat = good.clone();
    future_iat["iat"] = (now() + 3600).into();
    let rsa_public_pem = read("rsa-a.pub.pem");
    let hs256_with_public_key = sign(
        Algorithm::HS256,
        "rsa-a",
        &EncodingKey::from_secret(&rsa_public_pem),
        &good,
    );
    let alg_none = forged(
        serde_json::json!({"alg": "none", "kid": "rsa-a"}),
        &good,
        b"",
    );
    // Signed by rsa-a, claiming to be rsa-b's.
    let wrong_key = sign(Algorithm::RS256, "rsa-b", &rsa_key("rsa-a"), &good);
    // The JWKS's `oct` key must not verify anything, even a token HMAC'd with it.
    let oct = sign(
        Algorithm::HS256,
        "hmac",
        &EncodingKey::from_secret(b"shared secret"),
        &good,
    );
    let huge = "a".repeat(60 * 1024);

    let good_rs256 = rs256("rsa-b", &good);
    // (name, path, headers, status, reason, challenge fragment, detail fragment)
    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, String)>,
        u16,
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "RS256 from a JWKS of several keys",
            "/v1/execute",
            vec![("authorization", bearer(&good_rs256))],
            200,
            "OK",
            "",
            "",
        ),
        (
            "RS256 again: from the cache",
            "/v1/execute",
            vec![("authorization", bearer(&good_rs256))],
            200,
            "OK",
            "",
            "",
        ),
        (
            "ES256 from a PEM key",
            "/v1/execute",
            vec![(
                "authorization",
                bearer(&sign(Algorithm::ES256, "ec-1", &ec, &good)),
            )],
            200,
            "OK",
            "",
            "",
        ),
        (
            "EdDSA from a PEM key",
            "/v1/execute",
            vec![(
                "authorization",
                bearer(&sign(Algorithm::EdDSA, "ed-1", &ed, &good)),
            )],
            200,
            "OK",
            "",
            "",
        ),
        (
            "aud as an array",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &aud_array)))],
            200,
            "OK",
            "",
            "",
        ),
        (
            "no Authorization",
            "/v1/execute",
            vec![],
            401,
            "CALLER_UNAUTHENTICATED",
            "Bearer realm=\"ecl-gate\"",
            "no bearer token",
        ),
        (
            "alg none",
            "/v1/execute",
            vec![("authorization", bearer(&alg_none))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "algorithm `none` is not accepted",
        ),
        (
            "HS256 with the public key as secret",
            "/v1/execute",
            vec![("authorization", bearer(&hs256_with_public_key))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "algorithm `HS256` is not accepted",
        ),
        (
            "HS256 with the JWKS's oct key",
            "/v1/execute",
            vec![("authorization", bearer(&oct))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "algorithm `HS256` is not accepted",
        ),
        (
            "unknown kid",
            "/v1/execute",
            vec![(
                "authorization",
                bearer(&sign(Algorithm::RS256, "gone", &rsa_key("rsa-a"), &good)),
            )],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "unknown key id `gone`",
        ),
        (
            "signed by another key than its kid",
            "/v1/execute",
            vec![("authorization", bearer(&wrong_key))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "signature does not verify",
        ),
        (
            "wrong iss",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &wrong_iss)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "issuer is not `https://issuer.test`",
        ),
        (
            "wrong aud",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &wrong_aud)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "audience does not include `ecl-gate`",
        ),
        (
            "expired",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &expired)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "token expired",
        ),
        (
            "not yet valid",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &not_yet)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "not valid yet",
        ),
        (
            "issued in the future",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &future_iat)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "issued in the future",
        ),
        (
            "missing exp",
            "/v1/execute",
            vec![("authorization", bearer(&rs256("rsa-a", &no_exp)))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "no `exp` claim",
        ),
        (
            "token in the query string",
            "/v1/execute?access_token=abc",
            vec![("authorization", bearer(&good_rs256))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_request\"",
            "not accepted in the query string",
        ),
        (
            "two Authorization headers",
            "/v1/execute",
            vec![
                ("authorization", bearer(&good_rs256)),
                ("authorization", bearer(&good_rs256)),
            ],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_request\"",
            "more than one `Authorization` header",
        ),
        (
            "Basic scheme",
            "/v1/execute",
            vec![("authorization", "Basic YWxpY2U6c2VjcmV0".into())],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_request\"",
            "`Bearer` scheme",
        ),
        (
            "a 60 KiB token",
            "/v1/execute",
            vec![("authorization", bearer(&huge))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "longer than 8192 bytes",
        ),
        (
            "not a JWS",
            "/v1/execute",
            vec![("authorization", bearer("abc.def"))],
            401,
            "CALLER_UNAUTHENTICATED",
            "error=\"invalid_token\"",
            "not a compact JWS",
        ),
    ];
    let mut seen = gate.records().len();
    for (name, path, headers, status, reason, challenge, detail) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got_status, got_headers, answer) =
            gate.send_with(path, &headers, finance_request()).await;
        assert_eq!(got_status, status, "{name}: {answer:?}");
        assert_eq!(answer["reason_code"].str(), reason, "{name}: {answer:?}");
        let record = gate.record_for(&answer);
        let records = gate.records();
        assert_eq!(records.len(), seen + 1, "{name}: exactly one record");
        seen = records.len();
        let line = std::fs::read_to_string(&gate.audit_path).unwrap();
        for (_, value) in &headers {
            // No credential ever reaches the log or the answer.
            let secret = value.rsplit('.').next().unwrap_or(value);
            if secret.len() > 16 {
                assert!(!line.contains(secret), "{name}: token in the audit log");
                assert!(
                    !canonical::to_canonical(&answer)
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes()),
                    "{name}: token in the answer"
                );
            }
        }
        if status == 200 {
            assert!(got_headers.get("www-authenticate").is_none(), "{name}");
            assert_eq!(record["caller"]["method"].str(), "jwt", "{name}");
            assert_eq!(record["caller"]["id"].str(), FINANCE, "{name}");
            assert_eq!(record["caller"]["iss"].str(), ISSUER, "{name}");
            continue;
        }
        let challenge_header = got_headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge_header.starts_with("Bearer realm=\"ecl-gate\""),
            "{name}: {challenge_header}"
        );
        assert!(
            challenge_header.contains(challenge),
            "{name}: {challenge_header}"
        );
        if name == "no Authorization" {
            assert!(
                !challenge_header.contains("error="),
                "RFC 6750 §3.1: {challenge_header}"
            );
        }
        assert!(
            answer["detail"].str().contains(detail),
            "{name}: {}",
            answer["detail"].str()
        );
        assert_eq!(answer["decision_type"].str(), "DENY");
        assert_eq!(
            answer["request_hash"].str(),
            empty_hash(),
            "{name}: body not read"
        );
        assert_eq!(record["reason_code"].str(), "CALLER_UNAUTHENTICATED");
        assert_eq!(record["caller"]["method"].str(), "none", "{name}");
        assert_eq!(record["caller"]["id"].str(), "anonymous", "{name}");
        assert!(
            record.get("request").is_none(),
            "{name}: nothing of the body recorded"
        );
    }
}

#[tokio::test]
// A caller may use the profiles and principals its binding names, and nothing else; the
// refusal is an ordinary audited DENY (HTTP 200) whose detail names the caller.
async fn bindings_table() {
    let keys = keys();
    let gate = gate(&keys).await;
    let token = |sub: &str| format!("Bearer {}", rs256("rsa-a", &claims(sub)));
    // (name, caller, request, reason, detail fragment)
    let cases = [
        ("allowed", FINANCE, asking("example", "1.0.0", FINANCE), "OK", ""),
        ("other profile", FINANCE, asking("ops", "1.0.0", FINANCE), "CALLER_NOT_PERMITTED", "caller `system:serviceaccount:agents:finance` may not use profile `ops` version `1.0.0`"),
        ("other version pattern", FINANCE, asking("example", "2.0.0", FINANCE), "CALLER_NOT_PERMITTED", "may not use profile `example` version `2.0.0`"),
        ("other principal", FINANCE, asking("example", "1.0.0", "agent:7"), "CALLER_NOT_PERMITTED", "may not act as principal `agent:7`"),
        ("placeholder: another agent as itself", "system:serviceaccount:agents:hr", asking("example", "1.0.0", "system:serviceaccount:agents:hr"), "OK", ""),
        ("placeholder: another agent as finance", "system:serviceaccount:agents:hr", asking("example", "1.0.0", FINANCE), "CALLER_NOT_PERMITTED", "may not act as principal"),
        ("principal pattern", "system:serviceaccount:ops:console", asking("ops", "1.0.0", "user:alice"), "OK", ""),
        ("no binding", "system:serviceaccount:default:default", asking("example", "1.0.0", "system:serviceaccount:default:default"), "CALLER_NOT_PERMITTED", "caller `system:serviceaccount:default:default` has no binding"),
    ];
    for (name, caller, body, reason, detail) in cases {
        let authorization = token(caller);
        let (status, _, answer) = gate
            .send_with("/v1/execute", &[("authorization", &authorization)], body)
            .await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(answer["reason_code"].str(), reason, "{name}: {answer:?}");
        if !detail.is_empty() {
            assert!(
                answer["detail"].str().contains(detail),
                "{name}: {}",
                answer["detail"].str()
            );
        }
        let record = gate.record_for(&answer);
        assert_eq!(record["caller"]["id"].str(), caller, "{name}");
        if reason == "CALLER_NOT_PERMITTED" {
            // Refused before the profile was consulted.
            assert_eq!(
                record["profile_ref_hash"],
                Value::from(ecl_gate::decision::no_profile_hash().as_str()),
                "{name}"
            );
        }
    }
}

#[tokio::test]
// replay re-decides with the recorded caller: a log with several callers (some refused)
// replays identical; the same records without `caller` (older logs) replay as anonymous.
async fn replay_is_identical_over_several_callers() {
    let keys = keys();
    let gate = gate(&keys).await;
    for (caller, body) in [
        (FINANCE, asking("example", "1.0.0", FINANCE)),
        (
            "system:serviceaccount:agents:hr",
            asking("example", "1.0.0", FINANCE),
        ),
        (
            "system:serviceaccount:ops:console",
            asking("ops", "1.0.0", "user:bob"),
        ),
        (
            "system:serviceaccount:default:x",
            asking("example", "1.0.0", "x"),
        ),
    ] {
        let authorization = format!("Bearer {}", rs256("rsa-b", &claims(caller)));
        gate.send_with("/v1/execute", &[("authorization", &authorization)], body)
            .await;
    }
    let records = gate.records();
    let callers: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r["caller"]["id"].str()).collect();
    assert_eq!(callers.len(), 4);
    // Every record, `caller` and the refusals included, is what the record schema describes.
    let schema = crate::schemas::schema_file("schemas/audit-record.schema.json");
    for record in &records {
        crate::schemas::assert_valid(&schema, &crate::schemas::to_json(record), "record");
    }
    let store = ecl_gate::profile::ProfileStore::new(crate::common::shipped_profiles());
    let context =
        ecl_gate::decision::Context::new(Default::default()).with_bindings(Some(bindings()));
    let mut replayer = ecl_gate::replay::Replayer::new(&store, &context, false);
    for record in &records {
        replayer.record(record);
    }
    let report = replayer.report;
    assert_eq!(
        (report.replayed, report.identical),
        (4, 4),
        "{:?}",
        report.differences
    );

    // Without the caller the refusals would not come back: replay really uses it.
    let unbound = ecl_gate::decision::Context::new(Default::default());
    let mut replayer = ecl_gate::replay::Replayer::new(&store, &unbound, false);
    for record in &records {
        replayer.record(record);
    }
    assert_eq!(
        replayer.report.differing, 2,
        "{:?}",
        replayer.report.differences
    );

    // An older record, written before callers were recorded, replays as anonymous.
    let plain = TestGate::start_with(Options {
        include_request: true,
        ..Options::default()
    })
    .await;
    plain.execute(asking("example", "1.0.0", "agent:7")).await;
    let mut old = plain.records().pop().unwrap();
    assert_eq!(old["caller"]["id"].str(), "anonymous");
    let Value::Object(map) = &mut old else {
        unreachable!()
    };
    map.remove("caller");
    let mut replayer = ecl_gate::replay::Replayer::new(&store, &unbound, false);
    replayer.record(&old);
    assert_eq!(
        (replayer.report.replayed, replayer.report.identical),
        (1, 1)
    );
}

#[tokio::test]
// Key rotation: a changed JWKS is picked up without a restart (and tokens of a removed key
// stop working, cache or not); a broken replacement keeps the keys in use.
async fn jwks_reloads_on_change_and_keeps_old_keys_on_a_broken_file() {
    let keys = keys();
    let gate = gate(&keys).await;
    let old_token = format!("Bearer {}", rs256("rsa-a", &claims(FINANCE)));
    let send = |token: String| {
        let gate = &gate;
        async move {
            gate.send_with(
                "/v1/execute",
                &[("authorization", &token)],
                finance_request(),
            )
            .await
            .2["reason_code"]
                .str()
                .to_owned()
        }
    };
    assert_eq!(send(old_token.clone()).await, "OK");

    std::fs::write(&keys.jwks_file, b"{\"keys\": [{\"kty\": \"RSA\"").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        send(old_token.clone()).await,
        "OK",
        "broken file keeps the old keys"
    );
    let fresh = format!(
        "Bearer {}",
        rs256("rsa-a", &claims("system:serviceaccount:agents:hr"))
    );
    assert_eq!(
        send(fresh).await,
        "CALLER_NOT_PERMITTED",
        "old keys still verify new tokens"
    );

    // rsa-a retired: even the cached token stops working once the new file is read.
    std::fs::write(&keys.jwks_file, jwks(&["rsa-b"])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if send(old_token.clone()).await == "CALLER_UNAUTHENTICATED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new JWKS was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotated = format!("Bearer {}", rs256("rsa-b", &claims(FINANCE)));
    assert_eq!(send(rotated).await, "OK");
}

/// A real `ecl-gate serve` with `config`; returns the child, its base URL and its log lines.
pub(crate) fn serve(
    config: &Path,
) -> (
    std::process::Child,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    let mut child = crate::common::gate_command()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (pipe, lines) = (child.stderr.take().unwrap(), std::sync::Arc::clone(&log));
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving POST ").nth(1) {
                let _ = tx.send(rest[..rest.find("/v1/execute").unwrap()].to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the gate did not start: {:#?}", log.lock().unwrap()));
    (child, url, log)
}

pub(crate) async fn post(
    url: &str,
    authorization: Option<&str>,
    body: bytes::Bytes,
) -> (u16, Option<String>, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{url}/v1/execute"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = client
        .request(request.body(http_body_util::Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, challenge, canonical::parse(&bytes).unwrap())
}

#[tokio::test]
// The whole path through the real binary: TOML `[auth]` and `[[bindings]]`, a refused caller
// without a token (401) and one asking for another agent's profile, each audited; then
// `replay` and `decide --caller` over what was recorded.
async fn the_binary_authenticates_binds_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
profiles_root = "{profiles}"
[audit]
path = "{audit}"
sync = "never"
include_request = true
[auth]
methods = ["jwt"]
[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[auth.jwt.keys."ed-1"]
file = "{key}"
alg = "EdDSA"
[[bindings]]
caller = "system:serviceaccount:agents:*"
profiles = ["example@1.*"]
"#,
            profiles = crate::common::shipped_profiles().display(),
            audit = audit.display(),
            key = fixture("ed.pub.pem").display(),
        ),
    )
    .unwrap();
    let (mut child, url, log) = serve(&config);
    let ed = EncodingKey::from_ed_pem(&read("ed.key.pem")).unwrap();
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            sign(Algorithm::EdDSA, "ed-1", &ed, &claims(sub))
        )
    };

    let (status, challenge, answer) = post(&url, None, finance_request()).await;
    assert_eq!(
        (status, answer["reason_code"].str()),
        (401, "CALLER_UNAUTHENTICATED")
    );
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"ecl-gate\""));
    let (status, _, answer) = post(&url, Some(&token(FINANCE)), finance_request()).await;
    assert_eq!((status, answer["reason_code"].str()), (200, "OK"));
    let (status, _, answer) =
        post(&url, Some(&token(FINANCE)), asking("ops", "1.0.0", FINANCE)).await;
    assert_eq!(
        (status, answer["reason_code"].str()),
        (200, "CALLER_NOT_PERMITTED")
    );
    let hr = "system:serviceaccount:agents:hr";
    let (_, _, answer) = post(&url, Some(&token(hr)), finance_request()).await;
    assert_eq!(answer["reason_code"].str(), "CALLER_NOT_PERMITTED");
    child.kill().unwrap();
    child.wait().unwrap();
    let joined = log.lock().unwrap().join("\n");
    assert!(
        !joined.contains(&token(FINANCE)[7..]),
        "a token reached the log"
    );

    let records = crate::common::read_records(&audit);
    let callers: Vec<&str> = records.iter().map(|r| r["caller"]["id"].str()).collect();
    assert_eq!(callers, ["anonymous", FINANCE, FINANCE, hr]);

    let replay = crate::common::gate_command()
        .arg("--config")
        .arg(&config)
        .arg("replay")
        .arg(&audit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        stdout.contains("replayed 3, identical 3, differing 0 (skipped 1"),
        "{stdout}"
    );

    let request_file = dir.path().join("request.json");
    std::fs::write(&request_file, finance_request()).unwrap();
    for (caller, expect, reason) in [
        (FINANCE, "ALLOW", "OK"),
        (hr, "DENY", "CALLER_NOT_PERMITTED"),
    ] {
        let decided = crate::common::gate_command()
            .arg("--config")
            .arg(&config)
            .args(["decide", "--request"])
            .arg(&request_file)
            .args(["--caller", caller, "--expect", expect])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&decided.stdout);
        assert!(decided.status.success(), "{caller}: {stdout}");
        assert!(stdout.contains(reason), "{stdout}");
    }
}

#[test]
// A gate reachable beyond loopback that authenticates nobody says so at start.
fn serving_beyond_loopback_without_auth_warns() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:0\"\nadmin_listen = \"127.0.0.1:0\"\nprofiles_root = \"{}\"\n[audit]\npath = \"{}\"\nsync = \"never\"\n",
            crate::common::shipped_profiles().display(),
            dir.path().join("audit.log").display()
        ),
    )
    .unwrap();
    let (mut child, _, log) = serve(&config);
    child.kill().unwrap();
    child.wait().unwrap();
    let joined = log.lock().unwrap().join("\n");
    assert!(joined.contains("callers are not authenticated"), "{joined}");
}

#[tokio::test]
// `keygen` + `token`, as the compose demo uses them, make a token the gate accepts.
async fn keygen_and_token_make_a_caller_the_gate_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = crate::common::gate_command().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let out = dir.path().display().to_string();
    run(&["keygen", "--out", &out, "--kid", "agent"]);
    let key = dir.path().join("agent.key").display().to_string();
    let token = run(&[
        "token",
        "--key",
        &key,
        "--kid",
        "agent",
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--subject",
        FINANCE,
        "--ttl",
        "10m",
    ]);
    let gate = TestGate::start_with(Options {
        auth: AuthConfig {
            jwt: Some(JwtConfig {
                jwks_file: None,
                pem_keys: vec![PemKey {
                    kid: "agent".into(),
                    alg: JwtAlgorithm::EdDsa,
                    file: dir.path().join("agent.pub"),
                }],
                ..auth(&keys()).jwt.unwrap()
            }),
            mtls: false,
        },
        ..Options::default()
    })
    .await;
    let authorization = format!("Bearer {}", token.trim_end());
    let (status, _, answer) = gate
        .send_with(
            "/v1/execute",
            &[("authorization", &authorization)],
            finance_request(),
        )
        .await;
    assert_eq!((status, answer["reason_code"].str()), (200, "OK"));
    assert_eq!(gate.record_for(&answer)["caller"]["id"].str(), FINANCE);
}
