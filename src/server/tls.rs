//! TLS on the execution listener (rustls, ring provider): the server certificate, the client
//! CA for mTLS, both reloaded when their files change, and the caller a client certificate
//! names.
//!
//! Owns reading PEM files and building the acceptor. A changed file that does not load keeps
//! the previous configuration (logged and counted); connections already open keep the
//! configuration they were accepted with. It never logs key material.

use std::sync::{Arc, Mutex, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::caller::{Caller, CallerMethod};
use crate::config::auth::ListenTlsConfig;
use crate::metrics::Metrics;
use crate::reload::read_bounded;

pub struct TlsListener {
    config: ListenTlsConfig,
    current: RwLock<Loaded>,
    metrics: Arc<Metrics>,
    /// The digest of files that failed to load last, so a broken file is reported once.
    last_failed: Mutex<Option<Vec<u8>>>,
}

#[derive(Clone)]
struct Loaded {
    acceptor: TlsAcceptor,
    fingerprint: Vec<u8>,
}

impl TlsListener {
    /// Reads and checks every file; an error stops the start.
    pub fn load(config: ListenTlsConfig, metrics: Arc<Metrics>) -> Result<TlsListener, String> {
        let loaded = build(&config)?;
        Ok(TlsListener {
            config,
            current: RwLock::new(loaded),
            metrics,
            last_failed: Mutex::new(None),
        })
    }

    /// Whether client certificates are verified (and name the caller).
    pub fn is_mutual(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// The acceptor for the next connection: always the newest configuration that loaded.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(loaded) => loaded.acceptor.clone(),
            Err(poisoned) => poisoned.into_inner().acceptor.clone(),
        }
    }

    pub fn spawn_reloader(self: Arc<Self>) {
        let interval = self.config.reload_interval;
        crate::reload::spawn_every(interval, self, Self::reload_if_changed);
    }

    /// One reload check: reads the files, and rebuilds when their bytes changed.
    pub fn reload_if_changed(&self) {
        let Ok(mut last_failed) = self.last_failed.lock() else {
            return;
        };
        let current = match self.current.read() {
            Ok(loaded) => loaded.fingerprint.clone(),
            Err(poisoned) => poisoned.into_inner().fingerprint.clone(),
        };
        let fingerprint = match fingerprint(&self.config) {
            Ok(fingerprint) => fingerprint,
            Err(err) => {
                if last_failed.as_deref() != Some(&[][..]) {
                    tracing::error!(error = %err, "listener TLS files unreadable; keeping the ones in use");
                    self.metrics.tls_reload_failures.inc();
                    *last_failed = Some(Vec::new());
                }
                return;
            }
        };
        if fingerprint == current {
            *last_failed = None;
            return;
        }
        if last_failed.as_ref() == Some(&fingerprint) {
            return;
        }
        match build(&self.config) {
            Ok(loaded) => {
                tracing::info!("listener TLS certificate reloaded");
                *last_failed = None;
                if let Ok(mut slot) = self.current.write() {
                    *slot = loaded;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "changed listener TLS files do not load; keeping the ones in use");
                self.metrics.tls_reload_failures.inc();
                *last_failed = Some(fingerprint);
            }
        }
    }
}

fn fingerprint(config: &ListenTlsConfig) -> Result<Vec<u8>, String> {
    let mut digest = Sha256::new();
    digest.update(read_bounded(&config.cert_file)?);
    digest.update(read_bounded(&config.key_file)?);
    if let Some(ca) = &config.client_ca_file {
        digest.update(read_bounded(ca)?);
    }
    Ok(digest.finalize().to_vec())
}

fn certificates(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("`{}`: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn build(config: &ListenTlsConfig) -> Result<Loaded, String> {
    let mut digest = Sha256::new();
    let cert_bytes = read_bounded(&config.cert_file)?;
    let key_bytes = read_bounded(&config.key_file)?;
    digest.update(&cert_bytes);
    digest.update(&key_bytes);
    let chain = certificates(&config.cert_file, &cert_bytes)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| {
        // The error names the PEM problem, never the key's bytes.
        format!(
            "`{}`: no usable private key: {err}",
            config.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS versions: {err}"))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_bytes = read_bounded(path)?;
            digest.update(&ca_bytes);
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, &ca_bytes)? {
                roots
                    .add(cert)
                    .map_err(|err| format!("`{}`: {err}", path.display()))?;
            }
            // A connection without a certificate is let in so that its request is answered
            // and audited (CALLER_UNAUTHENTICATED); a certificate that does not verify fails
            // the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|err| format!("`{}`: {err}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|err| {
        format!(
            "`{}` and `{}` do not make a certificate and its key: {err}",
            config.cert_file.display(),
            config.key_file.display()
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        fingerprint: digest.finalize().to_vec(),
    })
}

/// The caller a verified client certificate names: its URI SAN (a SPIFFE ID) when present,
/// else its first DNS SAN, else its subject CN. `None` without a certificate, or when the
/// certificate names nobody.
pub fn peer_caller(certificates: Option<&[CertificateDer<'_>]>) -> Option<Caller> {
    let leaf = certificates?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let id = cert
        .valid_uri_names()
        .next()
        .or_else(|| cert.valid_dns_names().next())
        .map(str::to_owned)
        .or_else(|| common_name(cert.subject()))?;
    if id.is_empty() {
        return None;
    }
    Some(Caller {
        method: CallerMethod::Mtls,
        id: id.into(),
        issuer: None,
    })
}

/// The first CN of a DER `Name` (its contents, without the outer SEQUENCE).
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while !name.is_empty() {
        let (tag, set, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        let mut set = set;
        while !set.is_empty() {
            let (tag, attribute, rest) = tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag == 0x06 && oid == CN {
                let (value_tag, text, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String, T61String (read as Latin-1-ish ASCII).
                return match value_tag {
                    0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(text).ok().map(str::to_owned),
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER TLV: tag, contents, rest. Definite lengths only, up to 4 length bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut length = 0usize;
        for &byte in &rest[..count] {
            length = (length << 8) | usize::from(byte);
        }
        rest = &rest[count..];
        length
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn caller_is_uri_san_then_dns_san_then_cn() {
        let mut spiffe = rcgen::CertificateParams::new(vec!["agent.internal".into()]).unwrap();
        spiffe.subject_alt_names.insert(
            0,
            rcgen::SanType::URI(
                "spiffe://cluster.local/ns/agents/sa/finance"
                    .try_into()
                    .unwrap(),
            ),
        );
        let dns = rcgen::CertificateParams::new(vec!["agent.internal".into()]).unwrap();
        let mut cn = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cn.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Agents Inc");
        cn.distinguished_name
            .push(rcgen::DnType::CommonName, "finance-agent");
        let none = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let id = |params| peer_caller(Some(&[certificate(params)])).map(|c| c.id.to_string());
        assert_eq!(
            id(spiffe).as_deref(),
            Some("spiffe://cluster.local/ns/agents/sa/finance")
        );
        assert_eq!(id(dns).as_deref(), Some("agent.internal"));
        assert_eq!(id(cn).as_deref(), Some("finance-agent"));
        // rcgen's default subject is CN "rcgen self signed cert".
        assert_eq!(id(none).as_deref(), Some("rcgen self signed cert"));
        assert_eq!(peer_caller(None), None);
    }

    #[test]
    fn tlv_refuses_truncated_input() {
        assert_eq!(tlv(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(tlv(&[0x30, 0x81]), None);
        assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(
            tlv(&[0x04, 0x01, 9, 7]),
            Some((0x04, &[9u8][..], &[7u8][..]))
        );
    }
}
