//! Caller authentication on the execution listener: from a request's head to a [`Caller`].
//!
//! Owns reading credentials (bearer JWTs, the client certificate the listener verified) and
//! the JWT keys. It looks at headers and the URI only — never the body — so a refusal costs
//! no body read, and it hands the decision a [`Caller`], never a credential: tokens never
//! reach a log line, an audit record or a `detail`. It never decides what a caller may do; bindings in the pure core do.

mod jwt;
mod keys;

use std::sync::Arc;

use http::{header, HeaderMap, Uri};

use crate::caller::Caller;
use crate::config::auth::AuthConfig;
use crate::metrics::Metrics;

pub use jwt::JwtVerifier;
pub use keys::KeyError;

/// Why a caller was not authenticated, as RFC 6750 §3 puts it in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// `invalid_request` or `invalid_token`; `None` when no credentials were sent at all
    /// (RFC 6750 §3.1: then the challenge carries no error code).
    pub error: Option<&'static str>,
    /// For the caller and the audit record; never contains the token.
    pub description: String,
    /// A bearer token was expected, so the answer carries a `Bearer` challenge; `false` for
    /// mTLS, which has no HTTP authentication scheme to name.
    pub bearer: bool,
}

impl AuthFailure {
    fn invalid_request(description: impl Into<String>) -> AuthFailure {
        AuthFailure {
            error: Some("invalid_request"),
            description: description.into(),
            bearer: true,
        }
    }

    fn invalid_token(description: impl Into<String>) -> AuthFailure {
        AuthFailure {
            error: Some("invalid_token"),
            description: description.into(),
            bearer: true,
        }
    }

    /// The `WWW-Authenticate` challenge for this failure, for bearer tokens.
    pub fn challenge(&self) -> Option<String> {
        if !self.bearer {
            return None;
        }
        Some(match self.error {
            None => format!("Bearer realm=\"{REALM}\""),
            Some(error) => format!(
                "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{}\"",
                challenge_text(&self.description)
            ),
        })
    }
}

const REALM: &str = "ecl-gate";

/// RFC 6750 §3: `error_description` is limited to printable ASCII without `"` and `\`.
fn challenge_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The configured ways a caller may authenticate.
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    /// The caller is the verified client certificate the listener hands over.
    mtls: bool,
}

impl Authenticator {
    /// Reads every key file once; a missing or broken file stops the start.
    pub fn load(config: &AuthConfig, metrics: Arc<Metrics>) -> Result<Authenticator, KeyError> {
        let jwt = match &config.jwt {
            Some(jwt) => Some(Arc::new(JwtVerifier::load(jwt.clone(), metrics)?)),
            None => None,
        };
        Ok(Authenticator {
            jwt,
            mtls: config.mtls,
        })
    }

    /// Every caller is `anonymous`.
    pub fn none() -> Authenticator {
        Authenticator {
            jwt: None,
            mtls: false,
        }
    }

    /// Whether callers must prove who they are.
    pub fn is_required(&self) -> bool {
        self.jwt.is_some() || self.mtls
    }

    /// Watches key files for changes; call once, inside the runtime.
    pub fn spawn_reloader(&self) {
        if let Some(jwt) = &self.jwt {
            Arc::clone(jwt).spawn_reloader();
        }
    }

    /// Who sent a request with this head, over a connection whose verified client
    /// certificate named `peer`.
    ///
    /// With both methods, a request that carries a bearer token (in `Authorization`, or
    /// refused in the query string) is judged by that token alone: a bad token is refused even
    /// beside a good certificate, never silently passed over for it. Only a request with no
    /// bearer credential at all is judged by its certificate.
    pub fn authenticate(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<&Caller>,
    ) -> Result<Caller, AuthFailure> {
        match (&self.jwt, self.mtls) {
            (None, false) => Ok(Caller::anonymous()),
            (None, true) => peer.cloned().ok_or_else(|| AuthFailure {
                error: None,
                description: "no client certificate: this listener authenticates callers by mTLS"
                    .into(),
                bearer: false,
            }),
            (Some(jwt), false) => bearer(jwt, uri, headers),
            (Some(jwt), true) => {
                if carries_bearer(uri, headers) {
                    return bearer(jwt, uri, headers);
                }
                peer.cloned().ok_or_else(|| AuthFailure {
                    error: None,
                    description:
                        "no credentials: send `Authorization: Bearer <token>` or a client certificate"
                            .into(),
                    bearer: true,
                })
            }
        }
    }
}

/// Whether the request offers a bearer token anywhere the gate looks (or refuses to look).
fn carries_bearer(uri: &Uri, headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || uri.query().is_some_and(has_access_token)
}

/// The caller a request's bearer token names.
fn bearer(jwt: &JwtVerifier, uri: &Uri, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
    // RFC 6750 §2.3 allows `access_token` in the query, and §5.3 warns it ends up in
    // access logs: refused, so no client learns to send it that way.
    if uri.query().is_some_and(has_access_token) {
        return Err(AuthFailure::invalid_request(
            "bearer tokens are not accepted in the query string; send `Authorization: Bearer`",
        ));
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        if headers.contains_key(header::AUTHORIZATION) {
            return Err(AuthFailure::invalid_request(
                "more than one `Authorization` header",
            ));
        }
        return Err(AuthFailure {
            error: None,
            description: "no bearer token: send `Authorization: Bearer <token>`".into(),
            bearer: true,
        });
    };
    let token = bearer_token(value.as_bytes())?;
    jwt.verify(token)
}

fn has_access_token(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("access_token"))
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn bearer_token(value: &[u8]) -> Result<&str, AuthFailure> {
    let malformed = || AuthFailure::invalid_request("`Authorization` must be `Bearer <token>`");
    let text = std::str::from_utf8(value).map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::invalid_request(
            "`Authorization` must use the `Bearer` scheme",
        ));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_has_no_error_without_credentials_and_escapes_descriptions() {
        let missing = AuthFailure {
            error: None,
            description: "x".into(),
            bearer: true,
        };
        assert_eq!(missing.challenge().unwrap(), "Bearer realm=\"ecl-gate\"");
        let bad = AuthFailure::invalid_token("issuer is not `a\"b` é");
        assert_eq!(
            bad.challenge().unwrap(),
            "Bearer realm=\"ecl-gate\", error=\"invalid_token\", error_description=\"issuer is not `a'b` ?\""
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer_token(b"Bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token(b"bearer abc").unwrap(), "abc");
        assert!(bearer_token(b"Basic abc").is_err());
        assert!(bearer_token(b"Bearer ").is_err());
        assert!(bearer_token(b"Bearer").is_err());
    }

    #[test]
    // With both methods, any bearer credential (even one refused for where it is) decides;
    // only a request with none at all falls to the client certificate.
    fn a_bearer_credential_is_spotted_in_the_header_or_the_query() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        let mut headers = HeaderMap::new();
        assert!(!carries_bearer(&uri("/v1/execute"), &headers));
        assert!(!carries_bearer(&uri("/v1/execute?trace=1"), &headers));
        assert!(carries_bearer(&uri("/v1/execute?access_token=x"), &headers));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(carries_bearer(&uri("/v1/execute"), &headers));
    }

    #[test]
    fn access_token_in_query_is_spotted() {
        assert!(has_access_token("a=1&access_token=x"));
        assert!(has_access_token("access_token"));
        assert!(!has_access_token("not_access_token=x"));
    }
}
