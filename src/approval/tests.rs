use std::time::{Duration, UNIX_EPOCH};

use ed25519_dalek::pkcs8::EncodePublicKey;

use super::*;

const T: u64 = 1_800_000_000;
const INTENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// A fixed test key: this seed is a test fixture, never a real approver's key.
fn test_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn approvals() -> Approvals {
    let key = test_key();
    Approvals {
        keys: [("k1".to_owned(), key.verifying_key())]
            .into_iter()
            .collect(),
        max_ttl: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(30),
    }
}

fn token(iat: u64, exp: u64) -> String {
    sign(
        &test_key(),
        "k1",
        &Grant {
            issuer: "alice",
            intent_hash: INTENT,
            issued_at: iat,
            expires_at: exp,
            jti: "j-1",
        },
    )
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn a_signed_token_verifies_within_its_lifetime() {
    let approval = approvals()
        .verify(&token(T, T + 900), INTENT, at(T + 10))
        .unwrap();
    assert_eq!(approval.issuer, "alice");
    assert_eq!(approval.jti, "j-1");
    assert_eq!((approval.issued_at, approval.expires_at), (T, T + 900));
}

#[test]
fn time_limits_hold_with_the_configured_skew() {
    let a = approvals();
    let t = token(T, T + 900);
    assert!(
        a.verify(&t, INTENT, at(T - 29)).is_ok(),
        "within skew before iat"
    );
    assert_eq!(
        a.verify(&t, INTENT, at(T - 31)),
        Err(ApprovalError::NotYetValid)
    );
    assert!(
        a.verify(&t, INTENT, at(T + 900 + 29)).is_ok(),
        "within skew after exp"
    );
    assert_eq!(
        a.verify(&t, INTENT, at(T + 900 + 30)),
        Err(ApprovalError::Expired)
    );
    assert_eq!(
        a.verify(&token(T, T + 3601), INTENT, at(T)),
        Err(ApprovalError::LifetimeTooLong {
            ttl: 3601,
            max: 3600
        })
    );
}

#[test]
fn a_token_for_another_intent_or_key_is_refused() {
    let a = approvals();
    let other = INTENT.replace('1', "2");
    assert_eq!(
        a.verify(&token(T, T + 60), &other, at(T)),
        Err(ApprovalError::WrongSubject)
    );
    let unknown = sign(
        &SigningKey::from_bytes(&[9u8; 32]),
        "k2",
        &Grant {
            issuer: "x",
            intent_hash: INTENT,
            issued_at: T,
            expires_at: T + 60,
            jti: "j",
        },
    );
    assert_eq!(
        a.verify(&unknown, INTENT, at(T)),
        Err(ApprovalError::UnknownKey("k2".into()))
    );
    // Signed by another key but claiming k1.
    let forged = sign(
        &SigningKey::from_bytes(&[9u8; 32]),
        "k1",
        &Grant {
            issuer: "x",
            intent_hash: INTENT,
            issued_at: T,
            expires_at: T + 60,
            jti: "j",
        },
    );
    assert_eq!(
        a.verify(&forged, INTENT, at(T)),
        Err(ApprovalError::BadSignature)
    );
}

#[test]
fn public_keys_parse_from_pem_and_base64() {
    let key = test_key().verifying_key();
    let pem = key.to_public_key_pem(Default::default()).unwrap();
    assert_eq!(parse_public_key(&pem).unwrap(), key);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
    assert_eq!(parse_public_key(&b64).unwrap(), key);
    assert_eq!(
        parse_public_key(&URL_SAFE_NO_PAD.encode(key.as_bytes())).unwrap(),
        key
    );
    assert!(parse_public_key("AAAA").is_err());
    assert!(
        parse_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----").is_err()
    );
    assert!(key_id(&key).starts_with("ed25519-"));
}
