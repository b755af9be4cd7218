//! The HTTP uplink (the CloudEvents HTTP binding) against an independent receiver: `python/cloudevents_receiver.py`,
//! which parses every request with the CloudEvents Python SDK. Binary, structured and batch modes; a receiver
//! that answers 503 with Retry-After before it takes events; a 400 that dead-letters; HTTPS with a test CA.

use std::collections::HashMap;
use std::time::Duration;

use meshgate_tests::Gateway;
use meshgate_tests::cloudevents_receiver::Receiver;
use serde_json::Value;

fn http_uplink(url: &str, extra: &str) -> String {
    format!(
        "\n[[uplinks]]\nname = \"hook\"\nkind = \"http\"\nurl = \"{url}\"\ntimeout_ms = 3000\n{extra}\n[forwarder]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n"
    )
}

/// Per device, the `seq`s delivered (2xx) in arrival order.
fn delivered_order(events: &[Value]) -> HashMap<u64, Vec<u64>> {
    let mut order: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in events.iter().filter(|e| e["status"].as_u64().is_some_and(|s| s < 300)) {
        let client = e["data"]["client"].as_u64().unwrap_or(u64::MAX);
        order.entry(client).or_default().push(e["data"]["seq"].as_u64().unwrap_or(0));
    }
    order
}

async fn devices_reach_the_receiver(mode: &str) -> anyhow::Result<()> {
    let receiver = Receiver::start(&[])?;
    let url = format!("http://127.0.0.1:{}/events", receiver.port);
    let extra = format!(
        "mode = \"{mode}\"\nmax_batch = 50\nbearer_token = \"s3cret\"\nheaders = {{ x-api-key = \"edge-7\" }}\n"
    );
    let gw = Gateway::start_with(|b| b + &http_uplink(&url, &extra))?;
    meshgate_tests::raw::publish_numbered_from(gw.mqtt, 5, 100)?;
    let events = receiver.until_delivered(500, Duration::from_secs(30))?;
    assert_eq!(events.len(), 500, "each event once: {}", events.len());
    for e in &events {
        assert_eq!(e["mode"], mode);
        assert_eq!(e["type"], "io.meshgate.mqtt.message");
        assert_eq!(e["authorization"], "Bearer s3cret");
        assert_eq!(e["apikey"], "edge-7");
    }
    let order = delivered_order(&events);
    for client in 0..5 {
        assert_eq!(order.get(&client), Some(&(1..=100).collect::<Vec<_>>()), "order of device {client}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_events_are_parsed_by_the_cloudevents_sdk_in_each_devices_order() -> anyhow::Result<()> {
    devices_reach_the_receiver("binary").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_events_are_parsed_by_the_cloudevents_sdk_in_each_devices_order() -> anyhow::Result<()> {
    devices_reach_the_receiver("structured").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_events_are_parsed_by_the_cloudevents_sdk_in_each_devices_order() -> anyhow::Result<()> {
    devices_reach_the_receiver("batch").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_503_with_retry_after_is_waited_for_and_loses_nothing() -> anyhow::Result<()> {
    let receiver = Receiver::start(&["--answers", "503:2,503:1"])?;
    let url = format!("http://127.0.0.1:{}/", receiver.port);
    let gw = Gateway::start_with(|b| b + &http_uplink(&url, "mode = \"batch\"\n"))?;
    meshgate_tests::publish_numbered(gw.mqtt, 1, 20)?;
    let events = receiver.until_delivered(20, Duration::from_secs(30))?;
    let statuses: Vec<u64> = events.iter().map(|e| e["status"].as_u64().unwrap_or(0)).collect();
    assert_eq!(statuses.first(), Some(&503), "{statuses:?}");
    let first_503 = events.iter().find(|e| e["status"] == 503).and_then(|e| e["t"].as_f64()).unwrap_or(0.0);
    let second_503 = events.iter().rev().find(|e| e["status"] == 503).and_then(|e| e["t"].as_f64()).unwrap_or(0.0);
    let first_ok = events.iter().find(|e| e["status"] == 200).and_then(|e| e["t"].as_f64()).unwrap_or(0.0);
    assert!(second_503 - first_503 >= 1.9, "Retry-After: 2 honoured ({:.2} s)", second_503 - first_503);
    assert!(first_ok - second_503 >= 0.9, "Retry-After: 1 honoured ({:.2} s)", first_ok - second_503);
    assert_eq!(delivered_order(&events).get(&1), Some(&(1..=20).collect::<Vec<_>>()), "all 20, in order");
    assert_eq!(gw.metric("meshgate_uplink_busy_total{uplink=\"hook\"}")?, 2.0);
    assert_eq!(gw.metric("meshgate_uplink_dead_lettered_total{uplink=\"hook\"}")?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_answers_400_is_dead_lettered_while_the_rest_flows() -> anyhow::Result<()> {
    for mode in ["binary", "batch"] {
        let receiver = Receiver::start(&["--refuse", "poison"])?;
        let url = format!("http://127.0.0.1:{}/", receiver.port);
        let gw = Gateway::start_with(|b| b + &http_uplink(&url, &format!("mode = \"{mode}\"\n")))?;
        let (device, _) =
            meshgate_tests::clients::Client::connect(gw.mqtt, &meshgate_tests::clients::Options::new(true, "dev-p"))
                .await?;
        device.publish("devices/dev-p/t", 1, false, "{\"n\":1}").await?;
        device.publish("devices/dev-p/t", 1, false, "{\"n\":2,\"x\":\"poison\"}").await?;
        device.publish("devices/dev-p/t", 1, false, "{\"n\":3}").await?;
        let events = receiver.until_delivered(2, Duration::from_secs(20))?;
        let delivered: Vec<u64> =
            events.iter().filter(|e| e["status"] == 200).filter_map(|e| e["data"]["n"].as_u64()).collect();
        assert_eq!(delivered, [1, 3], "{mode}: the refused event is left out, the rest in order: {events:?}");
        gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"hook\"}", 1.0, Duration::from_secs(10)).await?;
        let letters = std::fs::read_to_string(gw.data_dir.join("hook-dead-letter.jsonl"))?;
        let lines: Vec<Value> = letters.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 1, "{mode}: only the poison event: {lines:?}");
        assert_eq!(lines[0]["code"], 400);
        assert_eq!(lines[0]["event"]["data"]["n"], 2);
        assert!(lines[0]["reason"].as_str().unwrap_or_default().contains("refused by the test receiver"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_delivers_and_an_unknown_ca_is_refused() -> anyhow::Result<()> {
    let pki = meshgate_tests::pki::Pki::new()?;
    let cert = pki.server_cert.display().to_string();
    let key = pki.server_key.display().to_string();
    let receiver = Receiver::start(&["--tls", &cert, &key])?;
    let url = format!("https://localhost:{}/events", receiver.port);
    let tls = format!("tls = {{ ca_file = \"{}\" }}\n", pki.ca_file.display());
    let gw = Gateway::start_with(|b| b + &http_uplink(&url, &tls))?;
    meshgate_tests::publish_numbered(gw.mqtt, 2, 10)?;
    let events = receiver.until_delivered(10, Duration::from_secs(20))?;
    assert_eq!(delivered_order(&events).get(&2), Some(&(1..=10).collect::<Vec<_>>()));
    drop(gw);

    // Without the test CA (the web roots only), the receiver's certificate is not trusted: nothing is delivered
    // and the events wait in the spool, the uplink reported unhealthy.
    let gw = Gateway::start_with(|b| b + &http_uplink(&url, ""))?;
    meshgate_tests::publish_numbered(gw.mqtt, 3, 3)?;
    gw.wait_metric("meshgate_uplink_failures_total{uplink=\"hook\"}", 1.0, Duration::from_secs(10)).await?;
    assert_eq!(gw.metric("meshgate_uplink_events_total{uplink=\"hook\"}")?, 0.0);
    assert!(receiver.events.try_recv().is_err(), "nothing reached the receiver over an untrusted connection");
    Ok(())
}

/// A device's structured event whose `datacontenttype` parameters are not ASCII (valid for CloudEvents, which
/// refuses only control characters) cannot be a binary-mode header: it is set aside, not retried for ever, and the
/// next event flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_that_cannot_be_a_header_is_dead_lettered_not_retried_for_ever() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[])?;
    let url = format!("http://127.0.0.1:{}/", receiver.port);
    let gw = Gateway::start_with(|b| b + &http_uplink(&url, "mode = \"binary\"\n"))?;
    let (device, _) =
        meshgate_tests::clients::Client::connect(gw.mqtt, &meshgate_tests::clients::Options::new(false, "dev-h"))
            .await?;
    let forged = serde_json::json!({
        "specversion": "1.0", "id": "evil-1", "source": "/x", "type": "t",
        "datacontenttype": "application/json; name=\u{e9}", "data": {"n": 1}
    });
    device.publish("devices/dev-h/t", 1, false, &forged.to_string()).await?;
    device.publish("devices/dev-h/t", 1, false, "{\"n\":2}").await?;
    let events = receiver.until_delivered(1, Duration::from_secs(20))?;
    assert_eq!(events[0]["data"]["n"], 2);
    assert!(events.iter().all(|e| e.get("error").is_none()));
    gw.wait_metric("meshgate_uplink_dead_lettered_total{uplink=\"hook\"}", 1.0, Duration::from_secs(10)).await?;
    let letters = std::fs::read_to_string(gw.data_dir.join("hook-dead-letter.jsonl"))?;
    assert!(letters.contains("evil-1") && letters.contains("cannot be an HTTP header value"), "{letters}");
    Ok(())
}
