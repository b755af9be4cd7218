//! Drives the upstream MQTT uplink's sans-IO client session with arbitrary broker bytes, in arbitrary pieces,
//! interleaved with publishes, lost connections, reconnections and time jumping ahead: the session never panics,
//! only sends packets that decode, answers each publish at most once, and reports a connection lost once.
//!
//! Input: the first byte picks the protocol level; then each step is a control byte and, for input steps, a
//! length byte and that many bytes.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meshgate_edge_agent::uplink::mqtt::session::{ClientSession, ConnectOptions, Event, Message};
use meshgate_protocols::mqtt::{Packet, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut input)) = data.split_first() else { return };
    let version = if first % 2 == 0 { Version::V5 } else { Version::V311 };
    let options = ConnectOptions {
        version,
        client_id: "fuzz".into(),
        username: None,
        password: None,
        keep_alive_secs: 5,
        session_expiry_secs: 60,
    };
    let mut s = ClientSession::new(options, 4);
    let start = Instant::now();
    let mut now = start;
    s.connect(now);
    let mut token = 0u64;
    let mut answered = HashSet::new();
    let mut lost = 0;
    let mut out = Vec::new();
    while let Some((&control, rest)) = input.split_first() {
        input = rest;
        match control % 8 {
            0..=2 => {
                let Some((&len, rest)) = input.split_first() else { break };
                let take = usize::from(len).min(rest.len());
                s.handle_input(&rest[..take], now);
                input = &rest[take..];
            }
            3 | 4 => {
                token += 1;
                let message = Message { topic: "t".into(), qos: 1 + control % 2, payload: vec![control], ..Message::default() };
                s.publish(token, message);
            }
            5 => {
                s.connection_lost();
                s.connect(now);
                lost = 0;
            }
            6 => {
                now += Duration::from_millis(u64::from(control) * 40);
                s.handle_timeout(now);
            }
            _ => s.disconnect(),
        }
        while let Some(event) = s.poll_event() {
            if let Event::Confirmed(t) | Event::Rejected(t, _) = event {
                assert!(t >= 1 && t <= token, "an answer for a token never handed out");
                assert!(answered.insert(t), "token {t} answered twice");
            }
            if let Event::Lost(_) = event {
                lost += 1;
                assert_eq!(lost, 1, "a connection is lost once");
            }
        }
        assert!(s.pending() <= usize::try_from(token).unwrap_or(usize::MAX));
        out.clear();
        s.poll_transmit(&mut out, now);
        let mut at = 0;
        while at < out.len() {
            let (_, used) = Packet::decode(&out[at..], version, usize::MAX).expect("the session sends valid packets");
            at += used;
        }
    }
});
