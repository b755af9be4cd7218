//! Wills: the message a client leaves at CONNECT, published when its connection ends without a normal
//! DISCONNECT (or with DISCONNECT 0x04), after the MQTT 5 Will Delay Interval unless the client is back by then,
//! or when the session ends if that comes first [MQTT-3.1.3-9] (the connection shortens the delay to the
//! session's expiry).
//! A will is a publish like any other: local subscribers get it and it becomes a CloudEvent for the mesh.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meshgate_protocols::mqtt::{Version, Will};

use super::MqttContext;
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

/// Publishes `will` for `client` now, or after its delay unless the client reconnected (or at shutdown, which
/// ends the session).
pub fn schedule(ctx: &Arc<MqttContext>, client: &str, version: Version, will: PendingWill) {
    let ctx = Arc::clone(ctx);
    let client = client.to_string();
    tokio::spawn(async move {
        if will.delay_secs > 0 {
            let mut stop = ctx.shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(will.delay_secs))) => {}
                _ = super::stopped(&mut stop) => {}
            }
            if ctx.shared.broker.is_attached(&client) {
                tracing::debug!(client, "client reconnected within its will delay; will dropped");
                return;
            }
        }
        publish(&ctx, &client, version, will.message).await;
    });
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
    match ctx.shared.normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), Utc::now()) {
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
