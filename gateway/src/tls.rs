//! TLS for the device listeners: rustls with the ring provider only (DESIGN: with aws-lc compiled in as well,
//! rustls cannot pick a provider and panics), from the files of `[tls]`: the server certificate and key, and
//! optionally a CA that client certificates are verified against (mTLS). A verified client certificate's subject
//! common name becomes the device's identity.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// A TLS acceptor for `[tls]`. Errors name the key and the file.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = read_certs(&config.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .with_context(|| format!("tls.key_file: cannot read a PEM private key from {}", config.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("tls: no protocol version in common with the ring provider")?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_file, "tls.client_ca_file")? {
                roots.add(ca).context("tls.client_ca_file: not a usable CA certificate")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().context("tls.client_ca_file: no usable CA")?)
        }
    };
    let server = builder
        .with_single_cert(certs, key)
        .context("tls: the certificate and the key do not make a server identity")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .with_context(|| format!("{key}: cannot read PEM certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{key}: {} holds no certificate", path.display());
    Ok(certs)
}

/// The identity a verified client certificate proves: its subject's common name (else the whole subject).
pub fn peer_identity(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, session) = stream.get_ref();
    let cert = session.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(String::from);
    cn.or_else(|| Some(subject.to_string())).filter(|s| !s.is_empty())
}

/// A connection future, boxed so plain and TLS listeners share one accept loop.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Wraps `serve` so each connection first completes a TLS handshake within `timeout`; `serve` gets the stream
/// and the client certificate's identity.
pub fn over_tls<F, Fut>(acceptor: TlsAcceptor, timeout: Duration, serve: F) -> impl Fn(TcpStream) -> Serving
where
    F: Fn(TlsStream<TcpStream>, Option<String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    move |stream| {
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        Box::pin(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let identity = peer_identity(&tls);
                    serve(tls, identity).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        })
    }
}
