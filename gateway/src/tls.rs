//! TLS for the device listeners: rustls with the ring provider only (docs/decisions.md: with aws-lc compiled in as well,
//! rustls cannot pick a provider and panics), from the files of `[tls]`: the server certificate and key, and
//! optionally a CA that client certificates are verified against (mTLS). A verified client certificate's subject
//! common name becomes the device's identity. The server certificate is reloaded when its files change, and the
//! whole of `[tls]` (certificate, key, client CA) by a configuration reload ([`ServerTls::replace`]); connections
//! already open keep what they negotiated.

use meshgate_edge_agent::process::LogBudget;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// The TLS server side of `[tls]` in force, shared by every TLS listener.
pub struct ServerTls {
    current: RwLock<(TlsAcceptor, Arc<ReloadingCert>)>,
    /// Failed handshakes are logged at info, at most this budget a second (a scanner must not flood the log).
    failures_logged: LogBudget,
}

/// Failed handshakes logged per second at most.
const HANDSHAKE_FAILURES_LOGGED_PER_SECOND: u32 = 10;

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The acceptor of `config`; errors name the key and the file.
    pub fn new(config: &TlsConfig) -> anyhow::Result<Arc<ServerTls>> {
        let failures_logged = LogBudget::new(HANDSHAKE_FAILURES_LOGGED_PER_SECOND);
        Ok(Arc::new(ServerTls { current: RwLock::new(acceptor(config)?), failures_logged }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone()
    }

    /// Loads `config` and puts it in force for new handshakes; a configuration that does not load leaves the
    /// current one in force and says why.
    pub fn replace(&self, config: &TlsConfig) -> anyhow::Result<()> {
        let loaded = acceptor(config)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        Ok(())
    }

    /// Looks at the certificate files in force every `every` until shutdown (see [`ReloadingCert::refresh`]).
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = crate::listener::stopped(&mut stop) => return,
                _ = tokio::time::sleep(every) => {
                    let cert = Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1);
                    let _ = tokio::task::spawn_blocking(move || cert.refresh()).await;
                }
            }
        }
    }
}

/// A TLS acceptor for `[tls]`, and the server certificate it presents (to reload). Errors name the key and the
/// file.
fn acceptor(config: &TlsConfig) -> anyhow::Result<(TlsAcceptor, Arc<ReloadingCert>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = Arc::new(ReloadingCert::load(config, Arc::clone(&provider))?);
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
    let server = builder.with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
    Ok((TlsAcceptor::from(Arc::new(server)), cert))
}

/// The server certificate and key of `[tls]`, replaced in place when their files change, so a renewed
/// certificate (ACME, an operator's copy) takes effect without a restart. Connections already open keep theirs.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The bytes of both files as last loaded.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    fn load(config: &TlsConfig, provider: Arc<CryptoProvider>) -> anyhow::Result<ReloadingCert> {
        let cert_bytes = std::fs::read(&config.cert_file)
            .with_context(|| format!("tls.cert_file: cannot read {}", config.cert_file.display()))?;
        let key_bytes = std::fs::read(&config.key_file)
            .with_context(|| format!("tls.key_file: cannot read {}", config.key_file.display()))?;
        let key = certified_key(&cert_bytes, &key_bytes, &provider, &config.cert_file, &config.key_file)?;
        Ok(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            provider,
            loaded: Mutex::new((cert_bytes, key_bytes)),
        })
    }

    /// Reads the files again and swaps the certificate in if they changed and make a valid identity; returns
    /// whether it changed. Files that do not load leave the current certificate in place (and are logged).
    pub fn refresh(&self) -> bool {
        let (Ok(cert_bytes), Ok(key_bytes)) = (std::fs::read(&self.cert_file), std::fs::read(&self.key_file)) else {
            tracing::warn!(cert = %self.cert_file.display(), "TLS certificate files unreadable; keeping the current one");
            return false;
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.0 == cert_bytes && loaded.1 == key_bytes {
            return false;
        }
        match certified_key(&cert_bytes, &key_bytes, &self.provider, &self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                *loaded = (cert_bytes, key_bytes);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Perhaps half-written: try again at the next look.
                tracing::warn!(error = %e, "new TLS certificate not usable; keeping the current one");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<CertifiedKey> {
    let certs = parse_certs(cert_pem, cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .with_context(|| format!("tls.key_file: cannot read a PEM private key from {}", key_file.display()))?;
    CertifiedKey::from_der(certs, key, provider)
        .context("tls: the certificate and the key do not make a server identity")
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{key}: cannot read {}", path.display()))?;
    parse_certs(&pem, path, key)
}

/// The certificates of a PEM file's contents; errors name the configuration key and the file.
fn parse_certs(pem: &[u8], path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
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
pub fn over_tls<F, Fut>(tls: Arc<ServerTls>, timeout: Duration, serve: F) -> impl Fn(TcpStream) -> Serving
where
    F: Fn(TlsStream<TcpStream>, crate::listener::Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    move |stream| {
        let (acceptor, serve, server) = (tls.acceptor(), serve.clone(), Arc::clone(&tls));
        Box::pin(async move {
            let addr = stream.peer_addr().ok();
            let reason = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let identity = peer_identity(&tls);
                    return serve(tls, crate::listener::Peer { addr, identity }).await;
                }
                Ok(Err(e)) => handshake_failure(&e),
                Err(_) => format!("no handshake within {} s", timeout.as_secs()),
            };
            if let Some(suppressed) = server.failures_logged.may_log(std::time::Instant::now()) {
                let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
                tracing::info!(peer, reason, suppressed, "TLS handshake failed");
            }
        })
    }
}

/// Why a handshake failed, in words an operator can act on (rustls' error otherwise).
fn handshake_failure(error: &std::io::Error) -> String {
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)))
            if format!("{other:?}").contains("UnsupportedCertVersion") =>
        {
            "the client certificate is X.509 v1; only v3 certificates are accepted (docs/tls.md shows how to \
             make one)"
                .into()
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client presented no certificate, and tls.require_client_cert is on".into()
        }
        Some(e) => e.to_string(),
        None => error.to_string(),
    }
}
