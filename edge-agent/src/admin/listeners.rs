//! The admin endpoint's listeners, plain and TLS, whose connections tell the handlers who is on the other end
//! ([`AdminPeer`]): the address, and the name on a verified client certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a TLS handshake on the admin listener may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminPeer {
    /// The peer's address.
    pub addr: Option<SocketAddr>,
    /// The name of its verified client certificate (TLS listeners only).
    pub cert_name: Option<String>,
}

/// A plain TCP admin listener.
#[derive(Debug)]
pub struct PlainListener(pub TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (io, AdminPeer { addr: Some(addr), cert_name: None })
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(AdminPeer { addr: Some(self.0.local_addr()?), cert_name: None })
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Reads the name a verified client certificate proves.
pub type CertName = fn(&TlsStream<TcpStream>) -> Option<String>;

/// A TLS admin listener: each connection completes its handshake (within 5 s) before HTTP; a failed one is
/// logged at debug and dropped, and accepting goes on.
pub struct TlsAdminListener {
    /// The bound socket.
    pub inner: TcpListener,
    /// The acceptor for the next handshake (a reload may replace it).
    pub acceptor: Arc<dyn Fn() -> TlsAcceptor + Send + Sync>,
    /// The name of a verified client certificate.
    pub cert_name: CertName,
}

impl axum::serve::Listener for TlsAdminListener {
    type Io = TlsStream<TcpStream>;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let handshake = (self.acceptor)().accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => {
                    let cert_name = (self.cert_name)(&tls);
                    return (tls, AdminPeer { addr: Some(addr), cert_name });
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %addr, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "admin TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(AdminPeer { addr: Some(self.inner.local_addr()?), cert_name: None })
    }
}

impl Connected<IncomingStream<'_, TlsAdminListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TlsAdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}
