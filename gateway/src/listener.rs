//! What every device listener shares: the gateway's parts a connection works with ([`Shared`]), and the accept
//! loop, bounded by `max_connections`, stopping at shutdown and then waiting for each connection to send the
//! acknowledgements it owes.

use std::future::Future;
use std::sync::Arc;

use meshgate_edge_agent::pipeline::IngestHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::broker::LocalBroker;
use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::policy::PolicyCell;

/// What the transport tells about a connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its address (none for transports without one).
    pub addr: Option<std::net::SocketAddr>,
    /// The subject of the client certificate it proved (TLS with mTLS): a device that brings no credentials is
    /// that device.
    pub identity: Option<String>,
}

impl Peer {
    /// The peer of a plain TCP connection.
    pub fn of(stream: &TcpStream) -> Peer {
        Peer { addr: stream.peer_addr().ok(), identity: None }
    }

    /// Where a login from this peer over `protocol` comes from.
    pub fn login(&self, protocol: crate::metrics::Protocol) -> crate::auth::LoginFrom {
        crate::auth::LoginFrom { addr: self.addr.map(|a| a.ip()), protocol }
    }
}

/// The gateway's parts every device connection works with, whatever its protocol.
#[derive(Clone)]
pub struct Shared {
    /// Device users, rules and limits in force (replaced by a reload).
    pub policy: Arc<PolicyCell>,
    /// Who is connected: for the admin API, and to kick a connection.
    pub clients: Arc<Clients>,
    /// Into the pipeline.
    pub ingest: IngestHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The local broker.
    pub broker: Arc<LocalBroker>,
    /// The per-user message-rate buckets.
    pub user_rates: Arc<crate::limits::UserRates>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Trace context and spans of the events devices publish (see `meshgate_edge_agent::trace`).
    pub traces: meshgate_edge_agent::trace::Tracing,
}

/// Accepts connections until shutdown and serves each with `serve` on its own task; at shutdown stops accepting
/// and waits for the connections to finish.
pub async fn run<F, Fut>(listener: TcpListener, max_connections: usize, mut shutdown: watch::Receiver<bool>, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "connection limit reached; closing the new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let connection = serve(stream);
                connections.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `shutdown` turns `true` (or its sender is gone). Holds no watch guard across the wait's end.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
