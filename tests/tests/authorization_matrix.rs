//! Devices stay in their own lane, on every protocol, against the real binary: two devices and an operator ×
//! MQTT 3.1.1, MQTT 5, MQTT 5 over WebSocket, `cloudevents.json` and AMQP × publish, subscribe (own, another's,
//! `#`, `devices/+/...`, `$share/g/#`), retained messages, wills, and taking over another user's client id,
//! session or queue. Each cell's verdict is the protocol's own answer, and what is delivered is checked too: a
//! granted wildcard never carries a topic its subscriber may not read.
//!
//! The fleet's rules, as docs/security.md describes them: every device publishes under
//! `devices/{username}/events/#` and reads `devices/{username}/commands/#` and `broadcast/#` (but not
//! `broadcast/secret`); the operator sends commands to every device and reads everything under `devices/`.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshgate_protocols::mqtt::{Connect, Properties, QoS, ReasonCode, Version, Will};
use meshgate_tests::Gateway;
use meshgate_tests::raw::{RawClient, Reply};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

const PASSWORD: &str = "lane-keeper";
const QUIET: Duration = Duration::from_millis(700);

const RULES: &str = r#"
[[auth.acl]]
user = "*"
allow_publish = ["devices/{username}/events/#"]
allow_subscribe = ["devices/{username}/commands/#", "broadcast/#"]
deny_subscribe = ["broadcast/secret"]

[[auth.acl]]
user = "operator"
allow_publish = ["devices/+/commands/#", "broadcast/#"]
allow_subscribe = ["devices/#"]
"#;

const CONFIG: &str = "devices/device-1/commands/config";
const REBOOT: &str = "devices/device-1/commands/reboot";
const NEWS: &str = "broadcast/news";

/// device-1's subscriptions that are granted (each tried on a connection of its own), with the topics each may
/// carry: the retained ones at subscribe (shared subscriptions get none), then the operator's live sends.
const GRANTED: [(&str, &[&str], &[&str]); 4] = [
    ("devices/device-1/commands/#", &[CONFIG], &[CONFIG, REBOOT]),
    ("#", &[CONFIG], &[CONFIG, REBOOT, NEWS]),
    ("devices/+/commands/#", &[CONFIG], &[CONFIG, REBOOT]),
    ("$share/g/#", &[], &[CONFIG, REBOOT, NEWS]),
];

/// device-1's subscriptions that are refused: nothing they match may be read.
const REFUSED: [&str; 4] =
    ["devices/device-2/commands/#", "devices/device-2/#", "broadcast/secret", "$share/g/devices/device-2/commands/#"];

/// A gateway with `device-1`, `device-2` and `operator` (one password) and the fleet's rules.
fn fleet() -> Result<Gateway> {
    let hash = meshgate_gateway::auth::hash_password(PASSWORD)?;
    let users: String = ["device-1", "device-2", "operator"]
        .iter()
        .map(|u| format!("\n[[auth.users]]\nusername = \"{u}\"\npassword_hash = \"{hash}\"\n"))
        .collect();
    Gateway::start_with(|base| base.replace("allow_anonymous = true", "allow_anonymous = false") + &users + RULES)
}

/// How a device speaks MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mqtt {
    V311,
    V5,
    V5OverWebSocket,
}

impl Mqtt {
    fn version(self) -> Version {
        if self == Mqtt::V311 { Version::V311 } else { Version::V5 }
    }

    /// The CONNACK code of a refusal for "not authorized" in this version.
    fn not_authorized(self) -> ReasonCode {
        if self == Mqtt::V311 { ReasonCode(5) } else { ReasonCode::NOT_AUTHORIZED }
    }

    /// The SUBACK code of a refused subscription.
    fn sub_refused(self) -> u8 {
        if self == Mqtt::V311 { 0x80 } else { 0x87 }
    }
}

/// What a CONNECT got.
fn connect_as(
    gw: &Gateway,
    how: Mqtt,
    user: &str,
    id: &str,
    clean: bool,
    will: Option<&str>,
) -> Result<(RawClient, Reply)> {
    let mut c = match how {
        Mqtt::V5OverWebSocket => RawClient::open_ws(gw.listener("ws")?, how.version())?,
        _ => RawClient::open(gw.mqtt, how.version())?,
    };
    let properties = Properties { session_expiry_interval: (!clean).then_some(600), ..Properties::default() };
    let will = will.map(|topic| Will {
        topic,
        payload: b"gone",
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    let connect = Connect {
        version: how.version(),
        clean_start: clean,
        keep_alive: 30,
        properties: if how.version().is_v5() { properties } else { Properties::default() },
        client_id: id,
        will,
        username: Some(user),
        password: Some(PASSWORD.as_bytes()),
        ..Connect::default()
    };
    let reply = c.handshake(&connect)?;
    Ok((c, reply))
}

fn connected(gw: &Gateway, how: Mqtt, user: &str, id: &str) -> Result<RawClient> {
    match connect_as(gw, how, user, id, true, None)? {
        (c, Reply::ConnAck(_, ReasonCode::SUCCESS)) => Ok(c),
        (_, other) => bail!("{how:?} {user} as {id}: {other:?}"),
    }
}

/// The mesh's events once one matches `found` (within 10 s).
fn wait_for_event(gw: &Gateway, found: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = gw.events()?;
        if events.iter().any(&found) {
            return Ok(events);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the expected event never reached the mesh");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn topics(replies: Vec<Reply>) -> BTreeSet<String> {
    replies
        .into_iter()
        .filter_map(|r| match r {
            Reply::Publish { topic, .. } => Some(topic),
            _ => None,
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The operator's commands: retained configuration for both devices, then live ones, and two broadcasts.
fn operator_sends(gw: &Gateway) -> Result<()> {
    let mut op = connected(gw, Mqtt::V5, "operator", "operator-console")?;
    let sends = [
        ("devices/device-1/commands/config", true),
        ("devices/device-2/commands/config", true),
        ("devices/device-1/commands/reboot", false),
        ("devices/device-2/commands/reboot", false),
        ("broadcast/news", false),
        ("broadcast/secret", false),
    ];
    for (i, (topic, retain)) in sends.into_iter().enumerate() {
        let id = u16::try_from(i + 1)?;
        let answer = op.publish_qos1(topic, id, retain, b"{}")?;
        anyhow::ensure!(answer == Reply::Ack(4, id, ReasonCode::SUCCESS), "operator publishing {topic}: {answer:?}");
    }
    Ok(())
}

fn mqtt_lane(how: Mqtt) -> Result<()> {
    let gw = fleet()?;
    let sub_refused = how.sub_refused();
    let refused = |sub: &mut RawClient, filter: &str| -> Result<()> {
        assert_eq!(sub.subscribe(filter, QoS::AtLeastOnce)?, [sub_refused], "{how:?}: {filter} must be refused");
        Ok(())
    };

    // Retained configuration first, so subscriptions show which retained messages they may read.
    operator_sends(&gw)?;
    let mut subs = Vec::new();
    for (n, (filter, ..)) in GRANTED.into_iter().enumerate() {
        let mut c = connected(&gw, how, "device-1", &format!("device-1-sub-{n}"))?;
        assert_eq!(c.subscribe(filter, QoS::AtLeastOnce)?, [1], "{how:?}: {filter} granted");
        subs.push(c);
    }
    let mut probe = connected(&gw, how, "device-1", "device-1-probe")?;
    for filter in REFUSED {
        refused(&mut probe, filter)?;
    }
    for (c, (filter, retained, _)) in subs.iter_mut().zip(GRANTED) {
        assert_eq!(topics(c.drain(QUIET)?), set(retained), "{how:?}: retained for {filter}");
    }

    // Live: the same commands again, and each device's own events.
    operator_sends(&gw)?;
    let mut d2 = connected(&gw, how, "device-2", "device-2")?;
    let mut d1 = connected(&gw, how, "device-1", "device-1")?;
    let own = d1.publish_qos1("devices/device-1/events/temp", 1, false, b"21")?;
    let other = d1.publish_qos1("devices/device-2/events/temp", 2, false, b"99")?;
    let commands = d1.publish_qos1("devices/device-2/commands/reboot", 3, false, b"{}")?;
    assert_eq!(own, Reply::Ack(4, 1, ReasonCode::SUCCESS), "{how:?}: its own events");
    if how.version().is_v5() {
        assert_eq!(other, Reply::Ack(4, 2, ReasonCode::NOT_AUTHORIZED), "{how:?}: another device's events");
        assert_eq!(commands, Reply::Ack(4, 3, ReasonCode::NOT_AUTHORIZED), "{how:?}: commands are the operator's");
    } else {
        // 3.1.1 has no refusal short of closing: acknowledged and dropped (the operator's view shows it).
        assert_eq!((other, commands), (Reply::Ack(4, 2, ReasonCode::SUCCESS), Reply::Ack(4, 3, ReasonCode::SUCCESS)));
    }
    for (c, (filter, _, live)) in subs.iter_mut().zip(GRANTED) {
        assert_eq!(topics(c.drain(QUIET)?), set(live), "{how:?}: live deliveries for {filter}");
    }

    // The operator reads every device's events, and sees that device-1's refused publishes went nowhere.
    let mut op = connected(&gw, Mqtt::V5, "operator", "operator-watch")?;
    assert_eq!(op.subscribe("devices/+/events/#", QoS::AtLeastOnce)?, [1]);
    assert_eq!(
        op.publish_qos1("devices/device-1/events/x", 9, false, b"{}")?,
        Reply::Ack(4, 9, ReasonCode::NOT_AUTHORIZED)
    );
    let _ = d1.publish_qos1("devices/device-1/events/temp", 4, false, b"22")?;
    let _ = d1.publish_qos1("devices/device-2/events/temp", 5, false, b"98")?;
    let _ = d2.publish_qos1("devices/device-2/events/temp", 1, false, b"20")?;
    let seen: Vec<(String, Vec<u8>)> = op
        .drain(QUIET)?
        .into_iter()
        .filter_map(|r| match r {
            Reply::Publish { topic, payload, .. } => Some((topic, payload)),
            _ => None,
        })
        .collect();
    let want = [("devices/device-1/events/temp", b"22"), ("devices/device-2/events/temp", b"20")];
    let want: Vec<(String, Vec<u8>)> = want.iter().map(|(t, p)| (t.to_string(), p.to_vec())).collect();
    assert_eq!(seen, want, "{how:?}: each device's own events only");
    // The mesh forwards in the spool's order: once device-2's event is there, a forged one would be too.
    let events = wait_for_event(&gw, |e| e["subject"] == "devices/device-2/events/temp")?;
    let on_device_2 = events.iter().filter(|e| e["subject"] == "devices/device-2/events/temp").count();
    assert_eq!(on_device_2, 1, "{how:?}: a refused publish is not forwarded");

    // A will is a publish: one on another device's topic is refused at CONNECT.
    let (_, answer) =
        connect_as(&gw, how, "device-2", "device-2-will", true, Some("devices/device-1/commands/reboot"))?;
    assert_eq!(answer, Reply::ConnAck(false, how.not_authorized()), "{how:?}: will on device-1's commands");
    let (_, answer) = connect_as(&gw, how, "device-2", "device-2-will", true, Some("devices/device-2/events/gone"))?;
    assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS), "{how:?}: a will on its own topic");

    // A client id belongs to its user: device-2 can neither kick device-1 nor resume its session.
    let (_, answer) = connect_as(&gw, how, "device-2", "device-1", true, None)?;
    assert_eq!(answer, Reply::ConnAck(false, how.not_authorized()), "{how:?}: taking over device-1's connection");
    assert_eq!(
        d1.publish_qos1("devices/device-1/events/temp", 6, false, b"23")?,
        Reply::Ack(4, 6, ReasonCode::SUCCESS)
    );
    let (mut keeper, answer) = connect_as(&gw, how, "device-1", "device-1-keeper", false, None)?;
    assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS));
    assert_eq!(keeper.subscribe("devices/device-1/commands/#", QoS::AtLeastOnce)?, [1]);
    let _ = keeper.drain(QUIET)?;
    drop(keeper);
    std::thread::sleep(Duration::from_millis(200));
    operator_sends(&gw)?;
    for clean in [false, true] {
        let (_, answer) = connect_as(&gw, how, "device-2", "device-1-keeper", clean, None)?;
        assert_eq!(answer, Reply::ConnAck(false, how.not_authorized()), "{how:?}: device-1's session, clean {clean}");
    }
    let (mut keeper, answer) = connect_as(&gw, how, "device-1", "device-1-keeper", false, None)?;
    assert_eq!(answer, Reply::ConnAck(true, ReasonCode::SUCCESS), "{how:?}: the owner's session is untouched");
    assert_eq!(
        topics(keeper.drain(QUIET)?),
        set(&["devices/device-1/commands/config", "devices/device-1/commands/reboot"]),
        "{how:?}: and holds what was queued for it"
    );
    // The same user takes its own client id over, as always.
    let (_, answer) = connect_as(&gw, how, "device-1", "device-1", true, None)?;
    assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS), "{how:?}: same user, same id");
    Ok(())
}

#[test]
fn mqtt_311_devices_stay_in_their_own_lane() -> Result<()> {
    mqtt_lane(Mqtt::V311)
}

#[test]
fn mqtt_5_devices_stay_in_their_own_lane() -> Result<()> {
    mqtt_lane(Mqtt::V5)
}

#[test]
fn mqtt_over_websocket_devices_stay_in_their_own_lane() -> Result<()> {
    mqtt_lane(Mqtt::V5OverWebSocket)
}

/// A blocking `cloudevents.json` client.
struct Events {
    ws: tungstenite::WebSocket<TcpStream>,
}

impl Events {
    fn open(addr: SocketAddr, user: &str, client: &str) -> Result<Events> {
        use tungstenite::client::IntoClientRequest;
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let target = format!("ws://{addr}/?client={client}&token={user}:{PASSWORD}");
        let mut request = target.into_client_request()?;
        request.headers_mut().insert("sec-websocket-protocol", "cloudevents.json".parse()?);
        let (ws, _) = tungstenite::client(request, stream).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Events { ws })
    }

    fn send(&mut self, v: Value) -> Result<()> {
        Ok(self.ws.send(Message::text(v.to_string()))?)
    }

    /// The next JSON message, or the close code when the gateway closes instead.
    fn next(&mut self) -> Result<Result<Value, CloseCode>> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(Ok(serde_json::from_str(t.as_str())?)),
                Ok(Message::Close(frame)) => return Ok(Err(frame.map_or(CloseCode::Status, |f| f.code))),
                Ok(_) => {}
                Err(e) => return Err(e).context("cloudevents.json read"),
            }
        }
    }

    fn publish(&mut self, id: &str, subject: &str) -> Result<Value> {
        self.send(json!({"specversion": "1.0", "id": id, "source": "/fleet", "type": "t", "subject": subject}))?;
        self.next()?.map_err(|c| anyhow::anyhow!("closed {c:?}"))
    }

    fn subscribe(&mut self, filter: &str) -> Result<bool> {
        self.send(json!({"subscribe": filter}))?;
        let answer = self.next()?.map_err(|c| anyhow::anyhow!("closed {c:?}"))?;
        answer["granted"].as_bool().context("no granted field")
    }

    /// Subjects of the events delivered until none arrives for `quiet`.
    fn drain(&mut self, quiet: Duration) -> Result<BTreeSet<String>> {
        self.ws.get_ref().set_read_timeout(Some(quiet))?;
        let mut got = BTreeSet::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    got.extend(v["subject"].as_str().map(String::from));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.ws.get_ref().set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(got)
    }
}

#[test]
fn cloudevents_json_devices_stay_in_their_own_lane() -> Result<()> {
    let gw = fleet()?;
    let addr = gw.listener("ws")?;
    operator_sends(&gw)?;
    let mut subs = Vec::new();
    for (n, (filter, ..)) in GRANTED.into_iter().enumerate() {
        let mut c = Events::open(addr, "device-1", &format!("device-1-sub-{n}"))?;
        assert!(c.subscribe(filter)?, "{filter} granted");
        subs.push(c);
    }
    let mut probe = Events::open(addr, "device-1", "device-1-probe")?;
    for filter in REFUSED {
        assert!(!probe.subscribe(filter)?, "{filter} refused");
    }
    for (c, (filter, retained, _)) in subs.iter_mut().zip(GRANTED) {
        assert_eq!(c.drain(QUIET)?, set(retained), "retained for {filter}");
    }
    operator_sends(&gw)?;
    for (c, (filter, _, live)) in subs.iter_mut().zip(GRANTED) {
        assert_eq!(c.drain(QUIET)?, set(live), "live deliveries for {filter}");
    }

    let mut d1 = Events::open(addr, "device-1", "device-1")?;
    assert_eq!(d1.publish("e-1", "devices/device-1/events/temp")?, json!({"ack": "e-1"}));
    let refused = d1.publish("e-2", "devices/device-2/events/temp")?;
    assert_eq!((&refused["nack"], &refused["reason"]), (&json!("e-2"), &json!("not authorized")));
    let refused = d1.publish("e-3", "devices/device-2/commands/reboot")?;
    assert_eq!(refused["nack"], "e-3");

    // device-2 presenting device-1's name: closed with 1008, device-1 keeps its session and its deliveries.
    let mut d2 = Events::open(addr, "device-2", "device-1")?;
    assert_eq!(d2.next()?, Err(CloseCode::Policy), "another user's client name");
    let mut d1_sub = Events::open(addr, "device-1", "device-1-sub-0")?;
    assert!(d1_sub.subscribe("devices/device-1/commands/#")?, "the same user takes its name over");
    operator_sends(&gw)?;
    assert!(d1_sub.drain(QUIET)?.contains("devices/device-1/commands/reboot"));
    assert_eq!(d1.publish("e-4", "devices/device-1/events/temp")?, json!({"ack": "e-4"}), "device-1 undisturbed");

    // The names are cloudevents.json's own: an MQTT client id of the same spelling is another session.
    let mut mqtt = connected(&gw, Mqtt::V5, "device-2", "ws:device-1")?;
    assert_eq!(mqtt.subscribe("devices/device-2/commands/#", QoS::AtLeastOnce)?, [1]);
    let events = wait_for_event(&gw, |e| e["id"] == "e-4")?;
    assert!(!events.iter().any(|e| e["id"] == "e-2" || e["id"] == "e-3"), "refused events are not forwarded");
    Ok(())
}

mod amqp {
    use lapin::options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    };
    use lapin::types::{FieldTable, ShortString};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    use super::*;

    async fn login(gw: &Gateway, user: &str) -> Result<Connection> {
        let uri = format!("amqp://{user}:{PASSWORD}@{}/%2f", gw.amqp()?);
        Ok(Connection::connect(&uri, ConnectionProperties::default()).await?)
    }

    fn s(v: &str) -> ShortString {
        ShortString::from(v)
    }

    /// Whether `result` is the 403 ACCESS_REFUSED channel close (which also closes the channel).
    fn access_refused<T>(result: lapin::Result<T>) -> bool {
        match result {
            Ok(_) => false,
            Err(e) => {
                let text = e.to_string();
                text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED")
            }
        }
    }

    async fn publish(ch: &Channel, routing_key: &str) -> Result<bool> {
        let confirm = ch
            .basic_publish(
                s("amq.topic"),
                s(routing_key),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?;
        Ok(confirm.await?.is_ack())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amqp_devices_stay_in_their_own_lane() -> Result<()> {
        let gw = fleet()?;
        let d1 = login(&gw, "device-1").await?;
        let ch = d1.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        ch.queue_declare(s("q-dev1"), durable, FieldTable::default()).await?;
        for key in ["devices.device-1.commands.#", "#", "devices.*.commands.#"] {
            ch.queue_bind(s("q-dev1"), s("amq.topic"), s(key), QueueBindOptions::default(), FieldTable::default())
                .await
                .with_context(|| format!("binding {key} is granted"))?;
        }
        assert!(publish(&ch, "devices.device-1.events.temp").await?, "its own events: ack");
        for key in ["devices.device-2.events.temp", "devices.device-2.commands.reboot"] {
            // As RabbitMQ without write permission: the channel is closed with 403.
            let probe = d1.create_channel().await?;
            probe.confirm_select(ConfirmSelectOptions::default()).await?;
            let sent = probe.basic_publish(
                s("amq.topic"),
                s(key),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            );
            let confirmed = match sent.await {
                Ok(confirm) => confirm.await.map(|c| c.is_ack()),
                Err(e) => Err(e),
            };
            assert!(access_refused(confirmed), "publishing to {key} is refused with 403");
        }
        for key in ["devices.device-2.commands.#", "broadcast.secret"] {
            let probe = d1.create_channel().await?;
            let bind = probe.queue_bind(
                s("q-dev1"),
                s("amq.topic"),
                s(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            assert!(access_refused(bind.await), "binding {key} is refused with 403");
        }

        // Everything device-2 could do to device-1's queue is refused with 403, and the queue is untouched.
        let d2 = login(&gw, "device-2").await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let attempts: Vec<(&str, bool)> = vec![
            (
                "passive declare",
                access_refused(
                    d2.create_channel().await?.queue_declare(s("q-dev1"), passive, FieldTable::default()).await,
                ),
            ),
            (
                "declare",
                access_refused(
                    d2.create_channel().await?.queue_declare(s("q-dev1"), durable, FieldTable::default()).await,
                ),
            ),
            (
                "get",
                access_refused(d2.create_channel().await?.basic_get(s("q-dev1"), BasicGetOptions::default()).await),
            ),
            (
                "consume",
                access_refused(
                    d2.create_channel()
                        .await?
                        .basic_consume(s("q-dev1"), s("thief"), BasicConsumeOptions::default(), FieldTable::default())
                        .await,
                ),
            ),
            (
                "bind",
                access_refused(
                    d2.create_channel()
                        .await?
                        .queue_bind(
                            s("q-dev1"),
                            s("amq.topic"),
                            s("devices.device-2.commands.#"),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await,
                ),
            ),
            (
                "purge",
                access_refused(d2.create_channel().await?.queue_purge(s("q-dev1"), QueuePurgeOptions::default()).await),
            ),
            (
                "delete",
                access_refused(
                    d2.create_channel().await?.queue_delete(s("q-dev1"), QueueDeleteOptions::default()).await,
                ),
            ),
        ];
        for (what, refused) in &attempts {
            assert!(refused, "device-2's {what} of device-1's queue must be refused with 403");
        }

        // An MQTT client id spelled like the queue's old session name is just an MQTT client id.
        let (mut lookalike, answer) = connect_as(&gw, Mqtt::V5, "device-2", "amqp:q-dev1", false, None)?;
        assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS), "no session of the queue's is resumed");

        // The operator's commands: the queue holds device-1's own (and the broadcast) only, retained included.
        operator_sends(&gw)?;
        let consumer = d1.create_channel().await?;
        let mut got = BTreeSet::new();
        while let Some(m) = consumer.basic_get(s("q-dev1"), BasicGetOptions { no_ack: true }).await? {
            got.insert(m.delivery.routing_key.to_string());
        }
        assert_eq!(
            got,
            set(&["devices.device-1.commands.config", "devices.device-1.commands.reboot", "broadcast.news"]),
            "the queue's deliveries"
        );
        assert!(lookalike.drain(QUIET)?.is_empty(), "the lookalike received nothing of the queue's");

        // device-2's own queue of the same shape works for device-2.
        let ch2 = d2.create_channel().await?;
        ch2.queue_declare(s("q-dev2"), durable, FieldTable::default()).await?;
        ch2.queue_bind(
            s("q-dev2"),
            s("amq.topic"),
            s("devices.device-2.commands.#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let again = d1.create_channel().await?;
        ch.close(200, s("bye")).await.ok();
        again.queue_delete(s("q-dev1"), QueueDeleteOptions::default()).await.context("the owner deletes its queue")?;
        Ok(())
    }
}

/// `auth.clientid_must_match`: a client id outside the user's pattern is refused (MQTT 5 0x85, 3.1.1 code 2,
/// `cloudevents.json` close 1008), one inside it connects, and a device that sends none is given one.
#[test]
fn client_ids_follow_the_configured_pattern() -> Result<()> {
    let hash = meshgate_gateway::auth::hash_password(PASSWORD)?;
    let gw = Gateway::start_with(|base| {
        base.replace("allow_anonymous = true", "allow_anonymous = false\nclientid_must_match = \"{username}-*\"")
            + &format!("\n[[auth.users]]\nusername = \"device-1\"\npassword_hash = \"{hash}\"\n")
    })?;
    for (how, refused) in [(Mqtt::V5, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID), (Mqtt::V311, ReasonCode(2))] {
        let (_, answer) = connect_as(&gw, how, "device-1", "device-2-a", true, None)?;
        assert_eq!(answer, Reply::ConnAck(false, refused), "{how:?}: another user's prefix");
        let (_, answer) = connect_as(&gw, how, "device-1", "device-1-a", true, None)?;
        assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS), "{how:?}: its own prefix");
        let (_, answer) = connect_as(&gw, how, "device-1", "", true, None)?;
        assert_eq!(answer, Reply::ConnAck(false, ReasonCode::SUCCESS), "{how:?}: an id is assigned");
    }
    let mut ws = Events::open(gw.listener("ws")?, "device-1", "device-2-a")?;
    assert_eq!(ws.next()?, Err(CloseCode::Policy), "cloudevents.json: another user's prefix");
    let mut ws = Events::open(gw.listener("ws")?, "device-1", "device-1-ui")?;
    assert!(ws.subscribe("x/y")?, "its own prefix");
    Ok(())
}
