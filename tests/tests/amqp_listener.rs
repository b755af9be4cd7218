//! The AMQP 0-9-1 listener end to end: lapin and Python's pika as devices against the real `meshgate` binary.
//! Confirms must follow durability (a SIGKILL loses nothing confirmed), CloudEvents in either binding mode keep
//! their attributes, AMQP and MQTT devices reach each other through the local broker, malformed input gets the
//! specification's close codes without hurting anyone else, and a full spool slows publishers with channel.flow.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use meshgate_tests::Gateway;
use meshgate_tests::amqp_raw::{self, RawAmqp};
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::eventmesh::{Protocol, Runtime};
use meshgate_tests::pika::{PikaLogin, publish_over_tls};
use serde_json::Value;
use tokio_stream::StreamExt;

async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<(Connection, Channel)> {
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let conn = Connection::connect(&uri, props).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

/// Publishes to `amq.topic` and waits for the confirm; returns whether it was an ack.
async fn publish(ch: &Channel, routing_key: &str, body: &[u8], props: BasicProperties) -> anyhow::Result<bool> {
    let confirm = ch
        .basic_publish(
            ShortString::from("amq.topic"),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?;
    Ok(confirm.await?.is_ack())
}

fn ce_headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(*v)));
    }
    t
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_with_confirms_and_every_binding_mode_becomes_a_valid_cloudevent() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (_conn, ch) = connect(gw.amqp()?, "sensor-7").await?;
    let binary = ce_headers(&[
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "bin-1"),
        ("cloudEvents_source", "/plant/line-3"),
        ("cloudEvents_type", "com.example.temperature"),
        ("cloudEvents:subject", "line-3/oven"),
        ("cloudEvents_site", "berlin"),
    ]);
    let props =
        BasicProperties::default().with_content_type(ShortString::from("application/json")).with_headers(binary);
    assert!(publish(&ch, "plant.line3", br#"{"celsius":211}"#, props).await?, "binary mode acked");
    let structured =
        br#"{"specversion":"1.0","id":"st-1","source":"/plant/line-4","type":"com.example.door","data":{"open":true}}"#;
    let props = BasicProperties::default().with_content_type(ShortString::from("application/cloudevents+json"));
    assert!(publish(&ch, "plant.line4", structured, props).await?, "structured mode acked");
    assert!(publish(&ch, "devices.d7.telemetry", b"plain bytes", BasicProperties::default()).await?, "wrapped");
    // An event claiming binary mode without an id is refused with basic.nack; the channel carries on.
    let broken =
        ce_headers(&[("cloudEvents_specversion", "1.0"), ("cloudEvents_source", "/x"), ("cloudEvents_type", "t")]);
    let nacked = !publish(&ch, "plant.bad", b"{}", BasicProperties::default().with_headers(broken)).await?;
    assert!(nacked, "an invalid CloudEvent is nacked");
    assert!(publish(&ch, "devices.d7.telemetry", b"after", BasicProperties::default()).await?);

    let events = gw.wait_for_events(4, Duration::from_secs(10))?;
    assert_eq!(events.len(), 4, "{events:#?}");
    let bin = &events[0];
    assert_eq!(
        (str_of(bin, "id"), str_of(bin, "source"), str_of(bin, "type"), str_of(bin, "subject")),
        ("bin-1", "/plant/line-3", "com.example.temperature", "line-3/oven")
    );
    assert_eq!((str_of(bin, "site"), str_of(bin, "datacontenttype")), ("berlin", "application/json"));
    assert_eq!(bin["data"]["celsius"], 211);
    assert_eq!((str_of(&events[1], "id"), events[1]["data"]["open"].as_bool()), ("st-1", Some(true)));
    let wrapped = &events[2];
    assert_eq!(str_of(wrapped, "subject"), "devices.d7.telemetry", "the routing key as sent");
    assert_eq!(str_of(wrapped, "source"), "/meshgate/edge-test/amqp/sensor-7");
    assert_eq!(str_of(wrapped, "type"), "io.meshgate.amqp.message");
    assert_eq!((str_of(wrapped, "exchange"), str_of(wrapped, "protocol")), ("amq.topic", "amqp"));
    assert_eq!(str_of(wrapped, "deviceid"), "sensor-7");
    assert_eq!(str_of(wrapped, "datacontenttype"), "application/octet-stream");
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_messages_acknowledged_total{protocol=\"amqp\"} 4"), "{metrics}");
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"amqp\",reason=\"invalid_cloudevent\"} 1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_and_mqtt_devices_reach_each_other_through_the_local_broker() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (conn, ch) = connect(gw.amqp()?, "amqp-d1").await?;
    let options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let queue = ch.queue_declare(ShortString::from(""), options, FieldTable::default()).await?;
    let queue_name = queue.name().clone();
    ch.queue_bind(
        queue_name.clone(),
        ShortString::from("amq.topic"),
        ShortString::from("devices.d1.commands.#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consume_ch = conn.create_channel().await?;
    let mut consumer = consume_ch
        .basic_consume(queue_name, ShortString::from("cmds"), BasicConsumeOptions::default(), FieldTable::default())
        .await?;

    let (mut mqtt, _) = Client::connect(gw.mqtt, &Options::new(true, "mqtt-peer")).await?;
    mqtt.subscribe(&[("devices/+/telemetry", 1)]).await?;
    mqtt.publish("devices/d1/commands/reboot", 1, false, "now").await?;
    mqtt.publish("devices/d2/commands/reboot", 1, false, "not for d1").await?;

    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
    assert_eq!(delivery.routing_key.as_str(), "devices.d1.commands.reboot");
    assert_eq!(delivery.data, b"now");
    delivery.ack(BasicAckOptions::default()).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await.is_err(),
        "only the bound topic's messages"
    );

    // And the other way: an AMQP publish reaches the MQTT subscriber once it is durable.
    assert!(publish(&ch, "devices.d1.telemetry", b"21.5", BasicProperties::default()).await?);
    let got = mqtt.next_publish(Duration::from_secs(10)).await.ok_or_else(|| anyhow::anyhow!("no MQTT delivery"))?;
    assert_eq!((got.topic.as_str(), got.payload.as_str()), ("devices/d1/telemetry", "21.5"));
    Ok(())
}

/// A durable queue keeps persistent messages until they are acknowledged, as RabbitMQ does, whether or not their
/// publisher used confirms: a reject with requeue redelivers on the same channel with `redelivered` set, and what
/// a consumer left unacknowledged when its connection closed goes to the next consumer, in order, redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queues_redeliver_what_was_not_acknowledged() -> anyhow::Result<()> {
    use lapin::options::{BasicQosOptions, BasicRejectOptions};
    let gw = Gateway::start()?;
    let addr = gw.amqp()?;
    let (setup, ch) = connect(addr, "worker-setup").await?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(ShortString::from("jobs"), durable, FieldTable::default()).await?;
    let (jobs, key) = (ShortString::from("jobs"), ShortString::from("work.#"));
    ch.queue_bind(
        jobs.clone(),
        ShortString::from("amq.topic"),
        key,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // Published without confirms, persistent.
    let publisher = setup.create_channel().await?;
    for n in 0..3 {
        let props = BasicProperties::default().with_delivery_mode(2);
        let key = ShortString::from(format!("work.{n}"));
        publisher
            .basic_publish(ShortString::from("amq.topic"), key, BasicPublishOptions::default(), b"job", props)
            .await?;
    }

    let next = |c: &mut lapin::Consumer| {
        let c = c.clone();
        async move {
            let mut c = c;
            let d = tokio::time::timeout(Duration::from_secs(10), c.next()).await?;
            anyhow::Ok(d.ok_or_else(|| anyhow::anyhow!("consumer ended"))??)
        }
    };
    let (first_conn, first) = connect(addr, "worker-1").await?;
    first.basic_qos(10, BasicQosOptions::default()).await?;
    let mut consumer = first
        .basic_consume(jobs.clone(), ShortString::from("w1"), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut consumer).await?);
    }
    let keys: Vec<(&str, bool)> = got.iter().map(|d| (d.routing_key.as_str(), d.redelivered)).collect();
    assert_eq!(keys, [("work.0", false), ("work.1", false), ("work.2", false)]);
    got[0].reject(BasicRejectOptions { requeue: true }).await?;
    let again = next(&mut consumer).await?;
    assert_eq!((again.routing_key.as_str(), again.redelivered), ("work.0", true), "redelivered on the same channel");

    // The worker goes away with all three unacknowledged: the next one gets them, in order, redelivered.
    first_conn.close(200, ShortString::from("bye")).await?;
    let (_second_conn, second) = connect(addr, "worker-2").await?;
    let mut consumer = second
        .basic_consume(jobs, ShortString::from("w2"), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer).await?;
        keys.push((d.routing_key.to_string(), d.redelivered));
        d.ack(BasicAckOptions::default()).await?;
    }
    let want: Vec<(String, bool)> = (0..3).map(|n| (format!("work.{n}"), true)).collect();
    assert_eq!(keys, want);
    Ok(())
}

/// A durable queue and its bindings exist once declare-ok and bind-ok are sent: killed right after them, the
/// gateway comes back with the queue, which then collects what its binding matches; a deleted one stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_queue_is_durable_once_its_declare_ok_is_sent() -> anyhow::Result<()> {
    use lapin::options::{BasicGetOptions, QueueDeleteOptions};
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let (conn, ch) = connect(gw.amqp()?, "declarer").await?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    for q in ["kept", "gone"] {
        ch.queue_declare(ShortString::from(q), durable, FieldTable::default()).await?;
        let (x, key) = (ShortString::from("amq.topic"), ShortString::from(format!("{q}.#")));
        ch.queue_bind(ShortString::from(q), x, key, QueueBindOptions::default(), FieldTable::default()).await?;
    }
    ch.queue_delete(ShortString::from("gone"), QueueDeleteOptions::default()).await?;
    drop((ch, conn));
    gw.kill()?;
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let (_conn, ch) = connect(gw.amqp()?, "declarer").await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(ShortString::from("kept"), passive, FieldTable::default()).await?;
    assert!(publish(&ch, "kept.1", b"after the kill", BasicProperties::default().with_delivery_mode(2)).await?);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let got = ch.basic_get(ShortString::from("kept"), BasicGetOptions { no_ack: true }).await?;
            if let Some(m) = got {
                break anyhow::Ok(m.delivery.data);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert_eq!(got, b"after the kill", "the binding survived too");
    let refused = ch.queue_declare(ShortString::from("gone"), passive, FieldTable::default()).await;
    assert!(refused.is_err(), "the deleted queue stayed deleted: {refused:?}");
    Ok(())
}

/// Runs the raw client `f` against a fresh connection and returns the close it got: (channel, code).
fn close_after(addr: SocketAddr, frames: &[Vec<u8>]) -> anyhow::Result<(u16, u16)> {
    let mut c = RawAmqp::open(addr, "guest", "guest")?;
    for f in frames {
        c.write(f)?;
    }
    c.expect_close()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_its_close_code_and_the_gateway_keeps_serving_others() -> anyhow::Result<()> {
    use amqp_raw::{channel_open, encode, header, publish as raw_publish};
    let gw = Gateway::start_with(|base| base.replace("[listeners.amqp]\n", "[listeners.amqp]\nframe_max = 8192\n"))?;
    let addr = gw.amqp()?;
    // A device that stays connected through all of it.
    let (_conn, ch) = connect(addr, "bystander").await?;

    // Not AMQP 0-9-1: the server's own header, then the socket closes.
    let mut c = RawAmqp::connect(addr)?;
    c.write(b"AMQP\x00\x00\x08\x00")?;
    assert_eq!(c.read_to_end(), amqp_raw::PROTOCOL_HEADER);

    let mut bad_end = encode(&channel_open(1));
    if let Some(last) = bad_end.last_mut() {
        *last = 0x00;
    }
    assert_eq!(close_after(addr, &[bad_end])?, (0, 501), "a frame not ending in 0xCE");
    let mut oversized = vec![1u8, 0, 1];
    oversized.extend_from_slice(&100_000u32.to_be_bytes());
    assert_eq!(close_after(addr, &[oversized])?, (0, 501), "a frame over frame_max, refused from its size field");
    assert_eq!(close_after(addr, &[encode(&raw_publish(7, "a"))])?, (0, 504), "a channel never opened");
    let out_of_order = vec![encode(&channel_open(1)), encode(&header(1, 3))];
    assert_eq!(close_after(addr, &out_of_order)?, (0, 505), "a content header with no basic.publish");
    let too_long = vec![
        encode(&channel_open(1)),
        encode(&raw_publish(1, "a")),
        encode(&header(1, 2)),
        encode(&amq_protocol::frame::AMQPFrame::Body(1, b"four".to_vec())),
    ];
    assert_eq!(close_after(addr, &too_long)?, (0, 501), "a body longer than its header said");
    let too_big = vec![encode(&channel_open(1)), encode(&raw_publish(1, "a")), encode(&header(1, 1 << 30))];
    assert_eq!(close_after(addr, &too_big)?, (1, 311), "a message over max_message_size closes its channel");
    // Truncated: half a frame, then the device vanishes.
    let mut c = RawAmqp::open(addr, "guest", "guest")?;
    let half = encode(&raw_publish(1, "a"));
    c.write(&half[..half.len() / 2])?;
    drop(c);
    // Methods out of order before the connection is open: connection.open before tune-ok.
    let mut c = RawAmqp::connect(addr)?;
    c.write(amqp_raw::PROTOCOL_HEADER)?;
    c.recv()?;
    let open = lapin::protocol::connection::Open { virtual_host: ShortString::from("/") };
    c.send(&amqp_raw::method(
        0,
        lapin::protocol::AMQPClass::Connection(lapin::protocol::connection::AMQPMethod::Open(open)),
    ))?;
    assert_eq!(c.expect_close()?, (0, 503), "connection.open instead of start-ok");

    assert!(publish(&ch, "devices.bystander.ok", b"still here", BasicProperties::default()).await?);
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(events.len(), 1, "nothing from the broken connections reached the spool");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_403() -> anyhow::Result<()> {
    let hash = meshgate_gateway::auth::hash_password("s3cret")?;
    let gw = Gateway::start_with(|base| {
        base.replace("allow_anonymous = true", "allow_anonymous = false")
            + &format!("\n[[auth.users]]\nusername = \"dev\"\npassword_hash = \"{hash}\"\n")
    })?;
    let addr = gw.amqp()?;
    let refused = Connection::connect(&format!("amqp://dev:wrong@{addr}/%2f"), ConnectionProperties::default()).await;
    assert!(refused.is_err(), "wrong password refused");
    let mut raw = RawAmqp::connect(addr)?;
    raw.write(amqp_raw::PROTOCOL_HEADER)?;
    raw.recv()?;
    let start_ok = lapin::protocol::connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: ShortString::from("PLAIN"),
        response: LongString::from("\0guest\0guest"),
        locale: ShortString::from("en_US"),
    };
    raw.send(&amqp_raw::method(
        0,
        lapin::protocol::AMQPClass::Connection(lapin::protocol::connection::AMQPMethod::StartOk(start_ok)),
    ))?;
    assert_eq!(raw.expect_close()?, (0, 403), "an unknown user when anonymous devices are not allowed");
    let (_conn, ch) = connect_as(addr, "dev", "s3cret").await?;
    assert!(publish(&ch, "devices.dev.ok", b"1", BasicProperties::default()).await?);
    Ok(())
}

async fn connect_as(addr: SocketAddr, user: &str, pass: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn =
        Connection::connect(&format!("amqp://{user}:{pass}@{addr}/%2f"), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_a_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(dir.path(), |b| b)?;
    let addr = gw.amqp()?;
    let (tx, mut confirmed) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let publisher = tokio::spawn(async move {
        let Ok((_conn, ch)) = connect(addr, "crash-device").await else { return };
        let mut n = 0u32;
        loop {
            // A window of 20 publishes in flight, confirmed in order.
            let mut window = Vec::new();
            for _ in 0..20 {
                n += 1;
                let body = n.to_string().into_bytes();
                let sent = ch
                    .basic_publish(
                        ShortString::from("amq.topic"),
                        ShortString::from("devices.crash.seq"),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await;
                match sent {
                    Ok(confirm) => window.push((n, confirm)),
                    Err(_) => return,
                }
            }
            for (n, confirm) in window {
                match confirm.await {
                    Ok(c) if c.is_ack() => {
                        let _ = tx.send(n);
                    }
                    _ => return,
                }
            }
        }
    });
    let mut acked = BTreeSet::new();
    while acked.len() < 400 {
        match tokio::time::timeout(Duration::from_secs(20), confirmed.recv()).await {
            Ok(Some(n)) => {
                acked.insert(n);
            }
            _ => anyhow::bail!("the publisher stopped before 400 confirms ({} so far)", acked.len()),
        }
    }
    gw.kill()?;
    let _ = publisher.await;
    while let Ok(n) = confirmed.try_recv() {
        acked.insert(n);
    }
    let gw = Gateway::start_in(dir.path(), |b| b)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen: BTreeSet<u32> =
            gw.events()?.iter().filter_map(|e| e["data"].as_u64().and_then(|n| u32::try_from(n).ok())).collect();
        let missing: Vec<u32> = acked.difference(&seen).copied().collect();
        if missing.is_empty() {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{} confirmed messages lost: {missing:?}", missing.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

/// A device that follows the specification: it stops publishing on channel.flow(false) and resumes on
/// channel.flow(true). The first time it is paused it ignores the pause for `IGNORED` more publishes, as a careless
/// device would; the gateway then simply stops reading it. (lapin 4.12 is not used here: after channel.flow(true)
/// it reports the resume but never writes its queued publishes again.)
#[test]
fn a_stalled_uplink_and_a_small_spool_pause_publishers_with_channel_flow_and_lose_nothing() -> anyhow::Result<()> {
    use lapin::protocol::{AMQPClass, basic, channel as ch, confirm};
    const N: u64 = 1500;
    const IGNORED: u64 = 50;
    let mesh = Runtime::start(Protocol::Http)?;
    mesh.stall(true);
    let gw = Gateway::start_with(|base| {
        format!(
            "{base}\n[spool]\nmax_bytes = 262144\nsegment_bytes = 32768\nqueue_capacity = 16\n\n[[uplinks]]\nname = \"mesh\"\nkind = \"eventmesh-http\"\nendpoints = [\"{}\"]\ntimeout_ms = 300\nhealth_check_interval_ms = 200\nejection_ms = 200\n\n[forwarder]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n",
            mesh.addr
        )
    })?;
    let mut c = RawAmqp::open(gw.amqp()?, "guest", "guest")?;
    c.send(&amqp_raw::channel_open(1))?;
    c.recv()?;
    c.send(&amqp_raw::method(1, AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false }))))?;
    c.recv()?;
    // Small enough for the runtime's maxEventSize (1000 characters of event); N of them fill the spool many times.
    let padding = "x".repeat(200);
    let (mut next, mut acked, mut active) = (1u64, 0u64, true);
    let (mut pauses, mut ignoring, mut rss_while_paused, mut stalled) = (0, 0u64, 0u64, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while acked < N {
        anyhow::ensure!(std::time::Instant::now() < deadline, "stuck at {acked} confirmed of {N} ({next} sent)");
        let may_send = (active || ignoring > 0) && next <= N;
        if may_send {
            c.publish(1, "devices.flow.data", format!("{next} {padding}").as_bytes())?;
            next += 1;
            ignoring = ignoring.saturating_sub(1);
        }
        let wait = if may_send { Duration::ZERO } else { Duration::from_millis(50) };
        while let Some(frame) = c.try_recv(wait)? {
            match frame {
                amq_protocol::frame::AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                    anyhow::ensure!(active, "a confirm while the channel was paused (tag {})", a.delivery_tag);
                    acked = acked.max(a.delivery_tag);
                }
                amq_protocol::frame::AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    anyhow::bail!("publish {} nacked", n.delivery_tag);
                }
                amq_protocol::frame::AMQPFrame::Method(1, AMQPClass::Channel(ch::AMQPMethod::Flow(f))) => {
                    c.send(&amqp_raw::method(
                        1,
                        AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk { active: f.active })),
                    ))?;
                    active = f.active;
                    if !f.active {
                        pauses += 1;
                        if pauses == 1 {
                            ignoring = IGNORED;
                        }
                    }
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        if pauses > 0 && stalled && !active && ignoring == 0 {
            // Paused, the careless stretch sent: the gateway holds its ground; then the uplink recovers.
            std::thread::sleep(Duration::from_millis(500));
            rss_while_paused = rss_kib(gw.pid().unwrap_or_default())?;
            mesh.stall(false);
            stalled = false;
        }
    }
    assert!(pauses >= 1, "the client saw channel.flow(false)");
    let stored = tokio::runtime::Runtime::new()?.block_on(mesh.wait_for(N as usize, Duration::from_secs(60)));
    let numbers: BTreeSet<u64> = stored
        .iter()
        .filter_map(|s| s.event.get("data_base64").or(s.event.get("data")).cloned())
        .filter_map(|d| decode_number(&d))
        .collect();
    assert_eq!(numbers.len(), N as usize, "every confirmed publish reached the runtime");
    // Megabytes of records went through a 256 KiB spool: what waited stayed with the client and on disk.
    assert!(rss_while_paused > 0 && rss_while_paused < 64 * 1024, "gateway RSS {rss_while_paused} KiB while paused");
    assert!(gw.metric("meshgate_flow_paused_total{protocol=\"amqp\"}")? >= 1.0, "the pause is counted");
    Ok(())
}

/// The sequence number at the start of an event's data (text, or base64 of text).
fn decode_number(data: &Value) -> Option<u64> {
    use base64::Engine as _;
    let text = data.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(text).ok().and_then(|b| String::from_utf8(b).ok());
    decoded.as_deref().unwrap_or(text).split(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_publishes_with_confirms_and_consumes_commands() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pika_device.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(gw.amqp()?.port().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut output = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push(line.clone());
            if line.contains("\"ready\"") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    anyhow::ensure!(ready, "pika did not get ready (needs python3 with pika; .ci/setup installs it): {output:?}");
    let (mqtt, _) = Client::connect(gw.mqtt, &Options::new(false, "commander")).await?;
    mqtt.publish("devices/pika-1/commands/blink", 1, false, "3 times").await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    while let Ok(Some(line)) = lines.next_line().await {
        output.push(line);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut e, &mut stderr).await?;
    }
    assert!(status.success(), "pika device failed: {output:?}\n{stderr}");
    let text = output.join("\n");
    assert!(text.contains("{\"confirmed\": 20}"), "{text}");
    assert!(text.contains("{\"command\": \"devices.pika-1.commands.blink\", \"body\": \"3 times\"}"), "{text}");
    // The MQTT command is an event too; the device's own are the pika ones.
    let events: Vec<Value> = gw
        .wait_for_events(21, Duration::from_secs(10))?
        .into_iter()
        .filter(|e| str_of(e, "source") == "/devices/pika-1")
        .collect();
    assert_eq!(events.len(), 20);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(str_of(e, "id"), format!("pika-{i}"), "binary-mode attributes kept, in order");
        assert_eq!(str_of(e, "type"), "com.example.pika");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_serves_the_same_listener_over_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, issued.cert.pem())?;
    std::fs::write(&key, issued.signing_key.serialize_pem())?;
    let gw = Gateway::start_with(|base| {
        base.replace("[listeners.amqp]\n", "[listeners.amqp]\ntls_bind = \"127.0.0.1:0\"\n")
            + &format!("\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display())
    })?;
    let amqps = gw.listener("amqps")?;
    // A client speaking plain AMQP to the TLS port fails its handshake; the listener carries on.
    let mut plain = RawAmqp::connect(amqps)?;
    plain.write(amqp_raw::PROTOCOL_HEADER)?;
    let answer = plain.read_to_end();
    assert!(!answer.starts_with(b"AMQP"), "no AMQP without TLS on the TLS port");
    // pika over TLS, trusting the test's certificate, publishes with confirms.
    publish_over_tls(amqps, &cert, PikaLogin::Named("tls-device"), "devices.tls-device.events", "over tls").await?;
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(str_of(&events[0], "source"), "/meshgate/edge-test/amqp/tls-device");
    Ok(())
}

/// An MQTT device's strings go up to 65,535 bytes, AMQP's short strings (routing key, content type, header
/// names) to 255: a message on a 300-byte topic with a 300-byte user property name and content type reaches an
/// AMQP consumer with its routing key cut to 255 bytes and those properties left out, and the consumer's
/// connection keeps working (before, the frame carried a wrapped length and the consumer lost its connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_too_long_for_amqp_are_cut_or_left_out_and_the_consumer_keeps_its_connection() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (conn, ch) = connect(gw.amqp()?, "amqp-long").await?;
    let options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let queue = ch.queue_declare(ShortString::from(""), options, FieldTable::default()).await?;
    let queue_name = queue.name().clone();
    let bind = QueueBindOptions::default();
    ch.queue_bind(queue_name.clone(), "amq.topic".into(), "long.#".into(), bind, FieldTable::default()).await?;
    let consume_ch = conn.create_channel().await?;
    let mut consumer = consume_ch
        .basic_consume(queue_name, ShortString::from("long"), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let (mqtt, _) = Client::connect(gw.mqtt, &Options::new(true, "long-pub")).await?;
    let topic = format!("long/{}", "é".repeat(150));
    let name = "n".repeat(300);
    let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some(format!("text/plain; x={}", "y".repeat(300))),
        user_properties: vec![(name, "v".into()), ("short".into(), "kept".into())],
        ..Default::default()
    };
    mqtt.publish_v5(&topic, 1, false, "first", properties).await?;
    mqtt.publish("long/next", 1, false, "second").await?;
    for (want_body, want_key) in [("first", None), ("second", Some("long.next"))] {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        assert_eq!(delivery.data, want_body.as_bytes());
        match want_key {
            Some(key) => assert_eq!(delivery.routing_key.as_str(), key),
            None => {
                let key = delivery.routing_key.as_str();
                assert!(key.len() <= 255 && key.starts_with("long.é"), "cut on a character boundary: {key}");
                assert_eq!(delivery.properties.content_type(), &None);
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                assert!(headers.inner().contains_key("short") && headers.inner().len() < 5, "{headers:?}");
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
