//! Compact JWS (RFC 7515) signed with EdDSA over Ed25519: the envelope approval tokens and
//! proxy grants share.
//!
//! Owns splitting, decoding and the signature check; what the claims mean is the caller's. It
//! must never accept an algorithm other than `EdDSA`, a `crit` header, or hand out claims whose
//! signature it has not verified. JSON inside is read with the strict parser, so a duplicated
//! claim cannot mean two things.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::canonical::{self, Map, Value};

/// Why a token's envelope is not acceptable; each caller maps it to its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwsError {
    Malformed(String),
    Algorithm(String),
    BadSignature,
}

/// What the verifier may read of the header before the signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kid: String,
    pub typ: Option<String>,
}

fn malformed(why: impl Into<String>) -> JwsError {
    JwsError::Malformed(why.into())
}

/// Checks `token`'s envelope and signature; `key_for` picks the key from the header (and may
/// refuse it, e.g. for an unknown `kid` or a wrong `typ`). Returns the header and the claims.
pub fn verify<'k, E: From<JwsError>>(
    token: &str,
    max_len: usize,
    key_for: impl FnOnce(&Header) -> Result<&'k VerifyingKey, E>,
) -> Result<(Header, Map), E> {
    if token.len() > max_len {
        return Err(malformed(format!("longer than {max_len} bytes")).into());
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts").into());
    };
    let header = decode_object(header_b64, "header")?;
    match header.get("alg").and_then(Value::as_str) {
        Some("EdDSA") => {}
        Some(other) => return Err(JwsError::Algorithm(other.to_owned()).into()),
        None => return Err(malformed("header has no string `alg`").into()),
    }
    if header.contains_key("crit") {
        // RFC 7515: extensions the verifier does not understand must be refused.
        return Err(malformed("header has `crit` extensions").into());
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| malformed("header has no string `kid`"))?;
    let header = Header {
        kid: kid.to_owned(),
        typ: header.get("typ").and_then(Value::as_str).map(str::to_owned),
    };
    let key = key_for(&header)?;

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signature =
        Signature::from_slice(&signature).map_err(|_| malformed("signature is not 64 bytes"))?;
    let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| JwsError::BadSignature)?;

    // Only signed bytes are trusted from here on.
    let claims = decode_object(claims_b64, "claims")?;
    Ok((header, claims))
}

/// Signs `claims` under `header` (which must say `alg: EdDSA`).
pub fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(canonical::to_canonical(header));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(canonical::to_canonical(claims)));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    token
}

fn decode_object(part: &str, what: &str) -> Result<Map, JwsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("{what} is not base64url")))?;
    match canonical::parse(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(format!("{what} is not an object"))),
        Err(err) => Err(malformed(format!("{what} is not valid JSON: {err}"))),
    }
}
