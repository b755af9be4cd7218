//! Golden bytes: packets as the specifications and real clients put them on the wire, decoded and re-encoded
//! byte for byte; and malformed packets from the specifications' "MUST" rules, each with its precise error.

use meshgate_protocols::mqtt::{DecodeError, Malformed, Packet, QoS, ReasonCode, Version};

/// CONNECT from `mosquitto_pub -V mqttv311 -i thermo-7 -q 1` (keep-alive 60, clean session).
const CONNECT_311: &[u8] = b"\x10\x14\x00\x04MQTT\x04\x02\x00\x3c\x00\x08thermo-7";
/// MQTT 5 PUBLISH QoS 1, id 1, topic "a/b", Content Type "text/plain", User Property ("k","v"), payload "hi".
const PUBLISH_5: &[u8] = b"\x32\x1f\x00\x03a/b\x00\x01\x14\x03\x00\x0atext/plain\x26\x00\x01k\x00\x01v hi";

#[test]
fn a_mosquitto_connect_decodes_and_reencodes_byte_for_byte() {
    let (p, used) = Packet::decode(CONNECT_311, Version::V5, 1024).unwrap();
    assert_eq!(used, CONNECT_311.len());
    let Packet::Connect(c) = p else { panic!("{p:?}") };
    assert_eq!((c.version, c.client_id, c.keep_alive, c.clean_start), (Version::V311, "thermo-7", 60, true));
    let mut out = [0u8; 64];
    let n = p.encode(Version::V311, &mut out).unwrap();
    assert_eq!(&out[..n], CONNECT_311);
}

/// CONNECT from `mosquitto_pub -V mqttv31 -i old-7` (MQTT 3.1: protocol name `MQIsdp`, level 3).
const CONNECT_31: &[u8] = b"\x10\x13\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x05old-7";

#[test]
fn an_mqtt_31_connect_is_read_as_311_and_reencoded_as_31() {
    let (p, used) = Packet::decode(CONNECT_31, Version::V5, 1024).unwrap();
    assert_eq!(used, CONNECT_31.len());
    let Packet::Connect(c) = p else { panic!("{p:?}") };
    assert_eq!((c.version, c.mqtt31, c.client_id), (Version::V311, true, "old-7"));
    let mut out = [0u8; 64];
    let n = p.encode(Version::V311, &mut out).unwrap();
    assert_eq!(&out[..n], CONNECT_31);
    let level_4 = b"\x10\x13\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x05old-7";
    assert_eq!(
        Packet::decode(level_4, Version::V5, 1024).unwrap_err(),
        DecodeError::Malformed(Malformed::UnsupportedProtocolVersion(4)),
        "MQIsdp is level 3 only"
    );
}

#[test]
fn a_v5_publish_with_properties_decodes_and_reencodes_byte_for_byte() {
    let (p, used) = Packet::decode(PUBLISH_5, Version::V5, 1024).unwrap();
    assert_eq!(used, PUBLISH_5.len());
    let Packet::Publish(publish) = p else { panic!("{p:?}") };
    assert_eq!((publish.qos, publish.packet_id, publish.topic), (QoS::AtLeastOnce, Some(1), "a/b"));
    assert_eq!(publish.properties.content_type, Some("text/plain"));
    let user: Vec<_> = publish.properties.user_properties.iter().map(|u| (u.name, u.value)).collect();
    assert_eq!(user, [("k", "v")]);
    assert_eq!(publish.payload, b" hi");
    let mut out = [0u8; 64];
    let n = p.encode(Version::V5, &mut out).unwrap();
    assert_eq!(&out[..n], PUBLISH_5);
}

#[test]
fn short_acknowledgements_mean_success_in_v5() {
    let (p, _) = Packet::decode(&[0x40, 0x02, 0x00, 0x07], Version::V5, 16).unwrap();
    let Packet::PubResponse(ack) = p else { panic!("{p:?}") };
    assert_eq!((ack.packet_id, ack.reason), (7, ReasonCode::SUCCESS));
    let (p, _) = Packet::decode(&[0xe0, 0x00], Version::V5, 16).unwrap();
    assert_eq!(p, Packet::Disconnect(Default::default()));
}

#[test]
fn receivers_report_each_broken_rule_precisely() {
    let cases: &[(&[u8], Version, DecodeError)] = &[
        (b"\x00\x00", Version::V5, DecodeError::Malformed(Malformed::UnknownPacketType(0))),
        (b"\x30\x80\x00", Version::V5, DecodeError::Malformed(Malformed::RemainingLength)),
        (b"\x30\xff\xff\xff\xff\x01", Version::V5, DecodeError::Malformed(Malformed::RemainingLength)),
        (b"\xc1\x00", Version::V5, DecodeError::Malformed(Malformed::ReservedFlags { packet_type: 12, flags: 1 })),
        (b"\x36\x05\x00\x01a\x00\x01", Version::V5, DecodeError::Malformed(Malformed::InvalidQoS)),
        (b"\x38\x03\x00\x01a", Version::V311, DecodeError::Malformed(Malformed::DupWithQoS0)),
        (b"\x32\x05\x00\x01a\x00\x00", Version::V311, DecodeError::Malformed(Malformed::ZeroPacketId)),
        (b"\x30\x04\x00\x02a#", Version::V311, DecodeError::Malformed(Malformed::WildcardInTopicName)),
        (b"\x30\x04\x00\x02a\x00", Version::V311, DecodeError::Malformed(Malformed::NullCharacter)),
        (b"\x30\x05\x00\x03\xed\xa0\x80", Version::V311, DecodeError::Malformed(Malformed::InvalidUtf8)),
        (b"\x82\x03\x00\x01\x00", Version::V5, DecodeError::Malformed(Malformed::NoTopicFilters)),
        (b"\x82\x06\x00\x01\x00\x01a\x04", Version::V311, DecodeError::Malformed(Malformed::SubscriptionOptions)),
        (b"\x82\x06\x00\x01\x00\x01a\x30", Version::V5, DecodeError::Malformed(Malformed::Truncated)),
        (
            b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00",
            Version::V5,
            DecodeError::Malformed(Malformed::UnsupportedProtocolVersion(6)),
        ),
        (
            b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00",
            Version::V5,
            DecodeError::Malformed(Malformed::ConnectReservedFlag),
        ),
        (
            b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x3c\x00\x00",
            Version::V5,
            DecodeError::Malformed(Malformed::PasswordWithoutUsername),
        ),
        (b"\x10\x0c\x00\x04MQTT\x04\x12\x00\x3c\x00\x00", Version::V5, DecodeError::Malformed(Malformed::WillFlags)),
        (b"\xf0\x00", Version::V311, DecodeError::Malformed(Malformed::UnknownPacketType(15))),
        (b"\xe0\x01\x91", Version::V5, DecodeError::Malformed(Malformed::InvalidReasonCode(0x91))),
        (b"\x30\x09", Version::V5, DecodeError::Incomplete { needed: 9 }),
        (b"\x30\xff\x7f", Version::V5, DecodeError::TooLarge { size: 16386, max: 1024 }),
    ];
    for (bytes, version, expected) in cases {
        assert_eq!(Packet::decode(bytes, *version, 1024).map(|(_, n)| n), Err(*expected), "{bytes:02x?}");
    }
}

#[test]
fn subscribe_options_with_retain_handling_3_are_malformed() {
    // topic "a", options 0x30 (retain handling 3).
    let bytes = b"\x82\x07\x00\x01\x00\x00\x01a\x30";
    assert_eq!(
        Packet::decode(bytes, Version::V5, 1024).map(|(_, n)| n),
        Err(DecodeError::Malformed(Malformed::SubscriptionOptions))
    );
}
