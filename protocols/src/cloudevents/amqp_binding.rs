//! The CloudEvents AMQP protocol binding, as AMQP 0-9-1 carries it (RabbitMQ, and meshgate's AMQP listener).
//!
//! - Binary mode: every attribute except `datacontenttype` is an application header named with the prefix
//!   `cloudEvents_` (what meshgate writes) or `cloudEvents:` (accepted); `content-type` carries
//!   `datacontenttype`; the body is the data.
//! - Structured mode: `content-type` `application/cloudevents+json`, the body a JSON-format event.
//!
//! Headers are given in a neutral form ([`HeaderValue`]) so this module stays free of any AMQP client; the uplink
//! and the listener convert to and from their field tables.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{CloudEvent, CloudEventError, Data, ExtensionValue, STRUCTURED_CONTENT_TYPE};

/// The header prefix meshgate writes.
pub const AMQP_PREFIX: &str = "cloudEvents_";
/// The other prefix the binding allows; accepted on input.
pub const AMQP_PREFIX_COLON: &str = "cloudEvents:";

/// The header values CloudEvents attributes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// A string (every attribute can travel as one).
    String(String),
    /// A boolean extension.
    Bool(bool),
    /// An integer extension.
    Int(i64),
    /// An AMQP timestamp: seconds since the Unix epoch (accepted for `time`).
    Timestamp(u64),
}

/// An event laid out for an AMQP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpMessage {
    /// The `content-type` property.
    pub content_type: Option<String>,
    /// Application headers.
    pub headers: Vec<(String, HeaderValue)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Lays an event out in binary mode: `cloudEvents_` headers, `content-type` = `datacontenttype`, body = data.
pub fn encode_amqp_binary(event: &CloudEvent) -> AmqpMessage {
    let mut headers: Vec<(String, HeaderValue)> = Vec::with_capacity(8 + event.extensions.len());
    for (name, value) in event.context_attributes() {
        headers.push((format!("{AMQP_PREFIX}{name}"), HeaderValue::String(value.into())));
    }
    for (name, value) in &event.extensions {
        let v = match value {
            ExtensionValue::String(s) => HeaderValue::String(s.clone()),
            ExtensionValue::Boolean(b) => HeaderValue::Bool(*b),
            ExtensionValue::Integer(i) => HeaderValue::Int(*i),
        };
        headers.push((format!("{AMQP_PREFIX}{name}"), v));
    }
    AmqpMessage {
        content_type: event.datacontenttype.clone(),
        headers,
        body: event.data.as_ref().map(Data::to_bytes).unwrap_or_default(),
    }
}

/// Lays an event out in structured mode: `application/cloudevents+json` and the JSON format.
pub fn encode_amqp_structured(event: &CloudEvent) -> AmqpMessage {
    AmqpMessage {
        content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
        headers: Vec::new(),
        body: event.to_json_string().into_bytes(),
    }
}

fn attribute_name(header: &str) -> Option<&str> {
    header.strip_prefix(AMQP_PREFIX).or_else(|| header.strip_prefix(AMQP_PREFIX_COLON))
}

/// Reads the CloudEvent an AMQP message carries: `Ok(None)` when it is not one (no `specversion` header and not
/// a structured content type), an error when it claims to be one and is invalid.
pub fn decode_amqp<'h>(
    content_type: Option<&str>,
    headers: impl IntoIterator<Item = (&'h str, &'h HeaderValue)> + Clone,
    body: &[u8],
) -> Result<Option<CloudEvent>, CloudEventError> {
    if let Some(ct) = content_type
        && super::event::is_structured(ct)?
    {
        return CloudEvent::from_json_slice(body).map(Some);
    }
    let binary = headers.clone().into_iter().any(|(k, _)| attribute_name(k) == Some("specversion"));
    if !binary {
        return Ok(None);
    }
    let mut event = CloudEvent::default();
    for (header, value) in headers {
        let Some(name) = attribute_name(header) else { continue };
        if name == "datacontenttype" {
            return Err(CloudEventError::DuplicateAttribute(name.into()));
        }
        match value {
            HeaderValue::String(s) => event.set_attribute(name, s)?,
            HeaderValue::Timestamp(secs) if name == "time" => event.set_attribute(name, &rfc3339_from_unix(*secs))?,
            HeaderValue::Bool(_) | HeaderValue::Int(_) | HeaderValue::Timestamp(_)
                if matches!(name, "specversion" | "id" | "source" | "type" | "dataschema" | "subject" | "time") =>
            {
                return Err(CloudEventError::InvalidAttribute { name: name.into(), reason: "must be a string" });
            }
            HeaderValue::Bool(b) => set_extension(&mut event, name, ExtensionValue::Boolean(*b))?,
            HeaderValue::Int(i) => set_extension(&mut event, name, ExtensionValue::Integer(*i))?,
            HeaderValue::Timestamp(secs) => {
                set_extension(&mut event, name, ExtensionValue::String(rfc3339_from_unix(*secs)))?
            }
        }
    }
    event.check_required_present()?;
    event.datacontenttype = content_type.map(String::from);
    event.data = Data::from_bytes(content_type, body).0;
    event.validate()?;
    Ok(Some(event))
}

fn set_extension(event: &mut CloudEvent, name: &str, value: ExtensionValue) -> Result<(), CloudEventError> {
    if !super::event::is_valid_extension_name(name) {
        return Err(CloudEventError::InvalidAttributeName(name.into()));
    }
    if event.extensions.insert(name.to_string(), value).is_some() {
        return Err(CloudEventError::DuplicateAttribute(name.into()));
    }
    Ok(())
}

/// Formats Unix seconds as RFC 3339 UTC (days to civil date after Howard Hinnant's algorithm).
fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn event() -> CloudEvent {
        let mut e = CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            ty: "t".into(),
            subject: Some("a/b".into()),
            time: Some("2026-11-23T12:00:00Z".into()),
            datacontenttype: Some("application/json".into()),
            data: Some(Data::Json(serde_json::json!({"t": 1}))),
            ..CloudEvent::default()
        };
        e.extensions.insert("deviceid".into(), "d7".into());
        e.extensions.insert("retries".into(), ExtensionValue::Integer(3));
        e.extensions.insert("urgent".into(), ExtensionValue::Boolean(true));
        e
    }

    fn decode(m: &AmqpMessage) -> Result<Option<CloudEvent>, CloudEventError> {
        decode_amqp(m.content_type.as_deref(), m.headers.iter().map(|(k, v)| (k.as_str(), v)), &m.body)
    }

    #[test]
    fn binary_and_structured_modes_round_trip() {
        let m = encode_amqp_binary(&event());
        assert!(m.headers.contains(&("cloudEvents_deviceid".into(), HeaderValue::String("d7".into()))));
        assert!(m.headers.contains(&("cloudEvents_retries".into(), HeaderValue::Int(3))));
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(decode(&m), Ok(Some(event())));
        assert_eq!(decode(&encode_amqp_structured(&event())), Ok(Some(event())));
    }

    #[test]
    fn the_colon_prefix_and_amqp_timestamps_are_accepted() {
        let headers = vec![
            ("cloudEvents:specversion".to_string(), HeaderValue::String("1.0".into())),
            ("cloudEvents:id".to_string(), HeaderValue::String("x".into())),
            ("cloudEvents:source".to_string(), HeaderValue::String("/s".into())),
            ("cloudEvents:type".to_string(), HeaderValue::String("t".into())),
            ("cloudEvents:time".to_string(), HeaderValue::Timestamp(1_795_435_200)),
            ("x-unrelated".to_string(), HeaderValue::Int(1)),
        ];
        let m = AmqpMessage { content_type: None, headers, body: Vec::new() };
        let e = decode(&m).unwrap().unwrap();
        assert_eq!(e.time.as_deref(), Some("2026-11-23T12:00:00Z"));
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn plain_messages_are_not_events_and_broken_ones_are_errors() {
        let plain = AmqpMessage { content_type: Some("text/plain".into()), headers: Vec::new(), body: b"hi".to_vec() };
        assert_eq!(decode(&plain), Ok(None));
        let mut m = encode_amqp_binary(&event());
        m.headers.retain(|(k, _)| k != "cloudEvents_source");
        assert_eq!(decode(&m), Err(CloudEventError::MissingAttribute("source")));
        let mut m = encode_amqp_binary(&event());
        m.headers.push(("cloudEvents:id".into(), HeaderValue::String("2".into())));
        assert_eq!(decode(&m), Err(CloudEventError::DuplicateAttribute("id".into())));
        let mut m = encode_amqp_binary(&event());
        m.headers.push(("cloudEvents_type".into(), HeaderValue::Int(1)));
        assert!(decode(&m).is_err());
    }
}
