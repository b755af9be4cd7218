//! AMQP application headers as the CloudEvents AMQP binding reads them, shared by the gateway's AMQP listener and
//! the RabbitMQ downlink.

use lapin::types::{AMQPValue, FieldTable};
use meshgate_protocols::cloudevents::{AMQP_PREFIX, AMQP_PREFIX_COLON, HeaderValue};

/// The application headers as the CloudEvents binding reads them; a `cloudEvents_` header of a type no
/// attribute can have makes the message an invalid CloudEvent.
pub fn cloudevent_headers(headers: Option<&FieldTable>) -> Result<Vec<(String, HeaderValue)>, String> {
    let Some(table) = headers else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (name, value) in table.inner() {
        let name = name.as_str();
        let is_attribute = name.starts_with(AMQP_PREFIX) || name.starts_with(AMQP_PREFIX_COLON);
        let converted = match value {
            AMQPValue::LongString(s) => Some(HeaderValue::String(String::from_utf8_lossy(s.as_bytes()).into_owned())),
            AMQPValue::ShortString(s) => Some(HeaderValue::String(s.as_str().to_string())),
            AMQPValue::Boolean(b) => Some(HeaderValue::Bool(*b)),
            AMQPValue::ShortShortInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::ShortShortUInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::ShortInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::ShortUInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::LongInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::LongUInt(i) => Some(HeaderValue::Int(i64::from(*i))),
            AMQPValue::LongLongInt(i) => Some(HeaderValue::Int(*i)),
            AMQPValue::Timestamp(t) => Some(HeaderValue::Timestamp(*t)),
            _ => None,
        };
        match converted {
            Some(v) => out.push((name.to_string(), v)),
            None if is_attribute => return Err(format!("header `{name}` has a type no CloudEvents attribute has")),
            None => {}
        }
    }
    Ok(out)
}
