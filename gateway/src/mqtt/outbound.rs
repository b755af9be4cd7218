//! Broker deliveries as MQTT packets: a PUBLISH with the forwarded MQTT 5 properties (content type, response
//! topic, correlation data, user properties, payload format, the remaining Message Expiry Interval and the
//! matching Subscription Identifiers), or a PUBREL; with topic aliases when the client accepts them.

use meshgate_protocols::mqtt::{Packet, Properties, PropertyList, PubResponse, PubResponseKind, Publish, QoS, Version};

use crate::broker::Outbound;

/// Server-to-client topic aliases of one connection (MQTT 5 section 3.3.2.3.4): a topic gets the next alias
/// the first time it is sent, while the client's Topic Alias Maximum allows; later deliveries to it carry the alias
/// and an empty topic. Aliases are never reassigned, so the client's table and ours cannot disagree.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    max: u16,
    assigned: std::collections::HashMap<String, u16>,
}

impl OutboundAliases {
    /// Aliases up to the client's Topic Alias Maximum (0: none).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { max, assigned: std::collections::HashMap::new() }
    }
}

/// A delivery that was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The packet exceeds the client's Maximum Packet Size: the server discards the message (MQTT 5 3.1.2.25).
    TooLarge,
}

/// Appends the packet for `out` to `buf`, encoded for `version`, with the expiry remaining at `now_ms`.
pub fn encode(
    out: &Outbound,
    version: Version,
    now_ms: u64,
    client_max_packet: usize,
    aliases: &mut OutboundAliases,
    buf: &mut Vec<u8>,
) -> Result<(), Skipped> {
    let (packet_id, dup, delivery) = match out {
        Outbound::PubRel(id) => {
            write(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, *id)), version, buf);
            return Ok(());
        }
        Outbound::Publish { packet_id, dup, delivery } => (*packet_id, *dup, delivery),
    };
    let message = &delivery.message;
    let qos = QoS::from_bits(delivery.qos).unwrap_or(QoS::AtMostOnce);
    let user_properties = message.properties.user_properties();
    let properties = if version.is_v5() {
        Properties {
            message_expiry_interval: message.remaining_expiry_secs(now_ms),
            subscription_identifiers: PropertyList::new(&delivery.subscription_ids),
            ..message.properties.to_properties(&user_properties)
        }
    } else {
        Properties::default()
    };
    let mut properties = properties;
    let mut topic = message.topic.as_str();
    let mut new_alias = false;
    if version.is_v5() && aliases.max > 0 {
        if let Some(&alias) = aliases.assigned.get(topic) {
            properties.topic_alias = Some(alias);
            topic = "";
        } else if let Ok(next) = u16::try_from(aliases.assigned.len() + 1)
            && next <= aliases.max
        {
            properties.topic_alias = Some(next);
            new_alias = true;
        }
    }
    let packet = Packet::Publish(Publish {
        dup: dup && qos != QoS::AtMostOnce,
        qos,
        retain: delivery.retain,
        topic,
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties,
        payload: &message.payload,
    });
    if packet.encoded_len(version) > client_max_packet {
        return Err(Skipped::TooLarge);
    }
    write(&packet, version, buf);
    if let (true, Some(alias)) = (new_alias, properties.topic_alias) {
        aliases.assigned.insert(message.topic.clone(), alias);
    }
    Ok(())
}

fn write(packet: &Packet<'_>, version: Version, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.resize(start + packet.encoded_len(version), 0);
    if let Err(e) = packet.encode(version, &mut buf[start..]) {
        // Only the broker's own packets are encoded here; a failure is a bug, not bad input.
        tracing::error!(error = %e, "could not encode an outgoing packet");
        buf.truncate(start);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::{Delivery, Message, MessageProperties};

    #[test]
    fn a_delivery_carries_its_properties_and_remaining_expiry() {
        let message = Message {
            topic: "a/b".into(),
            payload: b"hi".to_vec(),
            qos: 2,
            retain: true,
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(vec![7]),
                user_properties: vec![("k".into(), "v".into())],
                ..MessageProperties::default()
            },
            publisher: "p".into(),
            expires_at_ms: Some(60_000),
            event: None,
        };
        let delivery = Delivery::new(Arc::new(message), 1, true, vec![4, 9], None);
        let out = Outbound::Publish { packet_id: 3, dup: true, delivery };
        let mut buf = Vec::new();
        encode(&out, Version::V5, 30_500, 1 << 20, &mut OutboundAliases::default(), &mut buf).unwrap();
        let (packet, used) = Packet::decode(&buf, Version::V5, 1 << 20).unwrap();
        assert_eq!(used, buf.len());
        let Packet::Publish(p) = packet else { panic!("{packet:?}") };
        assert_eq!((p.dup, p.qos, p.retain, p.topic, p.packet_id), (true, QoS::AtLeastOnce, true, "a/b", Some(3)));
        assert_eq!(p.properties.message_expiry_interval, Some(30));
        assert_eq!(p.properties.content_type, Some("text/plain"));
        assert_eq!(p.properties.correlation_data, Some(&[7u8][..]));
        assert_eq!(p.properties.subscription_identifiers.iter().collect::<Vec<_>>(), [4, 9]);
        assert_eq!(p.properties.user_properties.iter().count(), 1);
        let mut small = Vec::new();
        let mut aliases = OutboundAliases::new(1);
        assert_eq!(encode(&out, Version::V5, 0, 10, &mut aliases, &mut small), Err(Skipped::TooLarge));
        assert!(small.is_empty());
        assert!(aliases.assigned.is_empty(), "no alias for a packet never sent");
    }

    #[test]
    fn topics_get_aliases_up_to_the_clients_maximum() {
        let delivery = |topic: &str| {
            let message = Message {
                topic: topic.into(),
                payload: vec![],
                qos: 0,
                retain: false,
                properties: MessageProperties::default(),
                publisher: String::new(),
                expires_at_ms: None,
                event: None,
            };
            let delivery = Delivery::new(Arc::new(message), 0, false, vec![], None);
            Outbound::Publish { packet_id: 0, dup: false, delivery }
        };
        let mut aliases = OutboundAliases::new(1);
        let mut sent = Vec::new();
        for topic in ["a/long/topic", "a/long/topic", "b"] {
            let mut buf = Vec::new();
            encode(&delivery(topic), Version::V5, 0, 1 << 20, &mut aliases, &mut buf).unwrap();
            let Ok((Packet::Publish(p), _)) = Packet::decode(&buf, Version::V5, 1 << 20) else { panic!() };
            sent.push((p.topic.to_string(), p.properties.topic_alias));
        }
        assert_eq!(
            sent,
            [("a/long/topic".into(), Some(1)), (String::new(), Some(1)), ("b".into(), None)],
            "first use names the topic, then the alias alone; none beyond the maximum"
        );
    }
}
