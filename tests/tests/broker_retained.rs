//! Conformance of the local broker, retained messages (MQTT 3.1.1 section 3.3.1.3, MQTT 5 section 3.3.1.3 and
//! 3.8.3.1: Retain Handling, Retain As Published). Restart durability is in `broker_sessions.rs`.

use std::time::Duration;

use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn retained_messages_reach_new_subscribers_until_cleared(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(v5, "pub")).await?;
    publisher.publish("lights/1", 1, true, "on").await?;
    publisher.publish("lights/2", 1, true, "off").await?;
    publisher.publish("lights/1", 1, true, "dimmed").await?;
    gw.wait_for_events(3, WAIT)?;
    let (mut sub, _) = Client::connect(gw.mqtt, &Options::new(v5, "sub")).await?;
    sub.subscribe(&[("lights/+", 2)]).await?;
    let mut got: Vec<(String, String, bool, u8)> =
        sub.drain(QUIET * 2).await.into_iter().map(|m| (m.topic, m.payload, m.retain, m.qos)).collect();
    got.sort();
    assert_eq!(
        got,
        [("lights/1".into(), "dimmed".into(), true, 1), ("lights/2".into(), "off".into(), true, 1)],
        "the last retained message per topic, RETAIN set, at the publish QoS"
    );
    // Live deliveries to an existing subscription carry RETAIN 0 (without Retain As Published).
    publisher.publish("lights/3", 0, true, "new").await?;
    let live = sub.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("no live delivery"))?;
    assert!(!live.retain);
    // An empty retained payload clears the topic (and is delivered to current subscribers).
    publisher.publish("lights/1", 1, true, "").await?;
    publisher.publish("lights/2", 1, true, "").await?;
    publisher.publish("lights/3", 1, true, "").await?;
    gw.wait_for_events(7, WAIT)?;
    let (mut late, _) = Client::connect(gw.mqtt, &Options::new(v5, "late")).await?;
    late.subscribe(&[("lights/#", 1)]).await?;
    assert!(late.next_publish(QUIET * 2).await.is_none(), "cleared");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_new_subscribers_until_cleared_v311() -> anyhow::Result<()> {
    retained_messages_reach_new_subscribers_until_cleared(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_new_subscribers_until_cleared_v5() -> anyhow::Result<()> {
    retained_messages_reach_new_subscribers_until_cleared(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published_are_honoured() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    publisher.publish("cfg/a", 1, true, "v1").await?;
    gw.wait_for_events(1, WAIT)?;
    let (mut sub, _) = Client::connect(gw.mqtt, &Options::new(true, "sub")).await?;

    let mut never = Filter::new("cfg/#", QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    sub.subscribe_v5(vec![never], None).await?;
    assert!(sub.next_publish(QUIET * 2).await.is_none(), "Retain Handling 2: none");

    let mut if_new = Filter::new("cfg/+", QoS::AtLeastOnce);
    if_new.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub.subscribe_v5(vec![if_new.clone()], None).await?;
    assert_eq!(sub.next_publish(WAIT).await.map(|m| m.payload).as_deref(), Some("v1"), "Retain Handling 1, new");
    sub.subscribe_v5(vec![if_new], None).await?;
    assert!(sub.next_publish(QUIET * 2).await.is_none(), "Retain Handling 1, existing: none");

    let mut rap = Filter::new("cfg/a", QoS::AtLeastOnce);
    rap.preserve_retain = true;
    rap.retain_forward_rule = RetainForwardRule::Never;
    let (mut keeper, _) = Client::connect(gw.mqtt, &Options::new(true, "keeper")).await?;
    keeper.subscribe_v5(vec![rap], None).await?;
    publisher.publish("cfg/a", 1, true, "v2").await?;
    let m = keeper.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("no delivery"))?;
    assert!(m.retain, "Retain As Published keeps RETAIN on a live delivery");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_acknowledged_before_a_crash_survives_it() -> anyhow::Result<()> {
    use meshgate_protocols::mqtt::{Packet, Publish, QoS as Q, ReasonCode, Version};
    use meshgate_tests::raw::{RawClient, Reply};
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let mut raw = RawClient::connect(gw.mqtt, Version::V5, "dev", 30)?;
    for (n, payload) in [(1u16, &b"v1"[..]), (2, b"v2"), (3, b"")] {
        let topic = if n == 3 { "cfg/cleared" } else { "cfg/kept" };
        raw.send(&Packet::Publish(Publish {
            topic,
            qos: Q::AtLeastOnce,
            retain: true,
            packet_id: Some(n),
            payload,
            ..Publish::default()
        }))?;
        assert_eq!(raw.recv()?, Reply::Ack(4, n, ReasonCode::SUCCESS));
    }
    // A retained publish refused as an invalid CloudEvent (0x99) is stored nowhere, before or after a crash.
    let structured = meshgate_protocols::mqtt::Properties {
        content_type: Some("application/cloudevents+json"),
        ..Default::default()
    };
    raw.send(&Packet::Publish(Publish {
        topic: "cfg/refused",
        qos: Q::AtLeastOnce,
        retain: true,
        packet_id: Some(4),
        payload: b"{\"specversion\":\"1.0\"}",
        properties: structured,
        ..Publish::default()
    }))?;
    assert_eq!(raw.recv()?, Reply::Ack(4, 4, ReasonCode::PAYLOAD_FORMAT_INVALID));
    // SIGKILL right after the acknowledgements: no shutdown, no snapshot.
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (mut sub, _) = Client::connect(gw.mqtt, &Options::new(true, "sub")).await?;
    sub.subscribe(&[("cfg/#", 1)]).await?;
    let got: Vec<(String, String)> = sub.drain(QUIET * 2).await.into_iter().map(|m| (m.topic, m.payload)).collect();
    assert_eq!(got, [("cfg/kept".to_string(), "v2".to_string())]);
    Ok(())
}
