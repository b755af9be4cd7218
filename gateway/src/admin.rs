//! The admin HTTP endpoint: `/healthz` (the process runs), `/readyz` (data directory writable, spool writing, at
//! least one uplink healthy; it is served only once every listener is bound) and `/metrics` (Prometheus text).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What the admin endpoint reads.
#[derive(Clone)]
pub struct AdminState {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The data directory, probed for writability.
    pub data_dir: PathBuf,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let mut problems = Vec::new();
    let probe = state.data_dir.join(".readyz-probe");
    let writable = tokio::fs::write(&probe, b"ok").await.is_ok();
    let _ = tokio::fs::remove_file(&probe).await;
    if !writable {
        problems.push("the data directory is not writable");
    }
    if !state.metrics.spool_healthy() {
        problems.push("the spool cannot write");
    }
    if !state.metrics.uplinks_healthy() {
        problems.push("no uplink is healthy");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; ")))
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// The admin endpoint over TLS: each accepted connection completes its handshake (within 5 s) before HTTP.
pub struct TlsListener {
    /// The bound socket.
    pub inner: TcpListener,
    /// The `[tls]` acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(error = %e, %addr, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "admin TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serves the admin endpoint on `listener` (plain or [`TlsListener`]) until shutdown.
pub async fn run<L>(listener: L, state: AdminState, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let stop = async move { crate::mqtt::stopped(&mut shutdown).await };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}
