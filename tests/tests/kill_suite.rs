//! The kill suite: the real binary SIGKILLed again and again under a mixed load, on one data directory, and then
//! checked against what every device was told.
//!
//! Each cycle starts the gateway (and an `edge-agent` bridging a real Mosquitto), runs every publisher and the
//! online subscriber for a random 0.4–1.4 s, and kills both with SIGKILL while they are mid-flight. Publishers:
//! MQTT 3.1.1 and MQTT 5 at QoS 1, and at QoS 2 with persistent sessions (resending an unanswered PUBLISH with
//! DUP, or its PUBREL, after each kill), AMQP with
//! confirms and AMQP without (both persistent delivery mode), a `cloudevents.json` WebSocket device, commands from
//! the mesh (published with confirms to the real RabbitMQ, taken by the gateway's downlink to `kill/down`), and a
//! device publishing at QoS 1 to Mosquitto on a topic the bridge takes into the edge-agent's spool.
//! Subscribers, all on `kill/#`: an MQTT 5 persistent session that stays offline until the end, an MQTT 3.1.1
//! persistent session that is online every cycle (`kill/q2` at QoS 2 and `kill/m5q1` at QoS 1; a client that keeps
//! its QoS 2 state as MQTT says), and a durable AMQP queue consumed only at the end.
//!
//! After the last restart:
//! - every acknowledged event is in the uplink, and each message is one event with one id (QoS 2 resends are not
//!   stored twice; the uplink itself is at least once, so a kill may repeat an event, with its id);
//! - the offline session and the durable queue got every acknowledged message, once, and every event the uplink
//!   holds from the publisher without confirms (what became durable was kept for the queue too); commands at least
//!   once (RabbitMQ redelivers what a kill left unacknowledged, after the gateway had made it durable);
//! - the online session's application got every acknowledged message of its topics, QoS 2 ones exactly once;
//! - the AMQP queue's `message-id` of each message is the id of its event in the uplink (of a command: its id);
//! - every command RabbitMQ confirmed reached all three subscribers, and nothing waits in the downlink's queue;
//! - every message Mosquitto acknowledged on the bridged topic is in the edge-agent's uplink (at least once: the
//!   bridge is acknowledged by Mosquitto's persistent session, which redelivers what the kill cut).
//!
//! RabbitMQ must run on 127.0.0.1 (`.ci/setup` starts it) and the `mosquitto` binary be installed (the suite runs a
//! Mosquitto of its own, without a queue limit); the suite fails loudly if not.
//!
//! The test command runs 10 cycles; `KILL_SUITE_CYCLES=100` the long suite (figures in docs/reliability.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use meshgate_protocols::mqtt::{
    Connect, Packet, Properties, PubResponse, PubResponseKind, Publish, QoS, ReasonCode, Version,
};
use meshgate_tests::edge_agent::EdgeAgent;
use meshgate_tests::raw::{RawClient, Reply, is_timeout};
use meshgate_tests::{Gateway, read_events};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Tokens acknowledged to their publisher, by publisher.
type Acked = Arc<Mutex<BTreeMap<&'static str, Vec<String>>>>;

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other run shares (RabbitMQ and Mosquitto outlive the test).
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn config(base: String, mesh: &MeshNames) -> String {
    // Queues large enough that nothing acknowledged is dropped for space: this suite is about crashes.
    base + &format!(
        "\n[broker]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n\n[limits]\nmax_memory_bytes = 1073741824\n\n\
         [[downlinks]]\nname = \"cmd\"\nkind = \"amqp\"\nuri = \"{RABBITMQ}\"\nexchange = \"{}\"\nqueue = \"{}\"\n\
         binding = \"kill.#\"\ntopic = \"kill/down\"\n",
        mesh.exchange, mesh.queue
    )
}

/// The RabbitMQ exchange and queue of the downlink, and the Mosquitto, topic and client id of the bridge.
struct MeshNames {
    exchange: String,
    queue: String,
    /// The suite's own Mosquitto, without a queue limit: the system one's default of 1,000 messages per offline
    /// client drops what it acknowledged once the bridge has been down long enough (its log says "Outgoing
    /// messages are being dropped"), which is Mosquitto's loss, not the bridge's.
    site: std::net::SocketAddr,
    bridge_topic: String,
    bridge_client: String,
}

fn bridge_config(dir: &Path, mesh: &MeshNames) -> String {
    format!(
        "[gateway]\nid = \"edge-kill\"\ndata_dir = \"{}\"\n\n[[bridges]]\nname = \"site\"\nhost = \"{}\"\nport = {}\n\
         version = \"3.1.1\"\nclient_id = \"{}\"\ntopics = [\"{}\"]\nmax_inflight = 20\n",
        dir.display(),
        mesh.site.ip(),
        mesh.site.port(),
        mesh.bridge_client,
        mesh.bridge_topic
    )
}

/// Commands from the mesh: binary-mode CloudEvents published to RabbitMQ with confirms (acknowledged = confirmed
/// by RabbitMQ), until `stop`.
async fn mesh_publisher(
    exchange: String,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use lapin::types::AMQPValue;
    let conn = Connection::connect(RABBITMQ, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let id = format!("down-{n}");
        n += 1;
        let mut headers = FieldTable::default();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", id.as_str()),
            ("source", "/cloud"),
            ("type", "kill.command"),
            ("deviceid", "kill"),
        ] {
            headers.insert(ShortString::from(format!("cloudEvents_{k}")), AMQPValue::LongString(v.into()));
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
            .with_delivery_mode(2);
        let key = ShortString::from("kill.dev");
        let confirm = ch
            .basic_publish(
                ShortString::from(exchange.as_str()),
                key,
                BasicPublishOptions::default(),
                br#"{"go":1}"#,
                props,
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "RabbitMQ refused command {id}");
        record(&acked, "down", id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    conn.close(200, ShortString::from("bye")).await?;
    Ok(())
}

/// A device of the existing broker: QoS 1 to Mosquitto, acknowledged = Mosquitto's PUBACK, paced so Mosquitto's
/// queue for the bridge's session never overflows while the agent is down.
fn mosquitto_publisher(
    addr: std::net::SocketAddr,
    topic: String,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let mut c = RawClient::connect(addr, Version::V311, &unique("kill-dev"), 60)?;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let token = format!("br-{n}");
        let id = u16::try_from(n % 60000).unwrap_or(0) + 1;
        n += 1;
        let payload = serde_json::json!({ "token": token }).to_string();
        match c.publish_qos1(&topic, id, false, payload.as_bytes())? {
            Reply::Ack(4, i, ReasonCode::SUCCESS) if i == id => record(&acked, "bridge", token),
            other => anyhow::bail!("Mosquitto answered {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn cycles() -> usize {
    std::env::var("KILL_SUITE_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A small deterministic generator (the seed is printed, so a failing run can be repeated).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn record(acked: &Acked, publisher: &'static str, token: String) {
    acked.lock().unwrap_or_else(|p| p.into_inner()).entry(publisher).or_default().push(token);
}

fn connect_packet(version: Version, id: &str) -> Connect<'_> {
    let properties = Properties { session_expiry_interval: version.is_v5().then_some(3600), ..Properties::default() };
    Connect { version, clean_start: false, keep_alive: 60, client_id: id, properties, ..Connect::default() }
}

/// An MQTT publisher at QoS 1 (`m5q1`: MQTT 5, `m3q1`: 3.1.1), one publish at a time to `kill/{name}`:
/// acknowledged = PUBACK (0x00).
fn mqtt_qos1(addr: std::net::SocketAddr, name: &'static str, acked: &Acked, next: &mut u64) {
    let version = if name.starts_with("m5") { Version::V5 } else { Version::V311 };
    let Ok(mut c) = RawClient::connect(addr, version, &format!("p-{name}"), 60) else { return };
    let topic = format!("kill/{name}");
    loop {
        // A publish the kill left unanswered is not sent again (a QoS 1 resend may be stored twice, as MQTT
        // allows): each token is published once.
        let token = format!("{name}-{next}");
        let id = u16::try_from(*next % 60000).unwrap_or(0) + 1;
        *next += 1;
        match c.publish_qos1(&topic, id, false, token.as_bytes()) {
            Ok(Reply::Ack(4, i, ReasonCode::SUCCESS)) if i == id => record(acked, name, token),
            _ => return,
        }
    }
}

/// A QoS 2 publisher with a persistent session, keeping its flow across kills as a client must: acknowledged =
/// PUBREC 0x00; after a kill the flow resumes with the PUBLISH again (DUP) or with its PUBREL.
struct Qos2Publisher {
    name: &'static str,
    version: Version,
    next: u64,
    /// The flow in progress: packet id, token, whether PUBREC came.
    inflight: Option<(u16, String, bool)>,
}

impl Qos2Publisher {
    fn publish(c: &mut RawClient, id: u16, token: &str, dup: bool) -> bool {
        let publish = Publish {
            topic: "kill/q2",
            qos: QoS::ExactlyOnce,
            dup,
            packet_id: Some(id),
            payload: token.as_bytes(),
            ..Publish::default()
        };
        c.send(&Packet::Publish(publish)).is_ok()
    }

    fn run(&mut self, addr: std::net::SocketAddr, acked: &Acked) {
        let client_id = format!("p-{}", self.name);
        let Ok((mut c, _)) = RawClient::connect_with(addr, &connect_packet(self.version, &client_id)) else { return };
        let resumed = match &self.inflight {
            Some((id, _, true)) => c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, *id))).is_ok(),
            Some((id, token, false)) => Self::publish(&mut c, *id, token, true),
            None => true,
        };
        if !resumed {
            return;
        }
        loop {
            let (id, token, released) = match self.inflight.clone() {
                Some(flow) => flow,
                None => {
                    let token = format!("{}-{}", self.name, self.next);
                    self.next += 1;
                    let id = u16::try_from(self.next % 60000).unwrap_or(0) + 1;
                    self.inflight = Some((id, token.clone(), false));
                    if !Self::publish(&mut c, id, &token, false) {
                        return;
                    }
                    (id, token, false)
                }
            };
            match c.recv() {
                Ok(Reply::Ack(5, i, ReasonCode::SUCCESS)) if i == id && !released => {
                    record(acked, self.name, token.clone());
                    self.inflight = Some((id, token, true));
                    if c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, id))).is_err() {
                        return;
                    }
                }
                Ok(Reply::Ack(7, i, _)) if i == id && released => self.inflight = None,
                Ok(Reply::Closed) | Err(_) => return,
                Ok(other) => panic!("{}: unexpected {other:?} in the flow of {token}", self.name),
            }
        }
    }
}

/// The online subscriber: MQTT 3.1.1, persistent, `kill/q2` at QoS 2 and `kill/m5q1` at QoS 1, answering as a
/// client must. (Not `kill/#`: a persistent session's QoS 2 batches rewrite its session file whole, so one that
/// also falls behind on everything else slows down as its backlog grows; docs/reliability.md has the figures.) Its application
/// gets a QoS 2 message when its PUBLISH first arrives (MQTT's method B); a DUP resend of an id still awaiting
/// PUBREL is the same message.
#[derive(Default)]
struct OnlineSubscriber {
    subscribed: bool,
    awaiting_release: HashSet<u16>,
    /// What the application got, with the QoS it came at.
    got: Vec<(String, u8)>,
}

impl OnlineSubscriber {
    fn run(&mut self, addr: std::net::SocketAddr, quiet: Option<Duration>) {
        let Ok((mut c, _)) = RawClient::connect_with(addr, &connect_packet(Version::V311, "s-on")) else { return };
        if !self.subscribed {
            // One SUBSCRIBE for both: what is queued may arrive before its SUBACK, and the loop below takes both.
            use meshgate_protocols::mqtt::{List, Subscribe, SubscribeFilter, SubscriptionOptions};
            let filters = [
                SubscribeFilter {
                    filter: "kill/q2",
                    options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..SubscriptionOptions::default() },
                },
                SubscribeFilter {
                    filter: "kill/m5q1",
                    options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
                },
            ];
            let subscribe = Subscribe { packet_id: 1, filters: List::new(&filters), ..Subscribe::default() };
            if c.send(&Packet::Subscribe(subscribe)).is_err() {
                return;
            }
        }
        if let Some(q) = quiet
            && c.set_timeout(q).is_err()
        {
            return;
        }
        loop {
            let answer = match c.recv() {
                Ok(Reply::Publish { qos: 2, packet_id, payload, .. }) => {
                    if self.awaiting_release.insert(packet_id) {
                        self.got.push((token_of_payload(&payload), 2));
                    }
                    PubResponse::new(PubResponseKind::PubRec, packet_id)
                }
                Ok(Reply::Publish { qos, packet_id, payload, .. }) => {
                    self.got.push((token_of_payload(&payload), qos));
                    if qos == 0 {
                        continue;
                    }
                    PubResponse::new(PubResponseKind::PubAck, packet_id)
                }
                Ok(Reply::Ack(6, id, _)) => {
                    self.awaiting_release.remove(&id);
                    PubResponse::new(PubResponseKind::PubComp, id)
                }
                Ok(Reply::SubAck(_)) => {
                    // Durable once answered: a kill before this SUBACK subscribes again next time.
                    self.subscribed = true;
                    continue;
                }
                Ok(Reply::Closed) => return,
                Ok(_) => continue,
                Err(e) if is_timeout(&e) => return,
                Err(_) => return,
            };
            if c.send(&Packet::PubResponse(answer)).is_err() {
                return;
            }
        }
    }
}

/// The token a local delivery carries: the event id of a `cloudevents.json` event (delivered as a structured
/// CloudEvent), else the payload.
fn token_of_payload(payload: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(payload)
        && let Some(id) = v.get("id").and_then(Value::as_str)
    {
        return id.to_string();
    }
    String::from_utf8_lossy(payload).into_owned()
}

/// The token of an uplink event: its id for a `cloudevents.json` event, else its data.
fn token_of_event(e: &Value) -> Option<String> {
    use base64::Engine;
    let id = e["id"].as_str()?;
    if id.starts_with("ws-") {
        return Some(id.to_string());
    }
    if let Some(d) = e["data"].as_str() {
        return Some(d.to_string());
    }
    let b = e["data_base64"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

async fn amqp(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<(Connection, lapin::Channel)> {
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let conn = Connection::connect(&uri, props).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// AMQP publishes to `amq.topic`, persistent, with confirms (acknowledged = basic.ack) or without.
async fn amqp_publisher(addr: std::net::SocketAddr, confirms: bool, acked: Acked, mut next: u64) -> u64 {
    let name = if confirms { "amqpc" } else { "amqpn" };
    let Ok((_conn, ch)) = amqp(addr, &format!("p-{name}")).await else { return next };
    if confirms && ch.confirm_select(ConfirmSelectOptions::default()).await.is_err() {
        return next;
    }
    loop {
        let token = format!("{name}-{next}");
        let props = BasicProperties::default().with_delivery_mode(2);
        let key = ShortString::from(format!("kill.{name}"));
        let sent = ch
            .basic_publish(ShortString::from("amq.topic"), key, BasicPublishOptions::default(), token.as_bytes(), props)
            .await;
        let Ok(confirm) = sent else { return next };
        next += 1;
        if confirms {
            match confirm.await {
                Ok(c) if c.is_ack() => record(&acked, name, token),
                _ => return next,
            }
        } else {
            // Unconfirmed: keep a pace the gateway can take, so the suite measures crashes, not flow control.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A `cloudevents.json` device: acknowledged = `{"ack": id}`.
async fn ws_publisher(addr: std::net::SocketAddr, acked: Acked, mut next: u64) -> u64 {
    let Ok(mut ws) = meshgate_tests::ws::connect(addr, "/?client=p-ws", "cloudevents.json", &[]).await else {
        return next;
    };
    loop {
        let id = format!("ws-{next}");
        next += 1;
        let event = serde_json::json!({"specversion": "1.0", "id": id, "source": "/kill/ws", "type": "kill.reading",
            "subject": "kill/ws", "datacontenttype": "application/json", "data": {"n": next}});
        if ws.send(WsMessage::text(event.to_string())).await.is_err() {
            return next;
        }
        match meshgate_tests::ws::next_json(&mut ws).await {
            Ok(v) if v["ack"].as_str() == Some(id.as_str()) => record(&acked, "ws", id),
            _ => return next,
        }
    }
}

/// The offline subscriber: subscribes once, then only reads at the end.
fn offline_subscribe(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (mut c, _) = RawClient::connect_with(addr, &connect_packet(Version::V5, "s-off"))?;
    anyhow::ensure!(c.subscribe("kill/#", QoS::AtLeastOnce)? == [1]);
    c.send(&Packet::Disconnect(Default::default()))?;
    Ok(())
}

/// Declares the durable queue `kill-q` bound to `kill.#`.
async fn declare_queue(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (conn, ch) = amqp(addr, "s-queue").await?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(ShortString::from("kill-q"), durable, FieldTable::default()).await?;
    let (q, x, key) = (ShortString::from("kill-q"), ShortString::from("amq.topic"), ShortString::from("kill.#"));
    ch.queue_bind(q, x, key, QueueBindOptions::default(), FieldTable::default()).await?;
    conn.close(200, ShortString::from("bye")).await?;
    Ok(())
}

/// Consumes the durable queue until it is quiet: (token, message-id) of each delivery.
async fn drain_queue(addr: std::net::SocketAddr) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let (_conn, ch) = amqp(addr, "s-queue").await?;
    ch.basic_qos(500, Default::default()).await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from("kill-q"),
            ShortString::from("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        let d = d?;
        let id = d.properties.message_id().as_ref().map(|m| m.to_string());
        got.push((token_of_payload(&d.data), id));
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(got)
}

/// The uplink's events, read once the gateway has forwarded everything durable.
fn uplink_events(data_dir: &Path, want_at_least: usize) -> anyhow::Result<Vec<Value>> {
    let path = data_dir.join("events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    let mut still_since = Instant::now();
    loop {
        let events = read_events(&path)?;
        if events.len() != last {
            last = events.len();
            still_since = Instant::now();
        }
        if (events.len() >= want_at_least && still_since.elapsed() > Duration::from_secs(1))
            || Instant::now() > deadline
        {
            return Ok(events);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_or_doubled_across_sigkills() -> anyhow::Result<()> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let seed = std::env::var("KILL_SUITE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
    eprintln!("kill suite: {} cycles, seed {seed} (KILL_SUITE_SEED repeats it)", cycles());
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir()?;
    let bridge_dir = tempfile::tempdir()?;
    let run = unique("kill");
    let site = meshgate_tests::load::brokers::Mosquitto::start(true)?;
    let mesh = MeshNames {
        exchange: format!("{run}.commands"),
        queue: format!("{run}.cmd"),
        site: site.addr,
        bridge_topic: format!("kill-bridge/{run}/#"),
        bridge_client: format!("{run}-bridge"),
    };
    let config = |base: String| config(base, &mesh);
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A check that fails early returns with the outside publishers still running: they stop, so the runtime can
    // shut down and the failure is reported instead of hanging.
    let _stop_on_return = StopOnDrop(Arc::clone(&stop));
    let mut outside: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    let mut q2 = vec![
        Qos2Publisher { name: "m3q2", version: Version::V311, next: 0, inflight: None },
        Qos2Publisher { name: "m5q2", version: Version::V5, next: 0, inflight: None },
    ];
    let mut online = OnlineSubscriber::default();
    let (mut m5q1, mut m3q1, mut amqpc, mut amqpn, mut ws) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    for cycle in 0..cycles() {
        if cycle % 10 == 0 {
            eprintln!("kill suite: cycle {cycle} after {:.1} s", started.elapsed().as_secs_f64());
        }
        let mut gw = Gateway::start_in(dir.path(), config)?;
        let mut agent = EdgeAgent::start_in(bridge_dir.path(), &bridge_config(bridge_dir.path(), &mesh), 1)?;
        let (mqtt, amqp_addr, ws_addr) = (gw.mqtt, gw.amqp()?, gw.listener("ws")?);
        if cycle == 0 {
            offline_subscribe(mqtt)?;
            declare_queue(amqp_addr).await?;
            // The online session subscribes before anything is published (and is online again below).
            online = tokio::task::spawn_blocking(move || {
                online.run(mqtt, Some(Duration::from_millis(300)));
                online
            })
            .await?;
            anyhow::ensure!(online.subscribed, "the online session could not subscribe");
            // The downlink declared its exchange and queue once it connected: the mesh may publish from now on.
            gw.wait_metric("meshgate_downlink_connects_total{downlink=\"cmd\"}", 1.0, Duration::from_secs(20)).await?;
            outside.push(tokio::spawn(mesh_publisher(mesh.exchange.clone(), Arc::clone(&acked), Arc::clone(&stop))));
            let (topic, acked, stop) =
                (mesh.bridge_topic.replace('#', "dev/telemetry"), Arc::clone(&acked), Arc::clone(&stop));
            let site = mesh.site;
            outside.push(tokio::task::spawn_blocking(move || mosquitto_publisher(site, topic, acked, stop)));
        }
        let mut blocking = Vec::new();
        for mut p in q2.drain(..) {
            let acked = Arc::clone(&acked);
            blocking.push(tokio::task::spawn_blocking(move || {
                p.run(mqtt, &acked);
                Some(p)
            }));
        }
        let q1 = |name: &'static str, mut next: u64| {
            let acked = Arc::clone(&acked);
            tokio::task::spawn_blocking(move || {
                mqtt_qos1(mqtt, name, &acked, &mut next);
                next
            })
        };
        let (q1_5, q1_3) = (q1("m5q1", m5q1), q1("m3q1", m3q1));
        let sub = tokio::task::spawn_blocking(move || {
            online.run(mqtt, None);
            online
        });
        let c = tokio::spawn(amqp_publisher(amqp_addr, true, Arc::clone(&acked), amqpc));
        let n = tokio::spawn(amqp_publisher(amqp_addr, false, Arc::clone(&acked), amqpn));
        let w = tokio::spawn(ws_publisher(ws_addr, Arc::clone(&acked), ws));
        tokio::time::sleep(Duration::from_millis(400 + rng.next(1000))).await;
        gw.kill()?;
        agent.kill()?;
        for b in blocking {
            q2.extend(b.await?);
        }
        m5q1 = q1_5.await?;
        m3q1 = q1_3.await?;
        online = sub.await?;
        amqpc = c.await?;
        amqpn = n.await?;
        ws = w.await?;
    }
    let killed_for = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in outside {
        task.await??;
    }

    // The last start: flows finish, the downlink empties its queue, subscribers read what is theirs.
    let gw = Gateway::start_in(dir.path(), config)?;
    let agent = EdgeAgent::start_in(bridge_dir.path(), &bridge_config(bridge_dir.path(), &mesh), 1)?;
    rabbitmq_queue_drained(&mesh.queue).await?;
    for mut p in q2.drain(..) {
        let acked = Arc::clone(&acked);
        let mqtt = gw.mqtt;
        // Resume the flow cut by the last kill, then stop at the next new message's answer.
        tokio::task::spawn_blocking(move || {
            if p.inflight.is_some() {
                finish_flow(&mut p, mqtt, &acked);
            }
        })
        .await?;
    }
    let mqtt = gw.mqtt;
    let online = tokio::task::spawn_blocking(move || {
        let mut online = online;
        online.run(mqtt, Some(Duration::from_secs(3)));
        online
    })
    .await?;
    let offline = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let (mut c, present) = RawClient::connect_with(mqtt, &connect_packet(Version::V5, "s-off"))?;
        anyhow::ensure!(present, "the offline session survived");
        let got = c.drain(Duration::from_secs(3))?;
        Ok(got
            .into_iter()
            .filter_map(|r| match r {
                Reply::Publish { payload, .. } => Some(token_of_payload(&payload)),
                _ => None,
            })
            .collect())
    })
    .await??;
    let queue = drain_queue(gw.amqp()?).await?;
    let mut acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let bridged = acked.remove("bridge").unwrap_or_default();
    let commands = acked.remove("down").unwrap_or_default();
    let acked_count: usize = acked.values().map(Vec::len).sum();
    let events = uplink_events(dir.path(), acked_count)?;

    // Every acknowledged event is in the uplink, once; and nothing is in it twice.
    let mut uplink: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        if let Some(t) = token_of_event(e).filter(|t| t.contains('-') && !t.starts_with('{')) {
            uplink.entry(t).or_default().push(e["id"].as_str().unwrap_or_default().to_string());
        }
    }
    // The uplink is at least once (a kill between writing and confirming repeats the tail, with the same ids); a
    // message stored twice would show as two ids.
    let resent = uplink.values().filter(|ids| ids.len() > 1).count();
    let doubled: Vec<(&String, &Vec<String>)> =
        uplink.iter().filter(|(_, ids)| ids.iter().any(|id| *id != ids[0])).collect();
    assert!(doubled.is_empty(), "messages stored as two events: {doubled:?}");
    let all_acked: Vec<&String> = acked.values().flatten().collect();
    let missing: Vec<&&String> = all_acked.iter().filter(|t| !uplink.contains_key(**t)).collect();
    assert!(missing.is_empty(), "{} acknowledged events missing from the uplink: {missing:?}", missing.len());
    // What the gateway made durable from the publisher without confirms counts as kept for the queue too.
    let unconfirmed_durable: Vec<&String> = uplink.keys().filter(|t| t.starts_with("amqpn-")).collect();

    let expected: HashSet<&String> =
        all_acked.iter().copied().chain(unconfirmed_durable.iter().copied()).chain(commands.iter()).collect();
    let check_once = |who: &str, got: &[String]| {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for t in got {
            *seen.entry(t.as_str()).or_default() += 1;
        }
        let missing: Vec<&&String> = expected.iter().filter(|t| !seen.contains_key(t.as_str())).collect();
        assert!(missing.is_empty(), "{who}: {} acknowledged messages missing: {missing:?}", missing.len());
        // Commands are at least once across a crash: RabbitMQ redelivers what the downlink had made durable but not
        // yet acknowledged. Everything published to the gateway itself arrives once.
        let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(t, n)| **n > 1 && !t.starts_with("down-")).collect();
        assert!(twice.is_empty(), "{who}: delivered twice: {twice:?}");
        seen.iter().filter(|(t, n)| **n > 1 && t.starts_with("down-")).count()
    };
    let commands_again = check_once("offline MQTT session", &offline);
    let queue_tokens: Vec<String> = queue.iter().map(|(t, _)| t.clone()).collect();
    let commands_again = commands_again.max(check_once("durable AMQP queue", &queue_tokens));
    // The queue's message-id of each message is its event's id in the uplink.
    for (token, id) in &queue {
        if let Some(ids) = uplink.get(token) {
            assert_eq!(id.as_deref(), ids.first().map(String::as_str), "message-id of {token}");
        } else if token.starts_with("down-") {
            assert_eq!(id.as_deref(), Some(token.as_str()), "message-id of command {token}");
        }
    }
    // The online QoS 2 session: everything acknowledged arrived; QoS 2 messages exactly once.
    let mut online_seen: HashMap<&str, (usize, u8)> = HashMap::new();
    for (t, qos) in &online.got {
        let e = online_seen.entry(t.as_str()).or_insert((0, *qos));
        e.0 += 1;
    }
    let online_topics = ["m5q1-", "m3q2-", "m5q2-"];
    let missing: Vec<&String> = all_acked
        .iter()
        .copied()
        .filter(|t| online_topics.iter().any(|p| t.starts_with(p)) && !online_seen.contains_key(t.as_str()))
        .collect();
    assert!(missing.is_empty(), "online session: {} acknowledged messages missing: {missing:?}", missing.len());

    // The bridge: every message Mosquitto acknowledged is in the edge-agent's uplink.
    let bridged_got = wait_for_bridged(&agent, &bridged)?;
    let missing: Vec<&String> = bridged.iter().filter(|t| !bridged_got.contains(*t)).collect();
    assert!(missing.is_empty(), "bridge: {} messages acknowledged by Mosquitto missing: {missing:?}", missing.len());
    let qos2_twice: Vec<(&&str, &(usize, u8))> = online_seen.iter().filter(|(_, (n, q))| *q == 2 && *n > 1).collect();
    assert!(qos2_twice.is_empty(), "online session: QoS 2 delivered twice: {qos2_twice:?}");

    let per: BTreeMap<&str, usize> = acked.iter().map(|(k, v)| (*k, v.len())).collect();
    eprintln!(
        "kill suite: {} SIGKILLs of the gateway and the edge-agent in {:.1} s; acknowledged {acked_count} ({per:?}), \
         {} commands ({commands_again} redelivered by RabbitMQ after a kill), {} bridged; uplink {} events ({resent} forwarded again after a kill, same id); offline session \
         {}, durable queue {}, online session {} deliveries; none missing, none doubled",
        cycles(),
        killed_for.as_secs_f64(),
        commands.len(),
        bridged.len(),
        uplink.len(),
        offline.len(),
        queue.len(),
        online.got.len(),
    );
    Ok(())
}

/// Waits until the downlink's RabbitMQ queue is empty (and a moment for the last deliveries to settle).
async fn rabbitmq_queue_drained(queue: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(RABBITMQ, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = ch.queue_declare(ShortString::from(queue), passive, FieldTable::default()).await?;
        if q.message_count() == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{} commands left in the downlink's queue", q.message_count());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ch.queue_delete(ShortString::from(queue), Default::default()).await?;
    conn.close(200, ShortString::from("bye")).await?;
    Ok(())
}

/// The bridged tokens in the edge-agent's uplink, once every one of `want` arrived (or 30 s passed).
fn wait_for_bridged(agent: &EdgeAgent, want: &[String]) -> anyhow::Result<HashSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> =
            agent.events()?.iter().filter_map(|e| e["data"]["token"].as_str().map(String::from)).collect();
        if want.iter().all(|t| got.contains(t)) || Instant::now() > deadline {
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Completes a QoS 2 flow cut by the last kill (PUBLISH with DUP or PUBREL, until PUBCOMP).
fn finish_flow(p: &mut Qos2Publisher, addr: std::net::SocketAddr, acked: &Acked) {
    let client_id = format!("p-{}", p.name);
    let Ok((mut c, _)) = RawClient::connect_with(addr, &connect_packet(p.version, &client_id)) else { return };
    let Some((id, token, released)) = p.inflight.clone() else { return };
    if !released {
        assert!(Qos2Publisher::publish(&mut c, id, &token, true), "resend");
        match c.recv() {
            Ok(Reply::Ack(5, i, ReasonCode::SUCCESS)) if i == id => record(acked, p.name, token),
            other => panic!("{}: no PUBREC for the resent {token}: {other:?}", p.name),
        }
    }
    assert!(c.send(&Packet::PubResponse(PubResponse::new(PubResponseKind::PubRel, id))).is_ok());
    match c.recv() {
        Ok(Reply::Ack(7, i, _)) if i == id => p.inflight = None,
        other => panic!("{}: no PUBCOMP for {id}: {other:?}", p.name),
    }
}
