//! The OTLP exporter behind [`super::Tracing`]: the OpenTelemetry SDK's batch processor on the tokio runtime,
//! bounded by `[tracing]`'s limits, sending with tonic (gRPC) or hyper (HTTP/protobuf).

use std::time::Duration;

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};

use super::{OtlpProtocol, TracingConfig};

/// The path of the traces signal on an OTLP/HTTP receiver.
const HTTP_TRACES_PATH: &str = "/v1/traces";

/// A tracer provider exporting to `endpoint` as `config` says.
pub(super) fn provider(config: &TracingConfig, endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let timeout = Duration::from_millis(config.export_timeout_ms);
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &config.headers {
                let name = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("tracing.headers: `{name}`: {e}"))?;
                let value = value.parse().map_err(|e| format!("tracing.headers: `{value}`: {e}"))?;
                metadata.insert(name, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .build()
        }
        OtlpProtocol::HttpProtobuf => {
            let url = if endpoint.trim_end_matches('/').ends_with(HTTP_TRACES_PATH) {
                endpoint.to_string()
            } else {
                format!("{}{HTTP_TRACES_PATH}", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(timeout)
                .with_headers(config.headers.clone().into_iter().collect())
                .build()
        }
    }
    .map_err(|e| format!("tracing.otlp_endpoint: cannot build the exporter: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue_spans)
        .with_max_export_batch_size(config.max_export_batch)
        .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
        .with_max_export_timeout(timeout)
        .build();
    let processor = BatchSpanProcessor::builder(exporter, Tokio).with_batch_config(batch).build();
    let name = config.service_name.clone().unwrap_or_else(|| service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        // `Tracing` decides what is recorded before it asks the SDK for a span.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build())
}
