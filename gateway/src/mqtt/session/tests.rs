//! The session's rules on a fake clock: bytes in, events and bytes out, time passed in by the test.

use meshgate_protocols::mqtt::{
    Connect, Disconnect, Packet, Properties, PubResponse, PubResponseKind, Publish, QoS, ReasonCode, Version, Will,
};

use super::*;

const CONFIG: SessionConfig = SessionConfig {
    max_packet_size: 1024,
    receive_maximum: 3,
    topic_alias_maximum: 4,
    max_keep_alive_secs: 0,
    connect_timeout_ms: 5_000,
    max_topic_levels: 4,
};

fn bytes(version: Version, packet: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0; packet.encoded_len(version)];
    packet.encode(version, &mut buf).expect("encode");
    buf
}

/// What the session sent, one line per packet, e.g. `PUBACK 1 0x00`.
fn sent(session: &mut ServerSession) -> Vec<String> {
    let version = session.version();
    let mut out = Vec::new();
    session.poll_transmit(&mut out);
    let mut lines = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let (packet, len) = Packet::decode(rest, version, usize::MAX).expect("the session sends valid packets");
        lines.push(match packet {
            Packet::ConnAck(c) => {
                let p = &c.properties;
                let mut line = format!("CONNACK {:#04x} present={}", c.code.0, c.session_present);
                if let Some(k) = p.server_keep_alive {
                    line += &format!(" keepalive={k}");
                }
                if let Some(m) = p.receive_maximum {
                    line += &format!(" receive_max={m}");
                }
                line
            }
            Packet::PubResponse(r) => {
                format!("{} {} {:#04x}", format!("{:?}", r.kind).to_uppercase(), r.packet_id, r.reason.0)
            }
            Packet::Disconnect(d) => format!("DISCONNECT {:#04x}", d.reason.0),
            Packet::PingResp => "PINGRESP".into(),
            Packet::SubAck(s) => format!("SUBACK {} {:?}", s.packet_id, s.codes),
            Packet::UnsubAck(u) => format!("UNSUBACK {} {:?}", u.packet_id, u.codes),
            Packet::Publish(p) => format!("PUBLISH {} {:?}", p.topic, p.packet_id),
            other => format!("{other:?}"),
        });
        rest = &rest[len..];
    }
    lines
}

fn connect(version: Version, keep_alive: u16) -> Connect<'static> {
    Connect { version, clean_start: true, keep_alive, client_id: "dev-1", ..Connect::default() }
}

/// A session that took `connect` at time 0 and was accepted.
fn connected(c: Connect<'_>) -> ServerSession {
    let mut s = ServerSession::new(CONFIG, 0);
    s.handle_input(&bytes(c.version, &Packet::Connect(c)), 0);
    assert!(matches!(s.poll_event(), Some(Event::Connect(_))));
    s.accept(Accepted::default(), 0);
    assert!(sent(&mut s)[0].starts_with("CONNACK 0x00"));
    s
}

fn publish(topic: &str, qos: QoS, id: u16) -> Publish<'_> {
    Publish { topic, qos, packet_id: (qos != QoS::AtMostOnce).then_some(id), payload: b"x", ..Publish::default() }
}

/// Feeds a packet and returns the tokens of the publishes it handed out.
fn feed(s: &mut ServerSession, packet: &Packet<'_>, now: u64) -> Vec<Token> {
    s.handle_input(&bytes(s.version(), packet), now);
    tokens(s)
}

/// Feeds a packet that ends the connection and returns how it ended.
fn feed_closed(s: &mut ServerSession, packet: &Packet<'_>, now: u64) -> Option<Close> {
    s.handle_input(&bytes(s.version(), packet), now);
    closed(s)
}

fn tokens(s: &mut ServerSession) -> Vec<Token> {
    let mut tokens = Vec::new();
    while let Some(event) = s.poll_event() {
        match event {
            Event::Publish { token, .. } | Event::Release { token, .. } => tokens.push(token),
            Event::Closed(_) => break,
            _ => {}
        }
    }
    tokens
}

fn closed(s: &mut ServerSession) -> Option<Close> {
    loop {
        match s.poll_event()? {
            Event::Closed(c) => return Some(c),
            _ => continue,
        }
    }
}

#[test]
fn nothing_but_connect_is_read_until_the_driver_accepts_it() {
    let mut s = ServerSession::new(CONFIG, 0);
    let mut input = bytes(Version::V5, &Packet::Connect(connect(Version::V5, 0)));
    input.extend(bytes(Version::V5, &Packet::Publish(publish("a", QoS::AtLeastOnce, 1))));
    s.handle_input(&input, 0);
    assert!(matches!(s.poll_event(), Some(Event::Connect(c)) if c.client_id == "dev-1"));
    assert!(s.poll_event().is_none(), "the publish waits for the CONNACK");
    s.accept(Accepted { session_present: true, ..Accepted::default() }, 1);
    assert_eq!(sent(&mut s), ["CONNACK 0x00 present=true receive_max=3"]);
    assert!(matches!(s.poll_event(), Some(Event::Publish { topic, .. }) if topic == "a"));
}

#[test]
fn connect_must_come_in_time_and_first() {
    let mut s = ServerSession::new(CONFIG, 1_000);
    assert_eq!(s.poll_timeout(), Some(6_000));
    s.handle_timeout(5_999);
    assert!(s.poll_event().is_none());
    s.handle_timeout(6_000);
    assert_eq!(closed(&mut s).map(|c| c.by), Some(ClosedBy::Timeout));
    assert!(sent(&mut s).is_empty(), "nothing is sent to a client that said nothing");

    let mut s = ServerSession::new(CONFIG, 0);
    s.handle_input(&bytes(Version::V5, &Packet::PingReq), 0);
    assert_eq!(closed(&mut s).map(|c| c.why), Some("first packet was not CONNECT"));
}

#[test]
fn an_unsupported_level_is_answered_in_a_form_the_client_reads() {
    // Level 3 (MQTT 3.1 sent with a 3.1.1 name) and level 6 do not exist.
    let mut connect = bytes(Version::V311, &Packet::Connect(connect(Version::V311, 0)));
    connect[8] = 2;
    let mut s = ServerSession::new(CONFIG, 0);
    s.handle_input(&connect, 0);
    let close = closed(&mut s).expect("closed");
    assert_eq!(close.reject, Some(RejectReason::UnsupportedVersion));
    assert_eq!(sent(&mut s), ["CONNACK 0x01 present=false"]);
}

#[test]
fn a_keep_alive_above_the_maximum_is_replaced_on_5_and_refused_on_3_1_1() {
    let config = SessionConfig { max_keep_alive_secs: 60, ..CONFIG };
    let mut s = ServerSession::new(config, 0);
    s.handle_input(&bytes(Version::V5, &Packet::Connect(connect(Version::V5, 0))), 0);
    assert!(matches!(s.poll_event(), Some(Event::Connect(_))));
    s.accept(Accepted::default(), 0);
    assert_eq!(sent(&mut s), ["CONNACK 0x00 present=false keepalive=60 receive_max=3"]);
    assert_eq!(s.poll_timeout(), Some(90_000), "1.5 times the server's keep-alive");

    let mut s = ServerSession::new(config, 0);
    s.handle_input(&bytes(Version::V311, &Packet::Connect(connect(Version::V311, 120))), 0);
    assert_eq!(closed(&mut s).map(|c| c.reject), Some(Some(RejectReason::ProtocolViolation)));
    assert_eq!(sent(&mut s), ["CONNACK 0x02 present=false"], "3.1.1 identifier rejected");
}

#[test]
fn the_keep_alive_lapses_after_one_and_a_half_times_without_input() {
    let mut s = connected(connect(Version::V5, 10));
    assert_eq!(s.poll_timeout(), Some(15_000));
    feed(&mut s, &Packet::PingReq, 10_000);
    assert_eq!(sent(&mut s), ["PINGRESP"]);
    assert_eq!(s.poll_timeout(), Some(25_000), "input starts the keep-alive again");
    s.handle_timeout(24_999);
    assert!(s.is_connected());
    s.handle_timeout(25_000);
    let close = closed(&mut s).expect("closed");
    assert_eq!((close.reason, close.reject), (ReasonCode::KEEP_ALIVE_TIMEOUT, Some(RejectReason::KeepAliveTimeout)));
    assert_eq!(sent(&mut s), ["DISCONNECT 0x8d"]);
}

#[test]
fn mqtt_5_past_receive_maximum_is_disconnected() {
    let mut s = connected(connect(Version::V5, 0));
    for id in 1..=3 {
        assert_eq!(feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, id)), 0).len(), 1);
    }
    feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, 4)), 0);
    assert!(s.is_closed());
    assert_eq!(sent(&mut s), ["DISCONNECT 0x93"]);
}

#[test]
fn mqtt_3_1_1_is_slowed_at_receive_maximum_not_refused() {
    let mut s = connected(connect(Version::V311, 0));
    let mut input = Vec::new();
    for id in 1..=5 {
        input.extend(bytes(Version::V311, &Packet::Publish(publish("t", QoS::AtLeastOnce, id))));
    }
    s.handle_input(&input, 0);
    let first = tokens(&mut s);
    assert_eq!(first.len(), 3, "three owed; the rest wait in the buffer");
    s.complete(first[0], Verdict::Stored);
    assert_eq!(sent(&mut s), ["PUBACK 1 0x00"]);
    assert_eq!(tokens(&mut s).len(), 1, "one place freed, one more publish read");
    assert!(s.is_connected());
}

#[test]
fn acknowledgements_leave_in_the_order_the_publishes_came() {
    let mut s = connected(connect(Version::V311, 0));
    let mut ids = Vec::new();
    for id in 1..=3 {
        ids.extend(feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, id)), 0));
    }
    s.complete(ids[2], Verdict::Stored);
    s.complete(ids[1], Verdict::Stored);
    assert!(sent(&mut s).is_empty(), "the first is not stored yet");
    s.complete(ids[0], Verdict::Stored);
    assert_eq!(sent(&mut s), ["PUBACK 1 0x00", "PUBACK 2 0x00", "PUBACK 3 0x00"]);
    assert_eq!(s.owed_acks(), 0);
}

#[test]
fn verdicts_are_told_in_the_form_each_version_has() {
    let mut s = connected(connect(Version::V5, 0));
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, 1)), 0);
    s.complete(t[0], Verdict::Dropped(ReasonCode::NOT_AUTHORIZED));
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::ExactlyOnce, 2)), 0);
    s.complete(t[0], Verdict::Refused(ReasonCode::PAYLOAD_FORMAT_INVALID, "bad"));
    assert_eq!(sent(&mut s), ["PUBACK 1 0x87", "PUBREC 2 0x99"]);
    // The refused QoS 2 flow is over: the id is free for a new message.
    assert_eq!(feed(&mut s, &Packet::Publish(publish("t", QoS::ExactlyOnce, 2)), 0).len(), 1);

    let mut s = connected(connect(Version::V311, 0));
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, 1)), 0);
    s.complete(t[0], Verdict::Dropped(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(sent(&mut s), ["PUBACK 1 0x00"], "3.1.1 cannot be refused: acknowledged and dropped");
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, 2)), 0);
    s.complete(t[0], Verdict::Refused(ReasonCode::UNSPECIFIED_ERROR, "event could not be stored"));
    assert_eq!(closed(&mut s).map(|c| c.why), Some("event could not be stored"), "3.1.1 is closed instead");
    assert!(sent(&mut s).is_empty());
}

#[test]
fn qos_2_resends_are_answered_not_taken_twice_until_released() {
    let mut s = connected(connect(Version::V5, 0));
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::ExactlyOnce, 7)), 0);
    s.complete(t[0], Verdict::Stored);
    let resend = Publish { dup: true, ..publish("t", QoS::ExactlyOnce, 7) };
    assert!(feed(&mut s, &Packet::Publish(resend), 0).is_empty(), "a resend is not a new message");
    assert_eq!(sent(&mut s), ["PUBREC 7 0x00", "PUBREC 7 0x00"]);
    s.handle_input(&bytes(Version::V5, &Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, 7))), 0);
    let Some(Event::Release { token, packet_id: 7, found: true }) = s.poll_event() else { panic!("release") };
    s.complete(token, Verdict::Stored);
    s.handle_input(&bytes(Version::V5, &Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, 7))), 0);
    let Some(Event::Release { token, found: false, .. }) = s.poll_event() else { panic!("second release") };
    s.complete(token, Verdict::Stored);
    assert_eq!(sent(&mut s), ["PUBCOMP 7 0x00", "PUBCOMP 7 0x92"]);
    assert_eq!(feed(&mut s, &Packet::Publish(publish("t", QoS::ExactlyOnce, 7)), 0).len(), 1, "7 is new again");
}

#[test]
fn qos_2_ids_carried_from_an_earlier_connection_are_resends_only_with_dup() {
    let mut s = ServerSession::new(CONFIG, 0);
    s.handle_input(&bytes(Version::V5, &Packet::Connect(connect(Version::V5, 0))), 0);
    assert!(matches!(s.poll_event(), Some(Event::Connect(_))));
    s.accept(Accepted { awaiting_release: &[5, 6], ..Accepted::default() }, 0);
    sent(&mut s);
    let resend = Publish { dup: true, ..publish("t", QoS::ExactlyOnce, 5) };
    assert!(feed(&mut s, &Packet::Publish(resend), 0).is_empty());
    assert_eq!(feed(&mut s, &Packet::Publish(publish("t", QoS::ExactlyOnce, 6)), 0).len(), 1, "no DUP: new");
    assert_eq!(sent(&mut s), ["PUBREC 5 0x00"]);
}

#[test]
fn topic_aliases_are_kept_per_connection_and_bounded() {
    let mut s = connected(connect(Version::V5, 0));
    let aliased = |topic, alias| Publish {
        properties: Properties { topic_alias: Some(alias), ..Properties::default() },
        ..publish(topic, QoS::AtMostOnce, 0)
    };
    feed(&mut s, &Packet::Publish(aliased("a/b", 2)), 0);
    s.handle_input(&bytes(Version::V5, &Packet::Publish(aliased("", 2))), 0);
    assert!(matches!(s.poll_event(), Some(Event::Publish { topic, .. }) if topic == "a/b"));
    let close = feed_closed(&mut s, &Packet::Publish(aliased("x", 5)), 0);
    assert_eq!(close.map(|c| c.reason), Some(ReasonCode::TOPIC_ALIAS_INVALID));
    assert_eq!(sent(&mut s), ["DISCONNECT 0x94"]);
}

#[test]
fn a_topic_deeper_than_the_limit_ends_the_connection() {
    let mut s = connected(connect(Version::V5, 0));
    let close = feed_closed(&mut s, &Packet::Publish(publish("a/b/c/d/e", QoS::AtLeastOnce, 1)), 0);
    assert_eq!(close.map(|c| c.reject), Some(Some(RejectReason::LimitExceeded)));
    assert_eq!(sent(&mut s), ["DISCONNECT 0x90"]);
}

#[test]
fn a_takeover_is_told_on_5_and_silent_on_3_1_1() {
    let mut s = connected(connect(Version::V5, 0));
    s.close(ReasonCode::SESSION_TAKEN_OVER, "session taken over");
    assert_eq!(closed(&mut s).map(|c| c.by), Some(ClosedBy::Server));
    assert_eq!(sent(&mut s), ["DISCONNECT 0x8e"]);
    let mut s = connected(connect(Version::V311, 0));
    s.close(ReasonCode::SESSION_TAKEN_OVER, "session taken over");
    assert!(s.is_closed() && sent(&mut s).is_empty());
}

fn with_will(delay: Option<u32>, expiry: Option<u32>) -> ServerSession {
    let properties = Properties { will_delay_interval: delay, ..Properties::default() };
    let will = Will { topic: "status/dev-1", payload: b"gone", properties, ..Will::default() };
    let c = Connect {
        will: Some(will),
        properties: Properties { session_expiry_interval: expiry, ..Properties::default() },
        ..connect(Version::V5, 10)
    };
    let mut s = ServerSession::new(CONFIG, 0);
    s.handle_input(&bytes(Version::V5, &Packet::Connect(c)), 0);
    let Some(Event::Connect(connect)) = s.poll_event() else { panic!("connect") };
    let will = connect.will.as_ref().map(|w| PendingWill::from_connect(w, "dev-1", 0));
    s.accept(Accepted { will, ..Accepted::default() }, 0);
    sent(&mut s);
    s
}

fn will_due(s: &mut ServerSession) -> Option<String> {
    loop {
        match s.poll_event()? {
            Event::WillDue(w) => return Some(w.message.topic),
            _ => continue,
        }
    }
}

#[test]
fn a_normal_disconnect_discards_the_will_and_0x04_keeps_it() {
    let mut s = with_will(None, None);
    let close = feed_closed(&mut s, &Packet::Disconnect(Disconnect::default()), 0);
    assert_eq!(close.map(|c| c.by), Some(ClosedBy::Client));
    assert_eq!(will_due(&mut s), None);
    assert_eq!(s.poll_timeout(), None);

    let mut s = with_will(None, None);
    feed(&mut s, &Packet::Disconnect(Disconnect::with_reason(ReasonCode::DISCONNECT_WITH_WILL)), 0);
    assert_eq!(will_due(&mut s).as_deref(), Some("status/dev-1"));
}

#[test]
fn a_lost_connection_publishes_the_will() {
    let mut s = with_will(None, None);
    s.handle_lost(3_000);
    assert_eq!(closed(&mut s).map(|c| c.by), Some(ClosedBy::Lost));
    assert_eq!(will_due(&mut s).as_deref(), Some("status/dev-1"));
    assert!(sent(&mut s).is_empty());
}

#[test]
fn the_will_waits_for_its_delay_or_the_end_of_the_session_whichever_comes_first() {
    // Delay 30 s, session expiry 10 s: due when the session ends, 10 s after the keep-alive lapsed at 15 s.
    let mut s = with_will(Some(30), Some(10));
    s.handle_timeout(15_000);
    assert!(closed(&mut s).is_some());
    assert_eq!(will_due(&mut s), None, "not yet");
    assert_eq!(s.poll_timeout(), Some(25_000));
    s.handle_timeout(24_999);
    assert_eq!(will_due(&mut s), None);
    s.handle_timeout(25_000);
    assert_eq!(will_due(&mut s).as_deref(), Some("status/dev-1"));
    assert_eq!(s.poll_timeout(), None, "once");

    // Delay 5 s, a session that outlives it: due 5 s after the end; a shutdown brings it forward.
    let mut s = with_will(Some(5), Some(3600));
    s.close(ReasonCode::SERVER_SHUTTING_DOWN, "stopping");
    assert_eq!(s.poll_timeout(), Some(5_000));
    s.expire_will();
    assert_eq!(will_due(&mut s).as_deref(), Some("status/dev-1"));
}

#[test]
fn session_expiry_cannot_be_set_at_disconnect_after_zero_at_connect() {
    let mut s = connected(connect(Version::V5, 0));
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    let close = feed_closed(&mut s, &Packet::Disconnect(d), 0);
    assert_eq!(close.map(|c| c.reason), Some(ReasonCode::PROTOCOL_ERROR));
    assert_eq!(s.disconnect_expiry(), None);
    assert_eq!(sent(&mut s), ["DISCONNECT 0x82"]);
}

#[test]
fn protocol_violations_after_connect_end_the_connection_with_their_reason() {
    for (packet, reason) in [
        (Packet::Connect(connect(Version::V5, 0)), 0x82),
        (Packet::PingResp, 0x82),
        (Packet::Auth(Default::default()), 0x82),
    ] {
        let mut s = connected(connect(Version::V5, 0));
        feed(&mut s, &packet, 0);
        assert!(s.is_closed(), "{packet:?}");
        assert_eq!(sent(&mut s), [format!("DISCONNECT {reason:#04x}")]);
    }
    let mut s = connected(connect(Version::V5, 0));
    s.handle_input(&[0x30, 0x7f], 0);
    s.handle_input(&[0u8; 0x7f], 0);
    assert_eq!(closed(&mut s).map(|c| c.reject), Some(Some(RejectReason::Malformed)));
}

#[test]
fn a_packet_split_anywhere_is_the_same_packet() {
    let packet = bytes(Version::V5, &Packet::Publish(publish("a/b", QoS::AtLeastOnce, 9)));
    for cut in 0..packet.len() {
        let mut s = connected(connect(Version::V5, 0));
        s.handle_input(&packet[..cut], 0);
        assert!(tokens(&mut s).is_empty());
        s.handle_input(&packet[cut..], 0);
        assert_eq!(tokens(&mut s).len(), 1, "cut at {cut}");
    }
}

#[test]
fn a_reason_code_a_packet_cannot_carry_is_replaced_by_one_it_can() {
    // A second CONNECT of an unknown level: the decoder's 0x84 is for CONNACK, not DISCONNECT.
    let mut s = connected(connect(Version::V5, 0));
    let mut second = bytes(Version::V5, &Packet::Connect(connect(Version::V5, 0)));
    second[8] = 9;
    s.handle_input(&second, 0);
    assert!(closed(&mut s).is_some());
    assert_eq!(sent(&mut s), ["DISCONNECT 0x82"]);
    // The driver refusing a publish because it is stopping: 0x8B is no PUBACK code.
    let mut s = connected(connect(Version::V5, 0));
    let t = feed(&mut s, &Packet::Publish(publish("t", QoS::AtLeastOnce, 1)), 0);
    s.complete(t[0], Verdict::Refused(ReasonCode::SERVER_SHUTTING_DOWN, "pipeline stopped"));
    assert_eq!(sent(&mut s), ["PUBACK 1 0x80"]);
}
