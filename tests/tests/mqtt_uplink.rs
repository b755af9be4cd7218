//! The upstream MQTT uplink against the real Mosquitto on 127.0.0.1:1883 (`.ci/setup` starts it; the tests fail
//! loudly without it): devices → meshgate → Mosquitto → a subscriber of the upstream topics that reads each
//! message as a CloudEvent (binary mode on MQTT 5, structured on 3.1.1), and an outage between meshgate and the
//! broker (refused, then silent) that loses nothing acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use meshgate_protocols::cloudevents::{CloudEvent, Data, decode_mqtt};
use meshgate_protocols::mqtt::{Properties, PropertyList, UserProperty, Version};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Message, Options};

const BROKER: &str = "127.0.0.1:1883";

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn mqtt_uplink(uri: &str, prefix: &str, extra: &str) -> String {
    format!(
        "\n[[uplinks]]\nname = \"cloud\"\nkind = \"mqtt\"\nuri = \"{uri}\"\nclient_id = \"up-{prefix}\"\ntopic = \"{prefix}/{{subject}}\"\ntimeout_ms = 2000\nkeep_alive_secs = 5\n{extra}\n[forwarder]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n"
    )
}

/// A subscriber of `prefix/#` on the real broker, as MQTT 5 or 3.1.1.
async fn subscriber(v5: bool, prefix: &str) -> anyhow::Result<Client> {
    let addr = BROKER.parse()?;
    let (mut client, _) = Client::connect(addr, &Options::new(v5, &format!("sub-{prefix}")))
        .await
        .map_err(|e| anyhow::anyhow!("Mosquitto must run on {BROKER} for this test: {e}"))?;
    anyhow::ensure!(client.subscribe(&[(&format!("{prefix}/#"), 1)]).await? == [1], "QoS 1 granted");
    Ok(client)
}

/// Reads a received message as a CloudEvent, as the MQTT binding lays it out.
fn to_event(m: &Message, v5: bool) -> anyhow::Result<CloudEvent> {
    let (content_type, user): (Option<String>, Vec<(String, String)>) = match &m.properties {
        Some(p) => (p.content_type.clone(), p.user_properties.clone()),
        None => (None, Vec::new()),
    };
    let user: Vec<UserProperty<'_>> = user.iter().map(|(name, value)| UserProperty { name, value }).collect();
    let properties = Properties {
        content_type: content_type.as_deref(),
        user_properties: PropertyList::new(&user),
        ..Properties::default()
    };
    let version = if v5 { Version::V5 } else { Version::V311 };
    decode_mqtt(version, &properties, m.payload.as_bytes())?.ok_or_else(|| anyhow::anyhow!("not a CloudEvent: {m:?}"))
}

fn numbered(e: &CloudEvent) -> Option<(u64, u64)> {
    let Some(Data::Json(d)) = &e.data else { return None };
    Some((d["client"].as_u64()?, d["seq"].as_u64()?))
}

async fn devices_reach_the_upstream_broker(v5: bool) -> anyhow::Result<()> {
    let prefix = format!("mgup-{}", unique());
    let mut sub = subscriber(v5, &prefix).await?;
    let version = if v5 { "version = \"5\"\n" } else { "version = \"3.1.1\"\n" };
    let gw = Gateway::start_with(|b| b + &mqtt_uplink(&format!("mqtt://{BROKER}"), &prefix, version))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 5, 100)?;
    let mut order: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut received = 0;
    while received < 500 {
        let m =
            sub.next_publish(Duration::from_secs(20)).await.ok_or_else(|| anyhow::anyhow!("only {received} of 500"))?;
        let binary = m.properties.as_ref().is_some_and(|p| p.user_properties.iter().any(|(k, _)| k == "specversion"));
        assert_eq!(binary, v5, "binary mode on MQTT 5, structured on 3.1.1: {m:?}");
        let e = to_event(&m, v5)?;
        assert_eq!(e.ty, "io.meshgate.mqtt.message");
        let (client, seq) = numbered(&e).ok_or_else(|| anyhow::anyhow!("data {e:?}"))?;
        assert_eq!(m.topic, format!("{prefix}/devices/dev-{client}/telemetry"));
        assert_eq!(e.extensions.get("bridge").map(|v| v.to_canonical_string()).as_deref(), Some("cloud"), "loop mark");
        order.entry(client).or_default().push(seq);
        received += 1;
    }
    for client in 0..5 {
        assert_eq!(order.get(&client), Some(&(1..=100).collect::<Vec<_>>()), "order of device {client}");
    }
    assert!(sub.drain(Duration::from_millis(500)).await.is_empty(), "nothing twice");
    assert_eq!(gw.metric("meshgate_uplink_events_total{uplink=\"cloud\"}")?, 500.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_a_subscriber_of_the_upstream_broker_in_binary_mode_on_mqtt5() -> anyhow::Result<()> {
    devices_reach_the_upstream_broker(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_a_subscriber_of_the_upstream_broker_in_structured_mode_on_mqtt311() -> anyhow::Result<()> {
    devices_reach_the_upstream_broker(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_refused_then_silent_loses_nothing_acknowledged() -> anyhow::Result<()> {
    for qos in [1, 2] {
        let prefix = format!("mgup-outage-{qos}-{}", unique());
        let mut sub = subscriber(true, &prefix).await?;
        // The subscriber reads all along, so the broker never queues (or drops) for it.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(m) = sub.next_publish(Duration::from_secs(30)).await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let proxy = meshgate_tests::proxy::FaultProxy::start(BROKER.parse()?).await?;
        let extra = format!("qos = {qos}\n");
        let gw = Gateway::start_with(|b| b + &mqtt_uplink(&format!("mqtt://{}", proxy.addr), &prefix, &extra))?;
        let devices = meshgate_tests::raw::Publishers::start(
            gw.mqtt,
            2,
            &format!("up-outage-{qos}"),
            |d| format!("devices/o{d}/t"),
            Duration::from_millis(3),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.black_hole();
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.heal();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acknowledged = devices.acknowledged();
        let total: u64 = acknowledged.iter().sum();
        assert!(total > 500, "devices kept publishing through the outage: {acknowledged:?}");

        let mut first_seen: HashMap<(u64, u64), String> = HashMap::new();
        let mut order: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while (first_seen.len() as u64) < total && tokio::time::Instant::now() < deadline {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await else { continue };
            let e = to_event(&m, true)?;
            let key = numbered(&e).ok_or_else(|| anyhow::anyhow!("data {e:?}"))?;
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
        for (client, &n) in acknowledged.iter().enumerate() {
            let seqs = order.get(client).cloned().unwrap_or_default();
            assert_eq!(seqs.iter().filter(|s| **s <= n).count() as u64, n, "QoS {qos}: device {client} lost messages");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "QoS {qos}: device {client} out of order");
        }
        let connects = gw.metric("meshgate_uplink_connects_total{uplink=\"cloud\"}")?;
        assert!(connects >= 2.0, "the uplink reconnected after the outage: {connects}");
        eprintln!("QoS {qos} outage: {total} acknowledged, all delivered upstream; {connects} connections");
        reader.abort();
    }
    Ok(())
}

/// The upstream broker here is a second meshgate, whose ACL refuses one topic with MQTT 5's 0x87.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_upstream_broker_refuses_with_0x87_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    let rule = "\n[[auth.acl]]\nuser = \"*\"\ndeny_publish = [\"devices/locked/#\"]\n";
    let upstream = Gateway::start_with(|b| b + rule)?;
    let uri = format!("mqtt://{}", upstream.mqtt);
    let uplink =
        format!("\n[[uplinks]]\nname = \"cloud\"\nkind = \"mqtt\"\nuri = \"{uri}\"\nclient_id = \"up-{}\"\n", unique());
    let gw = Gateway::start_with(|b| b + &uplink)?;
    let (device, _) = Client::connect(gw.mqtt, &Options::new(true, "dev-x")).await?;
    device.publish("devices/locked/t", 1, false, "{\"n\":1}").await?;
    device.publish("devices/open/t", 1, false, "{\"n\":2}").await?;
    gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"cloud\"}", 1.0, Duration::from_secs(20)).await?;
    let taken = upstream.wait_for_events(1, Duration::from_secs(20))?;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["subject"], "devices/open/t");
    assert_eq!(taken[0]["bridge"], "cloud", "the loop mark travels with the event");
    let letters = std::fs::read_to_string(gw.data_dir.join("cloud-dead-letter.jsonl"))?;
    let lines: Vec<serde_json::Value> = letters.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["code"], 0x87);
    assert_eq!(lines[0]["event"]["subject"], "devices/locked/t");
    Ok(())
}

/// `mqtts://` with a client certificate: the upstream (a second meshgate) requires one from its CA and names the
/// device by it; its ACL lets only that name publish. The uplink trusts the test CA through `tls.ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_reaches_an_upstream_that_requires_one() -> anyhow::Result<()> {
    let pki = meshgate_tests::pki::Pki::new()?;
    let acl = "\n[[auth.acl]]\nuser = \"site-7\"\nallow_publish = [\"devices/#\"]\n";
    let upstream = Gateway::start_with(|b| {
        let b = b
            .replace("allow_anonymous = true", "allow_anonymous = false\nacl_default = \"deny\"")
            .replace("[listeners.mqtt]\n", "[listeners.mqtt]\ntls_bind = \"127.0.0.1:0\"\n");
        format!("{b}{}{acl}", pki.tls_table(true))
    })?;
    let port = upstream.listener("mqtts")?.port();
    let (cert, key) = pki.client("site-7", false, false)?;
    let tls = format!(
        "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\n",
        pki.ca_file.display(),
        cert.display(),
        key.display()
    );
    let uplink = format!(
        "\n[[uplinks]]\nname = \"cloud\"\nkind = \"mqtt\"\nuri = \"mqtts://localhost:{port}\"\nclient_id = \"up-{}\"\n{tls}",
        unique()
    );
    let gw = Gateway::start_with(|b| b + &uplink)?;
    meshgate_tests::publish_numbered(gw.mqtt, 4, 5)?;
    let taken = upstream.wait_for_events(5, Duration::from_secs(20))?;
    let seqs: Vec<u64> = taken.iter().filter_map(|e| e["data"]["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "over mqtts, in order");
    assert_eq!(gw.metric("meshgate_uplink_events_total{uplink=\"cloud\"}")?, 5.0);

    // Without the client certificate the upstream refuses the connection: nothing is confirmed, events wait.
    let anonymous = format!(
        "\n[[uplinks]]\nname = \"cloud\"\nkind = \"mqtt\"\nuri = \"mqtts://localhost:{port}\"\nclient_id = \"up-{}\"\ntls = {{ ca_file = \"{}\" }}\ntimeout_ms = 1000\n",
        unique(),
        pki.ca_file.display()
    );
    let gw = Gateway::start_with(|b| b + &anonymous)?;
    meshgate_tests::publish_numbered(gw.mqtt, 5, 2)?;
    gw.wait_metric("meshgate_uplink_failures_total{uplink=\"cloud\"}", 1.0, Duration::from_secs(15)).await?;
    assert_eq!(gw.metric("meshgate_uplink_events_total{uplink=\"cloud\"}")?, 0.0);
    Ok(())
}
