//! What `ecl-gate load` needs to reach an authenticated gate: TLS (a CA to trust, an optional
//! client certificate) and a bearer token.
//!
//! Owns reading those files into a connector and a header value. It never prints the token
//! or key material, and never turns certificate verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use super::LoadError;

/// Files for `https://` targets.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM CA certificates to trust; none: the public web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key, for gates with `auth.methods = ["mtls"]`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

fn usage(message: String) -> LoadError {
    LoadError::Usage(message)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path)
        .map_err(|err| usage(format!("cannot read {what} `{}`: {err}", path.display())))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| usage(format!("{what} `{}`: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(usage(format!(
            "{what} `{}` holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A connector for `host` (the name the gate's certificate must carry).
pub fn connector(
    files: &TlsFiles,
    host: &str,
) -> Result<(TlsConnector, ServerName<'static>), LoadError> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            for cert in certificates(path, "CA file")? {
                roots
                    .add(cert)
                    .map_err(|err| usage(format!("CA file `{}`: {err}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| usage(format!("TLS: {err}")))?
        .with_root_certificates(roots);
    let mut config = match &files.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert, "client certificate")?;
            let key_bytes = read(key, "client key")?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
                .map_err(|err| usage(format!("client key `{}`: {err}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| usage(format!("client certificate `{}`: {err}", cert.display())))?
        }
    };
    // The generator speaks HTTP/1.1 only: one request in flight per connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| usage(format!("`{host}` is not a valid TLS server name")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// `Bearer <token>` from a file holding the token (one trailing newline dropped).
pub fn bearer(path: &Path) -> Result<HeaderValue, LoadError> {
    let bytes = read(path, "token file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| usage(format!("token file `{}` is not UTF-8", path.display())))?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(usage(format!(
            "token file `{}` must hold one token without spaces",
            path.display()
        )));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        usage(format!(
            "token file `{}` holds characters a header cannot carry",
            path.display()
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}
