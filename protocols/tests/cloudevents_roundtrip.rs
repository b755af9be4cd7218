//! Property tests for the CloudEvents decoders: any valid event survives the JSON format and MQTT 5 binary mode
//! unchanged; arbitrary bytes never panic the decoders, and whatever they accept is valid.

use meshgate_protocols::cloudevents::{
    AmqpMessage, CloudEvent, ExtensionValue, HeaderValue, decode_amqp, decode_mqtt, encode_amqp_binary,
    encode_amqp_structured, encode_mqtt5_binary,
};
use meshgate_protocols::mqtt::{Properties, PropertyList, UserProperty, Version};
use proptest::prelude::*;

mod strategies;
use strategies::{event, text};

proptest! {
    #[test]
    fn valid_events_survive_the_json_format(e in event()) {
        prop_assert!(e.validate().is_ok());
        let again = CloudEvent::from_json_slice(e.to_json_string().as_bytes());
        prop_assert_eq!(again, Ok(e));
    }

    #[test]
    fn valid_events_survive_mqtt5_binary_mode_with_string_extensions(mut e in event()) {
        // Binary mode carries every extension as a string.
        for v in e.extensions.values_mut() {
            *v = ExtensionValue::String(v.to_canonical_string());
        }
        let msg = encode_mqtt5_binary(&e);
        let user: Vec<UserProperty> = msg.user_properties.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let props = Properties { content_type: msg.content_type.as_deref(), user_properties: PropertyList::new(&user), ..Properties::default() };
        let decoded = decode_mqtt(Version::V5, &props, &msg.payload);
        prop_assert_eq!(decoded, Ok(Some(e)));
    }

    #[test]
    fn valid_events_survive_both_amqp_modes(e in event()) {
        for m in [encode_amqp_binary(&e), encode_amqp_structured(&e)] {
            let decoded = decode_amqp(m.content_type.as_deref(), m.headers.iter().map(|(k, v)| (k.as_str(), v)), &m.body);
            prop_assert_eq!(decoded, Ok(Some(e.clone())));
        }
    }

    #[test]
    fn arbitrary_amqp_headers_never_panic_and_accepted_events_are_valid(
        headers in proptest::collection::vec((prop_oneof![Just("cloudEvents_".to_string()), Just("cloudEvents:".to_string()), Just("x-".to_string())], prop_oneof![Just("specversion".to_string()), Just("id".to_string()), Just("source".to_string()), Just("type".to_string()), Just("time".to_string()), "[a-zA-Z0-9]{1,6}"], prop_oneof![text().prop_map(HeaderValue::String), Just(HeaderValue::String("1.0".into())), any::<bool>().prop_map(HeaderValue::Bool), any::<i64>().prop_map(HeaderValue::Int), any::<u64>().prop_map(HeaderValue::Timestamp)]), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let m = AmqpMessage { content_type: None, headers: headers.into_iter().map(|(p, n, v)| (p + &n, v)).collect(), body };
        if let Ok(Some(e)) = decode_amqp(None, m.headers.iter().map(|(k, v)| (k.as_str(), v)), &m.body) {
            prop_assert!(e.validate().is_ok());
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic_and_accepted_events_are_valid(bytes in proptest::collection::vec(any::<u8>(), 0..256), v5 in any::<bool>(), ct in proptest::option::of(prop_oneof![Just("application/cloudevents+json"), Just("application/json"), Just("text/plain")])) {
        let props = Properties { content_type: ct, ..Properties::default() };
        let version = if v5 { Version::V5 } else { Version::V311 };
        if let Ok(Some(e)) = decode_mqtt(version, &props, &bytes) {
            prop_assert!(e.validate().is_ok());
        }
        if let Ok(e) = CloudEvent::from_json_slice(&bytes) {
            prop_assert!(e.validate().is_ok());
        }
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in r#"\{("[a-z_]{1,12}":("[^"\\]{0,8}"|[0-9]{1,3}|true|null|\[\]|\{\}),?){0,8}\}"#) {
        let _ = CloudEvent::from_json_slice(s.as_bytes());
    }
}
