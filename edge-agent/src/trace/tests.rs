use super::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn event() -> CloudEvent {
    CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() }
}

fn context(e: &CloudEvent) -> TraceParent {
    event_context(e).expect("a valid context").0
}

fn at() -> Ingest<'static> {
    Ingest { protocol: "mqtt", client: "dev-1", topic: "t/1", bytes: Some(3) }
}

#[test]
fn off_leaves_every_event_as_it_came() {
    let tracing = Tracing::off();
    let mut e = event();
    assert!(tracing.ingest(&mut e, at()).is_none());
    assert_eq!(e, event(), "no context is started when tracing is off");
    e.extensions.insert(TRACEPARENT.into(), ExtensionValue::String(PARENT.into()));
    let before = e.clone();
    assert!(tracing.forward(&mut e, "u", "x").is_none());
    assert_eq!(e, before);
}

#[tokio::test]
async fn each_step_is_a_child_of_the_events_context_and_becomes_it() {
    // A collector nobody listens on: spans are recorded and their export fails quietly.
    let config = TracingConfig {
        otlp_endpoint: Some("http://127.0.0.1:9".into()),
        sample_ratio: 0.0,
        ..TracingConfig::default()
    };
    let tracing = Tracing::start(&config, "test").unwrap();
    let mut e = event();
    e.extensions.insert(TRACEPARENT.into(), ExtensionValue::String(PARENT.into()));
    e.extensions.insert(TRACESTATE.into(), ExtensionValue::String("rojo=1".into()));
    let ingest = tracing.ingest(&mut e, at()).expect("a sampled parent is recorded whatever the ratio");
    let after_ingest = context(&e);
    assert_eq!(after_ingest.trace_id, TraceParent::parse(PARENT).unwrap().trace_id);
    assert_ne!(after_ingest.parent_id, TraceParent::parse(PARENT).unwrap().parent_id);
    assert!(after_ingest.sampled());
    assert_eq!(event_context(&e).unwrap().1, Some("rojo=1"), "tracestate passes on");
    drop(ingest);
    let forward = tracing.forward(&mut e, "mesh", "http://mesh").expect("recorded");
    assert_eq!(context(&e).trace_id, after_ingest.trace_id);
    assert_ne!(context(&e).parent_id, after_ingest.parent_id);
    forward.end_with(vec![]);

    // Without a context: a new trace, not recorded at ratio 0, still propagated (flags 00).
    let mut fresh = event();
    assert!(tracing.ingest(&mut fresh, at()).is_none());
    assert!(!context(&fresh).sampled());
    // A malformed context is replaced, not kept.
    let mut bad = event();
    bad.extensions.insert(TRACEPARENT.into(), ExtensionValue::String("00-zz".into()));
    tracing.ingest(&mut bad, at());
    assert!(event_context(&bad).is_some());
    tracing.shutdown().await;
}

#[test]
fn a_context_beside_a_plain_message_is_adopted_only_when_valid() {
    let mut e = event();
    adopt_context(&mut e, |k| match k {
        TRACEPARENT => Some(PARENT),
        TRACESTATE => Some("congo=t61rcWkgMzE"),
        _ => None,
    });
    assert_eq!(context(&e), TraceParent::parse(PARENT).unwrap());
    let headers: Vec<_> = native_headers(&e).collect();
    assert_eq!(headers, [(TRACEPARENT, PARENT.to_string()), (TRACESTATE, "congo=t61rcWkgMzE".to_string())]);

    let mut e = event();
    adopt_context(&mut e, |k| (k == TRACEPARENT).then_some("not a context\r\nx: y"));
    assert!(e.extensions.is_empty());
    assert_eq!(native_headers(&e).count(), 0);
    // A malformed extension is never turned into a header.
    e.extensions.insert(TRACEPARENT.into(), ExtensionValue::String("00-evil\r\n".into()));
    assert_eq!(native_headers(&e).count(), 0);
}

#[test]
fn the_section_refuses_what_start_could_not_use() {
    let ok = TracingConfig { otlp_endpoint: Some("http://127.0.0.1:4317".into()), ..TracingConfig::default() };
    assert!(ok.validate().is_ok());
    for (bad, key) in [
        (TracingConfig { sample_ratio: 1.5, ..ok.clone() }, "sample_ratio"),
        (TracingConfig { otlp_endpoint: Some("collector:4317".into()), ..ok.clone() }, "otlp_endpoint"),
        (TracingConfig { otlp_endpoint: Some("https://c:4317".into()), ..ok.clone() }, "otlp_endpoint"),
        (TracingConfig { max_queue_spans: 0, ..ok.clone() }, "max_queue_spans"),
    ] {
        assert_eq!(bad.validate().unwrap_err().0, key);
    }
}
