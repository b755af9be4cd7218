//! The NATS JetStream uplink against real NATS servers: the machine's on 127.0.0.1:4222 (`.ci/setup` starts it;
//! the tests fail loudly without it) and, for the restart test, a private `nats-server -js` of the same binary
//! that the test kills and starts again. What the stream holds is read back by an independent reader: nats-py
//! with the CloudEvents Python SDK (`tests/python/nats_stream_events.py`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use meshgate_tests::Gateway;
use meshgate_tests::nats::{self, NatsServer};
use serde_json::Value;

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}{}", std::process::id(), nanos % 1_000_000_000)
}

/// An uplink that creates stream `MGT_{tag}` for subjects `mgt{tag}.>`.
fn nats_uplink(url: &str, tag: &str, mode: &str) -> String {
    format!(
        "\n[[uplinks]]\nname = \"js\"\nkind = \"nats\"\nurl = \"{url}\"\nsubject = \"mgt{tag}.{{subject}}\"\nstream = \"MGT_{tag}\"\nmode = \"{mode}\"\ntimeout_ms = 2000\n\n[forwarder]\nbackoff_max_ms = 500\n"
    )
}

/// `(client, seq)` of a reader's event.
fn key(e: &Value) -> (u64, u64) {
    (e["data"]["client"].as_u64().unwrap_or(u64::MAX), e["data"]["seq"].as_u64().unwrap_or(0))
}

async fn delete_stream(js: &async_nats::jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}

async fn devices_reach_the_stream(mode: &str) -> anyhow::Result<()> {
    let js = nats::jetstream(nats::SHARED_URL).await?;
    let tag = unique();
    let stream = format!("MGT_{tag}");
    let gw = Gateway::start_with(|b| b + &nats_uplink(nats::SHARED_URL, &tag, mode))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 5, 100)?;
    let held = nats::wait_for_messages(&js, &stream, 500, Duration::from_secs(30)).await;
    assert_eq!(held, 500, "every acknowledged message is in the stream");

    let events = nats::read_with_python(&stream, nats::SHARED_URL).await?;
    assert_eq!(events.len(), 500);
    let mut order: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut ids = HashSet::new();
    for e in &events {
        assert_eq!(e["type"], "io.meshgate.mqtt.message", "{e}");
        let (client, seq) = key(e);
        assert_eq!(e["deviceid"], format!("dev-{client}"));
        assert!(ids.insert(e["id"].as_str().unwrap_or_default().to_string()), "an id twice: {e}");
        order.entry(client).or_default().push(seq);
    }
    for client in 0..5 {
        assert_eq!(order.get(&client), Some(&(1..=100).collect::<Vec<_>>()), "order of device {client} in the stream");
    }
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_uplink_events_total{uplink=\"js\"} 500"), "per-uplink metrics: {metrics}");
    delete_stream(&js, &stream).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_reach_a_jetstream_stream_in_binary_mode_read_by_nats_py() -> anyhow::Result<()> {
    devices_reach_the_stream("binary").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_reach_a_jetstream_stream_in_structured_mode_read_by_nats_py() -> anyhow::Result<()> {
    devices_reach_the_stream("structured").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_and_a_gateway_sigkill_mid_stream_leave_every_acknowledged_event_in_the_stream_once()
-> anyhow::Result<()> {
    let mut server = NatsServer::start()?;
    let js = nats::jetstream(&server.url).await?;
    let tag = unique();
    let stream = format!("MGT_{tag}");
    // The cursor is written only when the uplink catches up: after the kill, the restarted gateway sends again
    // what it had forwarded since, and the stream must drop those re-sends.
    let uplink = nats_uplink(&server.url, &tag, "binary") + "cursor_interval_ms = 600000\nmax_batch = 50\n";
    let data_dir = tempfile::tempdir()?;
    let mut gw = Gateway::start_in(data_dir.path(), |b| b + &uplink)?;
    let devices = meshgate_tests::raw::Publishers::start(
        gw.mqtt,
        2,
        "nats-kill",
        |d| format!("devices/k{d}/telemetry"),
        Duration::from_millis(2),
    );

    // NATS dies under the stream and comes back on the same port and store; meanwhile the spool holds a backlog.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill()?;
    let forwarded = "meshgate_uplink_events_total{uplink=\"js\"}";
    let before_restart = gw.metric(forwarded)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart()?;
    // The gateway is killed while it works through that backlog: what it forwarded since its cursor was last
    // written (only on catching up, with this interval) is sent again after its restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gw.metric(forwarded)? <= before_restart && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill()?;
    let acknowledged = devices.acknowledged();
    let total: u64 = acknowledged.iter().sum();
    assert!(total > 200, "devices published through the restart: {acknowledged:?}");
    let gw = Gateway::start_in(data_dir.path(), |b| b + &uplink)?;

    let js = if nats::stream_messages(&js, &stream).await == 0 { nats::jetstream(&server.url).await? } else { js };
    nats::wait_for_messages(&js, &stream, total, Duration::from_secs(60)).await;
    // Give re-sends of the restarted gateway their chance to show up as duplicates.
    gw.wait_for_readyz(200, Duration::from_secs(30))?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events = nats::read_with_python(&stream, &server.url).await?;
    let duplicates = gw.metric("meshgate_uplink_duplicates_total{uplink=\"js\"}")?;
    let mut ids = HashSet::new();
    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    for e in &events {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        assert!(ids.insert(id.clone()), "event {id} is in the stream twice");
        assert!(seen.insert(key(e), id).is_none(), "a device message is in the stream twice: {e}");
    }
    for (client, &n) in acknowledged.iter().enumerate() {
        for seq in 1..=n {
            assert!(seen.contains_key(&(client as u64, seq)), "acknowledged message {client}/{seq} is missing");
        }
    }
    assert!(duplicates > 0.0, "the restarted gateway sent again what it had forwarded before the kill");
    eprintln!(
        "nats restart + SIGKILL: {total} acknowledged, {} in the stream, each once; {duplicates} re-sends dropped by the stream",
        events.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_stream_refuses_for_good_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    let js = nats::jetstream(nats::SHARED_URL).await?;
    let tag = unique();
    let stream = format!("MGT_{tag}");
    // The operator's stream takes messages of at most 1 KiB; the uplink uses it as it is.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("mgt{tag}.>")],
        max_message_size: 1024,
        ..Default::default()
    })
    .await?;
    let gw = Gateway::start_with(|b| b + &nats_uplink(nats::SHARED_URL, &tag, "binary"))?;
    let (device, _) =
        meshgate_tests::clients::Client::connect(gw.mqtt, &meshgate_tests::clients::Options::new(true, "big")).await?;
    device.publish("devices/big/telemetry", 1, false, &format!("{{\"blob\":\"{}\"}}", "x".repeat(4096))).await?;
    device.publish("devices/big/telemetry", 1, false, "{\"after\":1}").await?;
    let dead =
        gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"js\"}", 1.0, Duration::from_secs(20)).await?;
    assert_eq!(dead, 1.0);
    assert_eq!(nats::wait_for_messages(&js, &stream, 1, Duration::from_secs(20)).await, 1, "the next event flows");
    let letters = std::fs::read_to_string(gw.data_dir.join("js-dead-letter.jsonl"))?;
    let line: Value = serde_json::from_str(letters.lines().next().unwrap_or_default())?;
    assert_eq!(line["code"], 400, "JetStream's status: {line}");
    assert!(line["reason"].as_str().unwrap_or_default().contains("size"), "{line}");
    assert_eq!(line["event"]["data"]["blob"].as_str().map(str::len), Some(4096));
    let events = nats::read_with_python(&stream, nats::SHARED_URL).await?;
    assert_eq!(events[0]["data"]["after"], 1);
    delete_stream(&js, &stream).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_behind_the_uplinks_back_is_created_again() -> anyhow::Result<()> {
    let js = nats::jetstream(nats::SHARED_URL).await?;
    let tag = unique();
    let stream = format!("MGT_{tag}");
    let gw = Gateway::start_with(|b| b + &nats_uplink(nats::SHARED_URL, &tag, "binary"))?;
    meshgate_tests::publish_numbered(gw.mqtt, 1, 5)?;
    assert_eq!(nats::wait_for_messages(&js, &stream, 5, Duration::from_secs(20)).await, 5);
    js.delete_stream(&stream).await?;
    meshgate_tests::publish_numbered(gw.mqtt, 2, 5)?;
    assert_eq!(nats::wait_for_messages(&js, &stream, 5, Duration::from_secs(30)).await, 5, "a new stream, refilled");
    let events = nats::read_with_python(&stream, nats::SHARED_URL).await?;
    let seqs: Vec<u64> = events.iter().filter(|e| key(e).0 == 2).map(|e| key(e).1).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    delete_stream(&js, &stream).await;
    Ok(())
}

/// A `datacontenttype` that is not a plain header value (here non-ASCII parameters; a line break, which could
/// forge headers, is already refused as an invalid CloudEvent at ingress) is set aside, and the next event flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_that_would_forge_headers_is_dead_lettered() -> anyhow::Result<()> {
    let js = nats::jetstream(nats::SHARED_URL).await?;
    let tag = unique();
    let stream = format!("MGT_{tag}");
    let gw = Gateway::start_with(|b| b + &nats_uplink(nats::SHARED_URL, &tag, "binary"))?;
    let (device, _) =
        meshgate_tests::clients::Client::connect(gw.mqtt, &meshgate_tests::clients::Options::new(false, "dev-n"))
            .await?;
    let forged = serde_json::json!({
        "specversion": "1.0", "id": "evil-2", "source": "/x", "type": "t",
        "datacontenttype": "application/json; name=\u{e9}", "data": {"n": 1}
    });
    device.publish("devices/dev-n/t", 1, false, &forged.to_string()).await?;
    device.publish("devices/dev-n/t", 1, false, "{\"n\":2}").await?;
    assert_eq!(nats::wait_for_messages(&js, &stream, 1, Duration::from_secs(20)).await, 1);
    gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"js\"}", 1.0, Duration::from_secs(10)).await?;
    let events = nats::read_with_python(&stream, nats::SHARED_URL).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["n"], 2);
    delete_stream(&js, &stream).await;
    Ok(())
}
