//! A RabbitMQ downlink: a durable queue bound to a pattern on the mesh's exchange, consumed with manual
//! acknowledgements. Deliveries are taken in batches (what RabbitMQ has already sent, up to `prefetch`): each event
//! is judged and handed to the local broker, the batch is committed, and only then is it acknowledged to RabbitMQ
//! (one `basic.ack` with `multiple`). A message that is not a CloudEvent, or has no valid topic, is rejected
//! without requeue (RabbitMQ dead-letters it if the queue has a dead-letter exchange); an expired one is
//! acknowledged and dropped. A lost connection, or a failed commit, leaves the batch unacknowledged: RabbitMQ
//! redelivers it, so delivery to devices is at least once.

use std::sync::Arc;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use meshgate_protocols::cloudevents::decode_amqp;
use tokio::sync::watch;

use super::config::AmqpDownlinkConfig;
use super::{DownlinkStats, LocalDelivery};
use crate::uplink::rabbitmq::declare_exchange;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the consumer was cancelled")]
    Cancelled,
    #[error("the local broker could not commit: {0}")]
    Commit(std::io::Error),
}

/// Consumes until `stop`, reconnecting with capped exponential backoff.
pub async fn run(
    config: AmqpDownlinkConfig,
    target: Arc<dyn LocalDelivery>,
    stats: Arc<DownlinkStats>,
    stop: watch::Receiver<bool>,
) {
    let endpoint = crate::config::without_password(&config.uri);
    super::reconnecting(&config.name, &endpoint, config.reconnect_max_ms, &stats, stop, || async {
        match consume(&config, target.as_ref(), &stats).await {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        }
    })
    .await;
}

/// One connection: declare, bind, consume in batches.
async fn consume(
    config: &AmqpDownlinkConfig,
    target: &dyn LocalDelivery,
    stats: &DownlinkStats,
) -> Result<(), LinkError> {
    let conn = Connection::connect(&config.uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    declare_exchange(&ch, &config.exchange, &config.exchange_type, config.declare).await?;
    let queue = config.queue();
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(ShortString::from(queue.as_str()), durable, FieldTable::default()).await?;
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(config.exchange.as_str()),
        ShortString::from(config.binding.as_str()),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(config.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("meshgate-{}", config.name);
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    stats.count(&stats.connects);
    tracing::info!(downlink = %config.name, queue = %queue, exchange = %config.exchange, binding = %config.binding, "consuming commands from the mesh");
    let mut batch: Vec<Delivery> = Vec::with_capacity(usize::from(config.prefetch));
    loop {
        let Some(first) = consumer.next().await else { return Err(LinkError::Cancelled) };
        batch.push(first?);
        // What RabbitMQ has sent already joins the batch (at most `prefetch` are in flight).
        while batch.len() < usize::from(config.prefetch) {
            match futures::FutureExt::now_or_never(consumer.next()) {
                Some(Some(delivery)) => batch.push(delivery?),
                Some(None) => return Err(LinkError::Cancelled),
                None => break,
            }
        }
        let mut last_delivered = None;
        for delivery in batch.drain(..) {
            if handle(config, target, stats, &delivery) {
                last_delivered = Some(delivery);
            } else {
                delivery.acker.reject(BasicRejectOptions { requeue: false }).await?;
            }
        }
        if let Some(last) = last_delivered {
            target.commit().await.map_err(LinkError::Commit)?;
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
}

/// Decodes, judges and delivers one message; `false` when it is refused (to be rejected).
fn handle(config: &AmqpDownlinkConfig, target: &dyn LocalDelivery, stats: &DownlinkStats, delivery: &Delivery) -> bool {
    let refuse = |why: &str| {
        super::refused(&config.name, delivery.routing_key.as_str(), why, stats);
        false
    };
    let properties = &delivery.properties;
    let headers = match crate::normalize::cloudevent_headers(properties.headers().as_ref()) {
        Ok(h) => h,
        Err(e) => return refuse(&e),
    };
    let content_type = properties.content_type().as_ref().map(|c| c.as_str());
    let decoded = decode_amqp(content_type, headers.iter().map(|(k, v)| (k.as_str(), v)), &delivery.data);
    match decoded {
        Ok(Some(mut event)) => super::deliver(&mut event, &config.name, &config.topic, target, stats),
        Ok(None) => refuse("not a CloudEvent (no cloudEvents_ headers, not application/cloudevents+json)"),
        Err(e) => refuse(&e.to_string()),
    }
}
