//! CloudEvents 1.0 for meshgate: the event model with the specification's attribute rules, the JSON event format,
//! the MQTT protocol binding (binary mode for MQTT 5, structured mode for 5 and 3.1.1), the AMQP binding and the
//! HTTP binding's sending side (whose headers the NATS binding shares).
//!
//! `cloudevents-sdk` is std-only and has no MQTT or AMQP binding, so the bindings every meshgate component shares
//! live here, next to the wire codecs they ride on.
//!
//! ```
//! use meshgate_protocols::cloudevents::CloudEvent;
//!
//! let json = br#"{"specversion":"1.0","id":"1","source":"/sensors/7","type":"io.example.reading","data":{"t":21.5}}"#;
//! let event = CloudEvent::from_json_slice(json).unwrap();
//! assert_eq!(event.ty, "io.example.reading");
//! assert_eq!(CloudEvent::from_json_slice(event.to_json_string().as_bytes()).unwrap(), event);
//! ```

mod amqp_binding;
mod error;
mod event;
mod http_binding;
mod json_format;
mod mqtt_binding;
mod time;

pub use amqp_binding::{
    AMQP_PREFIX, AMQP_PREFIX_COLON, AmqpMessage, HeaderValue, decode_amqp, encode_amqp_binary, encode_amqp_structured,
};
pub use error::CloudEventError;
pub use event::{CloudEvent, Data, ExtensionValue, SPEC_VERSION, is_json_content_type, is_media_type};
pub use http_binding::{
    HTTP_BATCH_CONTENT_TYPE, HTTP_PREFIX, HTTP_STRUCTURED_CONTENT_TYPE, HttpMessage, encode_http_batch,
    encode_http_binary, encode_http_structured, is_header_safe, percent_encode,
};
pub use mqtt_binding::{BinaryMessage, STRUCTURED_CONTENT_TYPE, decode_mqtt, encode_mqtt5_binary};
pub use time::{format_timestamp, parse_timestamp, validate_timestamp};
