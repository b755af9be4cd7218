//! Routing keys and MQTT topics, one space: AMQP devices and MQTT devices reach each other through the local
//! broker. As RabbitMQ's MQTT plugin does it, `.` and `/` swap places (`devices.d1.telemetry` is
//! `devices/d1/telemetry`), and in binding keys `*` is `+` and `#` is `#`.

/// The MQTT topic a routing key publishes to.
pub fn routing_key_to_topic(routing_key: &str) -> String {
    swap_separators(routing_key)
}

/// The routing key a message on an MQTT topic is delivered with.
pub fn topic_to_routing_key(topic: &str) -> String {
    swap_separators(topic)
}

/// The MQTT topic filter an AMQP topic binding key subscribes to; `None` when it cannot be one (a wildcard inside
/// a word such as `a*.b`, or a `+` in the key, which MQTT would read as a wildcard).
pub fn binding_key_to_filter(binding_key: &str) -> Option<String> {
    if binding_key.is_empty() {
        return Some(String::new());
    }
    let words: Vec<String> = binding_key
        .split('.')
        .map(|word| match word {
            "*" => Some("+".to_string()),
            "#" => Some("#".to_string()),
            w if w.contains(['*', '#', '+']) => None,
            w => Some(w.replace('/', ".")),
        })
        .collect::<Option<_>>()?;
    let filter = words.join("/");
    // MQTT allows `#` only last; AMQP anywhere. `a.#.b` has no MQTT equivalent.
    let hash_inside = filter.split('/').rev().skip(1).any(|w| w == "#");
    (!hash_inside).then_some(filter)
}

fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_swap_both_ways() {
        assert_eq!(routing_key_to_topic("devices.d1.telemetry"), "devices/d1/telemetry");
        assert_eq!(topic_to_routing_key("devices/d1/v1.2"), "devices.d1.v1/2");
        assert_eq!(routing_key_to_topic(&topic_to_routing_key("a/b.c/d")), "a/b.c/d");
    }

    #[test]
    fn binding_keys_become_filters_where_mqtt_can_say_the_same() {
        assert_eq!(binding_key_to_filter("devices.*.commands.#").as_deref(), Some("devices/+/commands/#"));
        assert_eq!(binding_key_to_filter("#").as_deref(), Some("#"));
        assert_eq!(binding_key_to_filter("a.#.b"), None);
        assert_eq!(binding_key_to_filter("a*.b"), None);
        assert_eq!(binding_key_to_filter("a.b+"), None);
    }
}
