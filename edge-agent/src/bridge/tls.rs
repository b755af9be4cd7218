//! The rustls client configuration of a bridge's TLS connection (ring provider only, DESIGN.md).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::BridgeTls;

/// Builds the client configuration: the CA file's certificates as roots, and the client certificate if set.
/// The error names the key and the problem.
pub fn client_config(tls: &BridgeTls) -> Result<Arc<rustls::ClientConfig>, (String, String)> {
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path).map_err(|e| (key.to_string(), format!("cannot read {}: {e}", path.display())))
    };
    let certs = |pem: &[u8], key: &str| {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| (key.to_string(), format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err((key.to_string(), "holds no certificate".to_string()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&read(&tls.ca_file, "tls.ca_file")?, "tls.ca_file")? {
        roots.add(cert).map_err(|e| ("tls.ca_file".to_string(), format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_root_certificates(roots);
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
