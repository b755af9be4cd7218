//! The HTTP transport: the runtime's request-code API, `POST /` with `code: 104` and the structured event in the
//! form field `content`, on a pooled HTTP/1.1 client per endpoint. The answer is read from the JSON `retCode`
//! (the runtime answers errors with HTTP 200 too). The probe is any HTTP answer to `GET /`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgate_protocols::eventmesh::http::{Answer as HttpAnswer, FORM_CONTENT_TYPE, publish_form, publish_headers};
use meshgate_protocols::eventmesh::status::{Verdict, http_verdict};

use super::config::EventMeshUplinkConfig;
use super::{Answer, Transport};
use crate::CloudEvent;
use crate::uplink::BoxFuture;

/// The largest answer body read (the runtime's are a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// HTTP to one runtime.
pub(crate) struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    producer_group: String,
}

impl HttpTransport {
    /// A transport to `address` (`host:port`).
    pub fn new(address: &str, config: &EventMeshUplinkConfig) -> Result<HttpTransport, String> {
        let uri: Uri = format!("http://{address}/").parse().map_err(|e| format!("endpoint `{address}`: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms.max(1))));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_in_flight)
            .build(connector);
        let mut headers = Vec::new();
        for (name, value) in publish_headers(&config.identity()) {
            let value = HeaderValue::from_str(&value).map_err(|_| format!("`{name}` is not a valid header value"))?;
            headers.push((HeaderName::from_static(name), value));
        }
        Ok(HttpTransport { client, uri, headers, producer_group: config.producer_group.clone() })
    }

    async fn post(&self, body: String, trace: impl Iterator<Item = (&'static str, String)>) -> Result<Answer, String> {
        let mut request = Request::builder().method(Method::POST).uri(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        for (name, value) in trace {
            request = request.header(name, value);
        }
        let request = request
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("HTTP body: {e}"))?
            .to_bytes();
        Ok(match HttpAnswer::parse(&body) {
            Ok(a) => Answer {
                verdict: http_verdict(a.ret_code),
                code: Some(i64::from(a.ret_code)),
                message: a.ret_msg.unwrap_or_default(),
            },
            Err(e) => Answer {
                verdict: Verdict::Failed,
                code: Some(i64::from(status.as_u16())),
                message: format!("HTTP {status} without a retCode ({e})"),
            },
        })
    }
}

impl Transport for HttpTransport {
    fn publish<'a>(&'a self, event: &'a CloudEvent) -> BoxFuture<'a, Result<Answer, String>> {
        Box::pin(async move {
            let form = publish_form(&self.producer_group, &event.to_json_string());
            self.post(form, crate::trace::native_headers(event)).await
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let request = Request::builder()
                .method(Method::GET)
                .uri(self.uri.clone())
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            // Any answer (the runtime says 400 to a request without a code) shows it is up.
            self.client.request(request).await.map(|_| ()).map_err(|e| format!("HTTP: {e}"))
        })
    }
}
