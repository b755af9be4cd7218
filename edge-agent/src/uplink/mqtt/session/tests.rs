//! The client session against a scripted broker: bytes in, bytes out, on a fake clock.

use super::*;

fn options(version: Version) -> ConnectOptions {
    ConnectOptions {
        version,
        client_id: "up".into(),
        username: None,
        password: None,
        keep_alive_secs: 10,
        session_expiry_secs: 3600,
    }
}

fn message(n: u8, qos: u8) -> Message {
    Message { topic: format!("t/{n}"), qos, payload: vec![n], ..Message::default() }
}

fn bytes(packet: Packet<'_>, version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(encode(&packet, version, &mut out));
    out
}

fn connack(present: bool, code: u8, receive_maximum: Option<u16>) -> Packet<'static> {
    let properties = Properties { receive_maximum, ..Properties::default() };
    Packet::ConnAck(ConnAck { session_present: present, code: ReasonCode(code), properties })
}

fn response(kind: PubResponseKind, id: u16, code: u8) -> Packet<'static> {
    Packet::PubResponse(PubResponse {
        kind,
        packet_id: id,
        reason: ReasonCode(code),
        properties: Properties::default(),
    })
}

/// Every packet the session sent, decoded as a broker reads them: (type, packet id, dup, clean start).
fn sent(s: &mut ClientSession, version: Version, now: Instant) -> Vec<(String, Option<u16>, bool, bool)> {
    let mut out = Vec::new();
    s.poll_transmit(&mut out, now);
    let mut packets = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let (p, used) = Packet::decode(&out[at..], version, usize::MAX).expect("the session sends valid packets");
        packets.push(match p {
            Packet::Publish(p) => ("PUBLISH".into(), p.packet_id, p.dup, false),
            Packet::PubResponse(r) => (format!("{:?}", r.kind), Some(r.packet_id), false, false),
            Packet::Connect(c) => ("CONNECT".into(), None, false, c.clean_start),
            other => (format!("{:?}", other.packet_type()), None, false, false),
        });
        at += used;
    }
    packets
}

fn events(s: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn publishes_wait_for_the_connack_and_are_confirmed_by_puback_within_the_receive_maximum() {
    let v = Version::V5;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    for n in 1..=3 {
        s.publish(u64::from(n), message(n, 1));
    }
    let first = sent(&mut s, v, now);
    assert_eq!(first.len(), 1, "only CONNECT before the CONNACK: {first:?}");
    assert!(first[0].3, "the first connection starts clean");
    s.handle_input(&bytes(connack(false, 0, Some(2)), v), now);
    assert_eq!(events(&mut s), [Event::Connected { session_present: false }]);
    let publishes = sent(&mut s, v, now);
    assert_eq!(publishes.iter().map(|p| p.1).collect::<Vec<_>>(), [Some(1), Some(2)], "the broker's maximum is 2");
    s.handle_input(&bytes(response(PubResponseKind::PubAck, 2, 0x10), v), now);
    s.handle_input(&bytes(response(PubResponseKind::PubAck, 1, 0x87), v), now);
    assert_eq!(events(&mut s), [Event::Confirmed(2), Event::Rejected(1, 0x87)], "no matching subscribers is success");
    assert_eq!(sent(&mut s, v, now).len(), 1, "the third went out once the window had room");
    s.handle_input(&bytes(response(PubResponseKind::PubAck, 9, 0), v), now);
    assert_eq!(events(&mut s), [], "an answer to nothing is ignored");
}

#[test]
fn a_resumed_session_resends_with_dup_and_releases_received_qos2_messages() {
    let v = Version::V311;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    s.handle_input(&bytes(connack(false, 0, None), v), now);
    s.publish(1, message(1, 2));
    s.publish(2, message(2, 2));
    s.publish(3, message(3, 1));
    let _ = sent(&mut s, v, now);
    s.handle_input(&bytes(response(PubResponseKind::PubRec, 1, 0), v), now);
    assert_eq!(sent(&mut s, v, now), [("PubRel".into(), Some(1), false, false)]);
    s.connection_lost();

    s.connect(now);
    let connect = sent(&mut s, v, now);
    assert!(!connect[0].3, "a reconnection resumes the session");
    s.handle_input(&bytes(connack(true, 0, None), v), now);
    assert_eq!(
        sent(&mut s, v, now),
        [
            ("PubRel".into(), Some(1), false, false),
            ("PUBLISH".into(), Some(2), true, false),
            ("PUBLISH".into(), Some(3), true, false),
        ]
    );
    s.handle_input(&bytes(response(PubResponseKind::PubComp, 1, 0), v), now);
    s.handle_input(&bytes(response(PubResponseKind::PubAck, 3, 0), v), now);
    s.handle_input(&bytes(response(PubResponseKind::PubRec, 2, 0), v), now);
    s.handle_input(&bytes(response(PubResponseKind::PubComp, 2, 0), v), now);
    assert_eq!(events(&mut s)[2..], [Event::Confirmed(1), Event::Confirmed(3), Event::Confirmed(2)]);
    assert_eq!(s.pending(), 0);
}

#[test]
fn a_lost_session_sends_everything_again_as_new() {
    let v = Version::V5;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    s.handle_input(&bytes(connack(false, 0, None), v), now);
    s.publish(1, message(1, 2));
    let _ = sent(&mut s, v, now);
    s.handle_input(&bytes(response(PubResponseKind::PubRec, 1, 0), v), now);
    s.connection_lost();
    s.connect(now);
    s.handle_input(&bytes(connack(false, 0, None), v), now);
    assert_eq!(sent(&mut s, v, now)[1..], [("PUBLISH".into(), Some(1), false, false)]);
}

#[test]
fn keep_alive_pings_and_gives_up_on_a_silent_broker() {
    let v = Version::V5;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    s.handle_input(&bytes(connack(false, 0, None), v), now);
    let _ = sent(&mut s, v, now);
    let due = s.poll_timeout().expect("a keep-alive timer");
    assert_eq!(due, now + Duration::from_secs(10));
    s.handle_timeout(due);
    assert_eq!(sent(&mut s, v, due)[0].0, "PingReq");
    s.handle_timeout(due + Duration::from_secs(10));
    assert!(matches!(events(&mut s)[1..], [Event::Lost(_)]));
    assert!(!s.is_up());
}

#[test]
fn a_refused_connection_and_a_malformed_answer_are_reported() {
    let v = Version::V5;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    s.handle_input(&bytes(connack(false, 0x86, None), v), now);
    assert_eq!(events(&mut s), [Event::ConnectRefused(0x86)]);
    s.connect(now);
    s.handle_input(&[0x20, 0x02, 0x02, 0x00], now);
    assert!(matches!(events(&mut s)[..], [Event::Lost(_)]), "CONNACK flags 0x02 are malformed");
}

#[test]
fn split_and_coalesced_input_decodes_the_same() {
    let v = Version::V311;
    let now = Instant::now();
    let mut s = ClientSession::new(options(v), 8);
    s.connect(now);
    let mut all = bytes(connack(false, 0, None), v);
    s.publish(1, message(1, 1));
    s.publish(2, message(2, 1));
    all.extend(bytes(response(PubResponseKind::PubAck, 1, 0), v));
    all.extend(bytes(response(PubResponseKind::PubAck, 2, 0), v));
    for b in all.chunks(1) {
        s.handle_input(b, now);
    }
    assert_eq!(events(&mut s), [Event::Connected { session_present: false }, Event::Confirmed(1), Event::Confirmed(2)]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes from a broker, cut anywhere: no panic, the same events as one piece, each publish answered
        /// at most once.
        #[test]
        fn any_broker_bytes_in_any_pieces_give_the_same_events(
            input in proptest::collection::vec(any::<u8>(), 0..256),
            cut in 0usize..256,
            v5 in any::<bool>(),
        ) {
            let v = if v5 { Version::V5 } else { Version::V311 };
            let now = Instant::now();
            let run = |pieces: &[&[u8]]| {
                let mut s = ClientSession::new(options(v), 4);
                s.connect(now);
                let mut prefix = bytes(connack(false, 0, None), v);
                prefix.extend_from_slice(pieces[0]);
                for n in 1..=3 {
                    s.publish(u64::from(n), message(n, 1 + n % 2));
                }
                s.handle_input(&prefix, now);
                for piece in &pieces[1..] {
                    s.handle_input(piece, now);
                }
                events(&mut s)
            };
            let cut = cut.min(input.len());
            let whole = run(&[&input]);
            let split = run(&[&input[..cut], &input[cut..]]);
            prop_assert_eq!(&whole, &split);
            let answered: Vec<u64> = whole
                .iter()
                .filter_map(|e| match e { Event::Confirmed(t) | Event::Rejected(t, _) => Some(*t), _ => None })
                .collect();
            let mut unique = answered.clone();
            unique.dedup();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), answered.len());
        }
    }
}
