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

/// Serves the admin endpoint until shutdown.
pub async fn run(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
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
