//! Access control and device lifecycle events: `[[auth.acl]]` rules with `{clientid}` substitution refuse
//! publishes and subscriptions the protocol's way, and connects/disconnects become CloudEvents when enabled.

use std::time::Duration;

use meshgate_protocols::mqtt::{Connect, Packet, Publish, QoS, ReasonCode, Version};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::raw::{RawClient, Reply};

const QUIET: Duration = Duration::from_millis(400);

const ACL: &str = r#"
acl_default = "deny"
[[auth.acl]]
user = "*"
allow_publish = ["devices/{clientid}/#", "broadcast/#"]
allow_subscribe = ["devices/{clientid}/commands/#", "broadcast/#"]
deny_publish = ["devices/{clientid}/locked"]
"#;

fn with_acl(base: String) -> String {
    base.replace("[auth]\nallow_anonymous = true\n", &format!("[auth]\nallow_anonymous = true\n{ACL}"))
}

fn publish(c: &mut RawClient, topic: &str, id: u16) -> anyhow::Result<Reply> {
    c.send(&Packet::Publish(Publish {
        topic,
        qos: QoS::AtLeastOnce,
        packet_id: Some(id),
        payload: b"x",
        ..Publish::default()
    }))?;
    c.recv()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_rules_refuse_publishes_and_subscriptions_the_protocols_way() -> anyhow::Result<()> {
    let gw = Gateway::start_with(with_acl)?;
    let mut watcher = Client::connect(gw.mqtt, &Options::new(true, "watcher")).await?.0;
    assert_eq!(watcher.subscribe(&[("broadcast/#", 1), ("devices/d1/#", 1)]).await?, [1, 0x87], "v5: 0x87 per filter");
    let mut old = Client::connect(gw.mqtt, &Options::new(false, "old")).await?.0;
    assert_eq!(old.subscribe(&[("devices/old/commands/#", 1), ("devices/d1/#", 0)]).await?, [1, 0x80], "3.1.1: 0x80");

    let connect =
        Connect { version: Version::V5, clean_start: true, keep_alive: 30, client_id: "d1", ..Connect::default() };
    let (mut d1, _) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert_eq!(publish(&mut d1, "devices/d1/temp", 1)?, Reply::Ack(4, 1, ReasonCode::SUCCESS));
    assert_eq!(
        publish(&mut d1, "devices/d2/temp", 2)?,
        Reply::Ack(4, 2, ReasonCode::NOT_AUTHORIZED),
        "not its own topic"
    );
    assert_eq!(publish(&mut d1, "devices/d1/locked", 3)?, Reply::Ack(4, 3, ReasonCode::NOT_AUTHORIZED), "denied");
    assert_eq!(publish(&mut d1, "broadcast/hello", 4)?, Reply::Ack(4, 4, ReasonCode::SUCCESS));

    let connect =
        Connect { version: Version::V311, clean_start: true, keep_alive: 30, client_id: "d3", ..Connect::default() };
    let (mut d3, _) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert_eq!(publish(&mut d3, "devices/d1/temp", 1)?, Reply::Ack(4, 1, ReasonCode::SUCCESS), "3.1.1: acknowledged");

    let got: Vec<String> = watcher.drain(QUIET).await.into_iter().map(|m| m.topic).collect();
    assert_eq!(got, ["broadcast/hello"], "refused publishes reach nobody");
    let events = gw.wait_for_events(2, Duration::from_secs(5))?;
    let subjects: Vec<&str> = events.iter().filter_map(|e| e["subject"].as_str()).collect();
    assert_eq!(subjects, ["devices/d1/temp", "broadcast/hello"], "and are not forwarded to the mesh");
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"mqtt\",reason=\"not_authorized\"} 5"), "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_disconnects_become_lifecycle_events_when_enabled() -> anyhow::Result<()> {
    let gw =
        Gateway::start_with(|b| b.replace("id = \"edge-test\"\n", "id = \"edge-test\"\nlifecycle_events = true\n"))?;
    let polite = Client::connect(gw.mqtt, &Options::new(true, "polite")).await?.0;
    polite.disconnect().await;
    let gone = Client::connect(gw.mqtt, &Options::new(false, "gone")).await?.0;
    gone.kill();
    let events = gw.wait_for_events(4, Duration::from_secs(5))?;
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let reason = e["data"]["reason"].as_str().unwrap_or_default().to_string();
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["subject"].as_str().unwrap_or_default().to_string(),
                reason,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("io.meshgate.device.connected".into(), "polite".into(), String::new()),
            ("io.meshgate.device.disconnected".into(), "polite".into(), "disconnect".into()),
            ("io.meshgate.device.connected".into(), "gone".into(), String::new()),
            ("io.meshgate.device.disconnected".into(), "gone".into(), "connection lost".into()),
        ]
    );
    assert_eq!(events[0]["data"]["version"], "5");
    assert_eq!(events[2]["data"]["version"], "3.1.1");
    assert_eq!(events[0]["source"], "/meshgate/edge-test/mqtt/polite");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_topic_the_device_may_not_publish_to_is_refused_at_connect() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::Will;
    let gw = Gateway::start_with(with_acl)?;
    let mut watcher = Client::connect(gw.mqtt, &Options::new(true, "devices-watcher")).await?.0;
    assert_eq!(watcher.subscribe(&[("broadcast/#", 1)]).await?, [1]);
    for (version, refused) in [(Version::V5, ReasonCode::NOT_AUTHORIZED), (Version::V311, ReasonCode(5))] {
        // d2's will on d1's command topic (retained, QoS 1): a publish d2 may not make.
        let will = Will {
            topic: "devices/d1/commands/reboot",
            payload: b"now",
            qos: QoS::AtLeastOnce,
            retain: true,
            ..Will::default()
        };
        let connect = Connect { version, clean_start: true, client_id: "d2", will: Some(will), ..Connect::default() };
        let mut c = RawClient::open(gw.mqtt, version)?;
        c.send(&Packet::Connect(connect))?;
        assert_eq!(c.recv()?, Reply::ConnAck(false, refused), "{version:?}");
        assert_eq!(c.recv()?, Reply::Closed);
        // A will on its own topic is accepted, and fires when the socket drops.
        let own = Will { topic: "broadcast/d2-gone", payload: b"gone", qos: QoS::AtLeastOnce, ..Will::default() };
        let connect = Connect { version, clean_start: true, client_id: "d2", will: Some(own), ..Connect::default() };
        let (c, _) = RawClient::connect_with(gw.mqtt, &connect)?;
        drop(c);
        let got = watcher.next_publish(Duration::from_secs(10)).await.expect("the allowed will fires");
        assert_eq!(got.topic, "broadcast/d2-gone");
    }
    assert!(watcher.next_publish(QUIET).await.is_none(), "no other will fired");
    Ok(())
}

/// Mosquitto's `test/nosubscribe` case, with real clients: a rule that only denies one topic takes that topic
/// away and nothing else. `#` is granted and carries everything but the denied topic (retained messages too);
/// a subscription inside the denied topic is refused, 0x87 in MQTT 5 and 0x80 in 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_topic_is_filtered_out_of_wider_subscriptions_and_refused_alone() -> anyhow::Result<()> {
    let rule = "\n[[auth.acl]]\nuser = \"*\"\ndeny_subscribe = [\"test/nosubscribe\"]\n";
    let gw = Gateway::start_with(|b| b + rule)?;
    let publisher = Client::connect(gw.mqtt, &Options::new(true, "publisher")).await?.0;
    publisher.publish("test/nosubscribe", 1, true, "retained secret").await?;
    publisher.publish("test/open", 1, true, "retained open").await?;
    for v5 in [true, false] {
        let mut sub = Client::connect(gw.mqtt, &Options::new(v5, &format!("sub-{v5}"))).await?.0;
        let refused = if v5 { 0x87 } else { 0x80 };
        assert_eq!(sub.subscribe(&[("test/nosubscribe", 1)]).await?, [refused], "v5 {v5}: inside the denied topic");
        assert_eq!(sub.subscribe(&[("#", 1)]).await?, [1], "v5 {v5}: # is granted");
        let retained: Vec<String> = sub.drain(QUIET).await.into_iter().map(|m| m.topic).collect();
        assert_eq!(retained, ["test/open"], "v5 {v5}: retained, without the denied topic");
        publisher.publish("test/nosubscribe", 1, false, "live secret").await?;
        publisher.publish("test/other", 1, false, "live").await?;
        publisher.publish("elsewhere/x", 0, false, "live").await?;
        let mut live: Vec<String> = sub.drain(QUIET).await.into_iter().map(|m| m.topic).collect();
        live.sort();
        assert_eq!(live, ["elsewhere/x", "test/other"], "v5 {v5}: everything else, live");
    }
    Ok(())
}
