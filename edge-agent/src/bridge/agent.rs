//! The `edge-agent` process: the pipeline (spool, forwarders, uplinks) started from the configuration, one task
//! per bridge, and an ordered shutdown (stop taking messages, then drain the pipeline within the grace period).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::config::AgentConfig;
use super::source::{self, BridgeContext};
use crate::admin::{MeshStatus, PlainListener};
use crate::normalize::Normalizer;
use crate::pipeline::{Pipeline, StartError};
use crate::trace::Tracing;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory could not be created.
    #[error("gateway.data_dir: cannot create {0}: {1}")]
    DataDir(String, std::io::Error),
    /// A bridge's TLS settings could not be loaded.
    #[error("bridges[{0}].{1}: {2}")]
    Tls(usize, String, String),
    /// The mapping rules did not compile.
    #[error("rules: {0}")]
    Rules(String),
    /// The SIGHUP handler could not be installed.
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    /// The admin endpoint could not listen.
    #[error("admin.bind: cannot listen on {0}: {1}")]
    Admin(String, std::io::Error),
    /// The trace exporter could not be built.
    #[error("{0}")]
    Tracing(String),
    /// The pipeline did not start.
    #[error(transparent)]
    Pipeline(#[from] StartError),
}

/// Runs the bridges until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // SIGHUP's default action ends the process: an operator used to reloading brokers with it must not lose the
    // agent's bridges. The agent has no hot reload; the signal is logged.
    let mut hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(AgentError::Signal)?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP ignored: edge-agent has no hot reload; restart it to apply a changed file");
        }
    });
    let data_dir = config.gateway.data_dir.clone();
    tokio::fs::create_dir_all(&data_dir).await.map_err(|e| AgentError::DataDir(data_dir.display().to_string(), e))?;
    let mut tls = Vec::new();
    for (i, bridge) in config.bridges.iter().enumerate() {
        let client = bridge.tls.as_ref().map(crate::client_tls::client_config).transpose();
        tls.push(client.map_err(|(key, problem)| AgentError::Tls(i, key, problem))?);
    }
    let normalizer = Arc::new(Normalizer::new(&config.gateway.id, &config.rules).map_err(AgentError::Rules)?);
    let traces = Tracing::start(&config.tracing, "edge-agent").map_err(AgentError::Tracing)?;
    let (pipeline, ingest) =
        Pipeline::start_configured(&data_dir, &config.uplinks(), &config.spool, config.forwarder, &[], &traces).await?;
    let (stop_tx, stop) = watch::channel(false);
    let admin = match &config.admin {
        Some(admin) => {
            let listener = tokio::net::TcpListener::bind(admin.bind)
                .await
                .map_err(|e| AgentError::Admin(admin.bind.to_string(), e))?;
            let mesh = MeshStatus::new(pipeline.spool().clone(), config.spool.clone(), pipeline.stats(), Vec::new());
            let router = crate::admin::agent_router(admin, Arc::new(mesh), data_dir.clone());
            if let Ok(addr) = listener.local_addr() {
                println!("edge-agent: admin listening on {addr}");
            }
            Some(tokio::spawn(crate::admin::serve(PlainListener(listener), router, stop.clone())))
        }
        None => None,
    };
    let cx = BridgeContext { normalizer, ingest, stop, traces: traces.clone() };
    let bridges: Vec<_> = config
        .bridges
        .iter()
        .zip(tls)
        .map(|(bridge, tls)| tokio::spawn(source::run(bridge.clone(), tls, cx.clone())))
        .collect();
    // The bridges hold the only ingest handles: once they end, the pipeline can drain.
    drop(cx);
    tracing::info!(gateway = %config.gateway.id, bridges = bridges.len(), data_dir = %data_dir.display(), "edge-agent started");
    shutdown.await;
    tracing::info!("shutting down: closing the bridges, then draining the pipeline");
    let _ = stop_tx.send(true);
    for bridge in bridges {
        let _ = bridge.await;
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let grace = Duration::from_secs(config.gateway.shutdown_grace_secs);
    if tokio::time::timeout(grace, pipeline.shutdown()).await.is_err() {
        tracing::warn!("forwarders did not catch up within the grace period; the rest stays in the spool");
    }
    traces.shutdown().await;
    tracing::info!("edge-agent stopped");
    Ok(())
}
