//! The RabbitMQ uplink against the real broker on this machine (127.0.0.1:5672, guest/guest): MQTT devices →
//! meshgate → an exchange → a queue read by lapin. Fails loudly if RabbitMQ is not running (`.ci/setup` starts
//! it).

use std::collections::HashMap;
use std::time::Duration;

use cloudevents::AttributesReader;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use meshgate_protocols::cloudevents::{CloudEvent, HeaderValue, decode_amqp};
use meshgate_tests::{Gateway, publish_numbered as publish_all};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

async fn broker() -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("RabbitMQ must run on 127.0.0.1:5672 for this test: {e}"))?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// A durable topic exchange (as meshgate declares it) and a queue bound to it with `#`: exclusive to this
/// connection, or with `name` so that another client can read it.
async fn exchange_with_queue(ch: &Channel, exchange: &str, name: Option<&str>) -> anyhow::Result<String> {
    let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    ch.exchange_declare(ShortString::from(exchange), ExchangeKind::Topic, options, FieldTable::default()).await?;
    let queue_options = QueueDeclareOptions { exclusive: name.is_none(), ..Default::default() };
    let queue =
        ch.queue_declare(ShortString::from(name.unwrap_or_default()), queue_options, FieldTable::default()).await?;
    let name = queue.name().to_string();
    ch.queue_bind(
        ShortString::from(name.as_str()),
        ShortString::from(exchange),
        ShortString::from("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(name)
}

fn amqp_uplink(exchange: &str, extra: &str) -> String {
    format!("\n[[uplinks]]\nname = \"rabbit\"\nkind = \"amqp\"\nuri = \"{BROKER}\"\nexchange = \"{exchange}\"\n{extra}")
}

/// Reads one message as a CloudEvent through the project's AMQP binding.
fn to_event(delivery: &lapin::message::Delivery) -> anyhow::Result<CloudEvent> {
    let mut headers: Vec<(String, HeaderValue)> = Vec::new();
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            let v = match v {
                AMQPValue::LongString(s) => HeaderValue::String(s.to_string()),
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
                AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
                other => anyhow::bail!("unexpected header type {other:?}"),
            };
            headers.push((k.to_string(), v));
        }
    }
    let content_type = delivery.properties.content_type().as_ref().map(|c| c.to_string());
    let event = decode_amqp(content_type.as_deref(), headers.iter().map(|(k, v)| (k.as_str(), v)), &delivery.data)?
        .ok_or_else(|| anyhow::anyhow!("not a CloudEvent"))?;
    Ok(event)
}

async fn drain(ch: &Channel, queue: &str, want: usize, timeout: Duration) -> anyhow::Result<Vec<CloudEvent>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Vec::new();
    while events.len() < want && tokio::time::Instant::now() < deadline {
        match ch.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }).await? {
            Some(message) => events.push(to_event(&message.delivery)?),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_reach_a_rabbitmq_queue_as_cloudevents_with_counts_and_order_intact() -> anyhow::Result<()> {
    const CLIENTS: usize = 5;
    const MESSAGES: u16 = 50;
    let (_conn, ch) = broker().await?;
    let exchange = unique("meshgate-test");
    let queue = exchange_with_queue(&ch, &exchange, None).await?;
    let gw = Gateway::start_with(|b| b + &amqp_uplink(&exchange, ""))?;
    let addr = gw.mqtt;
    let publishers: Vec<_> = (0..CLIENTS).map(|c| std::thread::spawn(move || publish_all(addr, c, MESSAGES))).collect();
    for p in publishers {
        p.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    }
    let events = drain(&ch, &queue, CLIENTS * usize::from(MESSAGES), Duration::from_secs(20)).await?;
    assert_eq!(events.len(), CLIENTS * usize::from(MESSAGES));
    let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &events {
        assert!(e.validate().is_ok());
        // A second opinion on every event: the CloudEvents Rust SDK parses its JSON form.
        let sdk: cloudevents::Event = serde_json::from_str(&e.to_json_string())?;
        assert_eq!((sdk.id(), sdk.ty(), sdk.source().as_str()), (e.id.as_str(), e.ty.as_str(), e.source.as_str()));
        assert_eq!(e.ty, "io.meshgate.mqtt.message");
        let device = e.extensions.get("deviceid").map(|d| d.to_canonical_string()).unwrap_or_default();
        let Some(meshgate_protocols::cloudevents::Data::Json(data)) = &e.data else { anyhow::bail!("data: {e:?}") };
        per_device.entry(device).or_default().push(data["seq"].as_u64().unwrap_or_default());
    }
    assert_eq!(per_device.len(), CLIENTS);
    for (device, seqs) in per_device {
        assert_eq!(seqs, (1..=u64::from(MESSAGES)).collect::<Vec<_>>(), "order of {device}");
    }
    let (_, metrics) = gw.admin_get("/metrics")?;
    let expected = format!("meshgate_uplink_events_total{{uplink=\"rabbit\"}} {}", CLIENTS * usize::from(MESSAGES));
    assert!(metrics.contains(&expected), "{metrics}");
    assert!(metrics.contains("meshgate_uplink_connects_total{uplink=\"rabbit\"} 1"), "{metrics}");
    let count = format!(
        "meshgate_uplink_forward_latency_seconds_count{{uplink=\"rabbit\"}} {}",
        CLIENTS * usize::from(MESSAGES)
    );
    assert!(metrics.contains(&count), "{metrics}");
    ch.exchange_delete(ShortString::from(exchange.as_str()), ExchangeDeleteOptions::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_are_dead_lettered_when_configured_and_devices_are_still_served() -> anyhow::Result<()> {
    let (_conn, ch) = broker().await?;
    let exchange = unique("meshgate-unroutable");
    // The exchange exists but nothing is bound: every event comes back (mandatory).
    let gw = Gateway::start_with(|b| b + &amqp_uplink(&exchange, "on_return = \"dead-letter\"\n"))?;
    publish_all(gw.mqtt, 0, 3)?;
    let path = gw.data_dir.join("amqp-returned.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = std::fs::read_to_string(&path).unwrap_or_default().lines().count();
        if lines >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines, 3);
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_uplink_returned_total{uplink=\"rabbit\"} 3"), "{metrics}");
    publish_all(gw.mqtt, 1, 2)?;
    ch.exchange_delete(ShortString::from(exchange.as_str()), ExchangeDeleteOptions::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_with_declare_false_is_reported_and_events_wait_in_the_spool() -> anyhow::Result<()> {
    let exchange = unique("meshgate-missing");
    let gw = Gateway::start_with(|b| b + &amqp_uplink(&exchange, "declare = false\n"))?;
    // Devices are served: their events are durable in the spool while the uplink retries.
    publish_all(gw.mqtt, 0, 2)?;
    gw.wait_for_readyz(503, Duration::from_secs(10))?;
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(!metrics.contains("meshgate_uplink_failures_total{uplink=\"rabbit\"} 0"), "{metrics}");
    assert!(metrics.contains("meshgate_uplink_events_total{uplink=\"rabbit\"} 0"), "{metrics}");
    Ok(())
}

/// The gateway's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_between_gateway_and_broker_loses_nothing_acknowledged_and_keeps_order() -> anyhow::Result<()> {
    let (_conn, ch) = broker().await?;
    let exchange = unique("meshgate-outage");
    let queue = exchange_with_queue(&ch, &exchange, None).await?;
    let proxy = meshgate_tests::proxy::FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let uri = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let uplink = format!(
        "\n[[uplinks]]\nname = \"rabbit\"\nkind = \"amqp\"\nuri = \"{uri}\"\nexchange = \"{exchange}\"\ntimeout_ms = 2000\n\n[forwarder]\nbackoff_max_ms = 1000\n"
    );
    let gw = Gateway::start_with(|b| b + &uplink)?;
    let pid = gw.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;

    // Two devices publish QoS 1 for the whole test, recording what was acknowledged.
    let devices =
        meshgate_tests::raw::Publishers::start(gw.mqtt, 2, "outage", |_| "outage/t".into(), Duration::from_millis(2));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.black_hole();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_during = rss_kib(pid);
    proxy.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = devices.stop()?;
    let total: u64 = sent.iter().sum();
    assert!(total > 1000, "devices kept publishing through the outage: {total}");

    // Everything acknowledged arrives; duplicates (a confirm lost in the cut) keep their event id.
    let mut first_seen: HashMap<(u64, u64), String> = HashMap::new();
    let mut order: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (first_seen.len() as u64) < total && tokio::time::Instant::now() < deadline {
        for e in drain(&ch, &queue, 10_000, Duration::from_millis(200)).await? {
            let Some(meshgate_protocols::cloudevents::Data::Json(d)) = &e.data else { anyhow::bail!("data {e:?}") };
            let key = (d["client"].as_u64().unwrap_or(9), d["seq"].as_u64().unwrap_or(0));
            match first_seen.get(&key) {
                Some(id) => assert_eq!(id, &e.id, "a resent event keeps its id"),
                None => {
                    first_seen.insert(key, e.id.clone());
                    if let Some(list) = order.get_mut(key.0 as usize) {
                        list.push(key.1);
                    }
                }
            }
        }
    }
    assert_eq!(first_seen.len() as u64, total, "acknowledged events missing after the outage");
    for (client, seqs) in order.iter().enumerate() {
        assert_eq!(seqs, &(1..=sent[client]).collect::<Vec<_>>(), "order of device {client}");
    }
    let (_, metrics) = gw.admin_get("/metrics")?;
    let connects = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshgate_uplink_connects_total{uplink=\"rabbit\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(connects >= 2, "the uplink reconnected after the outage: {connects}");
    eprintln!("outage: {total} events; RSS {rss_before} KiB before the cut, {rss_during} KiB after 10 s of outage");
    assert!(rss_during < rss_before + 32 * 1024, "memory grew with the backlog: {rss_before} → {rss_during} KiB");
    ch.exchange_delete(ShortString::from(exchange.as_str()), ExchangeDeleteOptions::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_consumer_parses_the_events_with_the_cloudevents_sdk() -> anyhow::Result<()> {
    let (_conn, ch) = broker().await?;
    let exchange = unique("meshgate-pika");
    // A named queue: the Python consumer reads it over its own connection.
    let queue = exchange_with_queue(&ch, &exchange, Some(&unique("meshgate-pika-q"))).await?;
    let gw = Gateway::start_with(|b| b + &amqp_uplink(&exchange, ""))?;
    publish_all(gw.mqtt, 3, 10)?;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/consume_cloudevents.py");
    let out = tokio::process::Command::new("python3").arg(script).arg(&queue).arg("10").output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "the Python consumer failed (pika and cloudevents come from `.ci/setup`): {stderr}"
    );
    let events: Vec<serde_json::Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 10);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["type"], "io.meshgate.mqtt.message");
        assert_eq!(e["deviceid"], "dev-3");
        assert_eq!(e["data"]["seq"], i + 1);
    }
    ch.queue_delete(ShortString::from(queue.as_str()), Default::default()).await?;
    ch.exchange_delete(ShortString::from(exchange.as_str()), ExchangeDeleteOptions::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_access_is_reported_while_devices_are_served() -> anyhow::Result<()> {
    let exchange = unique("meshgate-denied");
    let wrong = format!(
        "\n[[uplinks]]\nname = \"rabbit\"\nkind = \"amqp\"\nuri = \"amqp://guest:wrong-password@127.0.0.1:5672/%2f\"\nexchange = \"{exchange}\"\n"
    );
    let gw = Gateway::start_with(|b| b + &wrong)?;
    publish_all(gw.mqtt, 0, 3)?;
    gw.wait_for_readyz(503, Duration::from_secs(10))?;
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_uplink_connects_total{uplink=\"rabbit\"} 0"), "{metrics}");
    assert!(!metrics.contains("meshgate_uplink_failures_total{uplink=\"rabbit\"} 0"), "{metrics}");
    assert!(metrics.contains("meshgate_messages_acknowledged_total{protocol=\"mqtt\"} 3"), "{metrics}");
    Ok(())
}

/// A device's topic over 255 bytes makes a routing key AMQP cannot carry (a short string): the event is set aside
/// in the dead-letter file instead of breaking the channel (or, before, a frame with a wrapped length) on every
/// retry, and the next event flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_routing_key_amqp_cannot_carry_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    let (_conn, ch) = broker().await?;
    let exchange = unique("meshgate-long-key");
    let queue = exchange_with_queue(&ch, &exchange, None).await?;
    let gw = Gateway::start_with(|b| b + &amqp_uplink(&exchange, ""))?;
    let (device, _) =
        meshgate_tests::clients::Client::connect(gw.mqtt, &meshgate_tests::clients::Options::new(true, "dev-long"))
            .await?;
    device.publish(&format!("devices/{}", "x".repeat(300)), 1, false, "{\"n\":1}").await?;
    device.publish("devices/dev-long/t", 1, false, "{\"n\":2}").await?;
    let events = drain(&ch, &queue, 1, Duration::from_secs(20)).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject.as_deref(), Some("devices/dev-long/t"));
    gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"rabbit\"}", 1.0, Duration::from_secs(10)).await?;
    let letters = std::fs::read_to_string(gw.data_dir.join("amqp-returned.jsonl"))?;
    assert!(letters.contains("routing key of 308 bytes"), "{letters}");
    ch.exchange_delete(ShortString::from(exchange.as_str()), ExchangeDeleteOptions::default()).await?;
    Ok(())
}
