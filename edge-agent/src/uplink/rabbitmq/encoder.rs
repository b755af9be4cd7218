//! CloudEvent → AMQP 0-9-1 message: routing key from a template, the CloudEvents AMQP binding from
//! `meshgate-protocols`, persistent delivery.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use meshgate_protocols::cloudevents::{AmqpMessage, HeaderValue, encode_amqp_binary, encode_amqp_structured};

use super::config::{AmqpMode, AmqpUplinkConfig};
use crate::CloudEvent;

/// A message ready for `basic.publish`.
#[derive(Debug)]
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

/// The longest AMQP short string (routing key, content type, message id, header name), in bytes.
const SHORT_STRING_MAX: usize = 255;

fn short(what: &str, value: String) -> Result<ShortString, String> {
    if value.len() > SHORT_STRING_MAX {
        return Err(format!("{what} of {} bytes: AMQP 0-9-1 carries at most {SHORT_STRING_MAX}", value.len()));
    }
    Ok(ShortString::from(value))
}

/// Encodes an event as the configuration asks; an error when it cannot be an AMQP message (a routing key,
/// content type or header name over 255 bytes: never sendable, so the caller sets it aside). An id over 255
/// bytes is left out of `message-id` (it travels in the headers or the body).
pub fn encode(event: &CloudEvent, config: &AmqpUplinkConfig) -> Result<Encoded, String> {
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
        table.insert(short("a header name", name)?, value);
    }
    for (name, value) in crate::trace::native_headers(event) {
        table.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
    }
    let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(table);
    if event.id.len() <= SHORT_STRING_MAX {
        properties = properties.with_message_id(ShortString::from(event.id.as_str()));
    }
    if let Some(ct) = content_type {
        properties = properties.with_content_type(short("datacontenttype", ct)?);
    }
    let key = routing_key(&config.routing_key, event);
    let routing_key = if key.is_empty() { event.ty.clone() } else { key };
    short("the routing key", routing_key.clone())?;
    Ok(Encoded { routing_key, properties, body })
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
        assert_eq!(encode(&e, &config).map(|m| m.routing_key), Ok("t.x".into()), "no subject: the type");
    }

    #[test]
    fn what_does_not_fit_an_amqp_short_string_is_refused_or_left_out() {
        let mut e = CloudEvent { id: "i".repeat(300), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        let config = AmqpUplinkConfig::for_tests();
        let m = encode(&e, &config).expect("a long id is left out of message-id");
        assert_eq!(m.properties.message_id(), &None);
        e.subject = Some("a/".repeat(200));
        assert!(encode(&e, &config).unwrap_err().contains("routing key of 400 bytes"));
        e.subject = None;
        e.datacontenttype = Some(format!("text/plain; x={}", "y".repeat(300)));
        assert!(encode(&e, &config).unwrap_err().contains("datacontenttype"));
        e.datacontenttype = None;
        e.extensions.insert("x".repeat(250), "v".into());
        assert!(encode(&e, &config).unwrap_err().contains("header name"));
    }
}
