//! Downlinks: events from the mesh to the edge's devices (commands, configuration, firmware notices).
//!
//! A downlink consumes events from a mesh runtime and hands each to a [`LocalDelivery`] (the gateway's local MQTT
//! broker, which MQTT, AMQP and WebSocket devices subscribe through) on a topic rendered from the event, then
//! commits the delivery (so queued messages for offline devices survive a restart) and only then acknowledges to
//! the mesh. Every event is checked first ([`judge`]):
//!
//! - it is marked with the [`ORIGIN_EXTENSION`] (`meshgateorigin = "mesh:{downlink}"`): the gateway never sends
//!   an event so marked back up (a device that republishes a command it received does not make a loop);
//! - an event whose `ttl` extension (milliseconds, EventMesh's convention, counted from its `time` or, without
//!   one, from its arrival) has run out is dropped and counted; one still alive carries the rest of its life into
//!   the broker as the message's expiry, so a device that comes back too late does not get it either;
//! - the topic must render to a valid MQTT topic name, or the event is refused as unroutable.
//!
//! The mesh is acknowledged only after the commit, so a gateway killed between delivery and acknowledgement gets
//! the events again: delivery to devices is at least once, and the event id stays the same.
//!
//! The rooms: [`config`] reads `[[downlinks]]`, [`rabbitmq`] consumes a queue bound to a pattern on a RabbitMQ
//! exchange, and [`eventmesh_tcp`] subscribes to topics of an Apache EventMesh runtime over its TCP protocol.

pub mod config;
pub mod eventmesh_tcp;
pub mod rabbitmq;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::CloudEvent;
use crate::uplink::BoxFuture;

/// The extension that marks an event as come from the mesh, naming the downlink (`mesh:{name}`).
pub const ORIGIN_EXTENSION: &str = "meshgateorigin";

/// Where a downlink's events go: the gateway's local broker.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Hands `event` (structured mode, QoS 1) to the devices subscribed to `topic`, queued for those offline with
    /// persistent sessions; `expires_at_ms` (ms since the Unix epoch) ends its life in the queues.
    fn deliver(&self, topic: &str, event: &CloudEvent, expires_at_ms: Option<u64>);

    /// Makes every delivery so far survive a restart; the mesh is acknowledged only after this returned `Ok`.
    fn commit(&self) -> BoxFuture<'_, std::io::Result<()>>;
}

/// A downlink's counters, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct DownlinkStats {
    /// Events handed to the local broker.
    pub delivered: AtomicU64,
    /// Events dropped because their `ttl` had run out.
    pub expired: AtomicU64,
    /// Events refused: not a CloudEvent, or no valid topic for them.
    pub refused: AtomicU64,
    /// Connections (re)established to the mesh.
    pub connects: AtomicU64,
}

impl DownlinkStats {
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `session` until `stop`, and again after each end (returning why) with capped exponential backoff from
/// 100 ms to `reconnect_max_ms`; a session that connected (counted in `stats.connects`) starts the backoff over.
pub(crate) async fn reconnecting<F, Fut>(
    name: &str,
    endpoint: &str,
    reconnect_max_ms: u64,
    stats: &DownlinkStats,
    mut stop: watch::Receiver<bool>,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = String>,
{
    let backoff = crate::forwarder::ForwarderConfig {
        max_batch: 1,
        backoff_initial_ms: 100,
        backoff_max_ms: reconnect_max_ms,
        ..Default::default()
    };
    let mut attempt = 0u32;
    loop {
        let connects = stats.connects.load(Ordering::Relaxed);
        let why = tokio::select! {
            _ = stop.changed() => return,
            why = session() => why,
        };
        if stats.connects.load(Ordering::Relaxed) != connects {
            attempt = 0;
        }
        let wait = backoff.backoff(attempt);
        tracing::warn!(downlink = %name, endpoint, error = %why, retry_in = ?wait, "downlink connection ended");
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Judges an event from downlink `name` ([`judge`]), delivers it if it is for a device, and counts the outcome.
/// `false` when it is refused (a RabbitMQ downlink rejects it).
pub(crate) fn deliver(
    event: &mut CloudEvent,
    name: &str,
    topic_template: &str,
    target: &dyn LocalDelivery,
    stats: &DownlinkStats,
) -> bool {
    match judge(event, name, topic_template, crate::spool::record::now_ms()) {
        Verdict::Deliver { topic, expires_at_ms } => {
            target.deliver(&topic, event, expires_at_ms);
            stats.count(&stats.delivered);
            true
        }
        Verdict::Expired => {
            tracing::debug!(downlink = %name, event = %event.id, "dropped an expired event");
            stats.count(&stats.expired);
            true
        }
        Verdict::Unroutable(why) => {
            refused(name, &event.id, &why, stats);
            false
        }
    }
}

/// Logs and counts an event refused by downlink `name`.
pub(crate) fn refused(name: &str, what: &str, why: &str, stats: &DownlinkStats) {
    tracing::warn!(downlink = %name, what, why, "refused an event from the mesh");
    stats.count(&stats.refused);
}

/// What becomes of one event from the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it on `topic`, expiring at `expires_at_ms` if it has a `ttl`.
    Deliver {
        /// The local topic.
        topic: String,
        /// When it expires (ms since the Unix epoch).
        expires_at_ms: Option<u64>,
    },
    /// Its `ttl` ran out before it arrived: dropped.
    Expired,
    /// No valid topic: refused, with why.
    Unroutable(String),
}

/// Marks `event` as come from downlink `name`, checks its `ttl` at `now_ms`, and renders its topic from
/// `topic_template` (`{subject}`, `{type}`, `{source}`, `{id}` and extensions such as `{deviceid}`).
pub fn judge(event: &mut CloudEvent, name: &str, topic_template: &str, now_ms: u64) -> Verdict {
    event.extensions.insert(ORIGIN_EXTENSION.into(), format!("mesh:{name}").as_str().into());
    let expires_at_ms = match expiry_ms(event, now_ms) {
        Some(at) if at <= now_ms => return Verdict::Expired,
        at => at,
    };
    let topic = crate::uplink::template::render(topic_template, event, None);
    // An empty level is an attribute the template names and the event lacks: a command for nobody.
    if topic.split('/').any(str::is_empty) {
        return Verdict::Unroutable(format!("the topic template `{topic_template}` renders `{topic}`"));
    }
    if let Err(e) = meshgate_protocols::mqtt::topic::validate_name(&topic) {
        return Verdict::Unroutable(format!("`{topic}` is not a topic name: {e:?}"));
    }
    Verdict::Deliver { topic, expires_at_ms }
}

/// When the event's `ttl` (milliseconds) runs out: counted from its `time`, or from `now_ms` without one.
fn expiry_ms(event: &CloudEvent, now_ms: u64) -> Option<u64> {
    let ttl: u64 = event.extensions.get("ttl")?.to_canonical_string().trim().parse().ok()?;
    let start = event
        .time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .unwrap_or(now_ms);
    Some(start.saturating_add(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extensions: &[(&str, &str)], time: Option<&str>) -> CloudEvent {
        let mut e = CloudEvent {
            id: "c-1".into(),
            source: "/cloud".into(),
            ty: "com.example.command".into(),
            subject: Some("blink".into()),
            time: time.map(String::from),
            ..CloudEvent::default()
        };
        for (k, v) in extensions {
            e.extensions.insert((*k).into(), (*v).into());
        }
        e
    }

    #[test]
    fn events_are_marked_routed_and_expired_by_their_ttl() {
        let now = 1_800_000_000_000;
        let mut e = event(&[("deviceid", "d1"), ("ttl", "5000")], None);
        let v = judge(&mut e, "cmd", "devices/{deviceid}/commands/{subject}", now);
        assert_eq!(v, Verdict::Deliver { topic: "devices/d1/commands/blink".into(), expires_at_ms: Some(now + 5000) });
        assert_eq!(e.extensions.get(ORIGIN_EXTENSION).map(|v| v.to_canonical_string()).as_deref(), Some("mesh:cmd"));
        // Sent at 2027-01-15T08:00:00Z with a 1 s ttl, arriving an hour later: expired.
        let mut e = event(&[("deviceid", "d1"), ("ttl", "1000")], Some("2027-01-15T08:00:00Z"));
        assert_eq!(judge(&mut e, "cmd", "devices/{deviceid}", 1_800_000_000_000 + 3_600_000), Verdict::Expired);
        let mut e = event(&[("deviceid", "d2")], None);
        let v = judge(&mut e, "cmd", "devices/{deviceid}/x", now);
        assert_eq!(v, Verdict::Deliver { topic: "devices/d2/x".into(), expires_at_ms: None });
    }

    #[test]
    fn a_topic_that_is_not_a_name_is_unroutable() {
        let mut e = event(&[("deviceid", "+")], None);
        assert!(matches!(judge(&mut e, "cmd", "devices/{deviceid}", 0), Verdict::Unroutable(_)));
        let mut e = event(&[], None);
        assert!(matches!(judge(&mut e, "cmd", "{deviceid}", 0), Verdict::Unroutable(_)));
        assert!(matches!(judge(&mut e, "cmd", "devices/{deviceid}/x", 0), Verdict::Unroutable(_)));
    }
}
