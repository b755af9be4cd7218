//! The CloudEvents HTTP protocol binding, as a sender lays events out (the NATS binding's headers are the same).
//!
//! - Binary mode: every attribute but `datacontenttype` as a `ce-` header (its value percent-encoded as the
//!   binding requires), `datacontenttype` as `content-type`, the data as the body.
//! - Structured mode: `application/cloudevents+json; charset=utf-8` and the JSON format.
//! - Batched mode: `application/cloudevents-batch+json; charset=utf-8` and a JSON array of events.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{CloudEvent, Data};

/// The header prefix of attributes in binary mode.
pub const HTTP_PREFIX: &str = "ce-";

/// The content type of a structured-mode request.
pub const HTTP_STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// The content type of a batched-mode request.
pub const HTTP_BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// An event (or a batch) laid out for an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMessage {
    /// The `content-type` header, if any (binary mode without `datacontenttype` has none).
    pub content_type: Option<String>,
    /// The `ce-` headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Lays an event out in binary mode.
pub fn encode_http_binary(event: &CloudEvent) -> HttpMessage {
    HttpMessage {
        content_type: event.datacontenttype.clone(),
        headers: event
            .binary_attributes()
            .map(|(name, value)| (format!("{HTTP_PREFIX}{name}"), percent_encode(&value)))
            .collect(),
        body: event.data.as_ref().map(Data::to_bytes).unwrap_or_default(),
    }
}

/// Lays an event out in structured mode.
pub fn encode_http_structured(event: &CloudEvent) -> HttpMessage {
    HttpMessage {
        content_type: Some(HTTP_STRUCTURED_CONTENT_TYPE.into()),
        headers: Vec::new(),
        body: event.to_json_string().into_bytes(),
    }
}

/// Lays events out in batched mode: one JSON array.
pub fn encode_http_batch(events: &[&CloudEvent]) -> HttpMessage {
    let array = serde_json::Value::Array(events.iter().map(|e| e.to_json_value()).collect());
    HttpMessage {
        content_type: Some(HTTP_BATCH_CONTENT_TYPE.into()),
        headers: Vec::new(),
        body: serde_json::to_vec(&array).unwrap_or_default(),
    }
}

/// Whether `value` may stand in a header as it is (HTTP field value, NATS header value): visible ASCII, spaces
/// and tabs only. A `datacontenttype` that is not cannot be sent in binary mode (its parameters are free text:
/// `application/json; x=<CR><LF>...` would split the header).
pub fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// Percent-encodes a header value as the binding's section 3.1.3.2 asks: space, `"`, `%` and every byte outside
/// printable ASCII (a UTF-8 character's bytes each), so any attribute value is a valid header value.
pub fn percent_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::ExtensionValue;

    fn event() -> CloudEvent {
        let mut e = CloudEvent {
            id: "42".into(),
            source: "/dev/7".into(),
            ty: "io.example.reading".into(),
            subject: Some("sites/a b/température".into()),
            datacontenttype: Some("application/json".into()),
            data: Some(Data::Json(serde_json::json!({"t": 21.5}))),
            ..CloudEvent::default()
        };
        e.extensions.insert("deviceid".into(), ExtensionValue::String("d7".into()));
        e.extensions.insert("seq".into(), ExtensionValue::Integer(3));
        e
    }

    #[test]
    fn binary_mode_puts_attributes_in_ce_headers_and_data_in_the_body() {
        let m = encode_http_binary(&event());
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        let header = |n: &str| m.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(header("ce-specversion"), Some("1.0"));
        assert_eq!(header("ce-id"), Some("42"));
        assert_eq!(header("ce-type"), Some("io.example.reading"));
        assert_eq!(header("ce-subject"), Some("sites/a%20b/temp%C3%A9rature"));
        assert_eq!(header("ce-deviceid"), Some("d7"));
        assert_eq!(header("ce-seq"), Some("3"));
        assert_eq!(header("ce-datacontenttype"), None, "it is the content-type header");
        assert_eq!(m.body, br#"{"t":21.5}"#);
    }

    #[test]
    fn structured_and_batched_modes_carry_the_json_format() {
        let e = event();
        let s = encode_http_structured(&e);
        assert_eq!(s.content_type.as_deref(), Some(HTTP_STRUCTURED_CONTENT_TYPE));
        assert_eq!(CloudEvent::from_json_slice(&s.body).unwrap(), e);
        let b = encode_http_batch(&[&e, &e]);
        let array: Vec<serde_json::Value> = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(CloudEvent::from_json_value(array[1].clone()).unwrap(), e);
    }

    #[test]
    fn header_safety_refuses_line_breaks_and_non_ascii() {
        assert!(is_header_safe("application/json; charset=utf-8"));
        assert!(!is_header_safe("application/json; x=1\r\nNats-Msg-Id: forged"));
        assert!(!is_header_safe("text/plain; name=é"));
    }

    #[test]
    fn percent_encoding_leaves_printable_ascii_alone() {
        assert_eq!(percent_encode("a-Z_0.9/~"), "a-Z_0.9/~");
        assert_eq!(percent_encode("50% \"x\"\n"), "50%25%20%22x%22%0A");
    }
}
