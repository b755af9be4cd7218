//! TLS towards a peer this agent connects to (a bridged broker, an uplink's broker or receiver): which CAs to
//! trust and which client certificate to present, as a rustls client configuration (ring provider only,
//! docs/decisions.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// A `tls` table: the CA certificates (PEM) the peer's certificate must chain to (the public web roots when
/// unset), and optionally a client certificate for peers that authenticate clients by certificate. The peer's
/// certificate must name the host connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The CA certificates (PEM); unset: the Mozilla roots compiled in (`webpki-roots`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Checks that a client certificate comes with its key; the error names the key (relative to the table).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(("tls.key_file".into(), "is needed with tls.cert_file".into())),
            (None, Some(_)) => Err(("tls.cert_file".into(), "is needed with tls.key_file".into())),
            _ => Ok(()),
        }
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, (String, String)> {
    std::fs::read(path).map_err(|e| (key.to_string(), format!("cannot read {}: {e}", path.display())))
}

fn certs(pem: &[u8], key: &str) -> Result<Vec<CertificateDer<'static>>, (String, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (key.to_string(), format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err((key.to_string(), "holds no certificate".to_string()));
    }
    Ok(certs)
}

/// Builds the client configuration: the CA file's certificates (or the web roots) as roots, and the client
/// certificate if set. The error names the key and the problem.
pub fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, (String, String)> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(ca_file) => {
            for cert in certs(&read(ca_file, "tls.ca_file")?, "tls.ca_file")? {
                roots
                    .add(cert)
                    .map_err(|e| ("tls.ca_file".to_string(), format!("not a usable CA certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_root_certificates(roots);
    tls.validate()?;
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(&read(cert, "tls.cert_file")?, "tls.cert_file")?;
            let key = PrivateKeyDer::from_pem_slice(&read(key, "tls.key_file")?)
                .map_err(|e| ("tls.key_file".to_string(), format!("not a PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| ("tls.key_file".to_string(), e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
