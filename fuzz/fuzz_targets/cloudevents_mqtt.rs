//! Reads arbitrary MQTT PUBLISH packets as CloudEvents. Checks that the binding never panics and that every event
//! it accepts is valid and survives the JSON format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_protocols::cloudevents::{CloudEvent, decode_mqtt};
use meshgate_protocols::mqtt::{Packet, Version};

fuzz_target!(|data: &[u8]| {
    for version in [Version::V311, Version::V5] {
        if let Ok((Packet::Publish(p), _)) = Packet::decode(data, version, 1 << 20) {
            if let Ok(Some(event)) = decode_mqtt(version, &p.properties, p.payload) {
                assert!(event.validate().is_ok());
                let again = CloudEvent::from_json_slice(event.to_json_string().as_bytes()).expect("round trip");
                assert_eq!(again, event);
            }
        }
    }
});
