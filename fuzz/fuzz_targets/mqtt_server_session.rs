//! Drives meshgate's sans-IO MQTT server session with arbitrary client bytes, in arbitrary pieces, interleaved with
//! the driver's answers (accept or refuse CONNECT, complete publishes in any order with any verdict, SUBACKs,
//! deliveries, a takeover) and time jumping ahead: the session never panics, only sends packets that decode,
//! hands out `Closed` once and nothing but a will after it, and keeps MQTT 3.1.1 within Receive Maximum.
//!
//! Input: the first byte picks the protocol level of a valid CONNECT sent first (or none, so CONNECT itself is
//! fuzzed); then each step is a control byte and, for input steps, a length byte and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_gateway::broker::{Delivery, Message, Outbound};
use meshgate_gateway::mqtt::session::{Accepted, Event, ServerSession, SessionConfig, Token, Verdict};
use meshgate_gateway::mqtt::will::PendingWill;
use meshgate_protocols::mqtt::{Connect, Packet, QoS, ReasonCode, Version};

const CONFIG: SessionConfig = SessionConfig {
    max_packet_size: 2048,
    receive_maximum: 4,
    topic_alias_maximum: 4,
    max_keep_alive_secs: 120,
    connect_timeout_ms: 10_000,
    max_topic_levels: 6,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut input)) = data.split_first() else { return };
    let mut s = ServerSession::new(CONFIG, 0);
    let mut now = 0u64;
    let version = match first % 3 {
        0 => Some(Version::V5),
        1 => Some(Version::V311),
        _ => None,
    };
    if let Some(version) = version {
        let connect = Connect { version, keep_alive: 30, client_id: "fuzz", clean_start: true, ..Connect::default() };
        let mut bytes = vec![0; Packet::Connect(connect).encoded_len(version)];
        Packet::Connect(connect).encode(version, &mut bytes).expect("encode");
        s.handle_input(&bytes, now);
    }
    let mut tokens: Vec<Token> = Vec::new();
    let mut closed = false;
    let mut packet_id = 1u16;
    while let Some((&control, rest)) = input.split_first() {
        input = rest;
        match control % 8 {
            0 | 1 | 2 => {
                let Some((&len, rest)) = input.split_first() else { break };
                let len = usize::from(len).min(rest.len());
                s.handle_input(&rest[..len], now);
                input = &rest[len..];
            }
            3 => {
                // Complete a token, oldest or newest, with a verdict the byte picks.
                let verdict = match control >> 5 {
                    0..=4 => Verdict::Stored,
                    5 => Verdict::Dropped(ReasonCode::NOT_AUTHORIZED),
                    6 => Verdict::Refused(ReasonCode::PAYLOAD_FORMAT_INVALID, "fuzz"),
                    _ => Verdict::Refused(ReasonCode::UNSPECIFIED_ERROR, "not stored"),
                };
                if !tokens.is_empty() {
                    let token = if control & 8 == 0 { tokens.remove(0) } else { tokens.pop().expect("token") };
                    s.complete(token, verdict);
                }
            }
            4 => now += u64::from(control >> 3) * 1_000,
            5 => s.handle_timeout(now),
            6 => {
                // A delivery from the broker.
                let message = Message::new("fuzz/out", b"payload", QoS::AtLeastOnce, false, &Default::default(), "x", 0);
                let delivery = Delivery::new(std::sync::Arc::new(message), (control >> 6) & 3, false, Vec::new(), None);
                let out = Outbound::Publish { packet_id, dup: false, delivery };
                packet_id = packet_id.wrapping_add(1).max(1);
                let _ = s.deliver(&out, now);
                s.send_pubrel(packet_id, ReasonCode::SUCCESS);
            }
            _ => {
                if control & 0x80 != 0 {
                    s.close(ReasonCode::SESSION_TAKEN_OVER, "taken over");
                } else {
                    s.handle_lost(now);
                }
            }
        }
        // Act on every event as a driver would.
        loop {
            let v5 = s.version().is_v5();
            let Some(event) = s.poll_event() else { break };
            match event {
                Event::Closed(_) => {
                    assert!(!closed, "Closed comes once");
                    closed = true;
                }
                Event::WillDue(_) => assert!(closed, "a will only after the connection"),
                _ if closed => panic!("an event after Closed"),
                Event::Connect(c) => {
                    let will = c.will.as_ref().map(|w| PendingWill::from_connect(w, "fuzz", now));
                    drop(c);
                    if control & 0x40 != 0 {
                        s.refuse(ReasonCode::NOT_AUTHORIZED, "refused");
                    } else {
                        s.accept(Accepted { session_present: control & 1 == 1, will, ..Accepted::default() }, now);
                    }
                }
                Event::Publish { token, publish, .. } => {
                    if !v5 && publish.qos != QoS::AtMostOnce {
                        assert!(s.owed_acks() <= usize::from(CONFIG.receive_maximum), "3.1.1 past Receive Maximum");
                    }
                    tokens.push(token);
                }
                Event::Release { token, .. } => tokens.push(token),
                Event::Subscribe(sub) => {
                    let codes: Vec<u8> = sub.filters.iter().map(|f| f.options.qos as u8).collect();
                    let id = sub.packet_id;
                    s.suback(id, &codes);
                }
                Event::Unsubscribe(u) => {
                    let (id, n) = (u.packet_id, u.filters.len());
                    s.unsuback(id, &vec![0; n]);
                }
                Event::DeliveryAck(_) => {}
            }
        }
        // What the session sends decodes.
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        let mut rest = &out[..];
        while !rest.is_empty() {
            let (_, len) = Packet::decode(rest, s.version(), usize::MAX).expect("the session sends valid packets");
            rest = &rest[len..];
        }
    }
});
