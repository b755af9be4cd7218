//! One message, one identity: a plain MQTT message becomes one CloudEvent for the mesh, and every local delivery
//! of it — a `cloudevents.json` subscriber, an AMQP consumer, a later subscriber getting it as a retained message —
//! carries that event's `id`, `source` and `time`, so consumers can correlate and deduplicate.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::ws::{connect as ws_connect, next_json};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn subscriber(gw: &Gateway, name: &str) -> anyhow::Result<meshgate_tests::ws::Ws> {
    let mut ws = ws_connect(gw.listener("ws")?, &format!("/?client={name}"), "cloudevents.json", &[]).await?;
    ws.send(Message::text(json!({"subscribe": "plant/#"}).to_string())).await?;
    assert_eq!(next_json(&mut ws).await?["granted"], true);
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_delivery_carries_the_events_identity() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let mut early = subscriber(&gw, "early").await?;
    let amqp =
        Connection::connect(&format!("amqp://guest:guest@{}/%2f", gw.amqp()?), ConnectionProperties::default()).await?;
    let ch = amqp.create_channel().await?;
    let queue = ch
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let (amq_topic, key) = (ShortString::from("amq.topic"), ShortString::from("plant.#"));
    ch.queue_bind(queue.name().clone(), amq_topic, key, QueueBindOptions::default(), FieldTable::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            ShortString::from("c"),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;

    let (oven, _) = Client::connect(gw.mqtt, &Options::new(true, "oven-7")).await?;
    oven.publish("plant/oven", 1, true, "211").await?;

    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    let event = &events[0];
    let identity = |e: &Value| (e["id"].clone(), e["source"].clone(), e["time"].clone());
    assert!(event["id"].is_string() && event["time"].is_string(), "{event}");

    let live = next_json(&mut early).await?;
    assert_eq!(identity(&live), identity(event), "the cloudevents.json subscriber's copy: {live}");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
    let message_id = delivery.properties.message_id().as_ref().map(|m| m.to_string());
    assert_eq!(message_id.as_deref(), event["id"].as_str(), "the AMQP consumer's message-id");
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let source = headers.inner().get(&ShortString::from("cloudEvents:source"));
    let source = match source {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    assert_eq!(source.as_deref(), event["source"].as_str());

    // Later, twice, as a retained message: still the same event.
    for name in ["late-1", "late-2"] {
        let mut late = subscriber(&gw, name).await?;
        let retained = next_json(&mut late).await?;
        assert_eq!(identity(&retained), identity(event), "retained delivery to {name}: {retained}");
        late.close(None).await.ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
