//! Cloud-to-device through a RabbitMQ downlink: a consumer in the mesh publishes command events to an exchange,
//! the gateway's downlink queue takes them, and an MQTT 5 device (rumqttc), a WebSocket `cloudevents.json` client
//! and an MQTT 3.1.1 device that was offline (persistent session) each receive theirs exactly once, across a
//! SIGKILL of the gateway for the offline one. An expired event is dropped and counted, an unroutable one refused,
//! RabbitMQ's queue ends empty, and a command a device republishes never goes back up to the mesh. Fails loudly if
//! RabbitMQ is not running (`.ci/setup` starts it).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::{SinkExt, StreamExt};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A command in binary mode (`cloudEvents_` headers), for `device` unless `None`.
fn binary_command(id: &str, device: Option<&str>, extra: &[(&str, &str)]) -> (BasicProperties, Vec<u8>) {
    let mut attributes =
        vec![("specversion", "1.0"), ("id", id), ("source", "/cloud/fleet"), ("type", "com.example.command")];
    attributes.push(("subject", "blink"));
    attributes.extend(device.map(|d| ("deviceid", d)));
    attributes.extend_from_slice(extra);
    let mut headers = FieldTable::default();
    for (k, v) in attributes {
        headers.insert(ShortString::from(format!("cloudEvents_{k}")), AMQPValue::LongString(v.into()));
    }
    let properties = BasicProperties::default().with_content_type("application/json".into()).with_headers(headers);
    (properties, br#"{"times":3}"#.to_vec())
}

/// A command in structured mode (`application/cloudevents+json`).
fn structured_command(id: &str, device: &str) -> (BasicProperties, Vec<u8>) {
    let event = json!({"specversion": "1.0", "id": id, "source": "/cloud/fleet", "type": "com.example.command",
                       "subject": "reboot", "deviceid": device, "datacontenttype": "application/json",
                       "data": {"in_s": 5}});
    let properties = BasicProperties::default().with_content_type("application/cloudevents+json".into());
    (properties, event.to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_rabbitmq_reach_every_kind_of_device_once_and_never_loop_back() -> Result<()> {
    let exchange = unique("mesh.commands");
    let queue = unique("meshgate.cmd");
    let downlink = format!(
        "\n[[downlinks]]\nname = \"cmd\"\nkind = \"amqp\"\nuri = \"{BROKER}\"\nexchange = \"{exchange}\"\nqueue = \"{queue}\"\nbinding = \"edge-test.#\"\ntopic = \"devices/{{deviceid}}/commands/{{subject}}\"\n"
    );
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b + &downlink)?;
    let connected =
        gw.wait_metric("meshgate_downlink_connects_total{downlink=\"cmd\"}", 1.0, Duration::from_secs(20)).await?;
    ensure!(connected >= 1.0, "the downlink never consumed (is RabbitMQ running on 127.0.0.1:5672?)");

    // The devices: MQTT 5 online, WebSocket online, MQTT 3.1.1 with a persistent session and offline.
    let (mut mqtt, _) = Client::connect(gw.mqtt, &Options::new(true, "dev-a")).await?;
    mqtt.subscribe(&[("devices/dev-a/commands/#", 1)]).await?;
    let offline = Options { clean: false, ..Options::new(false, "dev-o") };
    let (mut dev_o, _) = Client::connect(gw.mqtt, &offline).await?;
    dev_o.subscribe(&[("devices/dev-o/commands/#", 1)]).await?;
    dev_o.disconnect().await;
    let mut ws = meshgate_tests::ws::connect(gw.listener("ws")?, "/events", "cloudevents.json", &[]).await?;
    ws.send(Message::text(json!({"subscribe": "devices/dev-w/commands/#"}).to_string())).await?;
    let answer = next_json(&mut ws).await?;
    ensure!(answer["granted"] == true, "{answer}");

    // The mesh publishes.
    let conn = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .context("RabbitMQ must run on 127.0.0.1:5672 for this test")?;
    let ch = conn.create_channel().await?;
    let commands = [
        ("edge-test.dev-a", binary_command("cmd-a", Some("dev-a"), &[])),
        ("edge-test.dev-w", structured_command("cmd-w", "dev-w")),
        ("edge-test.dev-o", binary_command("cmd-o", Some("dev-o"), &[("ttl", "600000")])),
        // Sent in 2020 with a one-second ttl: expired on arrival.
        (
            "edge-test.dev-a",
            binary_command("cmd-late", Some("dev-a"), &[("ttl", "1000"), ("time", "2020-01-01T00:00:00Z")]),
        ),
        // No device to address: refused.
        ("edge-test.nobody", binary_command("cmd-nobody", None, &[])),
    ];
    for (key, (properties, body)) in commands {
        ch.basic_publish(
            ShortString::from(exchange.as_str()),
            ShortString::from(key),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?
        .await?;
    }

    let got = mqtt.next_publish(Duration::from_secs(10)).await.context("dev-a got no command")?;
    assert_eq!(got.topic, "devices/dev-a/commands/blink");
    let event: Value = serde_json::from_str(&got.payload)?;
    assert_eq!(event["id"], "cmd-a", "{event:#}");
    assert_eq!(event["data"]["times"], 3);
    assert_eq!(event["meshgateorigin"], "mesh:cmd");
    let content_type = got.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(content_type.as_deref(), Some("application/cloudevents+json"));
    let event = next_json(&mut ws).await?;
    assert_eq!(event["id"], "cmd-w", "{event:#}");
    assert_eq!(event["subject"], "reboot");
    gw.wait_metric(
        "meshgate_downlink_events_total{downlink=\"cmd\",outcome=\"delivered\"}",
        3.0,
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(gw.metric("meshgate_downlink_events_total{downlink=\"cmd\",outcome=\"expired\"}")?, 1.0);
    assert_eq!(gw.metric("meshgate_downlink_events_total{downlink=\"cmd\",outcome=\"refused\"}")?, 1.0);

    // The device republishes what it received: stored for local subscribers, never sent back up.
    mqtt.publish("devices/dev-a/events/echo", 1, false, &got.payload).await?;
    mqtt.publish("devices/dev-a/events/status", 1, false, "{\"ok\":true}").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = gw.events()?;
        if events.iter().any(|e| e["subject"] == "devices/dev-a/events/status") {
            let looped: Vec<&Value> = events.iter().filter(|e| e.get("meshgateorigin").is_some()).collect();
            assert!(looped.is_empty(), "events from the mesh went back up: {looped:#?}");
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the status event never reached the uplink");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra = mqtt.drain(Duration::from_millis(500)).await;
    assert!(extra.iter().all(|m| m.topic.starts_with("devices/dev-a/events/")), "dev-a got more commands: {extra:?}");

    // The gateway dies before the offline device returns: its queued command was committed before RabbitMQ was
    // acknowledged, so the restarted gateway still holds it.
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b + &downlink)?;
    let (mut dev_o, _) = Client::connect(gw.mqtt, &offline).await?;
    let got = dev_o.next_publish(Duration::from_secs(10)).await.context("dev-o got no command after returning")?;
    assert_eq!(got.topic, "devices/dev-o/commands/blink");
    let event: Value = serde_json::from_str(&got.payload)?;
    assert_eq!(event["id"], "cmd-o", "{event:#}");
    let again = dev_o.drain(Duration::from_millis(500)).await;
    assert!(again.is_empty(), "dev-o got its command more than once: {again:?}");
    dev_o.disconnect().await;

    // Everything the downlink took was acknowledged or rejected: nothing waits in (or returns to) the queue.
    drop(gw);
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let left = ch.queue_declare(ShortString::from(queue.as_str()), passive, FieldTable::default()).await?;
    assert_eq!(left.message_count(), 0, "messages left in the downlink's queue");
    ch.queue_delete(ShortString::from(queue.as_str()), Default::default()).await?;
    ch.exchange_delete(ShortString::from(exchange.as_str()), Default::default()).await?;
    Ok(())
}

async fn next_json(ws: &mut meshgate_tests::ws::Ws) -> Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("stream ended"),
        }
    }
}
