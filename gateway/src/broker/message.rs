//! An application message as the broker keeps it: owned, with the MQTT 5 properties that travel end to end
//! (payload format, content type, response topic, correlation data, user properties) and an absolute expiry.

use meshgate_protocols::mqtt::{Properties, PropertyList, Publish, QoS, UserProperty};
use serde::{Deserialize, Serialize};

/// The properties a server forwards unchanged from publisher to subscriber (MQTT 5 section 3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageProperties {
    /// Payload Format Indicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_utf8: Option<bool>,
    /// Content Type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Response Topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Correlation Data.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_opt")]
    pub correlation_data: Option<Vec<u8>>,
    /// User Properties, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

/// The identity of the CloudEvent a message became (the event the mesh receives): its local deliveries carry it
/// too, so a consumer can correlate a delivery with the event, and a retained message keeps it on every delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventIdentity {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl EventIdentity {
    /// The identity of `event`.
    pub fn of(event: &meshgate_protocols::cloudevents::CloudEvent) -> EventIdentity {
        EventIdentity { id: event.id.clone(), source: event.source.clone(), time: event.time.clone() }
    }
}

/// A message published to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The topic name (an inbound alias already resolved).
    pub topic: String,
    /// The payload.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// The RETAIN flag as published.
    pub retain: bool,
    /// The forwarded properties.
    #[serde(default)]
    pub properties: MessageProperties,
    /// The publishing client's id (for No Local); empty for the gateway's own messages.
    #[serde(default)]
    pub publisher: String,
    /// When it expires, in milliseconds since the Unix epoch (MQTT 5 Message Expiry Interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The CloudEvent it became, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventIdentity>,
}

/// What a queued message costs besides its topic, payload and properties (the structures around it), for the
/// byte limits of queues.
const QUEUED_OVERHEAD: u64 = 128;

impl Message {
    /// The bytes it holds while queued, as the queue limits and the memory budget count them.
    pub fn queued_size(&self) -> u64 {
        let p = &self.properties;
        let props = p.content_type.as_ref().map_or(0, String::len)
            + p.response_topic.as_ref().map_or(0, String::len)
            + p.correlation_data.as_ref().map_or(0, Vec::len)
            + p.user_properties.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let event =
            self.event.as_ref().map_or(0, |e| e.id.len() + e.source.len() + e.time.as_ref().map_or(0, String::len));
        let bytes = self.topic.len() + self.payload.len() + self.publisher.len() + props + event;
        u64::try_from(bytes).unwrap_or(u64::MAX).saturating_add(QUEUED_OVERHEAD)
    }

    /// The message a PUBLISH carries, received at `now_ms` from `publisher`.
    pub fn from_publish(publish: &Publish<'_>, topic: &str, publisher: &str, now_ms: u64) -> Message {
        let Publish { payload, qos, retain, properties, .. } = publish;
        Message::new(topic, payload, *qos, *retain, properties, publisher, now_ms)
    }

    /// A message with the forwarded subset of `properties` and an expiry counted from `now_ms` (a PUBLISH, or a
    /// will at the moment its connection was accepted).
    pub fn new(
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: &Properties<'_>,
        publisher: &str,
        now_ms: u64,
    ) -> Message {
        Message {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos: qos as u8,
            retain,
            properties: MessageProperties::from_properties(properties),
            publisher: publisher.to_string(),
            expires_at_ms: properties.message_expiry_interval.map(|s| now_ms.saturating_add(u64::from(s) * 1000)),
            event: None,
        }
    }

    /// Carries `event`'s trace context to local subscribers as W3C's MQTT user properties `traceparent` and
    /// `tracestate`: a value the publisher sent is replaced where it stood (so the subscriber's span is a child of
    /// the gateway's), a missing one added last. Nothing changes when the event has no valid context.
    pub fn carry_trace(&mut self, event: &meshgate_protocols::cloudevents::CloudEvent) {
        use meshgate_edge_agent::trace::{TRACESTATE, native_headers};
        let mut headers = native_headers(event).peekable();
        if headers.peek().is_none() {
            return;
        }
        let props = &mut self.properties.user_properties;
        // A state the event no longer carries must not outlive it.
        props.retain(|(k, _)| k != TRACESTATE);
        for (name, value) in headers {
            match props.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => props.push((name.to_string(), value)),
            }
        }
    }

    /// Its QoS.
    pub fn qos(&self) -> QoS {
        QoS::from_bits(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    /// Whether it expired by `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// The Message Expiry Interval to send at `now_ms`: what is left of it, in whole seconds (at least 1).
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| u32::try_from(at.saturating_sub(now_ms).div_ceil(1000).max(1)).unwrap_or(u32::MAX))
    }
}

impl MessageProperties {
    /// The forwarded properties of a PUBLISH.
    pub fn from_properties(p: &Properties<'_>) -> MessageProperties {
        MessageProperties {
            payload_format_utf8: p.payload_format_utf8,
            content_type: p.content_type.map(str::to_string),
            response_topic: p.response_topic.map(str::to_string),
            correlation_data: p.correlation_data.map(<[u8]>::to_vec),
            user_properties: p.user_properties.iter().map(|u| (u.name.to_string(), u.value.to_string())).collect(),
        }
    }

    /// The user properties as the codec takes them.
    pub fn user_properties(&self) -> Vec<UserProperty<'_>> {
        self.user_properties.iter().map(|(name, value)| UserProperty { name, value }).collect()
    }

    /// These properties as a PUBLISH carries them (the inverse of [`MessageProperties::from_properties`]);
    /// `user_properties` is what [`MessageProperties::user_properties`] returned.
    pub fn to_properties<'a>(&'a self, user_properties: &'a [UserProperty<'a>]) -> Properties<'a> {
        Properties {
            payload_format_utf8: self.payload_format_utf8,
            content_type: self.content_type.as_deref(),
            response_topic: self.response_topic.as_deref(),
            correlation_data: self.correlation_data.as_deref(),
            user_properties: PropertyList::new(user_properties),
            ..Properties::default()
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod base64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_properties_and_expiry_through_a_snapshot() {
        let m = Message {
            topic: "a/b".into(),
            payload: vec![0, 1, 255],
            qos: 1,
            retain: true,
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(vec![9, 8]),
                user_properties: vec![("k".into(), "v".into())],
                ..MessageProperties::default()
            },
            publisher: "dev-1".into(),
            expires_at_ms: Some(10_500),
            event: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
        assert_eq!(m.remaining_expiry_secs(9_000), Some(2));
        assert_eq!(m.remaining_expiry_secs(10_499), Some(1));
        assert!(!m.is_expired(10_499));
        assert!(m.is_expired(10_500));
    }
}
