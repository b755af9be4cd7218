//! Tracing one event through the edge: W3C trace context kept on every event, and the spans of its path
//! exported with OTLP.
//!
//! An event's trace context travels as the CloudEvents distributed-tracing extension (`traceparent`,
//! `tracestate`), the one place every protocol binding already maps. Normalize puts there what a device sent
//! (an MQTT 5 user property or an AMQP header of a plain message; a CloudEvent brings its own); each uplink then
//! carries it in its native form as well ([`native_headers`]).
//!
//! With `[tracing] otlp_endpoint` set, the gateway is a hop of the trace:
//!
//! ```text
//! device span ─▶ ingest (receive → durable) ─▶ forward (durable → confirmed), one per uplink ─▶ the mesh
//! mesh span ─▶ deliver (received from the mesh → in the local broker) ─▶ subscribers
//! ```
//!
//! Each step starts its span as a child of the event's context and writes its own span's context into the event,
//! so the next hop is its child. An event without a context starts a trace; whether it is recorded follows the
//! parent's sampled flag, else `tracing.sample_ratio` (what OpenTelemetry's parent-based ratio sampler decides,
//! decided here before the SDK is asked, so an unrecorded event costs a random id and its text, not an SDK span).
//! Without an endpoint, [`Tracing::off`] does nothing at all: no id, no allocation, the event's context passes
//! through as it came.

mod config;
mod export;

use std::sync::Arc;

use meshgate_protocols::cloudevents::{CloudEvent, ExtensionValue};
use meshgate_protocols::trace_context::{FLAG_SAMPLED, TraceParent, is_valid_tracestate};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use config::{OtlpProtocol, TracingConfig};

/// The CloudEvents extension (and header, and user property) holding the parent context.
pub const TRACEPARENT: &str = "traceparent";
/// The CloudEvents extension (and header, and user property) holding vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// A span of an event's path, recorded (sampled) and exported when it ends: on drop, or [`TraceSpan::end`].
#[derive(Debug)]
pub struct TraceSpan(opentelemetry_sdk::trace::Span);

impl TraceSpan {
    /// Notes a failed attempt (an uplink's retry) on the span.
    pub fn retried(&mut self, attempt: u32, error: &str) {
        self.0.add_event(
            "retry",
            vec![
                KeyValue::new("meshgate.attempt", i64::from(attempt)),
                KeyValue::new("error.message", error.to_string()),
            ],
        );
    }

    /// Ends the span now with these final attributes.
    pub fn end_with(mut self, attributes: Vec<KeyValue>) {
        self.0.set_attributes(attributes);
        self.0.end();
    }

    /// Ends the span as failed.
    pub fn fail(mut self, error: &str) {
        self.0.set_status(opentelemetry::trace::Status::error(error.to_string()));
        self.0.end();
    }
}

/// Where an event entered the gateway, for its `ingest` span.
#[derive(Debug, Clone, Copy)]
pub struct Ingest<'a> {
    /// `mqtt`, `amqp`, `ws`, `bridge`, `admin`.
    pub protocol: &'a str,
    /// The device's client id (or connection name).
    pub client: &'a str,
    /// The topic (or routing key) it was published to.
    pub topic: &'a str,
    /// The payload's size; `None`: the event's size in the JSON format, measured only when the span is recorded.
    pub bytes: Option<usize>,
}

/// The process's tracing: off, or exporting spans to an OTLP endpoint. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing {
    on: Option<Arc<Exporting>>,
}

struct Exporting {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// `tracing.sample_ratio`: the share of new traces recorded.
    sample_ratio: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.on.is_some() { "Tracing(exporting)" } else { "Tracing(off)" })
    }
}

impl Tracing {
    /// No tracing: events keep the context they came with, nothing is recorded.
    pub fn off() -> Tracing {
        Tracing { on: None }
    }

    /// Starts exporting as `config` says (off without an endpoint). `service` names this process in the traces
    /// unless `tracing.service_name` does. Call from a tokio runtime: the exporter runs on it.
    pub fn start(config: &TracingConfig, service: &str) -> Result<Tracing, String> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else { return Ok(Tracing::off()) };
        let provider = export::provider(config, endpoint, service)?;
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "meshgate");
        tracing::info!(
            endpoint,
            protocol = config.otlp_protocol.as_str(),
            sample_ratio = config.sample_ratio,
            "exporting traces with OTLP"
        );
        Ok(Tracing { on: Some(Arc::new(Exporting { tracer, provider, sample_ratio: config.sample_ratio })) })
    }

    /// Whether spans are recorded and exported.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// The `ingest` span of an event just received (ending when the spool's commit holding it is durable: the
    /// spool drops it then). Writes the span's context into the event.
    pub fn ingest(&self, event: &mut CloudEvent, at: Ingest<'_>) -> Option<TraceSpan> {
        let mut span = self.child(event, "ingest", SpanKind::Consumer, true)?;
        let bytes = at.bytes.unwrap_or_else(|| event.to_json_string().len());
        span.0.set_attributes([
            KeyValue::new("messaging.system", at.protocol.to_string()),
            KeyValue::new("messaging.client.id", at.client.to_string()),
            KeyValue::new("messaging.destination.name", at.topic.to_string()),
            KeyValue::new("messaging.message.body.size", i64::try_from(bytes).unwrap_or(i64::MAX)),
        ]);
        Some(span)
    }

    /// The `forward` span of an event an uplink is about to send (ending when the uplink confirms it). Writes the
    /// span's context into the event (the copy this uplink sends); an unrecorded event keeps its context.
    pub fn forward(&self, event: &mut CloudEvent, uplink: &str, endpoint: &str) -> Option<TraceSpan> {
        let mut span = self.child(event, "forward", SpanKind::Producer, false)?;
        span.0.set_attributes([
            KeyValue::new("meshgate.uplink", uplink.to_string()),
            KeyValue::new("server.address", endpoint.to_string()),
        ]);
        Some(span)
    }

    /// The `deliver` span of an event a downlink received from the mesh (ending when it is in the local broker).
    /// Writes the span's context into the event the devices receive (a new trace for an event that came without).
    pub fn deliver(&self, event: &mut CloudEvent, downlink: &str, topic: &str) -> Option<TraceSpan> {
        let mut span = self.child(event, "deliver", SpanKind::Consumer, true)?;
        span.0.set_attributes([
            KeyValue::new("meshgate.downlink", downlink.to_string()),
            KeyValue::new("messaging.destination.name", topic.to_string()),
        ]);
        Some(span)
    }

    /// Exports what is buffered and stops the exporter (at shutdown). The SDK waits for its export task with a
    /// blocking call, so this runs on the blocking pool, never on a runtime worker.
    pub async fn shutdown(&self) {
        let Some(on) = self.on.clone() else { return };
        match tokio::task::spawn_blocking(move || on.provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the trace exporter did not shut down cleanly"),
            Err(e) => tracing::warn!(error = %e, "the trace exporter's shutdown task failed"),
        }
    }

    /// Starts a child of the event's context and writes its context into the event; the span when it is recorded.
    ///
    /// The sampling decision comes first and costs no more than a random draw: the parent's sampled flag, else
    /// `sample_ratio`. Only a recorded span goes through the OpenTelemetry SDK. An unrecorded step still writes a
    /// context when `start` says so (`ingest`, `deliver`: every event carries a trace, a new one if it came
    /// without), with a fresh span id and the parent's flags; otherwise (`forward`) the event keeps the context it
    /// has, and only its flags are looked at.
    fn child(&self, event: &mut CloudEvent, name: &'static str, kind: SpanKind, start: bool) -> Option<TraceSpan> {
        let on = self.on.as_ref()?;
        if !start && !marked_sampled(event) {
            // The common case of `forward` and `deliver`: nothing recorded, the context stays as it is.
            return None;
        }
        let context = event_context(event);
        let sampled = match &context {
            Some((tp, _)) => tp.sampled(),
            None => on.sample_ratio > 0.0 && rand::random::<f64>() < on.sample_ratio,
        };
        if !sampled {
            if start {
                let mut rng = rand::thread_rng();
                let tp = match context {
                    Some((parent, _)) => TraceParent { parent_id: nonzero(&mut rng), ..parent },
                    None => TraceParent { trace_id: nonzero(&mut rng), parent_id: nonzero(&mut rng), flags: 0 },
                };
                write_context(event, &tp);
            }
            return None;
        }
        let parent = context.map_or_else(Context::new, |(tp, state)| {
            let state = state.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
            let remote = SpanContext::new(
                TraceId::from_bytes(tp.trace_id),
                SpanId::from_bytes(tp.parent_id),
                TraceFlags::new(tp.flags),
                true,
                state,
            );
            Context::new().with_remote_span_context(remote)
        });
        let span =
            on.tracer.build_with_context(opentelemetry::trace::SpanBuilder::from_name(name).with_kind(kind), &parent);
        let cx = span.span_context();
        let tp = TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            parent_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8() | FLAG_SAMPLED,
        };
        write_context(event, &tp);
        let mut span = span.is_recording().then_some(TraceSpan(span))?;
        span.0.set_attribute(KeyValue::new("messaging.message.id", event.id.clone()));
        Some(span)
    }
}

/// Whether the event's `traceparent` says sampled, read from its last two characters (the flags) without
/// parsing the rest: an event whose context is malformed or missing reads as not sampled here.
fn marked_sampled(event: &CloudEvent) -> bool {
    match event.extensions.get(TRACEPARENT) {
        Some(ExtensionValue::String(tp)) => tp
            .trim_end_matches([' ', '\t'])
            .as_bytes()
            .last()
            .is_some_and(|flags| matches!(flags, b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f')),
        _ => false,
    }
}

/// An id of `N` random bytes, never all zero (W3C: an all-zero trace or span id is invalid).
fn nonzero<const N: usize>(rng: &mut impl rand::Rng) -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rng.fill_bytes(&mut id);
        if id != [0; N] {
            return id;
        }
    }
}

/// Writes `tp` as the event's `traceparent`, dropping a `tracestate` that is not valid.
fn write_context(event: &mut CloudEvent, tp: &TraceParent) {
    event.extensions.insert(TRACEPARENT.into(), ExtensionValue::String(tp.to_string()));
    let valid_state =
        matches!(event.extensions.get(TRACESTATE), Some(ExtensionValue::String(s)) if is_valid_tracestate(s));
    if !valid_state {
        event.extensions.remove(TRACESTATE);
    }
}

/// The valid trace context an event carries (its `traceparent` extension, and `tracestate` when valid).
pub fn event_context(event: &CloudEvent) -> Option<(TraceParent, Option<&str>)> {
    let ExtensionValue::String(tp) = event.extensions.get(TRACEPARENT)? else { return None };
    let tp = TraceParent::parse(tp)?;
    let state = match event.extensions.get(TRACESTATE) {
        Some(ExtensionValue::String(s)) if is_valid_tracestate(s) => Some(s.as_str()),
        _ => None,
    };
    Some((tp, state))
}

/// The headers that carry an event's context in an uplink's native form (HTTP, AMQP application headers, gRPC
/// metadata, NATS headers, EventMesh TCP properties, MQTT 5 user properties): `traceparent` and, with it,
/// `tracestate`; nothing when the event has no valid context (a malformed one is never passed on as a header).
pub fn native_headers(event: &CloudEvent) -> impl Iterator<Item = (&'static str, String)> + '_ {
    let context = event_context(event);
    let parent = context.map(|(tp, _)| (TRACEPARENT, tp.to_string()));
    let state = context.and_then(|(_, s)| s).map(|s| (TRACESTATE, s.to_string()));
    parent.into_iter().chain(state)
}

/// Copies a trace context a device sent beside a plain message (an MQTT 5 user property, an AMQP header) into
/// the event, when it is valid and the event has none of its own.
pub fn adopt_context<'a>(event: &mut CloudEvent, mut lookup: impl FnMut(&str) -> Option<&'a str>) {
    if event.extensions.contains_key(TRACEPARENT) {
        return;
    }
    let Some(tp) = lookup(TRACEPARENT).filter(|v| TraceParent::parse(v).is_some()) else { return };
    event.extensions.insert(TRACEPARENT.into(), ExtensionValue::String(tp.trim_matches([' ', '\t']).to_string()));
    if let Some(state) = lookup(TRACESTATE).filter(|s| is_valid_tracestate(s)) {
        event.extensions.insert(TRACESTATE.into(), ExtensionValue::String(state.to_string()));
    }
}

#[cfg(test)]
mod tests;
