//! An OTLP trace receiver of the tests' own, built on the `opentelemetry-proto` messages: gRPC
//! (`TraceService/Export`, tonic) or HTTP/protobuf (`POST /v1/traces`, axum). Every span received is flattened to a
//! [`ReceivedSpan`] and can be waited for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// A span as the receiver got it: ids in lower-case hex (the parent empty for a root span), string or integer
/// attributes as text, the `service.name` of its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The span's name (`ingest`, `forward`, `deliver`).
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Attributes by key.
    pub attributes: HashMap<String, String>,
    /// Events by name (`retry`).
    pub events: Vec<String>,
    /// The resource's `service.name`.
    pub service: String,
    /// Start and end, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_ns: u64,
}

/// What the receiver has been sent so far.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Spans {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(text)
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                all.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a))).collect(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }

    /// Every span received so far.
    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `done` holds for the spans received, within `limit`.
    pub async fn until(&self, limit: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.all();
            if done(&all) {
                return Ok(all);
            }
            if Instant::now() > deadline {
                bail!("the OTLP receiver did not get the spans expected; it got: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The task serving a gRPC OTLP receiver.
pub type Serving = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves `service` as the OTLP trace service on `bind`: the address and the serving task.
async fn serve(bind: SocketAddr, service: impl TraceService) -> Result<(SocketAddr, Serving)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, task))
}

/// Starts a gRPC OTLP receiver on an ephemeral port: its address and what it receives.
pub async fn grpc_receiver() -> Result<(SocketAddr, Spans)> {
    let spans = Spans::default();
    let (addr, _) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), Grpc(spans.clone())).await?;
    Ok((addr, spans))
}

/// Starts an OTLP/HTTP (protobuf) receiver on an ephemeral port: its address and what it receives. Anything but
/// `POST /v1/traces` with `application/x-protobuf` is answered 404 or 415.
pub async fn http_receiver() -> Result<(SocketAddr, Spans)> {
    use axum::http::{HeaderMap, StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let spans = Spans::default();
    let sink = spans.clone();
    let export = move |headers: HeaderMap, body: axum::body::Bytes| async move {
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
            return StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        match ExportTraceServiceRequest::decode(body) {
            Ok(request) => {
                sink.take(request);
                StatusCode::OK
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    };
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(export));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, spans))
}

struct Counting(Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A gRPC OTLP receiver on `bind` that only counts the spans it is sent (for load runs with export on): its
/// address, the count, and the task serving it.
pub async fn counting_receiver(bind: SocketAddr) -> Result<(SocketAddr, Arc<std::sync::atomic::AtomicU64>, Serving)> {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (addr, task) = serve(bind, Counting(Arc::clone(&count))).await?;
    Ok((addr, count, task))
}
