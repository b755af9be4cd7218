//! The NATS JetStream uplink: CloudEvents on NATS subjects (the CloudEvents NATS binding), stored by a JetStream
//! stream, on the official `async-nats` client.
//!
//! - Confirmed = the stream's PubAck. Each event is published with `Nats-Msg-Id` = its `id`, so the re-sends of
//!   at-least-once forwarding (a PubAck lost to a cut connection, a gateway killed before its cursor was written)
//!   fall in the stream's duplicate window and are dropped: the stream holds each event once.
//! - Per-device order: a batch is split into lanes by device; a lane publishes its next event once the previous
//!   one is acknowledged, while lanes overlap up to `inflight`. (Pipelining one device's events would let the
//!   client's transparent reconnect store a later event before an earlier one lost with the old connection.)
//! - Refusals: a message larger than the server's `max_payload`, or one the stream answers with a 4xx API error
//!   (over its `max_msg_size`, a sealed stream), goes to the dead-letter file. No stream for the subject (no
//!   responders), timeouts, a lost connection and 5xx errors are retried with the forwarder's backoff.
//! - `stream` set: the stream is created at connection time if it does not exist (file storage, the configured
//!   subjects and duplicate window); an existing one is used as it is.

pub mod config;
mod encoder;
pub mod subject;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use meshgate_protocols::cloudevents::is_header_safe;

use self::config::NatsUplinkConfig;
use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::lanes::{self, Progress};
use super::{BoxFuture, Uplink, UplinkError, UplinkStats};
use crate::CloudEvent;

/// Publishes events to a JetStream stream.
pub struct NatsUplink {
    config: NatsUplinkConfig,
    data_dir: std::path::PathBuf,
    dead_letter: DeadLetterFile,
    stats: Arc<UplinkStats>,
    link: Option<jetstream::Context>,
    progress: Progress,
}

/// What became of one publish.
enum Outcome {
    Stored,
    /// Refused for good: dead-lettered.
    Refused(Option<i64>, String),
}

impl NatsUplink {
    /// An uplink for `config`; it connects on first use. Relative paths resolve under `data_dir`.
    pub fn new(config: NatsUplinkConfig, data_dir: &Path, stats: Arc<UplinkStats>) -> NatsUplink {
        let dead_letter = DeadLetterFile::new(&data_dir.join(config.dead_letter_path()));
        NatsUplink {
            config,
            data_dir: data_dir.to_path_buf(),
            dead_letter,
            stats,
            link: None,
            progress: Progress::default(),
        }
    }

    async fn connect(&self) -> Result<jetstream::Context, UplinkError> {
        let c = &self.config;
        let broker = |e: &dyn std::fmt::Display| UplinkError::Broker(format!("{}: {e}", c.url));
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("meshgate-uplink-{}", c.name))
            .connection_timeout(Duration::from_millis(c.timeout_ms.max(1)))
            // Reconnects happen in the background; a publish that waits for one times out and is retried.
            .max_reconnects(None);
        if let (Some(user), Some(password)) = (&c.user, &c.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &c.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &c.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(creds) = &c.creds_file {
            let text = tokio::fs::read_to_string(self.data_dir.join(creds)).await.map_err(|e| broker(&e))?;
            options = options.credentials(&text).map_err(|e| broker(&e))?;
        }
        if let Some(tls) = &c.tls {
            let client = crate::client_tls::client_config(tls).map_err(|(k, p)| broker(&format!("{k}: {p}")))?;
            options = options.require_tls(true).tls_client_config(Arc::unwrap_or_clone(client));
        }
        let client = options.connect(c.url.as_str()).await.map_err(|e| broker(&e))?;
        let js = jetstream::ContextBuilder::new().timeout(Duration::from_millis(c.timeout_ms.max(1))).build(client);
        if let Some(stream) = &c.stream {
            let config = jetstream::stream::Config {
                name: stream.clone(),
                subjects: c.stream_subjects(),
                duplicate_window: Duration::from_millis(c.duplicate_window_ms),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            js.get_or_create_stream(config).await.map_err(|e| broker(&format!("stream `{stream}`: {e}")))?;
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(uplink = %c.name, url = %crate::config::without_password(&c.url), "connected to NATS JetStream");
        Ok(js)
    }

    /// Publishes one event and waits for its PubAck.
    async fn publish(&self, js: &jetstream::Context, event: &CloudEvent) -> Result<Outcome, UplinkError> {
        let subject = subject::for_event(&self.config.subject, &self.config.default_subject, event);
        if let Some(ct) = event.datacontenttype.as_deref().filter(|ct| !is_header_safe(ct)) {
            // A line break in a header would forge headers of its own: never sent, set aside.
            return Ok(Outcome::Refused(None, format!("datacontenttype {ct:?} cannot be a NATS header value")));
        }
        let (headers, payload) = encoder::encode(event, self.config.mode);
        let message = jetstream::message::PublishMessage::build().headers(headers).payload(payload.into());
        let answer = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(ack) => {
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Stored)
            }
            Err(e) => classify(&subject, e),
        }
    }

    async fn send_batch(&mut self, batch: &[&CloudEvent]) -> Result<(), UplinkError> {
        let js = match &self.link {
            Some(js) => js.clone(),
            None => {
                let js = self.connect().await?;
                self.link = Some(js.clone());
                js
            }
        };
        let mut progress = std::mem::take(&mut self.progress);
        let this = &*self;
        let result = lanes::deliver(batch, progress.for_batch(batch), this.config.inflight, |event| {
            let js = &js;
            async move {
                match this.publish(js, event).await? {
                    Outcome::Stored => Ok(()),
                    Outcome::Refused(code, reason) => {
                        let why = DeadLetter {
                            uplink: &this.config.name,
                            endpoint: Some(&this.config.url),
                            code,
                            reason: &reason,
                        };
                        this.dead_letter.set_aside(event, &why, &this.stats).await
                    }
                }
            }
        })
        .await;
        self.progress = progress;
        if matches!(result, Err(UplinkError::Refused(_))) && self.config.stream.is_some() {
            // No stream takes the subject any more (deleted behind our back): connect again, which creates it.
            self.link = None;
        }
        result
    }
}

/// Sorts a failed publish: refused for good (dead-lettered) or worth retrying (an error).
fn classify(subject: &str, e: jetstream::context::PublishError) -> Result<Outcome, UplinkError> {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Ok(Outcome::Refused(None, e.to_string())),
        PublishErrorKind::StreamNotFound => {
            Err(UplinkError::Refused(format!("no JetStream stream takes subject `{subject}` (no responders)")))
        }
        PublishErrorKind::Other => {
            let api = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<jetstream::Error>());
            match api {
                Some(api) if (400..500).contains(&api.code()) => {
                    Ok(Outcome::Refused(Some(api.code() as i64), api.to_string()))
                }
                _ => Err(UplinkError::Broker(e.to_string())),
            }
        }
        _ => Err(UplinkError::Broker(e.to_string())),
    }
}

impl Uplink for NatsUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move {
            let result = self.send_batch(batch).await;
            if let Err(e) = &result {
                tracing::warn!(uplink = %self.config.name, url = %crate::config::without_password(&self.config.url), error = %e, "NATS publish failed");
            }
            result
        })
    }
}
