//! The broker core against the specification, without sockets: sessions, routing, retained messages, shared
//! subscriptions.

use meshgate_protocols::mqtt::{QoS, RetainHandling, SubscriptionOptions, Version};

use super::*;
use crate::broker::message::MessageProperties;

fn config() -> BrokerConfig {
    BrokerConfig::with_max_queued(100)
}

fn msg(topic: &str, qos: u8, retain: bool, payload: &str, publisher: &str) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos,
        retain,
        properties: MessageProperties::default(),
        publisher: publisher.into(),
        expires_at_ms: None,
        event: None,
    }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
}

/// (packet id, qos, retain, payload, subscription ids) of every publish polled for `client`.
fn polled(b: &mut Broker, client: &str) -> Vec<(u16, u8, bool, String, Vec<u32>)> {
    b.poll_outbound(client, 0, 100, u64::MAX)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Publish { packet_id, delivery, .. } => Some((
                packet_id,
                delivery.qos,
                delivery.retain,
                String::from_utf8_lossy(&delivery.message.payload).into_owned(),
                delivery.subscription_ids,
            )),
            Outbound::PubRel(_) => None,
        })
        .collect()
}

fn user(name: &str) -> SessionOwner {
    SessionOwner { user: name.into(), reader: None }
}

fn connect(b: &mut Broker, client: &str, clean: bool, expiry: u32) -> Connected {
    b.connect(client, &SessionOwner::default(), Version::V5, clean, expiry, 10, 0).expect("within the session limits")
}

#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let mut b = Broker::new(config());
    connect(&mut b, "s", true, 0);
    assert_eq!(b.subscribe("s", "a/+", &opts(QoS::AtLeastOnce), None, 0), Ok(QoS::AtLeastOnce));
    b.publish(msg("a/b", 2, false, "x", "p"), 0);
    b.publish(msg("a/b", 0, false, "y", "p"), 0);
    assert_eq!(polled(&mut b, "s"), [(1, 1, false, "x".into(), vec![]), (0, 0, false, "y".into(), vec![])]);
}

#[test]
fn overlapping_subscriptions_deliver_once_with_every_identifier() {
    let mut b = Broker::new(config());
    connect(&mut b, "s", true, 0);
    b.subscribe("s", "a/#", &opts(QoS::AtMostOnce), Some(1), 0).expect("granted");
    b.subscribe("s", "a/b", &opts(QoS::ExactlyOnce), Some(2), 0).expect("granted");
    b.subscribe("s", "c", &opts(QoS::ExactlyOnce), Some(3), 0).expect("granted");
    let woken = b.publish(msg("a/b", 2, false, "x", "p"), 0);
    assert_eq!(woken.len(), 1);
    assert_eq!(polled(&mut b, "s"), [(1, 2, false, "x".into(), vec![1, 2])]);
}

#[test]
fn no_local_and_retain_as_published_are_honoured() {
    let mut b = Broker::new(config());
    connect(&mut b, "me", true, 0);
    let no_local = SubscriptionOptions { no_local: true, ..opts(QoS::AtMostOnce) };
    b.subscribe("me", "t", &no_local, None, 0).expect("granted");
    b.publish(msg("t", 0, false, "mine", "me"), 0);
    b.publish(msg("t", 0, false, "theirs", "you"), 0);
    assert_eq!(polled(&mut b, "me"), [(0, 0, false, "theirs".into(), vec![])]);

    connect(&mut b, "rap", true, 0);
    b.subscribe("rap", "r/+", &SubscriptionOptions { retain_as_published: true, ..opts(QoS::AtMostOnce) }, None, 0)
        .expect("granted");
    connect(&mut b, "plain", true, 0);
    b.subscribe("plain", "r/+", &opts(QoS::AtMostOnce), None, 0).expect("granted");
    b.publish(msg("r/1", 0, true, "v", "p"), 0);
    assert_eq!(polled(&mut b, "rap"), [(0, 0, true, "v".into(), vec![])]);
    assert_eq!(polled(&mut b, "plain"), [(0, 0, false, "v".into(), vec![])], "RETAIN cleared on live delivery");
}

#[test]
fn retained_messages_follow_retain_handling_and_an_empty_payload_clears_them() {
    let mut b = Broker::new(config());
    b.publish(msg("status/1", 1, true, "up", "p"), 0);
    b.publish(msg("status/2", 1, true, "down", "p"), 0);
    b.publish(msg("status/2", 0, true, "", "p"), 0);
    connect(&mut b, "s", true, 0);
    b.subscribe("s", "status/+", &opts(QoS::ExactlyOnce), None, 0).expect("granted");
    assert_eq!(polled(&mut b, "s"), [(1, 1, true, "up".into(), vec![])], "sent with RETAIN set");
    let if_new = SubscriptionOptions { retain_handling: RetainHandling::SendIfNew, ..opts(QoS::AtLeastOnce) };
    b.subscribe("s", "status/+", &if_new, None, 0).expect("granted");
    assert!(polled(&mut b, "s").is_empty(), "not again for an existing subscription");
    let never = SubscriptionOptions { retain_handling: RetainHandling::DoNotSend, ..opts(QoS::AtLeastOnce) };
    b.subscribe("s", "status/#", &never, None, 0).expect("granted");
    assert!(polled(&mut b, "s").is_empty());
    assert_eq!(b.retained().count(), 1);
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_while_offline() {
    let mut b = Broker::new(config());
    assert!(!connect(&mut b, "d", false, u32::MAX).session_present);
    b.subscribe("d", "cmd/d", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    b.publish(msg("cmd/d", 1, false, "one", "p"), 0);
    assert_eq!(polled(&mut b, "d").len(), 1, "sent, not acknowledged");
    b.disconnect("d", None, 0);
    b.publish(msg("cmd/d", 1, false, "two", "p"), 0);
    let again = connect(&mut b, "d", false, u32::MAX);
    assert!(again.session_present);
    assert!(matches!(&again.resend[..], [Outbound::Publish { packet_id: 1, dup: true, .. }]));
    assert_eq!(polled(&mut b, "d"), [(2, 1, false, "two".into(), vec![])]);
    // A clean start discards it.
    assert!(!connect(&mut b, "d", true, 0).session_present);
    b.publish(msg("cmd/d", 1, false, "three", "p"), 0);
    assert!(polled(&mut b, "d").is_empty());
}

#[test]
fn sessions_expire_after_their_interval() {
    let mut b = Broker::new(config());
    connect(&mut b, "d", false, 10);
    b.disconnect("d", None, 1_000);
    assert!(b.expire_sessions(10_999).0.is_empty());
    assert_eq!(b.expire_sessions(11_000).0, ["d"]);
    assert!(!b.has_session("d"));
}

#[test]
fn shared_subscriptions_spread_messages_and_hand_over_when_a_member_leaves() {
    let mut b = Broker::new(config());
    for c in ["w1", "w2"] {
        connect(&mut b, c, true, 0);
        b.subscribe(c, "$share/g/jobs/+", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    }
    for n in 0..4 {
        b.publish(msg("jobs/x", 1, false, &n.to_string(), "p"), 0);
    }
    let w1 = polled(&mut b, "w1");
    let w2 = polled(&mut b, "w2");
    assert_eq!((w1.len(), w2.len()), (2, 2), "round-robin across the group");
    // w1 leaves with two unacknowledged messages: they go to w2, which is woken.
    assert_eq!(b.disconnect("w1", None, 0).iter().map(|c| c.as_ref()).collect::<Vec<_>>(), ["w2", "w2"]);
    let handed: Vec<String> = polled(&mut b, "w2").into_iter().map(|p| p.3).collect();
    let mut expected: Vec<String> = w1.into_iter().map(|p| p.3).collect();
    expected.sort();
    let mut handed_sorted = handed.clone();
    handed_sorted.sort();
    assert_eq!(handed_sorted, expected);
    // Retained messages are not sent to shared subscriptions.
    b.publish(msg("jobs/r", 0, true, "kept", "p"), 0);
    polled(&mut b, "w2");
    connect(&mut b, "w3", true, 0);
    b.subscribe("w3", "$share/g/jobs/+", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    assert!(polled(&mut b, "w3").is_empty());
}

#[test]
fn expired_messages_are_not_delivered() {
    let mut b = Broker::new(config());
    connect(&mut b, "s", true, 0);
    b.subscribe("s", "t", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    let mut m = msg("t", 1, false, "old", "p");
    m.expires_at_ms = Some(500);
    b.publish(m, 0);
    assert!(b.poll_outbound("s", 500, 10, u64::MAX).is_empty());
}

#[test]
fn a_restored_broker_has_the_sessions_and_retained_messages_of_its_snapshot() {
    let mut b = Broker::new(config());
    connect(&mut b, "d", false, u32::MAX);
    b.subscribe("d", "cmd/#", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    b.publish(msg("cmd/1", 1, true, "queued", "p"), 0);
    let sessions: Vec<(String, Session)> = b
        .persistent_sessions()
        .map(|(c, s)| (c.to_string(), serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()))
        .collect();
    let retained: Vec<Message> = b.retained().cloned().collect();
    let mut r = Broker::restore(config(), sessions, retained, 5);
    assert!(connect(&mut r, "d", false, u32::MAX).session_present);
    assert_eq!(polled(&mut r, "d"), [(1, 1, false, "queued".into(), vec![])]);
    r.publish(msg("cmd/2", 1, false, "live", "p"), 5);
    assert_eq!(polled(&mut r, "d").len(), 1, "the subscription is indexed again");
    assert_eq!(r.retained().count(), 1);
}

#[test]
fn dropped_messages_stay_counted_after_their_session_ends() {
    let mut b = Broker::new(BrokerConfig::with_max_queued(2));
    connect(&mut b, "slow", true, 0);
    b.subscribe("slow", "t", &opts(QoS::AtLeastOnce), None, 0).expect("granted");
    for n in 0..5 {
        b.publish(msg("t", 1, false, &n.to_string(), "p"), 0);
    }
    assert_eq!(b.stats().dropped, 3, "a queue of 2 keeps 2 of 5");
    b.disconnect("slow", None, 0);
    assert!(!b.has_session("slow"));
    assert_eq!(b.stats().dropped, 3, "a counter: the ended session's drops are still counted");
}

#[test]
fn sessions_subscriptions_and_topic_depth_are_limited() {
    let limits = crate::limits::LimitsConfig {
        max_topic_levels: 4,
        max_sessions: 3,
        max_sessions_per_user: 2,
        max_subscriptions_per_session: 2,
        max_subscriptions: 3,
        ..crate::limits::LimitsConfig::default()
    };
    let mut b = Broker::new(BrokerConfig { limits, ..config() });
    let open = |b: &mut Broker, c: &str, owner: &str| b.connect(c, &user(owner), Version::V5, false, u32::MAX, 10, 0);
    assert!(open(&mut b, "a1", "alice").is_ok() && open(&mut b, "a2", "alice").is_ok());
    assert_eq!(open(&mut b, "a3", "alice").unwrap_err(), SessionRefused::TooManyForUser);
    assert!(open(&mut b, "a1", "alice").is_ok(), "resuming is not a new session");
    assert!(b.connect("a1", &user("alice"), Version::V5, true, 0, 10, 0).is_ok(), "a clean start replaces its own");
    assert!(open(&mut b, "b1", "bob").is_ok());
    assert_eq!(open(&mut b, "b2", "bob").unwrap_err(), SessionRefused::TooManySessions);
    b.disconnect("a1", None, 0);
    assert!(open(&mut b, "b2", "bob").is_ok(), "an ended session frees its place and its owner's");

    let o = opts(QoS::AtLeastOnce);
    assert_eq!(b.subscribe("b1", "a/b/c/d", &o, None, 0), Ok(QoS::AtLeastOnce));
    assert_eq!(b.subscribe("b1", "a/b/c/d/#", &o, None, 0), Err(SubscribeRefused::TooDeep));
    assert_eq!(b.subscribe("b1", "x", &o, None, 0), Ok(QoS::AtLeastOnce));
    assert_eq!(b.subscribe("b1", "y", &o, None, 0), Err(SubscribeRefused::Quota), "two per session");
    assert_eq!(b.subscribe("b1", "x", &o, None, 0), Ok(QoS::AtLeastOnce), "replacing is not a new one");
    assert_eq!(b.subscribe("b2", "y", &o, None, 0), Ok(QoS::AtLeastOnce));
    assert_eq!(b.subscribe("b2", "z", &o, None, 0), Err(SubscribeRefused::Quota), "three in all");
    let deep = msg("a/b/c/d/e", 1, false, "x", "");
    assert!(b.publish(deep, 0).is_empty(), "a topic over the limit is not routed");
}

#[test]
fn stored_state_over_the_current_limits_is_dropped_on_restore() {
    let generous = crate::limits::LimitsConfig { max_topic_levels: 1_000, ..crate::limits::LimitsConfig::default() };
    let mut b = Broker::new(BrokerConfig { limits: generous, ..config() });
    connect(&mut b, "d", false, u32::MAX);
    let deep = format!("{}#", "a/".repeat(500));
    assert!(b.subscribe("d", &deep, &opts(QoS::AtLeastOnce), None, 0).is_ok());
    assert!(b.subscribe("d", "ok/+", &opts(QoS::AtLeastOnce), None, 0).is_ok());
    let sessions: Vec<(String, Session)> = b.persistent_sessions().map(|(c, s)| (c.to_string(), s.clone())).collect();
    let retained = vec![msg(&"r/".repeat(300), 1, true, "x", ""), msg("r/ok", 1, true, "x", "")];
    let limits = crate::limits::LimitsConfig { max_topic_levels: 128, ..crate::limits::LimitsConfig::default() };
    let restored = Broker::restore(BrokerConfig { limits, ..config() }, sessions, retained, 0);
    let subs: Vec<&String> = restored.session("d").map(|s| s.subscriptions.keys().collect()).unwrap_or_default();
    assert_eq!(subs, ["ok/+"]);
    assert_eq!(restored.retained().map(|m| m.topic.as_str()).collect::<Vec<_>>(), ["r/ok"]);
}

#[test]
fn the_retained_store_is_bounded_in_count_and_bytes() {
    let limits = crate::limits::LimitsConfig { max_retained_messages: 2, ..crate::limits::LimitsConfig::default() };
    let mut b = Broker::new(BrokerConfig { limits, ..config() });
    for t in ["r/1", "r/2", "r/3"] {
        let m = msg(t, 0, true, "x", "");
        let fits = b.may_retain(&m);
        b.publish(m, 0);
        assert_eq!(fits, t != "r/3", "{t}");
    }
    assert!(b.may_retain(&msg("r/1", 0, true, "replaced", "")), "replacing a topic takes no new place");
    b.publish(msg("r/1", 0, true, "", ""), 0);
    assert!(b.may_retain(&msg("r/3", 0, true, "x", "")), "clearing a topic frees its place");
    let retained: Vec<&str> = b.retained().map(|m| m.topic.as_str()).collect();
    assert_eq!(retained, ["r/2"]);

    let small = crate::limits::LimitsConfig { max_retained_bytes: 300, ..crate::limits::LimitsConfig::default() };
    let mut b = Broker::new(BrokerConfig { limits: small, ..config() });
    b.publish(msg("big", 0, true, &"x".repeat(100), ""), 0);
    assert!(!b.may_retain(&msg("more", 0, true, &"x".repeat(100), "")), "two would pass 300 bytes");
    assert!(b.may_retain(&msg("big", 0, true, &"y".repeat(100), "")));
}

#[test]
fn a_session_belongs_to_the_user_that_created_it() {
    let mut b = Broker::new(config());
    let open = |b: &mut Broker, c: &str, owner: &str, clean: bool| {
        b.connect(c, &user(owner), Version::V5, clean, u32::MAX, 10, 0).map(|c| c.session_present)
    };
    assert_eq!(open(&mut b, "device-1", "alice", false), Ok(false));
    b.subscribe("device-1", "cmd/#", &opts(QoS::AtLeastOnce), None, 0).unwrap();
    b.disconnect("device-1", None, 0);
    b.publish(msg("cmd/reboot", 1, false, "now", "op"), 0);
    assert_eq!(open(&mut b, "device-1", "mallory", false), Err(SessionRefused::NotOwner), "resume refused");
    assert_eq!(open(&mut b, "device-1", "mallory", true), Err(SessionRefused::NotOwner), "clean start refused");
    assert_eq!(b.owner_of("device-1"), Some("alice"));
    assert_eq!(open(&mut b, "device-1", "alice", false), Ok(true), "the owner's session is untouched");
    assert_eq!(polled(&mut b, "device-1"), [(1, 1, false, "now".into(), vec![])]);
}

#[test]
fn nothing_a_session_may_not_read_is_queued_or_handed_over() {
    use crate::acl::{Acl, AclDefault, AclRule};
    let rule = AclRule {
        user: "*".into(),
        allow_publish: vec![],
        allow_subscribe: vec![],
        deny_publish: vec![],
        deny_subscribe: vec!["secret/#".into()],
    };
    let acl = Acl::new(vec![rule], AclDefault::Allow).for_device(Some("u"), "c");
    let reader = SessionOwner::new("u", &acl);
    assert!(reader.reader.is_some());
    let mut b = Broker::new(config());
    b.publish(msg("secret/key", 1, true, "k", "p"), 0);
    b.publish(msg("open/news", 1, true, "n", "p"), 0);
    b.connect("c", &reader, Version::V5, true, u32::MAX, 10, 0).unwrap();
    b.subscribe("c", "#", &opts(QoS::AtLeastOnce), None, 0).unwrap();
    assert_eq!(polled(&mut b, "c"), [(1, 1, true, "n".into(), vec![])], "retained: only what it may read");
    b.publish(msg("secret/key", 1, false, "k2", "p"), 0);
    b.publish(msg("open/news", 1, false, "n2", "p"), 0);
    assert_eq!(polled(&mut b, "c"), [(2, 1, false, "n2".into(), vec![])], "live: the same");

    // A shared subscription hands a message only to members that may read it.
    connect(&mut b, "open", true, 0);
    b.subscribe("c", "$share/g/secret/#", &opts(QoS::AtLeastOnce), None, 0).unwrap();
    b.subscribe("open", "$share/g/secret/#", &opts(QoS::AtLeastOnce), None, 0).unwrap();
    for i in 0..4 {
        b.publish(msg("secret/x", 1, false, &i.to_string(), "p"), 0);
    }
    assert_eq!(polled(&mut b, "open").len(), 4);
    assert!(polled(&mut b, "c").is_empty());

    // Queued while the ACL was unknown (a restored session): dropped when its device is back.
    let mut restored = Broker::new(config());
    restored.connect("c", &user("u"), Version::V5, false, u32::MAX, 10, 0).unwrap();
    restored.subscribe("c", "#", &opts(QoS::AtLeastOnce), None, 0).unwrap();
    restored.disconnect("c", None, 0);
    restored.publish(msg("secret/key", 1, false, "k", "p"), 0);
    restored.publish(msg("open/news", 1, false, "n", "p"), 0);
    restored.connect("c", &reader, Version::V5, false, u32::MAX, 10, 0).unwrap();
    assert_eq!(polled(&mut restored, "c"), [(1, 1, false, "n".into(), vec![])]);
}

#[test]
fn a_replay_reaches_only_sessions_whose_stored_state_does_not_cover_the_record() {
    let mut b = Broker::new(config());
    for (client, stored_through) in [("old", 5), ("new", 9)] {
        connect(&mut b, client, false, u32::MAX);
        b.subscribe(client, "cmd/#", &opts(QoS::AtLeastOnce), None, 0).expect("subscribed");
        b.session_mut(client).expect("session").routed_through = stored_through;
    }
    for (client, group) in [("m1", 5), ("m2", 9)] {
        connect(&mut b, client, false, u32::MAX);
        b.subscribe(client, "$share/g/cmd/#", &opts(QoS::AtLeastOnce), None, 0).expect("subscribed");
        b.session_mut(client).expect("session").routed_through = group;
    }
    b.publish(msg("cmd/r", 1, true, "kept", "p"), 0);
    for c in ["old", "new", "m1", "m2"] {
        polled(&mut b, c);
    }
    let woken = b.replay(5, msg("cmd/x", 1, false, "five", "p"), 0);
    assert!(woken.is_empty(), "record 5 is in every stored state");
    let woken = b.replay(7, msg("cmd/x", 1, false, "seven", "p"), 0);
    assert_eq!(woken, vec![Arc::<str>::from("old")], "new covers 7; m2 covers it, so the group had it");
    assert_eq!(polled(&mut b, "old"), vec![(2, 1, false, "seven".into(), vec![])]);
    let woken = b.replay(10, msg("cmd/r", 1, true, "", "p"), 0);
    assert_eq!(woken.len(), 3, "old, new and one group member");
    assert_eq!(b.retained().count(), 1, "a replay leaves the retained store alone");
    b.replay_inbound_qos2(5, "old", 3, true);
    b.replay_inbound_qos2(6, "new", 4, true);
    b.replay_inbound_qos2(6, "old", 5, true);
    b.replay_inbound_qos2(6, "old", 9, true);
    b.replay_inbound_qos2(7, "old", 9, false);
    let old = &b.session("old").expect("old").inbound_qos2;
    assert!(old.contains(&5) && !old.contains(&3), "{old:?}");
    assert!(!old.contains(&9), "stored, then released by a later record");
    assert!(b.session("new").expect("new").inbound_qos2.is_empty(), "new's state covers record 6");
}

#[test]
fn routes_to_persistent_looks_for_a_persistent_session_taking_qos_1_or_2() {
    let mut b = Broker::new(config());
    connect(&mut b, "clean", true, 0);
    b.subscribe("clean", "t/#", &opts(QoS::AtLeastOnce), None, 0).expect("subscribed");
    connect(&mut b, "zero", false, u32::MAX);
    b.subscribe("zero", "t/#", &opts(QoS::AtMostOnce), None, 0).expect("subscribed");
    assert!(!b.routes_to_persistent(&msg("t/1", 1, false, "x", "p")), "clean, or persistent at QoS 0");
    connect(&mut b, "kept", false, 60);
    b.subscribe("kept", "$share/g/t/#", &opts(QoS::ExactlyOnce), None, 0).expect("subscribed");
    assert!(b.routes_to_persistent(&msg("t/1", 1, false, "x", "p")));
    assert!(!b.routes_to_persistent(&msg("t/1", 0, false, "x", "p")), "QoS 0 is not kept across a crash");
    assert!(!b.routes_to_persistent(&msg("u/1", 2, false, "x", "p")));
}

#[test]
fn connack_waits_for_the_store_only_when_what_is_stored_changes() {
    let mut b = Broker::new(config());
    assert!(!connect(&mut b, "clean", true, 0).durable, "never stored, nothing to write");
    assert!(connect(&mut b, "kept", false, 60).durable, "a new persistent session");
    assert!(!connect(&mut b, "kept", false, 60).durable, "resumed as stored");
    assert!(connect(&mut b, "kept", false, 120).durable, "resumed with another expiry");
    assert!(connect(&mut b, "kept", true, 120).durable, "a clean start replaces the stored one");
    assert!(connect(&mut b, "kept", false, 0).durable, "expiry 0 ends what was stored");
    assert!(!connect(&mut b, "kept", false, 0).durable, "and then nothing is stored");
}
