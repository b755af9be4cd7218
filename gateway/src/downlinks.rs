//! Cloud-to-device: the `[[downlinks]]` started with the gateway, delivering into the local broker.
//!
//! Each event from the mesh becomes a structured CloudEvent (`application/cloudevents+json`) published at QoS 1
//! by the gateway itself, so MQTT (3.1.1 and 5), AMQP and WebSocket devices subscribed to its topic receive it, and
//! persistent sessions of offline devices queue it (bounded by `broker.max_queued_messages`). A batch is
//! committed through the spool: each message becomes a broker record (see [`crate::broker::durable`]), the commit
//! routes it, and the downlink acknowledges the batch to the mesh once every record of it is durable. So a command
//! for an offline device is in its session after any crash, without rewriting any session.

use std::sync::{Arc, Mutex};

use meshgate_edge_agent::CloudEvent;
use meshgate_edge_agent::downlink::config::DownlinkConfig;
use meshgate_edge_agent::downlink::{DownlinkStats, LocalDelivery, ORIGIN_EXTENSION, eventmesh_tcp, rabbitmq};
use meshgate_edge_agent::pipeline::IngestHandle;
use meshgate_edge_agent::spool::StoredRecord;
use meshgate_edge_agent::trace::{TraceSpan, Tracing};
use meshgate_edge_agent::uplink::BoxFuture;
use meshgate_protocols::cloudevents::ExtensionValue;
use meshgate_protocols::mqtt::QoS;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Message;
use crate::broker::durable::BrokerRecord;
use crate::broker::local::now_ms;
use crate::broker::message::EventIdentity;

/// The local broker as a downlink's destination, through the spool.
pub struct BrokerDelivery {
    ingest: IngestHandle,
    traces: Tracing,
    /// Broker records delivered since the last commit, in order, and the `deliver` spans ending with the commit.
    batch: Mutex<(Vec<StoredRecord>, Vec<TraceSpan>)>,
}

impl LocalDelivery for BrokerDelivery {
    fn deliver(&self, topic: &str, event: &CloudEvent, expires_at_ms: Option<u64>) {
        // Traced, the devices get the event with the gateway's `deliver` span as its parent.
        let mut traced = None;
        let mut span = None;
        if self.traces.is_on() {
            let mut copy = event.clone();
            let downlink = match copy.extensions.get(ORIGIN_EXTENSION) {
                Some(ExtensionValue::String(origin)) => origin.trim_start_matches("mesh:").to_string(),
                _ => String::new(),
            };
            span = self.traces.deliver(&mut copy, &downlink, topic);
            traced = Some(copy);
        }
        let event = traced.as_ref().unwrap_or(event);
        let json = event.to_json_string();
        let mut message =
            Message::new(topic, json.as_bytes(), QoS::AtLeastOnce, false, &Default::default(), "", now_ms());
        message.properties.content_type = Some("application/cloudevents+json".into());
        message.carry_trace(event);
        message.expires_at_ms = expires_at_ms;
        // Every local delivery carries the command's own identity (AMQP message-id, the WebSocket copy).
        message.event = Some(EventIdentity::of(event));
        let record = BrokerRecord { message: Some(message), ..BrokerRecord::default() }.into_stored(&event.id);
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        batch.0.push(record);
        batch.1.extend(span);
    }

    fn commit(&self) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(async move {
            let (records, spans) = std::mem::take(&mut *self.batch.lock().unwrap_or_else(|p| p.into_inner()));
            let mut tickets = Vec::with_capacity(records.len());
            for record in records {
                tickets.push(self.ingest.submit_local(record).await.map_err(std::io::Error::other)?);
            }
            let mut durable = self.ingest.durable();
            for ticket in tickets {
                durable.wait(ticket).await.map_err(std::io::Error::other)?;
            }
            // In the local broker, durably: each `deliver` span ends.
            drop(spans);
            Ok(())
        })
    }
}

/// The downlinks started with the gateway.
pub struct Running {
    /// One task per downlink; each ends when the stop signal is raised.
    pub tasks: Vec<JoinHandle<()>>,
    /// Each downlink's counters by name, for `/metrics`.
    pub stats: Vec<(Arc<str>, Arc<DownlinkStats>)>,
}

/// Starts every downlink, delivering through `ingest` to the broker (which takes the spool's broker records).
pub fn start(
    configs: &[DownlinkConfig],
    ingest: &IngestHandle,
    traces: &Tracing,
    stop: &watch::Receiver<bool>,
) -> Running {
    let target: Arc<dyn LocalDelivery> = Arc::new(BrokerDelivery {
        ingest: ingest.clone(),
        traces: traces.clone(),
        batch: Mutex::new((Vec::new(), Vec::new())),
    });
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
