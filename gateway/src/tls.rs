//! TLS for the device listeners: rustls with the ring provider only (DESIGN: with aws-lc compiled in as well,
//! rustls cannot pick a provider and panics), from the certificate and key files of `[tls]`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A TLS acceptor for the server certificate chain and key of `[tls]`. Errors name the key and the file.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = read_certs(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .with_context(|| format!("tls.key_file: cannot read a PEM private key from {}", config.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: no protocol version in common with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: the certificate and the key do not make a server identity")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .with_context(|| format!("tls.cert_file: cannot read PEM certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "tls.cert_file: {} holds no certificate", path.display());
    Ok(certs)
}
