//! The MQTT accept loop.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::MqttContext;
use super::connection::serve;

/// Accepts connections until shutdown, then waits for every connection to finish its acknowledgements.
pub async fn run(listener: TcpListener, ctx: Arc<MqttContext>) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_connections.max(1)));
    let mut shutdown = ctx.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => break,
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
                let ctx = Arc::clone(&ctx);
                connections.spawn(async move {
                    serve(stream, ctx).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
