//! Session names: one namespace per protocol, so a name presented on one protocol never reaches a session of
//! another.
//!
//! MQTT client ids (over TCP, TLS and WebSocket alike) are session names as they are. The sessions of
//! `cloudevents.json` clients and of AMQP queues carry a tag starting with U+0000, a character no MQTT string may
//! hold [MQTT-1.5.4-2] and that the WebSocket listener refuses in client names: the MQTT client id `amqp:q-dev1`
//! is an MQTT client id and nothing else.

/// The tag of an AMQP queue's session.
pub const AMQP_QUEUE: &str = "\u{0}amqp:";

/// The tag of a `cloudevents.json` client's session.
pub const WS_CLIENT: &str = "\u{0}ws:";

/// The session of AMQP queue `queue`.
pub fn amqp_queue(queue: &str) -> String {
    format!("{AMQP_QUEUE}{queue}")
}

/// The session of `cloudevents.json` client `name`.
pub fn ws_client(name: &str) -> String {
    format!("{WS_CLIENT}{name}")
}

/// The name of a session saved before namespaces existed, when AMQP queues were `amqp:{queue}` and the
/// `cloudevents.json` clients `ws:{name}` (an MQTT client id of that shape was the collision this module ends;
/// such a session is read as the AMQP queue it almost always was).
pub fn from_unversioned(name: String) -> String {
    match name.strip_prefix("amqp:") {
        Some(queue) => amqp_queue(queue),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_mqtt_client_id_names_another_protocols_session() {
        for id in ["amqp:q-dev1", "ws:lamp", "q-dev1", "lamp"] {
            assert_ne!(id, amqp_queue("q-dev1"));
            assert_ne!(id, ws_client("lamp"));
        }
        assert_eq!(from_unversioned("amqp:q".into()), amqp_queue("q"));
        assert_eq!(from_unversioned("sensor-1".into()), "sensor-1");
    }
}
