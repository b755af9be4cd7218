//! Feeds arbitrary bytes, decoded as MQTT packets from five clients of two users, to the broker core the MQTT
//! sessions run on (sessions, subscriptions, routing, queues, acknowledgements, expiry) with small limits, and
//! encodes what it hands each client: bytes in, bytes out. It never panics, and every limit holds after every
//! packet: sessions, subscriptions and queued bytes, and topic depth (filters of hundreds of levels included).
//! Ownership holds too: a session keeps the user that created it (the other user's CONNECT with its client id is
//! refused), and bob, who may not read `secret` topics, is never handed one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_gateway::acl::{Acl, AclDefault, AclRule};
use meshgate_gateway::broker::{Broker, BrokerConfig, Message, SessionOwner, SessionRefused};
use meshgate_gateway::limits::LimitsConfig;
use meshgate_gateway::mqtt::outbound::{self, OutboundAliases};
use meshgate_protocols::mqtt::topic::{validate_filter, validate_name};
use meshgate_protocols::mqtt::{Packet, PubResponseKind, Version};

const CLIENTS: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut input)) = data.split_first() else { return };
    let version = if first & 1 == 0 { Version::V5 } else { Version::V311 };
    let limits = LimitsConfig {
        max_topic_levels: 8,
        max_sessions: 4,
        max_sessions_per_user: 3,
        max_subscriptions_per_session: 4,
        max_subscriptions: 8,
        max_memory_bytes: 4096,
        ..LimitsConfig::default()
    };
    let mut broker = Broker::new(BrokerConfig { max_queued_messages: 8, max_queued_bytes: 2048, limits });
    let secret = AclRule {
        user: "bob".into(),
        allow_publish: vec![],
        allow_subscribe: vec![],
        deny_publish: vec![],
        deny_subscribe: vec!["secret/#".into(), "+/secret".into()],
    };
    let acl = Acl::new(vec![secret], AclDefault::Allow);
    let alice = SessionOwner::new("alice", &acl.for_device(Some("alice"), ""));
    let bob = SessionOwner::new("bob", &acl.for_device(Some("bob"), ""));
    let bob_reads = acl.for_device(Some("bob"), "");
    let mut aliases = OutboundAliases::new(4);
    let (mut client, mut now, mut out) = (0usize, 0u64, Vec::new());
    while !input.is_empty() {
        let (packet, used) = match Packet::decode(input, version, 4096) {
            Ok(decoded) => decoded,
            Err(_) => {
                // Skip a byte and look for the next packet, so one bad byte does not end the run.
                input = &input[1..];
                continue;
            }
        };
        input = &input[used..];
        let id = CLIENTS[client];
        match packet {
            Packet::Connect(c) => {
                client = c.client_id.bytes().map(usize::from).sum::<usize>() % CLIENTS.len();
                let owner = if c.keep_alive % 2 == 0 { &alice } else { &bob };
                let expiry = c.properties.session_expiry_interval.unwrap_or(if c.clean_start { 0 } else { 60 });
                let before = broker.owner_of(CLIENTS[client]).map(String::from);
                match broker.connect(CLIENTS[client], owner, version, c.clean_start, expiry, 3, now) {
                    Ok(_) => assert_eq!(broker.owner_of(CLIENTS[client]), Some(owner.user.as_str())),
                    Err(SessionRefused::NotOwner) => {
                        assert!(before.as_deref().is_some_and(|b| b != owner.user));
                        assert_eq!(broker.owner_of(CLIENTS[client]).map(String::from), before, "untouched");
                    }
                    Err(_) => {}
                }
            }
            Packet::Subscribe(s) => {
                for f in s.filters.iter().filter(|f| validate_filter(f.filter).is_ok()) {
                    let granted = broker.subscribe(id, f.filter, &f.options, None, now);
                    assert!(granted.is_err() || f.filter.split('/').count() <= limits.max_topic_levels);
                }
            }
            Packet::Unsubscribe(u) => {
                for f in u.filters.iter() {
                    broker.unsubscribe(id, f);
                }
            }
            Packet::Publish(p) if validate_name(p.topic).is_ok() => {
                broker.publish(Message::from_publish(&p, p.topic, id, now), now);
            }
            Packet::PubResponse(r) => {
                if let Some(s) = broker.session_mut(id) {
                    match r.kind {
                        PubResponseKind::PubAck => drop(s.puback(r.packet_id)),
                        PubResponseKind::PubRec => drop(s.pubrec(r.packet_id, r.reason.is_error())),
                        _ => drop(s.pubcomp(r.packet_id)),
                    }
                }
            }
            Packet::Disconnect(d) => drop(broker.disconnect(id, d.properties.session_expiry_interval, now)),
            Packet::PingReq => {
                now += 30_000;
                broker.expire_sessions(now);
            }
            _ => {}
        }
        for c in CLIENTS {
            let bobs = broker.owner_of(c) == Some("bob");
            for o in broker.poll_outbound(c, now, 4, 1024) {
                if let (true, meshgate_gateway::broker::Outbound::Publish { delivery, .. }) = (bobs, &o) {
                    assert!(bob_reads.may_read(&delivery.message.topic), "bob handed {}", delivery.message.topic);
                }
                let _ = outbound::encode(&o, version, now, 4096, &mut aliases, &mut out);
            }
        }
        out.clear();
        let stats = broker.stats();
        assert!(stats.sessions <= limits.max_sessions);
        assert!(stats.subscriptions <= limits.max_subscriptions);
        assert!(stats.queued_bytes <= limits.max_memory_bytes);
    }
});
