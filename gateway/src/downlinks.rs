//! Cloud-to-device: the `[[downlinks]]` started with the gateway, delivering into the local broker.
//!
//! Each event from the mesh becomes a structured CloudEvent (`application/cloudevents+json`) published at QoS 1
//! by the gateway itself, so MQTT (3.1.1 and 5), AMQP and WebSocket devices subscribed to its topic receive it, and
//! persistent sessions of offline devices queue it (bounded by `broker.max_queued_messages`). A batch is
//! committed by writing the persistent sessions before the downlink acknowledges it to the mesh.

use std::sync::Arc;

use meshgate_edge_agent::CloudEvent;
use meshgate_edge_agent::downlink::config::DownlinkConfig;
use meshgate_edge_agent::downlink::{DownlinkStats, LocalDelivery, eventmesh_tcp, rabbitmq};
use meshgate_edge_agent::uplink::BoxFuture;
use meshgate_protocols::mqtt::QoS;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::local::now_ms;
use crate::broker::message::EventIdentity;
use crate::broker::{LocalBroker, Message};

/// The local broker as a downlink's destination.
pub struct BrokerDelivery {
    broker: Arc<LocalBroker>,
}

impl LocalDelivery for BrokerDelivery {
    fn deliver(&self, topic: &str, event: &CloudEvent, expires_at_ms: Option<u64>) {
        let json = event.to_json_string();
        let mut message =
            Message::new(topic, json.as_bytes(), QoS::AtLeastOnce, false, &Default::default(), "", now_ms());
        message.properties.content_type = Some("application/cloudevents+json".into());
        message.expires_at_ms = expires_at_ms;
        // Every local delivery carries the command's own identity (AMQP message-id, the WebSocket copy).
        message.event = Some(EventIdentity::of(event));
        self.broker.publish(message);
    }

    fn commit(&self) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.broker.persist_sessions())
    }
}

/// The downlinks started with the gateway.
pub struct Running {
    /// One task per downlink; each ends when the stop signal is raised.
    pub tasks: Vec<JoinHandle<()>>,
    /// Each downlink's counters by name, for `/metrics`.
    pub stats: Vec<(Arc<str>, Arc<DownlinkStats>)>,
}

/// Starts every downlink.
pub fn start(configs: &[DownlinkConfig], broker: &Arc<LocalBroker>, stop: &watch::Receiver<bool>) -> Running {
    let target: Arc<dyn LocalDelivery> = Arc::new(BrokerDelivery { broker: Arc::clone(broker) });
    let mut tasks = Vec::new();
    let mut stats = Vec::new();
    for config in configs {
        let counters = Arc::new(DownlinkStats::default());
        stats.push((Arc::from(config.name()), Arc::clone(&counters)));
        let task = match config {
            DownlinkConfig::Amqp(c) => {
                tokio::spawn(rabbitmq::run(c.clone(), Arc::clone(&target), counters, stop.clone()))
            }
            DownlinkConfig::EventMeshTcp(c) => {
                tokio::spawn(eventmesh_tcp::run(c.clone(), Arc::clone(&target), counters, stop.clone()))
            }
        };
        tasks.push(task);
    }
    Running { tasks, stats }
}
