//! The EventMesh uplinks end to end: MQTT devices → the real `meshgate` binary → test doubles of the EventMesh
//! runtime (gRPC, HTTP, TCP; see `meshgate_tests::eventmesh`). Every event a device was acknowledged for must be
//! stored by a runtime as the device's event with the attributes the runtime requires, in per-device order; a
//! runtime that dies, overloads or refuses an event must not cost an acknowledged event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshgate_protocols::cloudevents::parse_timestamp;
use meshgate_protocols::mqtt::{Packet, Publish, QoS, ReasonCode, Version};
use meshgate_tests::eventmesh::{Protocol, Runtime, Stored};
use meshgate_tests::raw::{Publishers, RawClient, Reply};
use meshgate_tests::{Gateway, publish_numbered};
use serde_json::Value;

/// A file uplink (the device's events as the gateway made them) and an EventMesh uplink named `mesh` with quick
/// health checks; `extra` adds keys to the `mesh` table (a `timeout_ms` there replaces the default 2 s).
fn uplinks(protocol: Protocol, endpoints: &[SocketAddr], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let timeout = if extra.contains("timeout_ms") { "" } else { "timeout_ms = 2000\n" };
    format!(
        "\n[[uplinks]]\nname = \"local\"\nkind = \"file\"\n\n[[uplinks]]\nname = \"mesh\"\nkind = \"{}\"\nendpoints = [{}]\nhealth_check_interval_ms = 200\nejection_ms = 300\nconnect_timeout_ms = 500\n{timeout}{extra}\n[forwarder]\nbackoff_initial_ms = 20\nbackoff_max_ms = 300\n",
        protocol.kind(),
        endpoints.join(", ")
    )
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Checks that `stored` holds exactly the gateway's events (by id, once each), each the device's event with the
/// runtime's required attributes, and that every device's sequence numbers arrive in order.
fn check_stored_events(protocol: Protocol, gateway_events: &[Value], stored: &[Stored]) -> anyhow::Result<()> {
    let by_id: HashMap<&str, &Value> = gateway_events.iter().map(|e| (str_of(e, "id"), e)).collect();
    anyhow::ensure!(stored.len() == gateway_events.len(), "stored {} of {}", stored.len(), gateway_events.len());
    let mut seen = HashSet::new();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    for s in stored {
        let e = &s.event;
        let id = str_of(e, "id");
        anyhow::ensure!(seen.insert(id.to_string()), "event {id} stored twice");
        let device = by_id.get(id).ok_or_else(|| anyhow::anyhow!("stored an event the gateway never made: {e}"))?;
        for key in ["source", "type", "datacontenttype", "deviceid", "gatewayid", "protocol", "subject"] {
            anyhow::ensure!(str_of(e, key) == str_of(device, key), "{key} differs: {e} vs {device}");
        }
        anyhow::ensure!(e.get("data") == device.get("data"), "data differs: {e} vs {device}");
        let time = str_of(device, "time");
        match protocol {
            // The gRPC double records the ce_timestamp as @seconds.nanos.
            Protocol::Grpc => {
                let (secs, nanos) = parse_timestamp(time).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(str_of(e, "time") == format!("@{secs}.{nanos:09}"), "time: {e}");
                for key in ["env", "idc", "ip", "pid", "sys", "username", "passwd", "language", "producergroup", "ttl"]
                {
                    anyhow::ensure!(!str_of(e, key).is_empty(), "attribute {key} missing: {e}");
                }
            }
            Protocol::Http | Protocol::Tcp => {
                anyhow::ensure!(str_of(e, "time") == time, "time: {e}");
                anyhow::ensure!(str_of(e, "bizseqno").len() == 30, "bizseqno: {e}");
            }
        }
        anyhow::ensure!(str_of(e, "uniqueid").len() == 30, "uniqueid: {e}");
        anyhow::ensure!(s.topic == str_of(device, "subject"), "topic {} for {device}", s.topic);
        let seq = e["data"]["seq"].as_i64().unwrap_or(-1);
        let last = last_seq.entry(str_of(e, "deviceid").to_string()).or_insert(0);
        anyhow::ensure!(seq == *last + 1, "device {} out of order: {seq} after {last}", str_of(e, "deviceid"));
        *last = seq;
    }
    Ok(())
}

async fn every_device_event_arrives_with_its_attributes_in_order(protocol: Protocol) -> anyhow::Result<()> {
    let rt = Runtime::start(protocol)?;
    let gw = Gateway::start_with(|b| b + &uplinks(protocol, &[rt.addr], ""))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 4, 50)?;
    let stored = rt.wait_for(200, Duration::from_secs(30)).await;
    let events = gw.wait_for_events(200, Duration::from_secs(10))?;
    check_stored_events(protocol, &events, &stored)?;
    // The counter moves when the forwarder's whole batch is confirmed, a moment after the last store.
    assert_eq!(
        gw.wait_metric("meshgate_uplink_events_total{uplink=\"mesh\"}", 200.0, Duration::from_secs(5)).await?,
        200.0
    );
    assert_eq!(gw.metric("meshgate_uplink_dead_lettered_total{uplink=\"mesh\"}")?, 0.0);
    assert_eq!(gw.metric(&format!("meshgate_uplink_endpoint_up{{uplink=\"mesh\",endpoint=\"{}\"}}", rt.addr))?, 1.0);
    gw.wait_for_readyz(200, Duration::from_secs(5))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_event_reaches_a_grpc_runtime_with_its_attributes_in_order() -> anyhow::Result<()> {
    every_device_event_arrives_with_its_attributes_in_order(Protocol::Grpc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_event_reaches_an_http_runtime_with_its_attributes_in_order() -> anyhow::Result<()> {
    every_device_event_arrives_with_its_attributes_in_order(Protocol::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_event_reaches_a_tcp_runtime_with_its_attributes_in_order() -> anyhow::Result<()> {
    every_device_event_arrives_with_its_attributes_in_order(Protocol::Tcp).await
}

/// (device, seq) → the event ids stored for it, across runtimes.
fn stored_by_device(runtimes: &[&Runtime]) -> HashMap<(u64, u64), HashSet<String>> {
    let mut out: HashMap<(u64, u64), HashSet<String>> = HashMap::new();
    for rt in runtimes {
        for s in rt.stored() {
            let (d, seq) = (s.event["data"]["client"].as_u64(), s.event["data"]["seq"].as_u64());
            if let (Some(d), Some(seq)) = (d, seq) {
                out.entry((d, seq)).or_default().insert(str_of(&s.event, "id").to_string());
            }
        }
    }
    out
}

async fn a_runtime_killed_mid_stream_loses_nothing_and_is_readmitted(protocol: Protocol) -> anyhow::Result<()> {
    let mut a = Runtime::start(protocol)?;
    let b = Runtime::start(protocol)?;
    let gw = Gateway::start_with(|base| base + &uplinks(protocol, &[a.addr, b.addr], "eject_after_failures = 1\n"))?;
    let up_a = format!("meshgate_uplink_endpoint_up{{uplink=\"mesh\",endpoint=\"{}\"}}", a.addr);
    let devices =
        Publishers::start(gw.mqtt, 3, "dev", |d| format!("devices/dev-{d}/telemetry"), Duration::from_millis(3));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = a.stored().len();
    assert!(before_kill > 0, "runtime A took traffic before it died");
    a.kill();
    assert_eq!(gw.wait_metric(&up_a, 0.0, Duration::from_secs(5)).await?, 0.0, "A ejected");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.restart()?;
    assert_eq!(gw.wait_metric(&up_a, 1.0, Duration::from_secs(10)).await?, 1.0, "A re-admitted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.stored().len() <= before_kill && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.stored().len() > before_kill, "A takes traffic again after re-admission");
    let sent = devices.stop()?;

    // Every acknowledged (device, seq) is stored at least once; copies keep their id.
    let total: u64 = sent.iter().sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stored = stored_by_device(&[&a, &b]);
    while (stored.len() as u64) < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = stored_by_device(&[&a, &b]);
    }
    for (d, &n) in sent.iter().enumerate() {
        for seq in 1..=n {
            let ids = stored.get(&(d as u64, seq)).ok_or_else(|| anyhow::anyhow!("device {d} seq {seq} lost"))?;
            anyhow::ensure!(ids.len() == 1, "device {d} seq {seq} stored under several ids: {ids:?}");
        }
    }
    assert!(
        gw.metric(&format!("meshgate_uplink_endpoint_ejections_total{{uplink=\"mesh\",endpoint=\"{}\"}}", a.addr))?
            >= 1.0
    );
    println!("{protocol:?}: {total} acknowledged, A stored {}, B stored {}", a.stored().len(), b.stored().len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_runtime_killed_mid_stream_loses_nothing_and_is_readmitted() -> anyhow::Result<()> {
    a_runtime_killed_mid_stream_loses_nothing_and_is_readmitted(Protocol::Grpc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_runtime_killed_mid_stream_loses_nothing_and_is_readmitted() -> anyhow::Result<()> {
    a_runtime_killed_mid_stream_loses_nothing_and_is_readmitted(Protocol::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_runtime_killed_mid_stream_loses_nothing_and_is_readmitted() -> anyhow::Result<()> {
    a_runtime_killed_mid_stream_loses_nothing_and_is_readmitted(Protocol::Tcp).await
}

async fn a_busy_runtime_slows_the_gateway_without_loss(protocol: Protocol, rate_limit: bool) -> anyhow::Result<()> {
    let rt = Runtime::start(protocol)?;
    if rate_limit {
        rt.rate_limit(30);
    } else {
        rt.overload(30);
    }
    let gw = Gateway::start_with(|b| b + &uplinks(protocol, &[rt.addr], ""))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 2, 40)?;
    let stored = rt.wait_for(80, Duration::from_secs(30)).await;
    let events = gw.wait_for_events(80, Duration::from_secs(10))?;
    check_stored_events(protocol, &events, &stored)?;
    assert_eq!(rt.state().busy_answers.load(Ordering::SeqCst), 30);
    assert_eq!(gw.metric("meshgate_uplink_busy_total{uplink=\"mesh\"}")?, 30.0);
    assert!(gw.metric("meshgate_uplink_failures_total{uplink=\"mesh\"}")? >= 1.0, "batches were retried");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_runtime_answering_overload_or_rate_limit_slows_the_gateway_without_loss() -> anyhow::Result<()> {
    a_busy_runtime_slows_the_gateway_without_loss(Protocol::Grpc, false).await?;
    a_busy_runtime_slows_the_gateway_without_loss(Protocol::Grpc, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_runtime_answering_overload_or_rate_limit_slows_the_gateway_without_loss() -> anyhow::Result<()> {
    a_busy_runtime_slows_the_gateway_without_loss(Protocol::Http, false).await?;
    a_busy_runtime_slows_the_gateway_without_loss(Protocol::Http, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_runtime_answering_tps_overload_slows_the_gateway_without_loss() -> anyhow::Result<()> {
    a_busy_runtime_slows_the_gateway_without_loss(Protocol::Tcp, true).await
}

/// Publishes 20 numbered events from one device with a poison event after the 10th: a 2,000-character payload
/// (over the runtime's `maxEventSize` on HTTP and TCP) or an empty one (no data: gRPC status 7).
async fn a_poison_event_is_dead_lettered_while_the_rest_flows(protocol: Protocol) -> anyhow::Result<()> {
    let rt = Runtime::start(protocol)?;
    let gw = Gateway::start_with(|b| b + &uplinks(protocol, &[rt.addr], ""))?;
    let mut c = RawClient::connect(gw.mqtt, Version::V5, "dev-0", 30)?;
    let big = format!("\"{}\"", "x".repeat(2000));
    for n in 1..=21u16 {
        let payload = match n {
            11 if protocol == Protocol::Grpc => String::new(),
            11 => big.clone(),
            n => serde_json::json!({"client": 0, "seq": if n > 11 { n - 1 } else { n }}).to_string(),
        };
        c.send(&Packet::Publish(Publish {
            topic: "devices/dev-0/telemetry",
            qos: QoS::AtLeastOnce,
            packet_id: Some(n),
            payload: payload.as_bytes(),
            ..Publish::default()
        }))?;
        anyhow::ensure!(c.recv()? == Reply::Ack(4, n, ReasonCode::SUCCESS), "publish {n} not acknowledged");
    }
    let stored = rt.wait_for(20, Duration::from_secs(20)).await;
    let events = gw.wait_for_events(21, Duration::from_secs(10))?;
    let poison = events.get(10).cloned().ok_or_else(|| anyhow::anyhow!("21 events expected"))?;
    let good: Vec<Value> = events.iter().filter(|e| e["id"] != poison["id"]).cloned().collect();
    check_stored_events(protocol, &good, &stored)?;

    let path = gw.data_dir.join("mesh-dead-letter.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = meshgate_tests::read_events(&path)?;
        if !lines.is_empty() || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["event"]["id"], poison["id"]);
    assert_eq!(line["uplink"], "mesh");
    assert_eq!(line["endpoint"], rt.addr.to_string());
    let (code, words) = match protocol {
        Protocol::Grpc => (7, "body err"),
        Protocol::Http => (8, "event size exceeds the limit"),
        Protocol::Tcp => (1, "event size exceeds the limit"),
    };
    assert_eq!(line["code"], code, "{line}");
    assert!(str_of(line, "reason").contains(words), "{line}");
    let dead = gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"mesh\"}", 1.0, Duration::from_secs(5));
    assert_eq!(dead.await?, 1.0);
    let settled = gw.wait_metric("meshgate_uplink_events_total{uplink=\"mesh\"}", 21.0, Duration::from_secs(5)).await?;
    assert_eq!(settled, 21.0, "the poison event is settled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_body_error_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    a_poison_event_is_dead_lettered_while_the_rest_flows(Protocol::Grpc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_event_over_max_event_size_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    a_poison_event_is_dead_lettered_while_the_rest_flows(Protocol::Http).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_event_over_max_event_size_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    a_poison_event_is_dead_lettered_while_the_rest_flows(Protocol::Tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_session_heartbeats_and_follows_goodbye_and_redirect() -> anyhow::Result<()> {
    let a = Runtime::start(Protocol::Tcp)?;
    let b = Runtime::start(Protocol::Tcp)?;
    let gw = Gateway::start_with(|base| base + &uplinks(Protocol::Tcp, &[a.addr], "heartbeat_interval_ms = 200\n"))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 1, 10)?;
    assert_eq!(a.wait_for(10, Duration::from_secs(10)).await.len(), 10);
    let hellos = a.state().hellos.load(Ordering::SeqCst);
    assert!(hellos >= 1);
    let beats = a.state().heartbeats.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(a.state().heartbeats.load(Ordering::SeqCst) >= beats + 3, "a heartbeat every 200 ms");

    // SERVER_GOODBYE: the session ends; the next publish opens a new one with a new HELLO.
    a.say_goodbye();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = gw.mqtt;
    std::thread::spawn(move || publish_numbered(addr, 1, 10)).join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert_eq!(a.wait_for(20, Duration::from_secs(10)).await.len(), 20);
    assert!(a.state().hellos.load(Ordering::SeqCst) > hellos, "re-HELLO after goodbye");

    // REDIRECT_TO_CLIENT: the next session goes to the runtime named.
    a.redirect(b.addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::thread::spawn(move || publish_numbered(addr, 2, 10)).join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert_eq!(b.wait_for(10, Duration::from_secs(10)).await.len(), 10, "events follow the redirect");
    assert_eq!(a.stored().len(), 20);
    assert!(b.state().hellos.load(Ordering::SeqCst) >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_batch_publish_is_an_explicit_opt_in_that_delivers_everything() -> anyhow::Result<()> {
    let rt = Runtime::start(Protocol::Grpc)?;
    let gw = Gateway::start_with(|b| b + &uplinks(Protocol::Grpc, &[rt.addr], "batch_publish = true\n"))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 3, 30)?;
    let stored = rt.wait_for(90, Duration::from_secs(20)).await;
    let events = gw.wait_for_events(90, Duration::from_secs(10))?;
    check_stored_events(Protocol::Grpc, &events, &stored)?;
    assert!(rt.state().batches.load(Ordering::SeqCst) >= 1, "batchPublish was used");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_uplink_spreads_events_by_weight() -> anyhow::Result<()> {
    let a = Runtime::start(Protocol::Http)?;
    let b = Runtime::start(Protocol::Http)?;
    let gw = Gateway::start_with(|base| {
        base + &uplinks(Protocol::Http, &[a.addr, b.addr], "policy = \"weighted\"\nweights = [3, 1]\n")
    })?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 4, 50)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.stored().len() + b.stored().len() < 200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (na, nb) = (a.stored().len(), b.stored().len());
    assert_eq!(na + nb, 200);
    assert_eq!((na, nb), (150, 50), "smooth weighted round-robin 3:1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_runtime_is_ejected_and_its_events_go_to_another() -> anyhow::Result<()> {
    // A stalls: it answers heartbeats but never answers (or stores) a publish, like a runtime whose storage hangs.
    let a = Runtime::start(Protocol::Grpc)?;
    let b = Runtime::start(Protocol::Grpc)?;
    a.stall(true);
    let gw = Gateway::start_with(|base| {
        base + &uplinks(Protocol::Grpc, &[a.addr, b.addr], "timeout_ms = 300\neject_after_failures = 1\n")
    })?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 2, 20)?;
    let stored = b.wait_for(40, Duration::from_secs(20)).await;
    let events = gw.wait_for_events(40, Duration::from_secs(10))?;
    check_stored_events(Protocol::Grpc, &events, &stored)?;
    assert!(a.stored().is_empty());
    let ejections = format!("meshgate_uplink_endpoint_ejections_total{{uplink=\"mesh\",endpoint=\"{}\"}}", a.addr);
    assert!(gw.metric(&ejections)? >= 1.0, "the stalled runtime was ejected");
    Ok(())
}
