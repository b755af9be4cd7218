//! One trace from the device to the mesh: a device's `traceparent` (an MQTT 5 user property) is continued, a
//! message without one starts a trace, and the spans (`ingest`, `forward`) reach an OTLP receiver of the test's
//! own with the right parents; the HTTP uplink's receiver (the CloudEvents Python SDK) sees the same trace in the
//! event and in W3C's header, and a local MQTT 5 subscriber gets the gateway's span as its parent.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::otlp::{self, ReceivedSpan, Spans};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;

const DEVICE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DEVICE_SPAN: &str = "00f067aa0ba902b7";

/// The trace id and parent span id of a `traceparent`.
fn split(traceparent: &str) -> Result<(String, String, String)> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace, parent, flags] = parts[..] else { bail!("not a traceparent: {traceparent}") };
    if version != "00" || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        bail!("not a traceparent: {traceparent}");
    }
    Ok((trace.to_string(), parent.to_string(), flags.to_string()))
}

/// The HTTP receiver's report of the event whose data is `payload`.
fn delivered<'a>(events: &'a [Value], payload: &str) -> Result<&'a Value> {
    events.iter().find(|e| e["data"]["n"] == payload).with_context(|| format!("{payload} not received: {events:?}"))
}

fn span<'a>(spans: &'a [ReceivedSpan], name: &str, trace: &str) -> Result<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.name == name && s.trace_id == trace)
        .with_context(|| format!("no {name} span in trace {trace}: {spans:#?}"))
}

async fn one_trace_from_device_to_mesh(protocol: &str, collector: std::net::SocketAddr, spans: Spans) -> Result<()> {
    let receiver = meshgate_tests::cloudevents_receiver::Receiver::start(&[])?;
    let hook = format!("http://127.0.0.1:{}/events", receiver.port);
    let endpoint = format!("http://{collector}");
    let gw = Gateway::start_with(|base| {
        format!(
            "{base}\n[tracing]\notlp_endpoint = \"{endpoint}\"\notlp_protocol = \"{protocol}\"\nsample_ratio = 1.0\nexport_interval_ms = 100\n\n[[uplinks]]\nname = \"hook\"\nkind = \"http\"\nurl = \"{hook}\"\nmode = \"binary\"\n"
        )
    })?;

    // A local MQTT 5 subscriber: it gets the gateway's span as the parent.
    let (mut subscriber, _) = Client::connect(gw.mqtt, &Options::new(true, "dashboard")).await?;
    subscriber.subscribe(&[("plant/#", 1)]).await?;
    let (device, _) = Client::connect(gw.mqtt, &Options::new(true, "pump-7")).await?;
    let traced = PublishProperties {
        user_properties: vec![
            ("traceparent".into(), format!("00-{DEVICE_TRACE}-{DEVICE_SPAN}-01")),
            ("tracestate".into(), "vendor=pump".into()),
        ],
        ..PublishProperties::default()
    };
    device.publish_v5("plant/pump-7/flow", 1, false, r#"{"n":"traced"}"#, traced).await?;
    device.publish("plant/pump-7/flow", 1, false, r#"{"n":"plain"}"#).await?;

    let events = receiver.until_delivered(2, Duration::from_secs(20))?;
    let traced_event = delivered(&events, "traced")?;
    let plain_event = delivered(&events, "plain")?;

    // The device's trace is continued; the plain message got a trace of its own.
    let (trace, forward_a, flags) = split(traced_event["traceparent"].as_str().context("no traceparent extension")?)?;
    assert_eq!(trace, DEVICE_TRACE, "the device's trace id reaches the mesh");
    assert_eq!(flags, "01");
    assert_eq!(traced_event["traceparent_header"], traced_event["traceparent"], "W3C's header says the same");
    let (plain_trace, forward_b, _) = split(plain_event["traceparent"].as_str().context("no traceparent")?)?;
    assert_ne!(plain_trace, DEVICE_TRACE);
    assert_eq!(plain_event["traceparent_header"], plain_event["traceparent"]);

    let all = spans
        .until(Duration::from_secs(20), |s| {
            ["ingest", "forward"].iter().all(|n| {
                s.iter().any(|x| x.name == *n && x.trace_id == DEVICE_TRACE)
                    && s.iter().any(|x| x.name == *n && x.trace_id == plain_trace)
            })
        })
        .await?;
    for (trace, device_parent, forwarded_as) in
        [(DEVICE_TRACE, DEVICE_SPAN, &forward_a), (plain_trace.as_str(), "", &forward_b)]
    {
        let ingest = span(&all, "ingest", trace)?;
        let forward = span(&all, "forward", trace)?;
        assert_eq!(ingest.parent_span_id, device_parent, "ingest's parent is the device's span (or none)");
        assert_eq!(forward.parent_span_id, ingest.span_id, "forward is ingest's child");
        assert_eq!(&forward.span_id, forwarded_as, "the mesh's event names the forward span as its parent");
        assert_eq!(ingest.service, "meshgate");
        assert_eq!(ingest.attributes["messaging.system"], "mqtt");
        assert_eq!(ingest.attributes["messaging.client.id"], "pump-7");
        assert_eq!(ingest.attributes["messaging.destination.name"], "plant/pump-7/flow");
        assert!(ingest.attributes["messaging.message.body.size"].parse::<u64>()? > 0);
        assert_eq!(forward.attributes["meshgate.uplink"], "hook");
        assert_eq!(forward.attributes["server.address"], hook);
        assert_eq!(forward.attributes["meshgate.retries"], "0");
        assert!(ingest.end_ns >= ingest.start_ns && forward.start_ns >= ingest.start_ns);
    }

    // The local subscriber's copy carries the ingest span as the parent, and the device's tracestate.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = subscriber.next_publish(Duration::from_secs(10)).await.context("the subscriber got too few")?;
        seen.push(m);
    }
    let traced_copy = seen.iter().find(|m| m.payload.contains("\"traced\"")).context("traced copy")?;
    let user = &traced_copy.properties.as_ref().context("no properties")?.user_properties;
    let value = |k: &str| user.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (trace, parent, _) = split(&value("traceparent").context("no traceparent user property")?)?;
    assert_eq!(trace, DEVICE_TRACE);
    assert_eq!(parent, span(&all, "ingest", DEVICE_TRACE)?.span_id);
    assert_eq!(value("tracestate").as_deref(), Some("vendor=pump"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_trace_reaches_the_mesh_through_ingest_and_forward_spans_exported_over_grpc() -> Result<()> {
    let (collector, spans) = otlp::grpc_receiver().await?;
    one_trace_from_device_to_mesh("grpc", collector, spans).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_trace_is_exported_over_otlp_http_protobuf() -> Result<()> {
    let (collector, spans) = otlp::http_receiver().await?;
    one_trace_from_device_to_mesh("http/protobuf", collector, spans).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_a_devices_context_passes_through_and_none_is_invented() -> Result<()> {
    let receiver = meshgate_tests::cloudevents_receiver::Receiver::start(&[])?;
    let hook = format!("http://127.0.0.1:{}/events", receiver.port);
    let gw = Gateway::start_with(|base| {
        format!("{base}\n[[uplinks]]\nname = \"hook\"\nkind = \"http\"\nurl = \"{hook}\"\nmode = \"structured\"\n")
    })?;
    let (device, _) = Client::connect(gw.mqtt, &Options::new(true, "pump-8")).await?;
    let context = format!("00-{DEVICE_TRACE}-{DEVICE_SPAN}-01");
    let traced = PublishProperties {
        user_properties: vec![("traceparent".into(), context.clone())],
        ..PublishProperties::default()
    };
    device.publish_v5("plant/pump-8/flow", 1, false, r#"{"n":"traced"}"#, traced).await?;
    let bad = PublishProperties {
        user_properties: vec![("traceparent".into(), "00-not-a-context".into())],
        ..PublishProperties::default()
    };
    device.publish_v5("plant/pump-8/flow", 1, false, r#"{"n":"malformed"}"#, bad).await?;
    device.publish("plant/pump-8/flow", 1, false, r#"{"n":"plain"}"#).await?;
    let events = receiver.until_delivered(3, Duration::from_secs(20))?;
    let traced = delivered(&events, "traced")?;
    assert_eq!(traced["traceparent"], context.as_str(), "kept exactly as the device sent it");
    assert_eq!(traced["traceparent_header"], context.as_str());
    for quiet in ["malformed", "plain"] {
        let e = delivered(&events, quiet)?;
        assert!(e["traceparent"].is_null() && e["traceparent_header"].is_null(), "{quiet}: {e}");
    }
    Ok(())
}
