//! The RabbitMQ uplink: CloudEvents over AMQP 0-9-1 with publisher confirms, on lapin.
//!
//! A batch counts as delivered only when the broker confirmed every message of it (basic.ack under
//! confirm.select). Messages are persistent (delivery mode 2) and carry the event id as `message-id`. With
//! `mandatory`, an unroutable event comes back and follows `on_return`: retry the batch (default) or append the
//! event to a dead-letter file. Any connection or channel error drops the connection; the forwarder retries the
//! batch with backoff, and the next attempt reconnects (and re-declares). Delivery is at least once: a batch
//! retried after a partial confirm resends events that keep their `id`, so consumers can deduplicate.

pub mod config;
pub mod encoder;

use std::path::Path;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use self::config::{AmqpUplinkConfig, OnReturn};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::{BoxFuture, Uplink, UplinkError, UplinkStats};
use crate::CloudEvent;

/// Publishes events to a RabbitMQ exchange.
pub struct RabbitMqUplink {
    config: AmqpUplinkConfig,
    dead_letter: DeadLetterFile,
    link: Option<(Connection, Channel)>,
    stats: Arc<UplinkStats>,
}

fn amqp_error(e: lapin::Error) -> UplinkError {
    UplinkError::Broker(e.to_string())
}

/// Declares exchange `name` of `kind` (durable) or, without `declare`, only checks that it exists: a missing
/// exchange is then a clear 404 at connection time rather than on every publish.
pub(crate) async fn declare_exchange(ch: &Channel, name: &str, kind: &str, declare: bool) -> lapin::Result<()> {
    let kind = match kind {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    };
    let options = if declare {
        ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() }
    } else {
        ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() }
    };
    ch.exchange_declare(ShortString::from(name), kind, options, FieldTable::default()).await
}

impl RabbitMqUplink {
    /// An uplink for `config`; it connects on first use. Relative paths resolve under `data_dir`.
    pub fn new(config: AmqpUplinkConfig, data_dir: &Path, stats: Arc<UplinkStats>) -> RabbitMqUplink {
        let dead_letter = DeadLetterFile::new(&data_dir.join(&config.dead_letter_path));
        RabbitMqUplink { config, dead_letter, link: None, stats }
    }

    /// The channel, connecting, enabling confirms and declaring (or checking) the exchange when needed.
    async fn channel(&mut self) -> Result<Channel, UplinkError> {
        if let Some((conn, ch)) = &self.link
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        self.link = None;
        let conn = Connection::connect(&self.config.uri, ConnectionProperties::default()).await.map_err(amqp_error)?;
        let ch = conn.create_channel().await.map_err(amqp_error)?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp_error)?;
        declare_exchange(&ch, &self.config.exchange, &self.config.exchange_type, self.config.declare)
            .await
            .map_err(amqp_error)?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(uplink = %self.config.name, broker = %crate::config::without_password(&self.config.uri), exchange = %self.config.exchange, "connected to the AMQP broker");
        self.link = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn publish(&mut self, batch: &[&CloudEvent]) -> Result<(), UplinkError> {
        let ch = self.channel().await?;
        let options = BasicPublishOptions { mandatory: self.config.mandatory, ..BasicPublishOptions::default() };
        let exchange = ShortString::from(self.config.exchange.as_str());
        let mut pending = Vec::with_capacity(batch.len());
        for event in batch {
            let encoded = match encoder::encode(event, &self.config) {
                Ok(encoded) => encoded,
                Err(reason) => {
                    let why = DeadLetter { uplink: &self.config.name, endpoint: None, code: None, reason: &reason };
                    self.dead_letter.set_aside(event, &why, &self.stats).await?;
                    continue;
                }
            };
            let confirm = ch
                .basic_publish(
                    exchange.clone(),
                    ShortString::from(encoded.routing_key),
                    options,
                    &encoded.body,
                    encoded.properties,
                )
                .await
                .map_err(amqp_error)?;
            pending.push((event, confirm));
        }
        for (event, confirm) in pending {
            let confirmation = confirm.await.map_err(amqp_error)?;
            if confirmation.is_nack() {
                return Err(UplinkError::Refused(format!("broker nacked event {}", event.id)));
            }
            if let Some(returned) = confirmation.take_message() {
                self.stats.returned.fetch_add(1, Ordering::Relaxed);
                let why = format!("{} {}", returned.reply_code, returned.reply_text);
                match self.config.on_return {
                    OnReturn::Retry => {
                        return Err(UplinkError::Refused(format!("event {} returned as unroutable: {why}", event.id)));
                    }
                    OnReturn::DeadLetter => {
                        tracing::warn!(uplink = %self.config.name, event = %event.id, why, "unroutable; dead-lettered");
                        let code = Some(i64::from(returned.reply_code));
                        let why = DeadLetter { uplink: &self.config.name, endpoint: None, code, reason: &why };
                        self.dead_letter.append(event, &why)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Uplink for RabbitMqUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move {
            let limit = std::time::Duration::from_millis(self.config.timeout_ms.max(1));
            let result = match tokio::time::timeout(limit, self.publish(batch)).await {
                Ok(result) => result,
                Err(_) => Err(UplinkError::Broker(format!("no answer from the broker within {limit:?}"))),
            };
            if let Err(e) = &result {
                tracing::warn!(uplink = %self.config.name, broker = %crate::config::without_password(&self.config.uri), error = %e, "AMQP publish failed");
                if matches!(e, UplinkError::Broker(_)) {
                    // Start from a fresh connection next time.
                    self.link = None;
                }
            }
            result
        })
    }
}
