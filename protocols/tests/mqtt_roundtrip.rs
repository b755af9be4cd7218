//! Property tests: every packet type, in both versions, decodes to what was encoded, whatever its fields; and
//! decoding arbitrary bytes never panics and never claims more bytes than it was given.

use meshgate_protocols::mqtt::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, PropertyList, PubResponse, PubResponseKind, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe,
    UserProperty, Version, Will,
};
use proptest::prelude::*;

/// Owned values for every property; each packet takes the ones it may carry.
#[derive(Debug, Clone)]
struct OwnedProps {
    u32s: [Option<u32>; 4],
    u16s: [Option<u16>; 4],
    flags: [Option<bool>; 7],
    strings: [Option<String>; 6],
    bins: [Option<Vec<u8>>; 2],
    user: Vec<(String, String)>,
    sub_ids: Vec<u32>,
    max_qos: Option<bool>,
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é€😀/_-]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_name(),
        Just("#".to_string()),
        Just("a/+/b".to_string()),
        Just("+/#".to_string()),
        Just("$share/g/x/+".to_string())
    ]
}

fn owned_props() -> impl Strategy<Value = OwnedProps> {
    (
        proptest::array::uniform4(proptest::option::of(any::<u32>())),
        proptest::array::uniform4(proptest::option::of(1u16..)),
        proptest::array::uniform7(proptest::option::of(any::<bool>())),
        proptest::array::uniform6(proptest::option::of(text())),
        proptest::array::uniform2(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))),
        proptest::collection::vec((text(), text()), 0..3),
        proptest::collection::vec(1u32..268_435_455, 0..3),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(u32s, u16s, flags, strings, bins, user, sub_ids, max_qos)| OwnedProps {
            u32s,
            u16s,
            flags,
            strings,
            bins,
            user,
            sub_ids,
            max_qos,
        })
}

enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Other,
    UserOnly,
    Auth,
    Disconnect,
}

fn props<'a>(o: &'a OwnedProps, user: &'a [UserProperty<'a>], ctx: Ctx) -> Properties<'a> {
    let s = |i: usize| o.strings[i].as_deref();
    let mut p = Properties { user_properties: PropertyList::new(user), ..Properties::default() };
    match ctx {
        Ctx::Connect => {
            p.session_expiry_interval = o.u32s[0];
            p.receive_maximum = o.u16s[0];
            p.topic_alias_maximum = o.u16s[1];
            p.maximum_packet_size = o.u32s[1].filter(|&v| v > 0);
            p.request_problem_information = o.flags[0];
            p.request_response_information = o.flags[1];
            p.authentication_method = s(0);
            p.authentication_data = o.bins[0].as_deref();
        }
        Ctx::Will => {
            p.payload_format_utf8 = o.flags[0];
            p.message_expiry_interval = o.u32s[0];
            p.content_type = s(0);
            p.correlation_data = o.bins[0].as_deref();
            p.will_delay_interval = o.u32s[1];
        }
        Ctx::ConnAck => {
            p.session_expiry_interval = o.u32s[0];
            p.assigned_client_identifier = s(0);
            p.server_keep_alive = o.u16s[0];
            p.response_information = s(1);
            p.server_reference = s(2);
            p.reason_string = s(3);
            p.receive_maximum = o.u16s[1];
            p.topic_alias_maximum = o.u16s[2];
            p.maximum_qos = o.max_qos.map(|b| if b { QoS::AtLeastOnce } else { QoS::AtMostOnce });
            p.retain_available = o.flags[0];
            p.maximum_packet_size = o.u32s[1].filter(|&v| v > 0);
            p.wildcard_subscription_available = o.flags[1];
            p.subscription_identifier_available = o.flags[2];
            p.shared_subscription_available = o.flags[3];
            p.authentication_method = s(4);
            p.authentication_data = o.bins[1].as_deref();
        }
        Ctx::Publish => {
            p.payload_format_utf8 = o.flags[0];
            p.message_expiry_interval = o.u32s[0];
            p.content_type = s(0);
            p.response_topic = s(1).filter(|t| !t.is_empty() && !t.contains(['+', '#']));
            p.correlation_data = o.bins[0].as_deref();
            p.topic_alias = o.u16s[0];
            p.subscription_identifiers = PropertyList::new(&o.sub_ids);
        }
        Ctx::Subscribe => p.subscription_identifiers = PropertyList::new(&o.sub_ids[..o.sub_ids.len().min(1)]),
        Ctx::Ack | Ctx::Other => p.reason_string = s(0),
        Ctx::UserOnly => {}
        Ctx::Auth => {
            p.authentication_method = s(0);
            p.authentication_data = o.bins[0].as_deref();
            p.reason_string = s(1);
        }
        Ctx::Disconnect => {
            p.session_expiry_interval = o.u32s[0];
            p.server_reference = s(0);
            p.reason_string = s(1);
        }
    }
    p
}

fn assert_round_trip(packet: &Packet<'_>, version: Version) -> Result<(), TestCaseError> {
    let len = packet.encoded_len(version);
    let mut buf = vec![0u8; len];
    let n = packet.encode(version, &mut buf).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(n, len);
    let (decoded, used) =
        Packet::decode(&buf, version, usize::MAX).map_err(|e| TestCaseError::fail(format!("{e}: {packet:?}")))?;
    prop_assert_eq!(used, len);
    prop_assert_eq!(&decoded, packet);
    // Every strict prefix is incomplete, never an error or a panic.
    for cut in 0..len {
        let partial = Packet::decode(&buf[..cut], version, usize::MAX);
        let incomplete = matches!(partial, Err(meshgate_protocols::mqtt::DecodeError::Incomplete { .. }));
        prop_assert!(incomplete, "prefix of {} bytes gave {:?}", cut, partial);
    }
    Ok(())
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn connect_round_trips(
        version in version(), o in owned_props(), wo in owned_props(), clean in any::<bool>(), keep_alive in any::<u16>(),
        client_id in "[a-zA-Z0-9-]{0,23}", will in proptest::option::of((topic_name(), proptest::collection::vec(any::<u8>(), 0..16), qos(), any::<bool>())),
        username in proptest::option::of(text()), password in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        mqtt31 in any::<bool>(),
    ) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let v5 = version == Version::V5;
        let (p, wp) = if v5 { (props(&o, &user, Ctx::Connect), props(&wo, &user, Ctx::Will)) } else { Default::default() };
        // 3.1.1 forbids a password without a user name.
        let password = if v5 || username.is_some() { password.as_deref() } else { None };
        let packet = Packet::Connect(Connect {
            version, clean_start: clean, keep_alive, properties: p, client_id: &client_id,
            will: will.as_ref().map(|(t, pl, q, r)| Will { topic: t, payload: pl, qos: *q, retain: *r, properties: wp }),
            username: username.as_deref(), password, mqtt31: mqtt31 && !v5,
        });
        assert_round_trip(&packet, version)?;
    }

    #[test]
    fn connack_round_trips(version in version(), o in owned_props(), sp in any::<bool>(), code in prop_oneof![Just(0u8), Just(0x86), Just(0x87), Just(0x9f)]) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let v5 = version == Version::V5;
        let code = if v5 { ReasonCode(code) } else { ReasonCode(ReasonCode(code).to_v311_connack()) };
        let p = if v5 { props(&o, &user, Ctx::ConnAck) } else { Properties::default() };
        assert_round_trip(&Packet::ConnAck(ConnAck { session_present: sp, code, properties: p }), version)?;
    }

    #[test]
    fn publish_round_trips(version in version(), o in owned_props(), q in qos(), dup in any::<bool>(), retain in any::<bool>(),
        topic in topic_name(), id in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let p = if version == Version::V5 { props(&o, &user, Ctx::Publish) } else { Properties::default() };
        let packet = Packet::Publish(Publish {
            dup: dup && q != QoS::AtMostOnce, qos: q, retain, topic: &topic,
            packet_id: (q != QoS::AtMostOnce).then_some(id), properties: p, payload: &payload,
        });
        assert_round_trip(&packet, version)?;
    }

    #[test]
    fn publish_responses_round_trip(version in version(), o in owned_props(), kind in 0..4usize, id in 1u16.., reason in prop_oneof![Just(0u8), Just(0x10), Just(0x92), Just(0x99)]) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let kind = [PubResponseKind::PubAck, PubResponseKind::PubRec, PubResponseKind::PubRel, PubResponseKind::PubComp][kind];
        let v5 = version == Version::V5;
        let reason = match (v5, kind, reason) {
            (false, ..) => 0,
            (_, PubResponseKind::PubRel | PubResponseKind::PubComp, r) if r != 0x92 => 0,
            (_, PubResponseKind::PubAck | PubResponseKind::PubRec, 0x92) => 0x10,
            (_, _, r) => r,
        };
        let p = if v5 { props(&o, &user, Ctx::Ack) } else { Properties::default() };
        let packet = Packet::PubResponse(PubResponse { kind, packet_id: id, reason: ReasonCode(reason), properties: p });
        assert_round_trip(&packet, version)?;
    }

    #[test]
    fn subscribe_and_suback_round_trip(version in version(), o in owned_props(), id in 1u16..,
        filters in proptest::collection::vec((topic_filter(), qos(), any::<bool>(), any::<bool>(), 0..3u8), 1..5),
        codes in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 0..5)) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let v5 = version == Version::V5;
        let items: Vec<SubscribeFilter> = filters.iter().map(|(f, q, nl, rap, rh)| SubscribeFilter {
            filter: f,
            options: SubscriptionOptions {
                qos: *q, no_local: v5 && *nl, retain_as_published: v5 && *rap,
                retain_handling: if v5 { [RetainHandling::SendOnSubscribe, RetainHandling::SendIfNew, RetainHandling::DoNotSend][*rh as usize] } else { RetainHandling::SendOnSubscribe },
            },
        }).collect();
        let p = if v5 { props(&o, &user, Ctx::Subscribe) } else { Properties::default() };
        let packet = Packet::Subscribe(Subscribe { packet_id: id, properties: p, filters: meshgate_protocols::mqtt::List::new(&items) });
        assert_round_trip(&packet, version)?;
        let p = if v5 { props(&o, &user, Ctx::Other) } else { Properties::default() };
        assert_round_trip(&Packet::SubAck(SubAck { packet_id: id, properties: p, codes: &codes }), version)?;
    }

    #[test]
    fn unsubscribe_and_unsuback_round_trip(version in version(), o in owned_props(), id in 1u16..,
        filters in proptest::collection::vec(topic_filter(), 1..5), codes in proptest::collection::vec(prop_oneof![Just(0u8), Just(0x11), Just(0x87)], 0..5)) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        let v5 = version == Version::V5;
        let items: Vec<&str> = filters.iter().map(String::as_str).collect();
        let p = if v5 { props(&o, &user, Ctx::UserOnly) } else { Properties::default() };
        let packet = Packet::Unsubscribe(Unsubscribe { packet_id: id, properties: p, filters: meshgate_protocols::mqtt::List::new(&items) });
        assert_round_trip(&packet, version)?;
        let codes: &[u8] = if v5 { &codes } else { &[] };
        let p = if v5 { props(&o, &user, Ctx::Other) } else { Properties::default() };
        assert_round_trip(&Packet::UnsubAck(UnsubAck { packet_id: id, properties: p, codes }), version)?;
    }

    #[test]
    fn ping_disconnect_and_auth_round_trip(version in version(), o in owned_props(), reason in prop_oneof![Just(0u8), Just(0x04), Just(0x8e), Just(0x99)], auth_reason in prop_oneof![Just(0u8), Just(0x18), Just(0x19)]) {
        let user: Vec<UserProperty> = o.user.iter().map(|(k, v)| UserProperty { name: k, value: v }).collect();
        assert_round_trip(&Packet::PingReq, version)?;
        assert_round_trip(&Packet::PingResp, version)?;
        let v5 = version == Version::V5;
        let d = if v5 { Disconnect { reason: ReasonCode(reason), properties: props(&o, &user, Ctx::Disconnect) } } else { Disconnect::default() };
        assert_round_trip(&Packet::Disconnect(d), version)?;
        if v5 {
            let a = Auth { reason: ReasonCode(auth_reason), properties: props(&o, &user, Ctx::Auth) };
            assert_round_trip(&Packet::Auth(a), version)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..256), version in version()) {
        if let Ok((packet, used)) = Packet::decode(&bytes, version, 1 << 20) {
            prop_assert!(used <= bytes.len());
            // What decodes re-encodes to a packet that decodes to the same value.
            let mut buf = vec![0u8; packet.encoded_len(version)];
            let n = packet.encode(version, &mut buf).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let (again, _) = Packet::decode(&buf[..n], version, 1 << 20).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(again, packet);
        }
    }
}
