//! The HTTP uplink: the CloudEvents HTTP protocol binding to any receiver (an EventMesh 2.0 runtime's
//! CloudEvents ingress, a Knative broker, a webhook), over HTTP/1.1 or HTTPS (rustls, ring).
//!
//! - Binary and structured modes POST one event per request; a batch from the spool is split into lanes by
//!   device, each lane sending its next event once the previous one is confirmed, with up to `concurrency`
//!   requests in flight. Batch mode POSTs `application/cloudevents-batch+json` arrays of up to `max_batch`
//!   events, one request after another, so the receiver sees the spool's order.
//! - Confirmed = a 2xx answer. 429 and 503 make the forwarder wait what `Retry-After` asks (cut to
//!   `retry_after_max_ms`), else its own backoff; 408, 5xx and the "not configured for us" 4xx (401, 403, 404,
//!   405, 407, 421) are retried; any other 4xx refuses the event for good: it goes to the dead-letter file with
//!   the status and the rest flows. A batch the receiver refuses is sent again event by event (batches of one),
//!   so only the bad events are dead-lettered.
//! - A retried batch sends only what was not confirmed yet; a lost answer means the event is sent again with
//!   its `id` (at least once).

mod answer;
pub mod config;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgate_protocols::cloudevents::{
    HttpMessage, encode_http_batch, encode_http_binary, encode_http_structured, is_header_safe,
};

use self::answer::{Verdict, judge};
use self::config::{HttpMode, HttpUplinkConfig};
use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::lanes::{self, Progress};
use super::{BoxFuture, Uplink, UplinkError, UplinkStats};
use crate::CloudEvent;
use crate::config::without_password;

/// The largest answer body read (only its first bytes go into a log or dead letter).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// POSTs events to a CloudEvents HTTP receiver.
pub struct HttpUplink {
    config: HttpUplinkConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// The static headers and the bearer token, ready to send.
    headers: Vec<(HeaderName, HeaderValue)>,
    dead_letter: DeadLetterFile,
    stats: Arc<UplinkStats>,
    progress: Progress,
}

/// A receiver's answer: its status and words.
struct Answer {
    verdict: Verdict,
    status: u16,
    body: String,
}

impl HttpUplink {
    /// An uplink for `config` (validated); relative paths resolve under `data_dir`.
    pub fn new(config: HttpUplinkConfig, data_dir: &Path, stats: Arc<UplinkStats>) -> Result<HttpUplink, UplinkError> {
        let bad = |e: String| UplinkError::Broker(format!("uplink `{}`: {e}", config.name));
        let uri: Uri = config.url.parse().map_err(|e| bad(format!("url: {e}")))?;
        let tls = crate::client_tls::client_config(&config.tls.clone().unwrap_or_default())
            .map_err(|(k, p)| bad(format!("{k}: {p}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms.max(1))));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.concurrency)
            .build(connector);
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(format!("headers: {e}")))?;
            headers.push((name, HeaderValue::from_str(value).map_err(|e| bad(format!("headers: {e}")))?));
        }
        if let Some(token) = &config.bearer_token {
            let value =
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| bad(format!("bearer_token: {e}")))?;
            headers.push((AUTHORIZATION, value));
        }
        let dead_letter = DeadLetterFile::new(&data_dir.join(config.dead_letter_path()));
        Ok(HttpUplink { config, client, uri, headers, dead_letter, stats, progress: Progress::default() })
    }

    /// POSTs one message and reads the answer; an error when no answer came (connection, timeout).
    async fn post(&self, message: HttpMessage) -> Result<Answer, UplinkError> {
        let mut request = Request::builder().method(Method::POST).uri(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(ct) = &message.content_type {
            request = request.header(CONTENT_TYPE, ct.as_str());
        }
        for (name, value) in &message.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request =
            request.body(Full::new(Bytes::from(message.body))).map_err(|e| UplinkError::Broker(e.to_string()))?;
        let limit = Duration::from_millis(self.config.timeout_ms.max(1));
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await.map(|b| b.to_bytes());
            Ok::<_, String>((status, retry_after, body.unwrap_or_default()))
        };
        let (status, retry_after, body) = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(UplinkError::Broker(format!("{}: {e}", self.config.url))),
            Err(_) => return Err(UplinkError::Broker(format!("{}: no answer within {limit:?}", self.config.url))),
        };
        let now = chrono::Utc::now().timestamp();
        let max = Duration::from_millis(self.config.retry_after_max_ms);
        let verdict = judge(status, retry_after.as_deref(), now, max);
        let body = String::from_utf8_lossy(&body).chars().take(512).collect();
        Ok(Answer { verdict, status, body })
    }

    /// Acts on an answer for `events`: delivered, dead-lettered (when `dead_letter` allows it), or an error to
    /// retry.
    async fn settle(&self, events: &[&CloudEvent], answer: Answer) -> Result<(), UplinkError> {
        let why = || format!("{} answered {}: {}", self.config.url, answer.status, answer.body);
        match answer.verdict {
            Verdict::Delivered => Ok(()),
            Verdict::Refused => {
                let reason = why();
                let letter = DeadLetter {
                    uplink: &self.config.name,
                    endpoint: Some(&self.config.url),
                    code: Some(i64::from(answer.status)),
                    reason: &reason,
                };
                for event in events {
                    self.dead_letter.set_aside(event, &letter, &self.stats).await?;
                }
                Ok(())
            }
            Verdict::Retry { after } => {
                if matches!(answer.status, 429 | 503) {
                    self.stats.busy.fetch_add(1, Ordering::Relaxed);
                }
                Err(UplinkError::Busy { retry_after: after, reason: why() })
            }
        }
    }

    /// Sends one event in binary or structured mode.
    async fn send_one(&self, event: &CloudEvent) -> Result<(), UplinkError> {
        let mut message = match self.config.mode {
            HttpMode::Structured => encode_http_structured(event),
            HttpMode::Binary | HttpMode::Batch => encode_http_binary(event),
        };
        // W3C Trace Context's own headers beside the CloudEvents extension (`ce-traceparent` or in the body).
        message.headers.extend(crate::trace::native_headers(event).map(|(k, v)| (k.to_string(), v)));
        if let Some(ct) = message.content_type.as_deref().filter(|ct| !is_header_safe(ct)) {
            // Never sendable in binary mode: set aside rather than retried for ever.
            let reason = format!("datacontenttype {ct:?} cannot be an HTTP header value");
            let letter =
                DeadLetter { uplink: &self.config.name, endpoint: Some(&self.config.url), code: None, reason: &reason };
            return self.dead_letter.set_aside(event, &letter, &self.stats).await;
        }
        let answer = self.post(message).await?;
        self.settle(&[event], answer).await
    }

    /// Sends the pending events in batches of up to `max_batch`, in order; a refused batch is sent again as
    /// batches of one so that only the refused events are dead-lettered.
    async fn send_batches(&self, batch: &[&CloudEvent], delivered: &mut [bool]) -> Result<(), UplinkError> {
        let pending: Vec<usize> = (0..batch.len()).filter(|&i| !delivered.get(i).copied().unwrap_or(true)).collect();
        for chunk in pending.chunks(self.config.max_batch.max(1)) {
            let events: Vec<&CloudEvent> = chunk.iter().filter_map(|&i| batch.get(i).copied()).collect();
            let answer = self.post(encode_http_batch(&events)).await?;
            if answer.verdict == Verdict::Refused && events.len() > 1 {
                tracing::warn!(uplink = %self.config.name, endpoint = %without_password(&self.config.url), status = answer.status, "the receiver refused a batch; sending its events one by one");
                for (&i, event) in chunk.iter().zip(&events) {
                    let answer = self.post(encode_http_batch(&[event])).await?;
                    self.settle(&[event], answer).await?;
                    if let Some(d) = delivered.get_mut(i) {
                        *d = true;
                    }
                }
                continue;
            }
            self.settle(&events, answer).await?;
            for &i in chunk {
                if let Some(d) = delivered.get_mut(i) {
                    *d = true;
                }
            }
        }
        Ok(())
    }

    async fn send_batch(&mut self, batch: &[&CloudEvent]) -> Result<(), UplinkError> {
        let mut progress = std::mem::take(&mut self.progress);
        let delivered = progress.for_batch(batch);
        let result = match self.config.mode {
            HttpMode::Batch => self.send_batches(batch, delivered).await,
            HttpMode::Binary | HttpMode::Structured => {
                let this = &*self;
                lanes::deliver(batch, delivered, self.config.concurrency, |event| this.send_one(event)).await
            }
        };
        self.progress = progress;
        result
    }
}

/// An error with its sources, `: `-separated (hyper's own words are only "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Uplink for HttpUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move {
            let result = self.send_batch(batch).await;
            if let Err(e) = &result {
                tracing::warn!(uplink = %self.config.name, endpoint = %without_password(&self.config.url), error = %e, "HTTP delivery failed");
            }
            result
        })
    }
}
