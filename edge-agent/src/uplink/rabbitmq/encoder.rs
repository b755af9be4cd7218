//! CloudEvent → AMQP 0-9-1 message: routing key from a template, the CloudEvents AMQP binding from
//! `meshgate-protocols`, persistent delivery.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use meshgate_protocols::cloudevents::{AmqpMessage, HeaderValue, encode_amqp_binary, encode_amqp_structured};

use super::config::{AmqpMode, AmqpUplinkConfig};
use crate::CloudEvent;

/// A message ready for `basic.publish`.
pub struct Encoded {
    /// The routing key.
    pub routing_key: String,
    /// The properties: content type, headers, persistent delivery, message id = event id.
    pub properties: BasicProperties,
    /// The body.
    pub body: Vec<u8>,
}

/// Fills a routing-key template (see [`crate::uplink::template`]); in `{subject}`, `/` becomes `.`.
pub fn routing_key(template: &str, event: &CloudEvent) -> String {
    crate::uplink::template::render(template, event, Some('.'))
}

/// Encodes an event as the configuration asks.
pub fn encode(event: &CloudEvent, config: &AmqpUplinkConfig) -> Encoded {
    let AmqpMessage { content_type, headers, body } = match config.mode {
        AmqpMode::Binary => encode_amqp_binary(event),
        AmqpMode::Structured => encode_amqp_structured(event),
    };
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let value = match value {
            HeaderValue::String(s) => AMQPValue::LongString(LongString::from(s)),
            HeaderValue::Bool(b) => AMQPValue::Boolean(b),
            HeaderValue::Int(i) => AMQPValue::LongLongInt(i),
            HeaderValue::Timestamp(t) => AMQPValue::Timestamp(t),
        };
        table.insert(ShortString::from(name), value);
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event.id.as_str()))
        .with_headers(table);
    if let Some(ct) = content_type {
        properties = properties.with_content_type(ShortString::from(ct));
    }
    let key = routing_key(&config.routing_key, event);
    let routing_key = if key.is_empty() { event.ty.clone() } else { key };
    Encoded { routing_key, properties, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_come_from_the_template() {
        let mut e = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t.x".into(), ..CloudEvent::default() };
        e.subject = Some("devices/d7/temp".into());
        e.extensions.insert("deviceid".into(), "d7".into());
        assert_eq!(routing_key("{subject}", &e), "devices.d7.temp");
        assert_eq!(routing_key("site.{deviceid}.{type}", &e), "site.d7.t.x");
        e.subject = None;
        let config = AmqpUplinkConfig::for_tests();
        assert_eq!(encode(&e, &config).routing_key, "t.x", "no subject: the type");
    }
}
