//! `[tracing]`: where spans go and how many are recorded.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How spans travel to the OTLP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (a collector's port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name as configured (and as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it).
    pub const fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where spans are exported (`http://host:4317` for gRPC, `http://host:4318` or its `/v1/traces` URL for
    /// HTTP). None (the default): no span is recorded and no trace is started; events keep the context they
    /// came with.
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    pub otlp_protocol: OtlpProtocol,
    /// The share of new traces recorded, 0.0 to 1.0; an event that arrives with a context follows its sampled
    /// flag instead.
    pub sample_ratio: f64,
    /// The `service.name` of the spans (default: the binary's name, `meshgate` or `edge-agent`).
    pub service_name: Option<String>,
    /// Headers sent with every export (gRPC metadata or HTTP headers), e.g. a collector's API key.
    pub headers: BTreeMap<String, String>,
    /// The most finished spans waiting for export; past it new spans are dropped (and counted by the SDK), never
    /// waited for.
    pub max_queue_spans: usize,
    /// The most spans in one export request.
    pub max_export_batch: usize,
    /// How often buffered spans are exported, in milliseconds.
    pub export_interval_ms: u64,
    /// How long one export may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            sample_ratio: 0.01,
            service_name: None,
            headers: BTreeMap::new(),
            max_queue_spans: 8192,
            max_export_batch: 512,
            export_interval_ms: 1000,
            export_timeout_ms: 10_000,
        }
    }
}

impl TracingConfig {
    /// The first problem with the section, as `(key, problem)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(("sample_ratio", format!("{} is not between 0.0 and 1.0", self.sample_ratio)));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: hyper::http::Uri =
                endpoint.parse().map_err(|e| ("otlp_endpoint", format!("`{endpoint}` is not a URL: {e}")))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    return Err((
                        "otlp_endpoint",
                        "https is not supported: export to a collector on this host or network over http".into(),
                    ));
                }
                _ => return Err(("otlp_endpoint", format!("`{endpoint}` needs an http:// scheme"))),
            }
            if uri.host().is_none() {
                return Err(("otlp_endpoint", format!("`{endpoint}` has no host")));
            }
        }
        for (name, value) in &self.headers {
            if hyper::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::http::HeaderValue::from_str(value).is_err()
            {
                return Err(("headers", format!("`{name}` is not a valid header name and value")));
            }
        }
        let limits = [
            ("max_queue_spans", self.max_queue_spans as u64),
            ("max_export_batch", self.max_export_batch as u64),
            ("export_interval_ms", self.export_interval_ms),
            ("export_timeout_ms", self.export_timeout_ms),
        ];
        if let Some((key, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if self.max_export_batch > self.max_queue_spans {
            return Err(("max_export_batch", "cannot exceed max_queue_spans".into()));
        }
        Ok(())
    }
}
