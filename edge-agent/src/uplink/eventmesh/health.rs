//! Active health checks: every `health_check_interval_ms`, each endpoint is probed (gRPC heartbeat, HTTP request,
//! TCP heartbeat on its session). An answer re-admits an ejected endpoint; failures count towards ejection like
//! failed publishes do, so a runtime that dies while idle is ejected before traffic finds out.

use std::sync::Weak;
use std::time::Duration;

use super::Shared;
use crate::spool::record::now_ms;

/// Starts the checker; it stops by itself once the uplink is dropped.
pub(crate) fn spawn(shared: Weak<Shared>) {
    tokio::spawn(async move {
        loop {
            let interval = match shared.upgrade() {
                Some(s) => Duration::from_millis(s.config.health_check_interval_ms.max(50)),
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(s) = shared.upgrade() else { return };
            let timeout = Duration::from_millis(s.config.connect_timeout_ms.max(1));
            let probes = s.transports.iter().enumerate().map(|(i, t)| {
                let s = &s;
                async move {
                    match tokio::time::timeout(timeout, t.probe()).await {
                        Ok(Ok(())) => s.balancer.succeeded(i, now_ms()),
                        Ok(Err(e)) => {
                            s.balancer.failed(i, &format!("health check: {e}"), now_ms());
                        }
                        Err(_) => {
                            s.balancer.failed(i, "health check timed out", now_ms());
                        }
                    }
                }
            });
            futures::future::join_all(probes).await;
        }
    });
}
