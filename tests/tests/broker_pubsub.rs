//! Conformance of the local broker, subscriptions and delivery (MQTT 3.1.1 section 3.8-3.11 and 4.7, MQTT 5
//! section 3.8-3.11, 4.3 and 4.7), with real rumqttc clients of both versions against the real binary.

use std::time::Duration;

use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options, Received};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

async fn client(gw: &Gateway, v5: bool, id: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(gw.mqtt, &Options::new(v5, id)).await?.0)
}

async fn wildcards_deliver_what_the_spec_matches(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut sub = client(&gw, v5, "sub").await?;
    let codes = sub.subscribe(&[("sport/tennis/+", 1), ("sport/#", 0), ("#", 0), ("+/+", 0)]).await?;
    assert_eq!(codes, [1, 0, 0, 0], "granted as requested");
    let publisher = client(&gw, v5, "pub").await?;
    for topic in ["sport/tennis/player1", "sport", "$SYS/uptime", "a/b/c", "/x"] {
        publisher.publish(topic, 1, false, topic).await?;
    }
    // Every publish is routed when it is durable, before its event reaches the file uplink.
    gw.wait_for_events(5, WAIT * 2)?;
    let got = sub.drain(QUIET * 3).await;
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    // Overlapping subscriptions deliver once per message; `$` topics are not matched by leading wildcards.
    assert_eq!(topics, ["sport/tennis/player1", "sport", "a/b/c", "/x"], "{got:?}");
    let qos: Vec<u8> = got.iter().map(|m| m.qos).collect();
    assert_eq!(qos, [1, 0, 0, 0], "the highest QoS among overlapping subscriptions, capped by the publish");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_deliver_what_the_spec_matches_v311() -> anyhow::Result<()> {
    wildcards_deliver_what_the_spec_matches(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_deliver_what_the_spec_matches_v5() -> anyhow::Result<()> {
    wildcards_deliver_what_the_spec_matches(true).await
}

async fn qos_is_downgraded_to_the_subscription_and_order_is_kept(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut s0 = client(&gw, v5, "s0").await?;
    let mut s1 = client(&gw, v5, "s1").await?;
    let mut s2 = client(&gw, v5, "s2").await?;
    s0.subscribe(&[("q/t", 0)]).await?;
    s1.subscribe(&[("q/t", 1)]).await?;
    s2.subscribe(&[("q/t", 2)]).await?;
    let publisher = client(&gw, v5, "pub").await?;
    for n in 0..60u32 {
        publisher.publish("q/t", (n % 3) as u8, false, &n.to_string()).await?;
    }
    gw.wait_for_events(60, WAIT * 2)?;
    for (sub, max) in [(&mut s0, 0u8), (&mut s1, 1), (&mut s2, 2)] {
        let got = sub.drain(QUIET * 3).await;
        let payloads: Vec<u32> = got.iter().map(|m| m.payload.parse().unwrap_or(u32::MAX)).collect();
        assert_eq!(payloads, (0..60).collect::<Vec<_>>(), "every message, in publish order (max QoS {max})");
        for (n, m) in got.iter().enumerate() {
            assert_eq!(m.qos, (n as u8 % 3).min(max), "message {n} at max QoS {max}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_downgraded_to_the_subscription_and_order_is_kept_v311() -> anyhow::Result<()> {
    qos_is_downgraded_to_the_subscription_and_order_is_kept(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_downgraded_to_the_subscription_and_order_is_kept_v5() -> anyhow::Result<()> {
    qos_is_downgraded_to_the_subscription_and_order_is_kept(true).await
}

async fn unsubscribe_stops_delivery(v5: bool) -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut sub = client(&gw, v5, "sub").await?;
    sub.subscribe(&[("u/+", 1)]).await?;
    let publisher = client(&gw, v5, "pub").await?;
    publisher.publish("u/1", 1, false, "before").await?;
    assert_eq!(sub.next_publish(WAIT).await.map(|m| m.payload).as_deref(), Some("before"));
    let reasons = sub.unsubscribe("u/+").await?;
    if v5 {
        assert_eq!(reasons, [0x00]);
        assert_eq!(sub.unsubscribe("u/+").await?, [0x11], "no subscription existed");
    }
    publisher.publish("u/1", 1, false, "after").await?;
    assert!(sub.next_publish(QUIET * 2).await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_v311() -> anyhow::Result<()> {
    unsubscribe_stops_delivery(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_v5() -> anyhow::Result<()> {
    unsubscribe_stops_delivery(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_publish_is_also_an_event_for_the_mesh() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut sub = client(&gw, true, "controller").await?;
    sub.subscribe(&[("devices/+/telemetry", 1)]).await?;
    let publisher = client(&gw, false, "thermo-1").await?;
    publisher.publish("devices/thermo-1/telemetry", 1, false, r#"{"c":21}"#).await?;
    let m = sub.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("no delivery"))?;
    assert_eq!((m.topic.as_str(), m.payload.as_str()), ("devices/thermo-1/telemetry", r#"{"c":21}"#));
    let events = gw.wait_for_events(1, WAIT)?;
    assert_eq!(events[0]["subject"], "devices/thermo-1/telemetry");
    assert_eq!(events[0]["deviceid"], "thermo-1");
    let (_, metrics) = gw.admin_get("/metrics")?;
    for line in ["meshgate_broker_sessions 2", "meshgate_broker_subscriptions 1", "meshgate_broker_delivered_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing:\n{metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_subscriber_gets_forwarded_properties_and_its_subscription_identifier() -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeProperties};
    let gw = Gateway::start()?;
    let mut sub = client(&gw, true, "sub").await?;
    let props = SubscribeProperties { id: Some(42), user_properties: vec![] };
    sub.subscribe_v5(vec![Filter::new("rpc/#", QoS::AtLeastOnce)], Some(props)).await?;
    let publisher = client(&gw, true, "pub").await?;
    let p = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some("rpc/reply/7".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-7")),
        user_properties: vec![("trace".into(), "abc".into())],
        ..Default::default()
    };
    publisher.publish_v5("rpc/req", 1, false, "ping", p).await?;
    let m = sub.next_publish(WAIT).await.ok_or_else(|| anyhow::anyhow!("no delivery"))?;
    let got = m.properties.ok_or_else(|| anyhow::anyhow!("no properties"))?;
    assert_eq!(got.subscription_identifiers, [42]);
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("rpc/reply/7"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-7"[..]));
    assert_eq!(got.user_properties, [("trace".to_string(), "abc".to_string())]);
    assert_eq!(got.payload_format_indicator, Some(1));
    let expiry = got.message_expiry_interval.unwrap_or(0);
    assert!((119..=120).contains(&expiry), "remaining expiry {expiry}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_keeps_a_clients_own_messages_from_it() -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Filter;
    let gw = Gateway::start()?;
    let mut me = client(&gw, true, "me").await?;
    let mut f = Filter::new("chat", QoS::AtLeastOnce);
    f.nolocal = true;
    me.subscribe_v5(vec![f], None).await?;
    let other = client(&gw, true, "other").await?;
    me.publish("chat", 1, false, "mine").await?;
    other.publish("chat", 1, false, "theirs").await?;
    gw.wait_for_events(2, WAIT)?;
    let got: Vec<String> = me.drain(QUIET * 2).await.into_iter().map(|m| m.payload).collect();
    assert_eq!(got, ["theirs"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_receives_what_devices_publish() -> anyhow::Result<()> {
    let bin = meshgate_tests::require_tool("mosquitto_sub");
    let gw = Gateway::start()?;
    let mut child = tokio::process::Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &gw.mqtt.port().to_string(),
            "-V",
            "mqttv5",
            "-q",
            "2",
            "-t",
            "site/#",
            "-v",
            "-C",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // mosquitto_sub has no "subscribed" signal on stdout: publish until it has its three lines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = client(&gw, false, "pub").await?;
    for n in 1..=3 {
        publisher.publish(&format!("site/{n}"), 2, false, &format!("m{n}")).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        if let Some(mut so) = child.stdout.take() {
            let _ = so.read_to_string(&mut out).await;
        }
        out
    })
    .await?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["site/1 m1", "site/2 m2", "site/3 m3"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suback_grants_every_qos_and_a_connack_says_no_session_for_a_new_client() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    for v5 in [false, true] {
        let (mut c, connack) = Client::connect(gw.mqtt, &Options::new(v5, &format!("c-{v5}"))).await?;
        assert_eq!(connack, Received::ConnAck { session_present: false, code: 0 });
        assert_eq!(c.subscribe(&[("a", 0), ("b", 1), ("c", 2)]).await?, [0, 1, 2]);
    }
    Ok(())
}
