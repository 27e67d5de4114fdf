use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};

use super::*;

const AUD: &str = "https://tools.internal/email";
const BODY: &[u8] = br#"{"subject":"hi","to":"bob@example.com"}"#;

fn signer(seed: u8) -> GrantSigner {
    GrantSigner::new(
        SigningKey::from_bytes(&[seed; 32]),
        "gate-1".into(),
        Duration::from_secs(30),
    )
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const T0: u64 = 1_700_000_000;

fn call() -> GrantedCall<'static> {
    GrantedCall {
        provenance_id: "prov_0123",
        request_hash: "sha256:abc",
        tool: "email.send",
        body: BODY,
        audience: AUD,
    }
}

fn grant() -> (GrantSigner, String, GrantClaims) {
    let signer = signer(7);
    let (token, claims) = signer.sign(&call(), at(T0)).unwrap();
    (signer, token, claims)
}

/// Signs an arbitrary header and claims object, for tokens the signer would never make.
fn forge(key: &SigningKey, header: &str, claims: &str) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    token
}

#[test]
fn a_signed_grant_verifies_for_its_body_and_audience() {
    let (signer, token, claims) = grant();
    let verified = verify_grant(&token, BODY, &signer.verifying_key(), AUD, at(T0 + 1)).unwrap();
    assert_eq!(verified, claims);
    assert_eq!(verified.exp - verified.iat, 30);
    assert_eq!(verified.body_sha256, body_sha256(BODY));
    assert_eq!(verified.jti.len(), 32);
}

#[test]
fn every_grant_has_its_own_jti() {
    let signer = signer(7);
    let (_, a) = signer.sign(&call(), at(T0)).unwrap();
    let (_, b) = signer.sign(&call(), at(T0)).unwrap();
    assert_ne!(a.jti, b.jti);
}

#[test]
fn another_body_is_refused() {
    let (signer, token, _) = grant();
    let other = br#"{"subject":"hi","to":"eve@evil.com"}"#;
    let err = verify_grant(&token, other, &signer.verifying_key(), AUD, at(T0)).unwrap_err();
    assert_eq!(err, GrantError::BodyMismatch);
    // Whitespace is a different body too: the grant binds bytes, not meaning.
    let spaced = br#"{"subject": "hi","to":"bob@example.com"}"#;
    let err = verify_grant(&token, spaced, &signer.verifying_key(), AUD, at(T0)).unwrap_err();
    assert_eq!(err, GrantError::BodyMismatch);
}

#[test]
fn another_audience_is_refused() {
    let (signer, token, _) = grant();
    let err = verify_grant(
        &token,
        BODY,
        &signer.verifying_key(),
        "https://tools.internal/payments",
        at(T0),
    )
    .unwrap_err();
    assert!(matches!(err, GrantError::WrongAudience { .. }), "{err}");
    // Exact match: a prefix is not the audience.
    let err = verify_grant(
        &token,
        BODY,
        &signer.verifying_key(),
        "https://tools.internal",
        at(T0),
    )
    .unwrap_err();
    assert!(matches!(err, GrantError::WrongAudience { .. }), "{err}");
}

#[test]
fn another_key_is_refused() {
    let (_, token, _) = grant();
    let err = verify_grant(&token, BODY, &signer(8).verifying_key(), AUD, at(T0)).unwrap_err();
    assert_eq!(err, GrantError::BadSignature);
}

#[test]
fn expiry_and_issue_time_hold_with_a_small_skew() {
    let (signer, token, _) = grant();
    let key = signer.verifying_key();
    let skew = DEFAULT_CLOCK_SKEW.as_secs();
    assert!(verify_grant(&token, BODY, &key, AUD, at(T0 + 30 + skew - 1)).is_ok());
    assert_eq!(
        verify_grant(&token, BODY, &key, AUD, at(T0 + 30 + skew)).unwrap_err(),
        GrantError::Expired
    );
    assert!(verify_grant(&token, BODY, &key, AUD, at(T0 - skew)).is_ok());
    assert_eq!(
        verify_grant(&token, BODY, &key, AUD, at(T0 - skew - 1)).unwrap_err(),
        GrantError::NotYetValid
    );
}

#[test]
fn a_long_lived_grant_is_refused() {
    let (signer, _, mut claims) = grant();
    claims.exp = claims.iat + MAX_LIFETIME.as_secs() + 1;
    let token = signer.sign_claims(&claims);
    let err = verify_grant(&token, BODY, &signer.verifying_key(), AUD, at(T0)).unwrap_err();
    assert!(matches!(err, GrantError::LifetimeTooLong { .. }), "{err}");
}

#[test]
fn only_eddsa_grants_are_accepted() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let (_, token, _) = grant();
    let claims = token.split('.').nth(1).unwrap();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    for alg in ["none", "HS256", "RS256", "ES256", "eddsa"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"gate-1","typ":"ecl-grant+jwt"}}"#);
        let forged = forge(&key, &header, &claims);
        let err = verify_grant(&forged, BODY, &key.verifying_key(), AUD, at(T0)).unwrap_err();
        assert_eq!(err, GrantError::Algorithm(alg.into()));
    }
    // `alg: none` with an empty signature, the classic.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"ecl-grant+jwt","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    assert!(verify_grant(&none, BODY, &key.verifying_key(), AUD, at(T0)).is_err());
}

#[test]
fn an_approval_token_is_not_a_grant() {
    // Same key kind, same JWS shape: the `typ` keeps one from passing as the other.
    let key = SigningKey::from_bytes(&[7; 32]);
    let approval = crate::approval::sign(
        &key,
        "gate-1",
        &crate::approval::Grant {
            issuer: "alice",
            intent_hash: "sha256:abc",
            issued_at: T0,
            expires_at: T0 + 60,
            jti: "j",
        },
    );
    let err = verify_grant(&approval, BODY, &key.verifying_key(), AUD, at(T0)).unwrap_err();
    assert_eq!(err, GrantError::WrongType("JWT".into()));
}

#[test]
fn malformed_grants_are_refused() {
    let (signer, token, _) = grant();
    let key = signer.verifying_key();
    let key_bytes = SigningKey::from_bytes(&[7; 32]);
    let header = r#"{"alg":"EdDSA","kid":"gate-1","typ":"ecl-grant+jwt"}"#;
    let good_claims = |extra: &str| {
        format!(
            r#"{{"aud":"{AUD}","body_sha256":"{}","exp":{},"iat":{T0},"jti":"j","provenance_id":"p","request_hash":"r","tool":"t"{extra}}}"#,
            body_sha256(BODY),
            T0 + 30
        )
    };
    assert!(verify_grant(
        &forge(&key_bytes, header, &good_claims("")),
        BODY,
        &key,
        AUD,
        at(T0)
    )
    .is_ok());
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty"),
        ("a.b".into(), "two parts"),
        (format!("{token}.x"), "four parts"),
        ("x".repeat(MAX_GRANT_BYTES + 1), "too long"),
        (
            forge(&key_bytes, header, &good_claims(r#","aud":"other""#)),
            "duplicate claim",
        ),
        (
            forge(
                &key_bytes,
                header,
                &good_claims("").replace(r#""tool":"t""#, r#""tool":"""#),
            ),
            "empty tool",
        ),
        (
            forge(
                &key_bytes,
                header,
                &good_claims("").replace(&format!(r#""iat":{T0}"#), &format!(r#""iat":{T0}.5"#)),
            ),
            "fractional iat",
        ),
        (
            forge(
                &key_bytes,
                header,
                &good_claims("").replace(r#""jti":"j","#, ""),
            ),
            "missing jti",
        ),
        (
            forge(
                &key_bytes,
                r#"{"alg":"EdDSA","crit":["x"],"kid":"gate-1","typ":"ecl-grant+jwt"}"#,
                &good_claims(""),
            ),
            "crit",
        ),
        (
            forge(
                &key_bytes,
                r#"{"alg":"EdDSA","typ":"ecl-grant+jwt"}"#,
                &good_claims(""),
            ),
            "no kid",
        ),
        (
            forge(
                &key_bytes,
                r#"{"alg":"EdDSA","kid":"gate-1"}"#,
                &good_claims(""),
            ),
            "no typ",
        ),
        (forge(&key_bytes, header, "[1,2]"), "claims not an object"),
    ];
    for (token, what) in cases {
        assert!(
            verify_grant(&token, BODY, &key, AUD, at(T0)).is_err(),
            "{what} was accepted"
        );
    }
}

#[test]
fn a_tampered_grant_is_refused() {
    let (signer, token, _) = grant();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let claims = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
    let claims = String::from_utf8(claims)
        .unwrap()
        .replace("email.send", "payments.pay");
    parts[1] = URL_SAFE_NO_PAD.encode(claims);
    let err =
        verify_grant(&parts.join("."), BODY, &signer.verifying_key(), AUD, at(T0)).unwrap_err();
    assert_eq!(err, GrantError::BadSignature);
}

#[test]
fn a_verifier_with_several_keys_picks_by_kid() {
    let (old, token, _) = grant();
    let keys: BTreeMap<String, _> = [
        ("gate-1".to_owned(), old.verifying_key()),
        ("gate-2".to_owned(), signer(9).verifying_key()),
    ]
    .into_iter()
    .collect();
    let verifier = GrantVerifier::with_keys(keys.clone(), AUD);
    assert!(verifier.verify(&token, BODY, at(T0)).is_ok());
    let mut only_new = keys;
    only_new.remove("gate-1");
    let err = GrantVerifier::with_keys(only_new, AUD)
        .verify(&token, BODY, at(T0))
        .unwrap_err();
    assert_eq!(err, GrantError::UnknownKey("gate-1".into()));
}

#[test]
fn a_signer_never_prints_its_key() {
    let signer = signer(7);
    let debug = format!("{signer:?}");
    assert!(debug.contains("gate-1"));
    assert!(!debug.contains("7, 7"), "{debug}");
}

#[test]
fn the_signer_reads_keygen_pem_and_derives_the_keygen_kid() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
    let key = SigningKey::from_bytes(&[3; 32]);
    let pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .unwrap();
    let signer = GrantSigner::from_pem(&pem, None, Duration::from_secs(30)).unwrap();
    assert_eq!(signer.kid(), crate::approval::key_id(&key.verifying_key()));
    assert!(GrantSigner::from_pem("not a key", None, Duration::from_secs(30)).is_err());
    // The lifetime is clamped to what verifiers accept.
    let long = GrantSigner::from_pem(&pem, None, Duration::from_secs(3600)).unwrap();
    assert_eq!(long.ttl(), MAX_LIFETIME);
}

#[test]
fn refusals_map_to_401_and_403() {
    assert_eq!(GrantError::Missing.http_status(), 401);
    assert_eq!(GrantError::BodyMismatch.http_status(), 403);
    assert_eq!(GrantError::Expired.code(), "grant_expired");
}
