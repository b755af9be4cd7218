//! Cloud-to-device through the downlinks, with each mesh: a consumer in the mesh publishes command events (to a
//! RabbitMQ exchange, or to a topic of the EventMesh TCP double), the gateway's downlink takes them, and an MQTT 5
//! device (rumqttc), a WebSocket `cloudevents.json` client and an MQTT 3.1.1 device that was offline (persistent
//! session) each receive theirs exactly once, across a SIGKILL of the gateway for the offline one. An expired
//! event is dropped and counted, an unroutable one refused, the mesh ends with nothing unacknowledged, and a
//! command a device republishes never goes back up to the mesh. The RabbitMQ test fails loudly if RabbitMQ is not
//! running (`.ci/setup` starts it).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::SinkExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::eventmesh::{Protocol, Runtime};
use meshgate_tests::ws::next_json;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// One command event: its id, the device it is for, the command (an extension the local topic names), and
/// further attributes.
struct Command {
    id: &'static str,
    device: Option<&'static str>,
    command: &'static str,
    extra: &'static [(&'static str, &'static str)],
}

/// What the test sends: one per kind of device, one expired on arrival, one for no device.
const COMMANDS: &[Command] = &[
    Command { id: "cmd-a", device: Some("dev-a"), command: "blink", extra: &[] },
    Command { id: "cmd-w", device: Some("dev-w"), command: "reboot", extra: &[] },
    Command { id: "cmd-o", device: Some("dev-o"), command: "blink", extra: &[("ttl", "600000")] },
    // Sent in 2020 with a one-second ttl: expired on arrival.
    Command {
        id: "cmd-late",
        device: Some("dev-a"),
        command: "blink",
        extra: &[("ttl", "1000"), ("time", "2020-01-01T00:00:00Z")],
    },
    // No device to address: refused.
    Command { id: "cmd-nobody", device: None, command: "blink", extra: &[] },
];

/// The local topic every downlink in these tests renders.
const TOPIC: &str = "devices/{deviceid}/commands/{command}";

/// The mesh the commands come from.
enum Mesh {
    /// A RabbitMQ exchange; the downlink's queue is bound to `edge-test.#`.
    Rabbit { ch: Channel, exchange: String, queue: String },
    /// The EventMesh TCP double; the downlink subscribes to `topic`.
    EventMesh { runtime: Runtime, topic: String },
}

impl Mesh {
    async fn rabbitmq() -> Result<Mesh> {
        let conn = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .context("RabbitMQ must run on 127.0.0.1:5672 for this test")?;
        let ch = conn.create_channel().await?;
        Ok(Mesh::Rabbit { ch, exchange: unique("mesh.commands"), queue: unique("meshgate.cmd") })
    }

    fn eventmesh() -> Result<Mesh> {
        Ok(Mesh::EventMesh { runtime: Runtime::start(Protocol::Tcp)?, topic: unique("edge-commands") })
    }

    /// The gateway's `[[downlinks]]` table, named `cmd`.
    fn downlink(&self) -> String {
        match self {
            Mesh::Rabbit { exchange, queue, .. } => format!(
                "\n[[downlinks]]\nname = \"cmd\"\nkind = \"amqp\"\nuri = \"{BROKER}\"\nexchange = \"{exchange}\"\nqueue = \"{queue}\"\nbinding = \"edge-test.#\"\ntopic = \"{TOPIC}\"\n"
            ),
            Mesh::EventMesh { runtime, topic } => format!(
                "\n[[downlinks]]\nname = \"cmd\"\nkind = \"eventmesh-tcp\"\nendpoints = [\"{}\"]\ntopics = [\"{topic}\"]\nheartbeat_interval_ms = 500\nreconnect_max_ms = 500\ntopic = \"{TOPIC}\"\n",
                runtime.addr
            ),
        }
    }

    /// Publishes `c` as the mesh's producers do: to RabbitMQ in binary mode (`cloudEvents_` headers), `cmd-w` in
    /// structured mode; to EventMesh as a structured event whose `datacontenttype` is the event format (the runtime
    /// pushes nothing else over TCP) on the topic subscribed.
    async fn send(&self, c: &Command) -> Result<()> {
        let mut attributes = vec![
            ("specversion", "1.0"),
            ("id", c.id),
            ("source", "/cloud/fleet"),
            ("type", "com.example.command"),
            ("command", c.command),
        ];
        attributes.extend(c.device.map(|d| ("deviceid", d)));
        attributes.extend_from_slice(c.extra);
        let mut event: serde_json::Map<String, Value> =
            attributes.iter().map(|(k, v)| ((*k).to_string(), Value::from(*v))).collect();
        event.insert("data".into(), json!({"times": 3}));
        match self {
            Mesh::Rabbit { ch, exchange, .. } => {
                let (properties, body) = if c.id == "cmd-w" {
                    event.insert("datacontenttype".into(), "application/json".into());
                    let properties =
                        BasicProperties::default().with_content_type("application/cloudevents+json".into());
                    (properties, Value::Object(event).to_string().into_bytes())
                } else {
                    let mut headers = FieldTable::default();
                    for (k, v) in attributes {
                        headers.insert(ShortString::from(format!("cloudEvents_{k}")), AMQPValue::LongString(v.into()));
                    }
                    let properties =
                        BasicProperties::default().with_content_type("application/json".into()).with_headers(headers);
                    (properties, br#"{"times":3}"#.to_vec())
                };
                let key = format!("edge-test.{}", c.device.unwrap_or("nobody"));
                ch.basic_publish(
                    ShortString::from(exchange.as_str()),
                    ShortString::from(key.as_str()),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await?;
            }
            Mesh::EventMesh { runtime, topic } => {
                event.insert("subject".into(), topic.as_str().into());
                event.insert("datacontenttype".into(), "application/cloudevents+json".into());
                runtime.publish(&Value::Object(event)).await?;
            }
        }
        Ok(())
    }

    /// Everything the downlink took was acknowledged (or rejected): nothing waits in, or returns to, the mesh.
    async fn assert_settled(&self) -> Result<()> {
        match self {
            Mesh::Rabbit { ch, exchange, queue } => {
                let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                let left = ch.queue_declare(ShortString::from(queue.as_str()), passive, FieldTable::default()).await?;
                assert_eq!(left.message_count(), 0, "messages left in the downlink's queue");
                ch.queue_delete(ShortString::from(queue.as_str()), Default::default()).await?;
                ch.exchange_delete(ShortString::from(exchange.as_str()), Default::default()).await?;
            }
            Mesh::EventMesh { runtime, .. } => {
                let state = runtime.state();
                assert_eq!(runtime.unacknowledged(), 0, "pushes left unacknowledged");
                let (pushes, acks) = (state.pushes.load(SEQ), state.push_acks.load(SEQ));
                assert_eq!(pushes, acks, "pushed {pushes}, acknowledged {acks}");
                assert_eq!(state.unpushable.load(SEQ), 0);
            }
        }
        Ok(())
    }
}

const SEQ: std::sync::atomic::Ordering = std::sync::atomic::Ordering::SeqCst;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_rabbitmq_reach_every_kind_of_device_once_and_never_loop_back() -> Result<()> {
    let mesh = Mesh::rabbitmq().await?;
    let (gw, _dir) = every_kind_of_device_gets_its_command_once(&mesh).await?;
    drop(gw);
    mesh.assert_settled().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_eventmesh_reach_every_kind_of_device_once_and_never_loop_back() -> Result<()> {
    let mut mesh = Mesh::eventmesh()?;
    let (gw, _dir) = every_kind_of_device_gets_its_command_once(&mesh).await?;
    mesh.assert_settled().await?;
    let Mesh::EventMesh { runtime, .. } = &mut mesh else { unreachable!() };
    // Five commands, none pushed twice; the restarted gateway's one session never broke.
    assert_eq!(runtime.state().pushes.load(SEQ), 5, "pushes");
    assert_eq!(gw.metric("meshgate_downlink_connects_total{downlink=\"cmd\"}")?, 1.0);

    // The runtime dies and returns: the downlink subscribes again, and a new command reaches the device.
    runtime.restart()?;
    gw.wait_metric("meshgate_downlink_connects_total{downlink=\"cmd\"}", 2.0, Duration::from_secs(20)).await?;
    let offline = Options { clean: false, ..Options::new(false, "dev-o") };
    let (mut dev_o, _) = Client::connect(gw.mqtt, &offline).await?;
    mesh.send(&Command { id: "cmd-o-2", device: Some("dev-o"), command: "blink", extra: &[] }).await?;
    let got = dev_o
        .next_publish(Duration::from_secs(10))
        .await
        .context("dev-o got no command after the runtime restarted")?;
    let event: Value = serde_json::from_str(&got.payload)?;
    assert_eq!(event["id"], "cmd-o-2", "{event:#}");
    dev_o.disconnect().await;
    mesh.assert_settled().await
}

/// The scenario both meshes run; returns the restarted gateway, still running, and its directory.
async fn every_kind_of_device_gets_its_command_once(mesh: &Mesh) -> Result<(Gateway, tempfile::TempDir)> {
    let downlink = mesh.downlink();
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b + &downlink)?;
    let connected =
        gw.wait_metric("meshgate_downlink_connects_total{downlink=\"cmd\"}", 1.0, Duration::from_secs(20)).await?;
    ensure!(connected >= 1.0, "the downlink never connected to the mesh");

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

    for command in COMMANDS {
        mesh.send(command).await?;
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
    assert_eq!(event["command"], "reboot");
    gw.wait_metric(
        "meshgate_downlink_events_total{downlink=\"cmd\",outcome=\"delivered\"}",
        3.0,
        Duration::from_secs(10),
    )
    .await?;
    for outcome in ["expired", "refused"] {
        let metric = format!("meshgate_downlink_events_total{{downlink=\"cmd\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.wait_metric(&metric, 1.0, Duration::from_secs(10)).await?, 1.0, "{metric}");
    }

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
    Ok((gw, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_trace_continues_through_a_deliver_span_to_the_device() -> Result<()> {
    const MESH_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const MESH_SPAN: &str = "b7ad6b7169203331";
    let (collector, spans) = meshgate_tests::otlp::grpc_receiver().await?;
    let mesh = Mesh::eventmesh()?;
    let Mesh::EventMesh { runtime, topic } = &mesh else { unreachable!() };
    let tracing =
        format!("\n[tracing]\notlp_endpoint = \"http://{collector}\"\nsample_ratio = 0.0\nexport_interval_ms = 100\n");
    let gw = Gateway::start_with(|base| format!("{base}{}{tracing}", mesh.downlink()))?;
    let (mut device, _) = Client::connect(gw.mqtt, &Options::new(true, "dev-t")).await?;
    device.subscribe(&[("devices/dev-t/#", 1)]).await?;
    gw.wait_metric("meshgate_downlink_connects_total{downlink=\"cmd\"}", 1.0, Duration::from_secs(20)).await?;
    let event = json!({
        "specversion": "1.0", "id": "cmd-t", "source": "/cloud/fleet", "type": "com.example.command",
        "deviceid": "dev-t", "command": "blink", "subject": topic,
        "datacontenttype": "application/cloudevents+json",
        "traceparent": format!("00-{MESH_TRACE}-{MESH_SPAN}-01"),
        "data": {"times": 1},
    });
    runtime.publish(&event).await?;
    let got = device.next_publish(Duration::from_secs(10)).await.context("the device got no command")?;
    let received: Value = serde_json::from_str(&got.payload)?;
    let traceparent = received["traceparent"].as_str().context("no traceparent in the command")?.to_string();
    let user = &got.properties.as_ref().context("no MQTT 5 properties")?.user_properties;
    assert!(user.iter().any(|(k, v)| k == "traceparent" && *v == traceparent), "{user:?}");
    let all = spans
        .until(Duration::from_secs(20), |s| s.iter().any(|x| x.name == "deliver" && x.trace_id == MESH_TRACE))
        .await?;
    let deliver = all.iter().find(|s| s.name == "deliver").context("deliver span")?;
    assert_eq!(deliver.parent_span_id, MESH_SPAN, "deliver is the mesh span's child");
    assert_eq!(traceparent, format!("00-{MESH_TRACE}-{}-01", deliver.span_id), "the device's parent is deliver");
    assert_eq!(deliver.attributes["meshgate.downlink"], "cmd");
    assert_eq!(deliver.attributes["messaging.destination.name"], "devices/dev-t/commands/blink");
    Ok(())
}
