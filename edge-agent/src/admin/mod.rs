//! The admin HTTP endpoint both binaries serve: `/healthz` (the process runs), `/readyz` (data directory
//! writable, spool writing, at least one uplink healthy), `/metrics` (Prometheus text) and the mesh part of the
//! JSON API, `GET /api/uplinks` and `GET /api/spool`, behind the admin token ([`access`]). The gateway adds its
//! own routes (clients, sessions, retained messages, reload, the dashboard) to the same router.
//!
//! - [`access`]: the admin token and certificate names, and the gate every `/api/` route goes through.
//! - [`listeners`]: plain and TLS listeners whose connections tell the peer (and its certificate name).
//! - [`mesh`]: the spool, uplinks and downlinks as Prometheus text and JSON.

pub mod access;
pub mod listeners;
pub mod mesh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::watch;

pub use access::{AdminAccess, AdminSecrets, Denied};
pub use listeners::{AdminPeer, PlainListener, TlsAdminListener};
pub use mesh::MeshStatus;

/// `[admin]` of the edge-agent: where the endpoint listens and who may use its API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAdminConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` and `/api/`.
    #[serde(deserialize_with = "crate::config_file::bind_addr")]
    pub bind: SocketAddr,
    /// The Argon2 hash of the admin token (`meshgate hash-password`); without it (or `cert_names`) the API is
    /// locked.
    #[serde(default)]
    pub token_hash: Option<String>,
    /// Client-certificate names that are the administrator (only where the endpoint runs TLS).
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// Whether `/metrics` needs the admin token too (health stays open).
    #[serde(default)]
    pub protect_metrics: bool,
}

impl AgentAdminConfig {
    /// The secrets of this table.
    pub fn secrets(&self) -> AdminSecrets {
        AdminSecrets { token_hash: self.token_hash.clone(), cert_names: self.cert_names.clone() }
    }
}

/// Checks `[admin] token_hash`: an Argon2 PHC string, as `meshgate hash-password` prints it.
pub fn validate_token_hash(hash: &str) -> Result<(), String> {
    let phc = argon2::PasswordHash::new(hash)
        .map_err(|e| format!("not a password hash ({e}); run `meshgate hash-password` and paste what it prints"))?;
    if !phc.algorithm.as_str().starts_with("argon2") {
        return Err("only Argon2 hashes are supported".into());
    }
    Ok(())
}

/// The gate of the admin API: the request goes on only with the admin token or a listed certificate.
pub async fn require_admin(
    State(access): State<Arc<AdminAccess>>,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match access.check(authorization, peer.cert_name.as_deref(), peer.addr).await {
        Ok(()) => next.run(request).await,
        Err(denied) => denied.into_response(),
    }
}

/// The process's readiness: the data directory writable, the spool writing, an uplink healthy.
pub async fn readiness(mesh: &MeshStatus, data_dir: &Path) -> Response {
    let mut problems = Vec::new();
    let probe = data_dir.join(".readyz-probe");
    let writable = tokio::fs::write(&probe, b"ok").await.is_ok();
    let _ = tokio::fs::remove_file(&probe).await;
    if !writable {
        problems.push("the data directory is not writable");
    }
    if !mesh.spool_healthy() {
        problems.push("the spool cannot write");
    }
    if !mesh.uplinks_healthy() {
        problems.push("no uplink is healthy");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string()).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

/// Prometheus text as a response.
pub fn prometheus(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `GET /api/uplinks` and `GET /api/spool` of `mesh`, behind the gate of `access`.
pub fn mesh_api(mesh: Arc<MeshStatus>, access: Arc<AdminAccess>) -> Router {
    Router::new()
        .route("/api/uplinks", get(|State(m): State<Arc<MeshStatus>>| async move { axum::Json(m.uplinks_json()) }))
        .route("/api/spool", get(|State(m): State<Arc<MeshStatus>>| async move { axum::Json(m.spool_json()) }))
        .with_state(mesh)
        .layer(axum::middleware::from_fn_with_state(access, require_admin))
}

/// Renders the Prometheus text of `/metrics`.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the routes every admin endpoint shares read.
#[derive(Clone)]
struct CommonState {
    mesh: Arc<MeshStatus>,
    data_dir: PathBuf,
    render: RenderMetrics,
}

/// The routes both binaries' admin endpoints share: `/healthz`, `/readyz`, `/metrics` (`render`'s text, behind
/// the gate with `protect_metrics`), and the mesh API (`/api/uplinks`, `/api/spool`) behind the gate.
pub fn common_routes(
    mesh: Arc<MeshStatus>,
    data_dir: PathBuf,
    access: Arc<AdminAccess>,
    protect_metrics: bool,
    render: RenderMetrics,
) -> Router {
    let state = CommonState { mesh: Arc::clone(&mesh), data_dir, render };
    let metrics = get(|State(s): State<CommonState>| async move { prometheus((s.render)()) });
    let mut metrics = Router::new().route("/metrics", metrics).with_state(state.clone());
    if protect_metrics {
        metrics = metrics.layer(axum::middleware::from_fn_with_state(Arc::clone(&access), require_admin));
    }
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|State(s): State<CommonState>| async move { readiness(&s.mesh, &s.data_dir).await }))
        .with_state(state)
        .merge(metrics)
        .merge(mesh_api(mesh, access))
}

/// The edge-agent's admin router: the common routes on its spool and uplinks.
pub fn agent_router(config: &AgentAdminConfig, mesh: Arc<MeshStatus>, data_dir: PathBuf) -> Router {
    let access = Arc::new(AdminAccess::new(config.secrets()));
    let rendered = Arc::clone(&mesh);
    let render: RenderMetrics = Arc::new(move || {
        let mut out = String::with_capacity(4096);
        rendered.render_metrics(&mut out);
        out
    });
    common_routes(mesh, data_dir, access, config.protect_metrics, render)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve<L>(listener: L, router: Router, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = AdminPeer>,
    AdminPeer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let app = router.into_make_service_with_connect_info::<AdminPeer>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}
