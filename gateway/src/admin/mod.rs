//! The admin endpoint: health and metrics as before, the JSON admin API behind the admin token, and the live
//! dashboard.
//!
//! | route | what | gate |
//! |---|---|---|
//! | `GET /healthz`, `GET /readyz` | the process runs; it is ready (data directory, spool, an uplink) | open |
//! | `GET /metrics` | Prometheus text | open, or the token with `admin.protect_metrics` |
//! | `GET /`, `/dashboard.js`, `/dashboard.css` | the dashboard (embedded; it asks for the token) | open |
//! | `GET /api/openapi.json` | the API's OpenAPI 3.1 document | open |
//! | every other `/api/` route ([`api`], [`live`]) | clients, sessions, subscriptions, retained messages, uplinks, spool, publish, reload, the live feed | token |
//!
//! - [`api`]: the JSON routes; [`live`]: the one-second overview and its server-sent-events feed;
//!   [`dashboard`]: the embedded page.

pub mod api;
pub mod dashboard;
pub mod live;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use meshgate_edge_agent::admin::{AdminAccess, AdminPeer, MeshStatus, require_admin};
use meshgate_edge_agent::pipeline::IngestHandle;
use tokio::sync::watch;

use crate::broker::LocalBroker;
use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::policy::PolicyCell;
use crate::reload::Reloader;

/// What the admin endpoint reads and acts on.
#[derive(Clone)]
pub struct AdminState {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The spool, uplinks and downlinks.
    pub mesh: Arc<MeshStatus>,
    /// The data directory, probed for writability.
    pub data_dir: PathBuf,
    /// The local broker: sessions, subscriptions, retained messages.
    pub broker: Arc<LocalBroker>,
    /// Who is connected.
    pub clients: Arc<Clients>,
    /// The policy in force (the admin's ACL, the mapping rules for `POST /api/publish`).
    pub policy: Arc<PolicyCell>,
    /// Into the pipeline, for `POST /api/publish`.
    pub ingest: IngestHandle,
    /// `POST /api/reload`.
    pub reloader: Arc<Reloader>,
    /// The admin token's gate.
    pub access: Arc<AdminAccess>,
    /// Whether `/metrics` is behind the gate.
    pub protect_metrics: bool,
    /// When the gateway started (`$SYS/broker/uptime`, the overview).
    pub started: Instant,
    /// Turns `true` at shutdown: the live feed ends, so the endpoint can stop.
    pub shutdown: watch::Receiver<bool>,
    /// Trace context and spans of operator publishes.
    pub traces: meshgate_edge_agent::trace::Tracing,
}

/// The whole admin router.
pub fn router(state: AdminState) -> Router {
    let gate = axum::middleware::from_fn_with_state(Arc::clone(&state.access), require_admin);
    let metrics = Arc::clone(&state.metrics);
    let common = meshgate_edge_agent::admin::common_routes(
        Arc::clone(&state.mesh),
        state.data_dir.clone(),
        Arc::clone(&state.access),
        state.protect_metrics,
        Arc::new(move || metrics.render()),
    );
    Router::new()
        .merge(dashboard::routes())
        .route("/api/openapi.json", get(api::openapi))
        .with_state(state.clone())
        .merge(common)
        .merge(api::routes(state.clone()).layer(gate.clone()))
        .merge(live::routes(state).layer(gate))
}

/// Serves the admin endpoint on `listener` (plain or TLS) until shutdown.
pub async fn run<L>(listener: L, state: AdminState)
where
    L: axum::serve::Listener<Addr = AdminPeer>,
    AdminPeer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let shutdown = state.shutdown.clone();
    meshgate_edge_agent::admin::serve(listener, router(state), shutdown).await;
}
