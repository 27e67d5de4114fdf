//! The public keys bearer tokens are verified with: a JWKS file and PEM files, read together
//! into one [`KeySet`] by `kid`.
//!
//! Owns parsing key files and telling whether they changed. It never accepts a symmetric
//! (`oct`) key or an algorithm outside EdDSA, ES256 and RS256: a verifier that held an HMAC
//! secret could be fooled by a token "signed" with a public key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use crate::config::auth::{JwtAlgorithm, JwtConfig};

/// Largest key file read: a JWKS of a few dozen RSA keys is well below it.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One verification key and the one algorithm it may verify.
pub struct Key {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

/// Keys by `kid`, plus what the files looked like when they were read.
pub struct KeySet {
    pub keys: HashMap<String, Key>,
    pub fingerprint: Vec<u8>,
}

impl KeySet {
    pub fn load(config: &JwtConfig) -> Result<KeySet, KeyError> {
        let mut keys = HashMap::new();
        let mut digest = Sha256::new();
        if let Some(path) = &config.jwks_file {
            let bytes = read_limited(path)?;
            digest.update(&bytes);
            load_jwks(path, &bytes, &mut keys)?;
        }
        for pem in &config.pem_keys {
            let bytes = read_limited(&pem.file)?;
            digest.update(&bytes);
            let invalid = |message: String| KeyError::Invalid {
                path: pem.file.clone(),
                message,
            };
            let key = match pem.alg {
                JwtAlgorithm::EdDsa => DecodingKey::from_ed_pem(&bytes),
                JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&bytes),
                JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&bytes),
            }
            .map_err(|err| invalid(format!("not a {} public key: {err}", pem.alg.as_str())))?;
            if keys.contains_key(&pem.kid) {
                return Err(invalid(format!("key id `{}` is defined twice", pem.kid)));
            }
            keys.insert(
                pem.kid.clone(),
                Key {
                    key,
                    alg: algorithm(pem.alg),
                },
            );
        }
        if keys.is_empty() {
            let path = config.jwks_file.clone().unwrap_or_default();
            return Err(KeyError::Invalid {
                path,
                message: "holds no usable signature key (EdDSA, ES256 or RS256)".into(),
            });
        }
        Ok(KeySet {
            keys,
            fingerprint: digest.finalize().to_vec(),
        })
    }

    /// A digest of the key files' current bytes, to tell whether a reload is due.
    pub fn fingerprint_files(config: &JwtConfig) -> Result<Vec<u8>, KeyError> {
        let mut digest = Sha256::new();
        if let Some(path) = &config.jwks_file {
            digest.update(read_limited(path)?);
        }
        for pem in &config.pem_keys {
            digest.update(read_limited(&pem.file)?);
        }
        Ok(digest.finalize().to_vec())
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let read_error = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads the signature keys of a JWKS. Keys for encryption or of an unsupported type are
/// skipped (a cluster's JWKS may hold several kinds); a key that claims to be a supported
/// signature key but is broken stops the load.
fn load_jwks(path: &Path, bytes: &[u8], keys: &mut HashMap<String, Key>) -> Result<(), KeyError> {
    let invalid = |message: String| KeyError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|err| invalid(format!("not a JWKS (RFC 7517): {err}")))?;
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Some(Algorithm::EdDSA)
            }
            // `oct` (HMAC secrets) and other curves: never used to verify a caller.
            _ => None,
        };
        let Some(inferred) = inferred else { continue };
        let alg = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::RS256) if inferred == Algorithm::RS256 => Algorithm::RS256,
            Some(KeyAlgorithm::ES256) if inferred == Algorithm::ES256 => Algorithm::ES256,
            Some(KeyAlgorithm::EdDSA) if inferred == Algorithm::EdDSA => Algorithm::EdDSA,
            // An RSA key published for PS256, say: not one this gate verifies with.
            Some(_) => continue,
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            return Err(invalid("a signature key has no `kid`".into()));
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| invalid(format!("key `{kid}` is not usable: {err}")))?;
        if keys.insert(kid.clone(), Key { key, alg }).is_some() {
            return Err(invalid(format!("key id `{kid}` is defined twice")));
        }
    }
    Ok(())
}
