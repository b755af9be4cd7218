//! `$SYS/` topics as Mosquitto publishes them: every `broker.sys_interval_secs` (default 10) the gateway
//! publishes its figures as retained QoS 0 messages to local subscribers, so `mosquitto_sub -t '$SYS/#'` shows
//! them at once. Only devices whose ACL grants `$SYS` explicitly may read them ([`crate::acl`]); they are never
//! made into CloudEvents, never forwarded to the mesh and never saved with the retained messages.
//!
//! | topic | value |
//! |---|---|
//! | `$SYS/broker/version` | `meshgate VERSION` |
//! | `$SYS/broker/uptime` | `N seconds` |
//! | `$SYS/broker/clients/connected` | connections of every protocol |
//! | `$SYS/broker/clients/disconnected` | persistent sessions without a connection |
//! | `$SYS/broker/clients/total` | both |
//! | `$SYS/broker/messages/received`, `.../sent` | messages from devices, messages delivered to subscribers |
//! | `$SYS/broker/messages/stored` | messages queued for subscribers |
//! | `$SYS/broker/subscriptions/count`, `$SYS/broker/retained messages/count` | |
//! | `$SYS/broker/load/messages/received/{1min,5min,15min}`, `.../sent/...` | messages per minute, moving averages |
//! | `$SYS/broker/load/connections/{1min,5min,15min}` | connections accepted per minute, moving averages |

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_protocols::mqtt::QoS;
use tokio::sync::watch;

use crate::broker::local::now_ms;
use crate::broker::{LocalBroker, Message};
use crate::clients::Clients;
use crate::metrics::{Metrics, Protocol};

/// The moving-average windows of the load figures, in seconds.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// A per-minute rate averaged over three windows (as Mosquitto's load figures).
#[derive(Debug, Default)]
struct Load {
    last: Option<u64>,
    averages: [f64; 3],
}

impl Load {
    /// Takes the counter's value after `elapsed` seconds.
    fn update(&mut self, total: u64, elapsed: f64) {
        if let Some(last) = self.last.filter(|_| elapsed > 0.0) {
            let per_minute = total.saturating_sub(last) as f64 * 60.0 / elapsed;
            for (average, (_, window)) in self.averages.iter_mut().zip(WINDOWS) {
                let keep = (-elapsed / window).exp();
                *average = *average * keep + per_minute * (1.0 - keep);
            }
        }
        self.last = Some(total);
    }
}

/// What the publisher reads.
pub struct SysSources {
    /// The local broker (and where the figures go).
    pub broker: Arc<LocalBroker>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Who is connected.
    pub clients: Arc<Clients>,
    /// When the gateway started.
    pub started: Instant,
}

/// Publishes the `$SYS/` figures every `every` until `stop` turns true.
pub async fn run(sources: SysSources, every: Duration, mut stop: watch::Receiver<bool>) {
    let (mut received, mut sent, mut connections) = (Load::default(), Load::default(), Load::default());
    let mut last = Instant::now();
    loop {
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        let m = &sources.metrics;
        let messages_in: u64 = Protocol::ALL.iter().map(|p| m.messages_in(*p)).sum();
        let accepted: u64 = Protocol::ALL.iter().map(|p| m.connections_accepted(*p)).sum();
        let stats = sources.broker.read(|b| b.stats());
        let disconnected =
            sources.broker.read(|b| b.persistent_sessions().filter(|(_, s)| s.disconnected_at_ms.is_some()).count());
        received.update(messages_in, elapsed);
        sent.update(stats.delivered, elapsed);
        connections.update(accepted, elapsed);
        let connected = sources.clients.len();
        let mut figures: Vec<(String, String)> = vec![
            ("version".into(), format!("meshgate {}", env!("CARGO_PKG_VERSION"))),
            ("uptime".into(), format!("{} seconds", sources.started.elapsed().as_secs())),
            ("clients/connected".into(), connected.to_string()),
            ("clients/disconnected".into(), disconnected.to_string()),
            ("clients/total".into(), (connected + disconnected).to_string()),
            ("messages/received".into(), messages_in.to_string()),
            ("messages/sent".into(), stats.delivered.to_string()),
            ("messages/stored".into(), stats.queued.to_string()),
            ("subscriptions/count".into(), stats.subscriptions.to_string()),
            ("retained messages/count".into(), stats.retained.to_string()),
        ];
        for (name, load) in [("messages/received", &received), ("messages/sent", &sent), ("connections", &connections)]
        {
            for ((window, _), average) in WINDOWS.iter().zip(load.averages) {
                figures.push((format!("load/{name}/{window}"), format!("{average:.2}")));
            }
        }
        let now = now_ms();
        for (topic, value) in figures {
            let topic = format!("$SYS/broker/{topic}");
            let message =
                Message::new(&topic, value.as_bytes(), QoS::AtMostOnce, true, &Default::default(), "$SYS", now);
            sources.broker.publish(message);
        }
        tokio::select! {
            _ = crate::listener::stopped(&mut stop) => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_averages_move_toward_the_rate_per_minute() {
        let mut load = Load::default();
        load.update(0, 10.0);
        assert_eq!(load.averages, [0.0; 3], "the first look only starts the count");
        load.update(100, 10.0);
        // 100 messages in 10 s = 600 a minute; the 1-minute average moves farthest toward it.
        assert!(load.averages[0] > load.averages[1] && load.averages[1] > load.averages[2]);
        for _ in 0..200 {
            let total = load.last.unwrap_or(0) + 100;
            load.update(total, 10.0);
        }
        assert!((load.averages[0] - 600.0).abs() < 1.0, "{:?}", load.averages);
    }
}
