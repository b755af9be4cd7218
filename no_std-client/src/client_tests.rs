//! The client against a server played by the test with the same codec: connect, publish within the server's
//! limits, acknowledgements, resends after a reconnect, received messages, keep-alive, and hostile bytes.

use std::string::ToString;
use std::vec::Vec;

use meshgate_protocols::mqtt::{Properties, SubAck, SubscriptionOptions};

use super::*;

const V5: Version = Version::V5;

fn server(packet: &Packet<'_>) -> Vec<u8> {
    let mut out = std::vec![0u8; packet.encoded_len(V5)];
    let n = packet.encode(V5, &mut out).expect("encode");
    out.truncate(n);
    out
}

fn decoded(bytes: &[u8]) -> Packet<'_> {
    Packet::decode(bytes, V5, usize::MAX).expect("the client sent a valid packet").0
}

fn connack(session_present: bool, properties: Properties<'static>) -> Vec<u8> {
    server(&Packet::ConnAck(ConnAck { session_present, code: ReasonCode::SUCCESS, properties }))
}

fn connected<'a>(arena: &'a mut [u8], properties: Properties<'static>) -> Client<'a, 4> {
    let mut c = Client::new(V5, arena);
    let mut out = [0u8; 256];
    let connect = Connect { version: V5, clean_start: false, keep_alive: 10, client_id: "dev-1", ..Connect::default() };
    let n = c.connect(&connect, 0, &mut out).unwrap();
    assert!(matches!(decoded(&out[..n]), Packet::Connect(c) if c.client_id == "dev-1"));
    let ack = connack(false, properties);
    assert_eq!(c.handle(&ack, 0), Ok(Some((ack.len(), Event::Connected { session_present: false }))));
    c
}

fn qos1(topic: &str) -> Publish<'_> {
    Publish { topic, qos: QoS::AtLeastOnce, payload: b"21.5", ..Publish::default() }
}

#[test]
fn publishes_stay_within_the_servers_receive_maximum_and_packet_size() {
    let mut arena = [0u8; 256];
    let props = Properties { receive_maximum: Some(2), maximum_packet_size: Some(64), ..Properties::default() };
    let mut c = connected(&mut arena, props);
    let mut out = [0u8; 256];
    let (_, first) = c.publish(&qos1("t/a"), 0, &mut out).unwrap();
    let (_, second) = c.publish(&qos1("t/b"), 0, &mut out).unwrap();
    assert_eq!((first, second), (Some(1), Some(2)));
    assert_eq!(c.publish(&qos1("t/c"), 0, &mut out), Err(Error::InflightFull), "Receive Maximum 2");
    let ack = server(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, 1)));
    assert!(matches!(c.handle(&ack, 0), Ok(Some((_, Event::Acknowledged { packet_id: 1, .. })))));
    assert!(c.publish(&qos1("t/c"), 0, &mut out).is_ok());
    let big = Publish { topic: "t", payload: &[0; 100], ..Publish::default() };
    assert_eq!(c.publish(&big, 0, &mut out), Err(Error::PacketTooLarge), "Maximum Packet Size 64");
    let (n, id) = c.publish(&Publish { topic: "t/0", payload: b"x", ..Publish::default() }, 0, &mut out).unwrap();
    assert_eq!(id, None, "QoS 0 is not kept");
    assert!(matches!(decoded(&out[..n]), Packet::Publish(p) if p.packet_id.is_none()));
}

#[test]
fn unacknowledged_publishes_are_resent_with_dup_after_a_reconnect() {
    let mut arena = [0u8; 256];
    let mut c = connected(&mut arena, Properties::default());
    let mut out = [0u8; 256];
    for topic in ["t/1", "t/2", "t/3"] {
        c.publish(&qos1(topic), 0, &mut out).unwrap();
    }
    let ack = server(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubAck, 2)));
    c.handle(&ack, 0).unwrap();
    c.connection_lost();
    assert_eq!(c.publish(&qos1("t/4"), 0, &mut out), Err(Error::NotConnected));
    let connect = Connect { version: V5, keep_alive: 10, client_id: "dev-1", ..Connect::default() };
    c.connect(&connect, 100, &mut out).unwrap();
    let ack = connack(true, Properties::default());
    assert_eq!(c.handle(&ack, 100), Ok(Some((ack.len(), Event::Connected { session_present: true }))));
    let mut resent = Vec::new();
    loop {
        let n = c.poll_transmit(100, &mut out).unwrap();
        if n == 0 {
            break;
        }
        match decoded(&out[..n]) {
            Packet::Publish(p) => resent.push((p.packet_id, p.dup, p.topic.to_string())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        resent,
        [(Some(1), true, "t/1".to_string()), (Some(3), true, "t/3".to_string())],
        "the two unacknowledged ones, in order, flagged DUP"
    );
    assert_eq!(c.in_flight(), 2);
}

#[test]
fn received_qos1_messages_are_acknowledged_and_subscriptions_answered() {
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default());
    let mut out = [0u8; 128];
    let filters = [SubscribeFilter {
        filter: "devices/dev-1/commands/#",
        options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
    }];
    let n = c.subscribe(7, &filters, 0, &mut out).unwrap();
    assert!(matches!(decoded(&out[..n]), Packet::Subscribe(s) if s.packet_id == 7));
    let suback = server(&Packet::SubAck(SubAck { packet_id: 7, properties: Properties::default(), codes: &[1] }));
    assert!(matches!(c.handle(&suback, 0), Ok(Some((_, Event::Subscribed { packet_id: 7, codes: [1] })))));
    let command = Publish {
        topic: "devices/dev-1/commands/blink",
        qos: QoS::AtLeastOnce,
        packet_id: Some(42),
        payload: b"3",
        ..Publish::default()
    };
    let wire = server(&Packet::Publish(command));
    match c.handle(&wire, 0) {
        Ok(Some((_, Event::Message(p)))) => {
            assert_eq!((p.topic, p.payload), ("devices/dev-1/commands/blink", &b"3"[..]))
        }
        other => panic!("{other:?}"),
    }
    let n = c.poll_transmit(0, &mut out).unwrap();
    assert!(
        matches!(decoded(&out[..n]), Packet::PubResponse(r) if r.packet_id == 42 && r.kind == PubResponseKind::PubAck)
    );
}

#[test]
fn keep_alive_pings_and_an_unanswered_ping_ends_the_connection() {
    let mut arena = [0u8; 64];
    let mut c = connected(&mut arena, Properties::default());
    let mut out = [0u8; 16];
    assert_eq!(c.poll_timeout(), Some(10_000));
    assert_eq!(c.poll_transmit(5_000, &mut out), Ok(0));
    let n = c.poll_transmit(10_000, &mut out).unwrap();
    assert_eq!(decoded(&out[..n]), Packet::PingReq);
    let pong = server(&Packet::PingResp);
    c.handle(&pong, 10_500).unwrap();
    assert_eq!(c.handle_timeout(20_000), Ok(()));
    let n = c.poll_transmit(20_000, &mut out).unwrap();
    assert_eq!(decoded(&out[..n]), Packet::PingReq);
    assert_eq!(c.handle_timeout(30_000), Err(Error::KeepAliveTimeout));
    assert!(!c.is_connected());
}

#[test]
fn a_refused_connection_and_server_only_mistakes_are_errors() {
    let mut arena = [0u8; 64];
    let mut c: Client<'_, 4> = Client::new(V5, &mut arena);
    let mut out = [0u8; 64];
    c.connect(&Connect { version: V5, client_id: "x", ..Connect::default() }, 0, &mut out).unwrap();
    let refused = server(&Packet::ConnAck(ConnAck { code: ReasonCode::NOT_AUTHORIZED, ..ConnAck::default() }));
    assert_eq!(c.handle(&refused, 0), Err(Error::Refused(ReasonCode::NOT_AUTHORIZED)));
    assert_eq!(c.handle(&[0x20], 0), Ok(None), "an incomplete packet waits for more bytes");
    let connect_from_server = server(&Packet::Connect(Connect::default()));
    assert_eq!(c.handle(&connect_from_server, 0), Err(Error::Protocol));
}

proptest::proptest! {
    /// Whatever a hostile server sends, the client answers with an event or an error, never a panic, and never
    /// claims more bytes than it was given.
    #[test]
    fn arbitrary_server_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let mut arena = [0u8; 128];
        let mut c = connected(&mut arena, Properties::default());
        let mut out = [0u8; 128];
        let _ = c.publish(&qos1("t"), 0, &mut out);
        let mut rest = bytes.as_slice();
        while let Ok(Some((used, _))) = c.handle(rest, 0) {
            proptest::prop_assert!(used <= rest.len() && used > 0);
            rest = &rest[used..];
            let _ = c.poll_transmit(0, &mut out);
        }
    }
}
