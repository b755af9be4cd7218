//! CloudEvent → NATS message: the CloudEvents NATS binding (its binary-mode headers are the HTTP binding's `ce-`
//! headers, values percent-encoded alike) plus `Nats-Msg-Id` = the event id for JetStream's deduplication.

use async_nats::HeaderMap;
use meshgate_protocols::cloudevents::{HttpMessage, encode_http_binary, encode_http_structured};

use super::config::NatsMode;
use crate::CloudEvent;

/// The headers and payload of one event.
pub fn encode(event: &CloudEvent, mode: NatsMode) -> (HeaderMap, Vec<u8>) {
    let HttpMessage { content_type, headers: attributes, body } = match mode {
        NatsMode::Binary => encode_http_binary(event),
        NatsMode::Structured => encode_http_structured(event),
    };
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
    if let Some(ct) = content_type {
        headers.insert("content-type", ct.as_str());
    }
    for (name, value) in attributes {
        headers.insert(name.as_str(), value.as_str());
    }
    for (name, value) in crate::trace::native_headers(event) {
        headers.insert(name, value.as_str());
    }
    (headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_mode_carries_ce_headers_and_the_message_id() {
        let mut e = CloudEvent { id: "42".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(meshgate_protocols::cloudevents::Data::Text("hi".into()));
        let (headers, payload) = encode(&e, NatsMode::Binary);
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("42"));
        assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some("42"));
        assert_eq!(headers.get("content-type").map(|v| v.as_str()), Some("text/plain"));
        assert_eq!(payload, b"hi");
        let (headers, payload) = encode(&e, NatsMode::Structured);
        assert!(headers.get("ce-id").is_none());
        assert_eq!(CloudEvent::from_json_slice(&payload).unwrap(), e);
    }
}
