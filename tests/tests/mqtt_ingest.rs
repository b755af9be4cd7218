//! MQTT ingest end to end: real rumqttc clients (MQTT 3.1.1 and 5) publish to the real `meshgate` binary, and the
//! CloudEvents come out of its file uplink.

use std::collections::HashMap;
use std::time::Duration;

use meshgate_tests::Gateway;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, EventLoop as EventLoop5, MqttOptions as Options5};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

fn v4(gw: &Gateway, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(o, 200)
}

fn v5(gw: &Gateway, id: &str) -> (Client5, EventLoop5) {
    let mut o = Options5::new(id, gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    Client5::new(o, 200)
}

/// Polls until `acks` QoS 1/2 flows completed (PUBACK or PUBCOMP).
async fn wait_acks_v4(el: &mut EventLoop, acks: usize) -> anyhow::Result<()> {
    let mut done = 0;
    while done < acks {
        let event = tokio::time::timeout(Duration::from_secs(20), el.poll()).await??;
        if let Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) = event {
            done += 1;
        }
    }
    Ok(())
}

/// Polls a v5 event loop until `acks` flows completed; returns every PUBACK reason seen.
async fn wait_acks_v5(el: &mut EventLoop5, acks: usize) -> anyhow::Result<Vec<PubAckReason>> {
    let mut reasons = Vec::new();
    let mut done = 0;
    while done < acks {
        match tokio::time::timeout(Duration::from_secs(20), el.poll()).await?? {
            Event5::Incoming(Packet5::PubAck(a)) => {
                reasons.push(a.reason);
                done += 1;
            }
            Event5::Incoming(Packet5::PubComp(_)) => done += 1,
            _ => {}
        }
    }
    Ok(reasons)
}

fn by_subject<'a>(events: &'a [Value], subject: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["subject"] == subject).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_from_a_v311_client_become_events() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (client, mut el) = v4(&gw, "sensor-311");
    client.publish("plant/a/qos1", QoS::AtLeastOnce, false, r#"{"t":1}"#).await?;
    client.publish("plant/a/qos2", QoS::ExactlyOnce, false, "two").await?;
    wait_acks_v4(&mut el, 2).await?;
    client.publish("plant/a/qos0", QoS::AtMostOnce, false, "zero").await?;
    client.disconnect().await?;
    while !matches!(el.poll().await, Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) {}
    let events = gw.wait_for_events(3, Duration::from_secs(10))?;
    assert_eq!(events.len(), 3, "{events:#?}");
    let e1 = by_subject(&events, "plant/a/qos1")[0];
    assert_eq!(e1["data"], json!({"t": 1}));
    assert_eq!(e1["datacontenttype"], "application/json");
    assert_eq!(e1["source"], "/meshgate/edge-test/mqtt/sensor-311");
    assert_eq!(e1["type"], "io.meshgate.mqtt.message");
    assert_eq!(e1["deviceid"], "sensor-311");
    assert_eq!(e1["gatewayid"], "edge-test");
    assert_eq!(e1["protocol"], "mqtt");
    assert_eq!(e1["specversion"], "1.0");
    assert_eq!(by_subject(&events, "plant/a/qos2")[0]["data_base64"], "dHdv");
    assert_eq!(by_subject(&events, "plant/a/qos0")[0]["data_base64"], "emVybw==");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_from_a_v5_client_become_events() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (client, mut el) = v5(&gw, "sensor-5");
    let props = PublishProperties { content_type: Some("text/plain".into()), ..PublishProperties::default() };
    client
        .publish_with_properties("plant/b/qos1", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "one", props)
        .await?;
    client.publish("plant/b/qos2", rumqttc::v5::mqttbytes::QoS::ExactlyOnce, false, "two").await?;
    let reasons = wait_acks_v5(&mut el, 2).await?;
    assert_eq!(reasons, vec![PubAckReason::Success]);
    client.publish("plant/b/qos0", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, "zero").await?;
    client.disconnect().await?;
    while !matches!(el.poll().await, Err(_) | Ok(Event5::Outgoing(rumqttc::Outgoing::Disconnect))) {}
    let events = gw.wait_for_events(3, Duration::from_secs(10))?;
    assert_eq!(events.len(), 3, "{events:#?}");
    let e1 = by_subject(&events, "plant/b/qos1")[0];
    assert_eq!(e1["data"], "one");
    assert_eq!(e1["datacontenttype"], "text/plain");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_publishing_a_hundred_messages_each_lose_nothing_and_keep_order() -> anyhow::Result<()> {
    const CLIENTS: usize = 100;
    const MESSAGES: usize = 100;
    let gw = Gateway::start()?;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, mut el) = v4(&gw, &format!("dev-{c:03}"));
        tasks.push(tokio::spawn(async move {
            let publisher = tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    let payload = json!({"client": c, "seq": seq}).to_string();
                    client.publish(format!("devices/dev-{c:03}/events"), QoS::AtLeastOnce, false, payload).await?;
                }
                anyhow::Ok(client)
            });
            wait_acks_v4(&mut el, MESSAGES).await?;
            let client = publisher.await??;
            client.disconnect().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Every message was acknowledged, so every event is already on disk.
    let events = gw.wait_for_events(CLIENTS * MESSAGES, Duration::from_secs(30))?;
    assert_eq!(events.len(), CLIENTS * MESSAGES);
    let mut per_client: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &events {
        let device = e["deviceid"].as_str().unwrap_or_default().to_string();
        per_client.entry(device).or_default().push(e["data"]["seq"].as_u64().unwrap_or(u64::MAX));
    }
    assert_eq!(per_client.len(), CLIENTS);
    for (device, seqs) in per_client {
        assert_eq!(seqs, (0..MESSAGES as u64).collect::<Vec<_>>(), "order of {device}");
    }
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(
        metrics.contains(&format!("meshgate_messages_acknowledged_total{{protocol=\"mqtt\"}} {}", CLIENTS * MESSAGES))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_publish_with_cloudevents_user_properties_comes_out_with_exactly_those_attributes() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (client, mut el) = v5(&gw, "ce-binary");
    let attrs = [
        ("specversion", "1.0"),
        ("id", "evt-0001"),
        ("source", "urn:device:thermo-7"),
        ("type", "com.example.temperature"),
        ("subject", "room/12"),
        ("time", "2026-11-23T10:00:00Z"),
        ("dataschema", "https://example.com/schemas/temp.json"),
        ("sitecode", "north"),
    ];
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(
            "devices/thermo-7/t",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"c":21.5}"#,
            props,
        )
        .await?;
    assert_eq!(wait_acks_v5(&mut el, 1).await?, vec![PubAckReason::Success]);
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    let mut expected: serde_json::Map<String, Value> = attrs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    expected.insert("datacontenttype".into(), json!("application/json"));
    expected.insert("data".into(), json!({"c": 21.5}));
    assert_eq!(events, vec![Value::Object(expected)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_json_cloudevent_comes_out_unchanged() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let event = json!({
        "specversion": "1.0", "id": "s-1", "source": "/fleet/truck-9", "type": "com.example.gps",
        "time": "2026-11-23T10:00:00.5+01:00", "datacontenttype": "application/json",
        "data": {"lat": 52.5, "lon": 13.4, "tags": ["a", "b"]}, "fleetid": "f-3", "odometer": 120034, "moving": true
    });
    let (client, mut el) = v4(&gw, "structured-311");
    client.publish("fleet/truck-9/gps", QoS::AtLeastOnce, false, event.to_string()).await?;
    wait_acks_v4(&mut el, 1).await?;
    let (client5, mut el5) = v5(&gw, "structured-5");
    let mut second = event.clone();
    second["id"] = json!("s-2");
    let props =
        PublishProperties { content_type: Some("application/cloudevents+json".into()), ..PublishProperties::default() };
    client5
        .publish_with_properties(
            "fleet/truck-9/gps",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            second.to_string(),
            props,
        )
        .await?;
    assert_eq!(wait_acks_v5(&mut el5, 1).await?, vec![PubAckReason::Success]);
    assert_eq!(gw.wait_for_events(2, Duration::from_secs(10))?, vec![event, second]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cloudevent_is_refused_with_0x99_and_never_forwarded() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (client, mut el) = v5(&gw, "bad-ce");
    // Binary mode without `source` and `type`.
    let props = PublishProperties {
        user_properties: vec![("specversion".into(), "1.0".into()), ("id".into(), "x".into())],
        ..PublishProperties::default()
    };
    client.publish_with_properties("t/bad", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "x", props).await?;
    // Structured mode with a bad specversion, then a valid message on the same connection.
    let props =
        PublishProperties { content_type: Some("application/cloudevents+json".into()), ..PublishProperties::default() };
    let bad = json!({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}).to_string();
    client.publish_with_properties("t/bad", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, bad, props).await?;
    client.publish("t/good", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "fine").await?;
    let reasons = wait_acks_v5(&mut el, 3).await?;
    assert_eq!(
        reasons,
        vec![PubAckReason::PayloadFormatInvalid, PubAckReason::PayloadFormatInvalid, PubAckReason::Success]
    );
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], "t/good");
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"mqtt\",reason=\"invalid_cloudevent\"} 2"), "{metrics}");

    // MQTT 3.1.1 has no negative PUBACK: the connection is closed and nothing is acknowledged.
    let (client, mut el) = v4(&gw, "bad-ce-311");
    let bad = json!({"specversion": "1.0", "id": "", "source": "/s", "type": "t"}).to_string();
    client.publish("t/bad", QoS::AtLeastOnce, false, bad).await?;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await? {
            Ok(Event::Incoming(Packet::PubAck(_))) => break false,
            Ok(_) => {}
            Err(_) => break true,
        }
    };
    assert!(closed, "an invalid event must not be acknowledged over MQTT 3.1.1");
    assert_eq!(gw.wait_for_events(1, Duration::from_secs(10))?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_the_right_connack_code_for_each_version() -> anyhow::Result<()> {
    let hash = std::process::Command::new(meshgate_tests::meshgate_bin())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().map(|mut s| s.write_all(b"correct horse\n")).transpose()?;
            child.wait_with_output()
        })?;
    assert!(hash.status.success());
    let hash = String::from_utf8(hash.stdout)?.trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let gw = Gateway::start_with(|base| {
        base.replace("allow_anonymous = true", "allow_anonymous = false")
            + &format!("\n[[auth.users]]\nusername = \"device-1\"\npassword_hash = \"{hash}\"\n")
    })?;

    let connect_v4 = |user: Option<&str>, pass: &str| {
        let mut o = MqttOptions::new("auth-311", gw.mqtt.ip().to_string(), gw.mqtt.port());
        if let Some(u) = user {
            o.set_credentials(u, pass);
        }
        AsyncClient::new(o, 10).1
    };
    let mut el = connect_v4(Some("device-1"), "wrong");
    match el.poll().await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut el = connect_v4(None, "");
    match el.poll().await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut el = connect_v4(Some("device-1"), "correct horse");
    assert!(matches!(el.poll().await, Ok(Event::Incoming(Packet::ConnAck(_)))));

    let mut o = Options5::new("auth-5", gw.mqtt.ip().to_string(), gw.mqtt.port());
    o.set_credentials("device-1", "wrong");
    let (_c, mut el) = Client5::new(o, 10);
    match el.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"mqtt\",reason=\"bad_credentials\"} 2"), "{metrics}");
    Ok(())
}
