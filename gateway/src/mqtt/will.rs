//! Wills: the message a client leaves at CONNECT, published when its connection ends without a normal
//! DISCONNECT (or with DISCONNECT 0x04), after the MQTT 5 Will Delay Interval unless the client is back by then,
//! or when the session ends if that comes first [MQTT-3.1.3-9] (the connection shortens the delay to the
//! session's expiry).
//! A will is a publish like any other: local subscribers get it and it becomes a CloudEvent for the mesh.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meshgate_protocols::mqtt::{Version, Will};

use tokio::time::Instant;

use super::MqttContext;
use super::session::{Event, ServerSession};
use crate::broker::Message;
use crate::normalize::MqttInbound;

/// A will waiting for its connection to end.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The message.
    pub message: Message,
    /// MQTT 5 Will Delay Interval, in seconds.
    pub delay_secs: u32,
}

impl PendingWill {
    /// The will of a CONNECT from `client`, received at `now_ms`.
    pub fn from_connect(will: &Will<'_>, client: &str, now_ms: u64) -> PendingWill {
        let Will { topic, payload, qos, retain, properties } = will;
        let message = Message::new(topic, payload, *qos, *retain, properties, client, now_ms);
        PendingWill { message, delay_secs: properties.will_delay_interval.unwrap_or(0) }
    }
}

/// Publishes the will `session` (a connection that ended) holds for `client`: now, or once the session's timer
/// says its delay is over unless the client reconnected by then, or at shutdown, which ends the session. The
/// session decided whether there is a will and its delay ([`ServerSession`]); this waits on its clock.
pub fn schedule(ctx: &Arc<MqttContext>, client: &str, mut session: ServerSession, started: Instant) {
    let version = session.version();
    if let Some(will) = due_will(&mut session) {
        let (ctx, client) = (Arc::clone(ctx), client.to_string());
        tokio::spawn(async move { publish(&ctx, &client, version, will.message).await });
        return;
    }
    let Some(due) = session.poll_timeout() else { return };
    let (ctx, client) = (Arc::clone(ctx), client.to_string());
    tokio::spawn(async move {
        let mut stop = ctx.shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(started + Duration::from_millis(due)) => session.handle_timeout(due),
            _ = super::stopped(&mut stop) => session.expire_will(),
        }
        let Some(will) = due_will(&mut session) else { return };
        if ctx.shared.broker.is_attached(&client) {
            tracing::debug!(client, "client reconnected within its will delay; will dropped");
            return;
        }
        publish(&ctx, &client, version, will.message).await;
    });
}

/// The will, if the session says it is due.
fn due_will(session: &mut ServerSession) -> Option<PendingWill> {
    while let Some(event) = session.poll_event() {
        if let Event::WillDue(will) = event {
            return Some(will);
        }
    }
    None
}

/// Publishes a will: into the pipeline as a CloudEvent (unconfirmed, like QoS 0) and to local subscribers.
async fn publish(ctx: &MqttContext, client: &str, version: Version, mut message: Message) {
    let user_properties = message.properties.user_properties();
    let properties = message.properties.to_properties(&user_properties);
    let inbound = MqttInbound {
        version,
        client_id: client,
        topic: &message.topic,
        properties: &properties,
        payload: &message.payload,
    };
    match ctx.shared.policy.load().normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), Utc::now()) {
        Ok(n) => {
            message.event = Some(crate::broker::message::EventIdentity::of(&n.event));
            if ctx.shared.ingest.submit_unconfirmed(n.event, n.route, n.when_full).await.is_err() {
                tracing::warn!(client, "pipeline closed; will not forwarded to the mesh");
            }
        }
        Err(e) => tracing::warn!(client, error = %e, "will is not a valid CloudEvent; published locally only"),
    }
    tracing::debug!(client, topic = %message.topic, "will published");
    ctx.shared.broker.publish(message);
}
