//! The CloudEvents MQTT protocol binding.
//!
//! - MQTT 5 binary mode: every attribute except `datacontenttype` is a User Property with its name unchanged,
//!   PUBLISH Content Type carries `datacontenttype`, the payload is the data.
//! - Structured mode (MQTT 5 and 3.1.1): the payload is a JSON-format event. MQTT 5 marks it with a Content Type
//!   starting `application/cloudevents`; MQTT 3.1.1 has no content type, so a receiver recognises a JSON object
//!   with a `specversion` member (meshgate does the same for MQTT 5 messages without a Content Type or with a
//!   JSON one).

use alloc::string::String;
use alloc::vec::Vec;

use super::{CloudEvent, CloudEventError, Data, is_json_content_type};
use crate::mqtt::{Properties, Version};

/// The content type of a structured-mode event in the JSON format.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Reads the CloudEvent an MQTT PUBLISH carries.
///
/// Returns `Ok(None)` when the message is not a CloudEvent in any mode (it is then wrapped by the gateway's
/// mapping rules), `Ok(Some(event))` for a valid event, and an error for a message that claims to be a CloudEvent
/// but breaks the specification (MQTT 5 answers it with reason 0x99, Payload format invalid).
pub fn decode_mqtt(
    version: Version,
    properties: &Properties<'_>,
    payload: &[u8],
) -> Result<Option<CloudEvent>, CloudEventError> {
    let content_type = if version.is_v5() { properties.content_type } else { None };
    if let Some(ct) = content_type
        && super::event::is_structured(ct)?
    {
        return CloudEvent::from_json_slice(payload).map(Some);
    }
    if version.is_v5() && properties.user_properties.iter().any(|p| p.name == "specversion") {
        return decode_binary(content_type, properties, payload).map(Some);
    }
    if content_type.is_none_or(is_json_content_type) && looks_structured(payload) {
        return CloudEvent::from_json_slice(payload).map(Some);
    }
    Ok(None)
}

fn decode_binary(
    content_type: Option<&str>,
    properties: &Properties<'_>,
    payload: &[u8],
) -> Result<CloudEvent, CloudEventError> {
    let mut event = CloudEvent::default();
    for p in properties.user_properties.iter() {
        if p.name == "datacontenttype" {
            // The binding carries it in Content Type; a user property of that name would be a second value.
            return Err(CloudEventError::DuplicateAttribute(p.name.into()));
        }
        event.set_attribute(p.name, p.value)?;
    }
    event.check_required_present()?;
    event.datacontenttype = content_type.map(String::from);
    event.data = Data::from_bytes(content_type, payload).0;
    event.validate()?;
    Ok(event)
}

/// A cheap test for a JSON object with a `specversion` member, without building a DOM for other payloads.
fn looks_structured(payload: &[u8]) -> bool {
    let trimmed = payload.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return false;
    }
    if !trimmed.windows(13).any(|w| w == b"\"specversion\"") {
        return false;
    }
    matches!(serde_json::from_slice::<serde_json::Value>(payload), Ok(serde_json::Value::Object(m)) if m.contains_key("specversion"))
}

/// An event laid out for an MQTT 5 PUBLISH in binary mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// The PUBLISH Content Type (`datacontenttype`).
    pub content_type: Option<String>,
    /// The User Properties: every other attribute.
    pub user_properties: Vec<(String, String)>,
    /// The payload: the event's data.
    pub payload: Vec<u8>,
}

/// Lays an event out for MQTT 5 binary mode.
pub fn encode_mqtt5_binary(event: &CloudEvent) -> BinaryMessage {
    BinaryMessage {
        content_type: event.datacontenttype.clone(),
        user_properties: event.binary_attributes().map(|(k, v)| (String::from(k), v)).collect(),
        payload: event.data.as_ref().map(Data::to_bytes).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{PropertyList, UserProperty};

    fn props<'a>(ct: Option<&'a str>, user: &'a [UserProperty<'a>]) -> Properties<'a> {
        Properties { content_type: ct, user_properties: PropertyList::new(user), ..Properties::default() }
    }

    const ATTRS: [UserProperty<'static>; 5] = [
        UserProperty { name: "specversion", value: "1.0" },
        UserProperty { name: "id", value: "42" },
        UserProperty { name: "source", value: "/dev/7" },
        UserProperty { name: "type", value: "io.example.reading" },
        UserProperty { name: "deviceid", value: "d7" },
    ];

    #[test]
    fn binary_mode_reads_user_properties_and_content_type() {
        let e = decode_mqtt(Version::V5, &props(Some("application/json"), &ATTRS), b"{\"t\":1}").unwrap().unwrap();
        assert_eq!((e.id.as_str(), e.source.as_str(), e.ty.as_str()), ("42", "/dev/7", "io.example.reading"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.extensions.get("deviceid"), Some(&"d7".into()));
        let out = encode_mqtt5_binary(&e);
        assert_eq!(out.user_properties.len(), 5);
        assert_eq!(out.payload, b"{\"t\":1}");
    }

    #[test]
    fn binary_mode_without_required_attributes_is_invalid() {
        let e = decode_mqtt(Version::V5, &props(None, &ATTRS[..2]), b"x");
        assert_eq!(e, Err(CloudEventError::MissingAttribute("source")));
    }

    #[test]
    fn structured_mode_is_recognised_by_content_type_or_shape() {
        let json = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        assert!(decode_mqtt(Version::V5, &props(Some(STRUCTURED_CONTENT_TYPE), &[]), json).unwrap().is_some());
        assert!(decode_mqtt(Version::V311, &Properties::default(), json).unwrap().is_some());
        assert_eq!(decode_mqtt(Version::V311, &Properties::default(), b"{\"t\":21.5}"), Ok(None));
        assert_eq!(decode_mqtt(Version::V5, &props(Some("text/plain"), &[]), json), Ok(None));
        assert!(decode_mqtt(Version::V5, &props(Some(STRUCTURED_CONTENT_TYPE), &[]), b"{}").is_err());
        assert!(matches!(
            decode_mqtt(Version::V5, &props(Some("application/cloudevents+avro"), &[]), b""),
            Err(CloudEventError::UnsupportedFormat(_))
        ));
    }
}
