//! Reads arbitrary AMQP messages as CloudEvents: the first byte picks the content type, the rest is split on
//! newlines into `name=value` headers, the final part is the body. Checks that the binding never panics and that
//! every event it accepts is valid and survives both AMQP modes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::cloudevents::{HeaderValue, decode_amqp, encode_amqp_binary, encode_amqp_structured};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let content_type = match selector % 4 {
        0 => None,
        1 => Some("application/cloudevents+json"),
        2 => Some("application/json"),
        _ => Some("text/plain"),
    };
    let mut parts: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let body = parts.pop().unwrap_or_default();
    let headers: Vec<(String, HeaderValue)> = parts
        .iter()
        .filter_map(|p| {
            let text = std::str::from_utf8(p).ok()?;
            let (k, v) = text.split_once('=')?;
            let value = match v.parse::<i64>() {
                Ok(i) if k.ends_with("time") => HeaderValue::Timestamp(i.unsigned_abs()),
                Ok(i) => HeaderValue::Int(i),
                Err(_) => match v {
                    "true" => HeaderValue::Bool(true),
                    "false" => HeaderValue::Bool(false),
                    _ => HeaderValue::String(v.to_string()),
                },
            };
            Some((k.to_string(), value))
        })
        .collect();
    if let Ok(Some(event)) = decode_amqp(content_type, headers.iter().map(|(k, v)| (k.as_str(), v)), body) {
        assert!(event.validate().is_ok());
        for m in [encode_amqp_binary(&event), encode_amqp_structured(&event)] {
            let again = decode_amqp(m.content_type.as_deref(), m.headers.iter().map(|(k, v)| (k.as_str(), v)), &m.body);
            assert_eq!(again, Ok(Some(event.clone())));
        }
    }
});
