//! The upstream MQTT uplink: events published to a broker a site already uses (a cloud EMQX, HiveMQ, Mosquitto,
//! AWS IoT), as CloudEvents (the MQTT binding: binary mode on MQTT 5, structured on 5 or 3.1.1).
//!
//! ```text
//! forwarder ──send(batch)──▶ MqttUplink ──requests (bounded)──▶ connection task ──▶ ClientSession ──▶ broker
//!                                 ▲                                  │ (sans-IO: window, resends, keep-alive)
//!                                 └────────── one answer per event ──┘
//! ```
//!
//! - Confirmed = PUBACK (QoS 1) or PUBCOMP (QoS 2) with a success code. A refusal that no retry can change
//!   (0x87 Not authorized, 0x90 Topic Name invalid, 0x95 Packet too large, 0x97 Quota exceeded, 0x99 Payload
//!   format invalid) sends the event to the dead-letter file; any other refusal is retried.
//! - The connection task keeps the session: the broker holds it (MQTT 5 session expiry, 3.1.1 clean session
//!   off after the first connection of the process), and what is in flight when the connection drops goes again
//!   after the reconnect (DUP, same packet identifiers; PUBREL for QoS 2 messages the broker already has). A
//!   batch the forwarder retries after a timeout waits for the answers of the events already in the session
//!   rather than publishing them a second time.
//! - Order: one connection, publishes in spool order within the window, resends in the same order: each
//!   device's events reach the broker in order (a broker refusal that is retried is the exception).
//! - Loop marks, as the bridge's: every published event carries the `bridge` extension (this uplink's name when
//!   it had none), so a bridge reading the same broker never takes it back into the mesh.

pub mod config;
pub mod session;
pub mod topic;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshgate_protocols::cloudevents::{STRUCTURED_CONTENT_TYPE, encode_mqtt5_binary};
use meshgate_protocols::mqtt::Version;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use self::config::{MqttMode, MqttUplinkConfig};
use self::session::{ClientSession, ConnectOptions, Event, Message};
use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::{BoxFuture, Uplink, UplinkError, UplinkStats};
use crate::CloudEvent;
use crate::bridge::BRIDGE_EXTENSION;
use crate::bridge::config::MqttVersion;

/// Reason codes after which the same event can never be published: dead-lettered.
const REFUSED_FOR_GOOD: [u8; 5] = [0x87, 0x90, 0x95, 0x97, 0x99];

/// One event for the connection task, and where its answer goes (0x00 confirmed, else the refusal code).
struct Request {
    message: Message,
    answer: oneshot::Sender<u8>,
}

/// Where one event of the batch in flight stands.
enum Slot {
    /// Not in the session (yet, or again after a retryable refusal).
    Unsent,
    /// In the session; its answer comes here.
    Waiting(oneshot::Receiver<u8>),
    /// Confirmed or dead-lettered.
    Done,
}

/// Publishes events to an upstream MQTT broker.
pub struct MqttUplink {
    config: MqttUplinkConfig,
    requests: mpsc::Sender<Request>,
    dead_letter: DeadLetterFile,
    stats: Arc<UplinkStats>,
    /// The batch in flight (its first and last id and length) and its events' slots.
    batch: ((usize, String, String), Vec<Slot>),
}

impl MqttUplink {
    /// An uplink for `config` (validated); starts its connection task (call from a tokio runtime). Relative
    /// paths resolve under `data_dir`.
    pub fn new(config: MqttUplinkConfig, data_dir: &Path, stats: Arc<UplinkStats>) -> Result<MqttUplink, UplinkError> {
        let bad = |e: String| UplinkError::Broker(format!("uplink `{}`: {e}", config.name));
        let endpoint = config.endpoint().map_err(bad)?;
        let tls = if endpoint.tls {
            let c = crate::client_tls::client_config(&config.tls.clone().unwrap_or_default())
                .map_err(|(k, p)| bad(format!("{k}: {p}")))?;
            Some(tokio_rustls::TlsConnector::from(c))
        } else {
            None
        };
        let (requests, incoming) = mpsc::channel(usize::from(config.inflight).max(1));
        tokio::spawn(connection::run(config.clone(), endpoint, tls, incoming, Arc::clone(&stats)));
        let dead_letter = DeadLetterFile::new(&data_dir.join(config.dead_letter_path()));
        Ok(MqttUplink { config, requests, dead_letter, stats, batch: Default::default() })
    }

    /// The message for `event`: marked, laid out in the configured mode, on its topic.
    fn message(&self, event: &CloudEvent) -> Message {
        let topic = topic::for_event(&self.config.topic, &self.config.default_topic, event);
        let marked;
        let event = if event.extensions.contains_key(BRIDGE_EXTENSION) {
            event
        } else {
            let mut e = event.clone();
            e.extensions.insert(BRIDGE_EXTENSION.into(), self.config.name.as_str().into());
            marked = e;
            &marked
        };
        let v5 = self.config.version == MqttVersion::V5;
        match self.config.mode() {
            MqttMode::Binary => {
                let b = encode_mqtt5_binary(event);
                Message {
                    topic,
                    qos: self.config.qos,
                    content_type: b.content_type,
                    user_properties: b.user_properties,
                    payload: b.payload,
                }
            }
            MqttMode::Structured => Message {
                topic,
                qos: self.config.qos,
                content_type: v5.then(|| STRUCTURED_CONTENT_TYPE.to_string()),
                // Binary mode carries `traceparent` as an attribute already; structured mode as W3C's property.
                user_properties: if v5 {
                    crate::trace::native_headers(event).map(|(k, v)| (k.to_string(), v)).collect()
                } else {
                    Vec::new()
                },
                payload: event.to_json_string().into_bytes(),
            },
        }
    }

    async fn send_batch(&mut self, batch: &[&CloudEvent]) -> Result<(), UplinkError> {
        let id = |e: Option<&&CloudEvent>| e.map(|e| e.id.clone()).unwrap_or_default();
        let fingerprint = (batch.len(), id(batch.first()), id(batch.last()));
        if self.batch.0 != fingerprint {
            self.batch = (fingerprint, batch.iter().map(|_| Slot::Unsent).collect());
        }
        let limit = Duration::from_millis(self.config.timeout_ms.max(1));
        let mut slots = std::mem::take(&mut self.batch.1);
        let result = self.settle(batch, &mut slots, limit).await;
        self.batch.1 = slots;
        result
    }

    /// Hands the unsent events to the session and waits for every answer, none more than `limit` after the
    /// previous one.
    async fn settle(&self, batch: &[&CloudEvent], slots: &mut [Slot], limit: Duration) -> Result<(), UplinkError> {
        let gone = || UplinkError::Broker("the MQTT connection task ended".into());
        for (event, slot) in batch.iter().zip(slots.iter_mut()) {
            if matches!(slot, Slot::Unsent) {
                let (answer, waiting) = oneshot::channel();
                let request = Request { message: self.message(event), answer };
                match tokio::time::timeout(limit, self.requests.send(request)).await {
                    Ok(Ok(())) => *slot = Slot::Waiting(waiting),
                    Ok(Err(_)) => return Err(gone()),
                    Err(_) => return Err(self.silent(limit)),
                }
            }
        }
        let mut retry = None;
        for (event, slot) in batch.iter().zip(slots.iter_mut()) {
            let Slot::Waiting(waiting) = slot else { continue };
            let code = match tokio::time::timeout(limit, waiting).await {
                Ok(Ok(code)) => code,
                Ok(Err(_)) => {
                    *slot = Slot::Unsent;
                    return Err(gone());
                }
                Err(_) => return Err(self.silent(limit)),
            };
            if code < 0x80 {
                *slot = Slot::Done;
            } else if REFUSED_FOR_GOOD.contains(&code) {
                let reason = format!("the broker refused the publish: reason 0x{code:02x}");
                let why = DeadLetter {
                    uplink: &self.config.name,
                    endpoint: Some(&self.config.uri),
                    code: Some(i64::from(code)),
                    reason: &reason,
                };
                self.dead_letter.set_aside(event, &why, &self.stats).await?;
                *slot = Slot::Done;
            } else {
                *slot = Slot::Unsent;
                self.stats.returned.fetch_add(1, Ordering::Relaxed);
                retry.get_or_insert(format!("the broker refused event {}: reason 0x{code:02x}", event.id));
            }
        }
        retry.map_or(Ok(()), |why| Err(UplinkError::Refused(why)))
    }

    fn silent(&self, limit: Duration) -> UplinkError {
        UplinkError::Broker(format!("{}: no acknowledgement within {limit:?}", self.config.uri))
    }
}

impl Uplink for MqttUplink {
    fn send<'a>(&'a mut self, batch: &'a [&'a CloudEvent]) -> BoxFuture<'a, Result<(), UplinkError>> {
        Box::pin(async move {
            let result = self.send_batch(batch).await;
            if let Err(e) = &result {
                tracing::warn!(uplink = %self.config.name, broker = %crate::config::without_password(&self.config.uri), error = %e, "MQTT publish failed");
            }
            result
        })
    }
}

/// A byte stream to the broker, plain or TLS.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

mod connection {
    //! The task that owns the connection and the session.

    use super::*;

    async fn open(
        endpoint: &config::Endpoint,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> std::io::Result<Box<dyn Transport>> {
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        tcp.set_nodelay(true)?;
        match tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Ok(Box::new(tls.connect(name, tcp).await?))
            }
        }
    }

    /// The session and the requests it answers.
    struct Task {
        session: ClientSession,
        requests: mpsc::Receiver<Request>,
        answers: HashMap<u64, oneshot::Sender<u8>>,
        next_token: u64,
        /// The uplink is gone: once what is in flight is answered, the task ends.
        dropped: bool,
        stats: Arc<UplinkStats>,
        name: String,
        limit: Duration,
    }

    /// How a connection ended.
    enum Ended {
        /// The uplink is gone and nothing is left in flight.
        UplinkDropped,
        /// The connection failed (why; whether the broker had accepted it).
        Connection(String, bool),
    }

    /// Runs until the uplink is dropped: connects (backing off), drives the session, answers each request.
    pub(super) async fn run(
        config: MqttUplinkConfig,
        endpoint: config::Endpoint,
        tls: Option<tokio_rustls::TlsConnector>,
        requests: mpsc::Receiver<Request>,
        stats: Arc<UplinkStats>,
    ) {
        let version = if config.version == MqttVersion::V5 { Version::V5 } else { Version::V311 };
        let options = ConnectOptions {
            version,
            client_id: config.client_id(),
            username: config.username.clone(),
            password: config.password.clone(),
            keep_alive_secs: config.keep_alive_secs,
            session_expiry_secs: config.session_expiry_secs,
        };
        let limit = Duration::from_millis(config.timeout_ms.max(1));
        let mut task = Task {
            session: ClientSession::new(options, usize::from(config.inflight)),
            requests,
            answers: HashMap::new(),
            next_token: 0,
            dropped: false,
            stats,
            name: config.name.clone(),
            limit,
        };
        let backoff =
            crate::forwarder::ForwarderConfig { backoff_initial_ms: 100, backoff_max_ms: 10_000, ..Default::default() };
        let mut attempt = 0u32;
        loop {
            let why = match tokio::time::timeout(limit, open(&endpoint, tls.as_ref())).await {
                Ok(Ok(stream)) => match task.drive(stream).await {
                    Ended::UplinkDropped => return,
                    Ended::Connection(why, was_up) => {
                        if was_up {
                            attempt = 0;
                        }
                        why
                    }
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no connection within {limit:?}"),
            };
            task.session.connection_lost();
            let wait = backoff.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(uplink = %task.name, broker = %crate::config::without_password(&config.uri), error = %why, retry_in = ?wait, in_flight = task.session.pending(), "upstream MQTT connection lost");
            tokio::time::sleep(wait).await;
            if (task.dropped || task.requests.is_closed()) && task.session.pending() == 0 {
                return;
            }
        }
    }

    impl Task {
        /// Hands the session's answers to the waiting events; `Some` when the connection must end.
        fn handle_events(&mut self, was_up: &mut bool) -> Option<String> {
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Connected { session_present } => {
                        *was_up = true;
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(uplink = %self.name, session_present, in_flight = self.session.pending(), "connected to the upstream broker");
                    }
                    Event::ConnectRefused(code) => {
                        return Some(format!("the broker refused the connection: code 0x{code:02x}"));
                    }
                    Event::Confirmed(token) => {
                        if let Some(answer) = self.answers.remove(&token) {
                            let _ = answer.send(0);
                        }
                    }
                    Event::Rejected(token, code) => {
                        if let Some(answer) = self.answers.remove(&token) {
                            let _ = answer.send(code);
                        }
                    }
                    Event::Lost(why) => return Some(why),
                }
            }
            None
        }

        /// Drives one connection until it fails, or until the uplink is gone and nothing is in flight.
        async fn drive(&mut self, stream: Box<dyn Transport>) -> Ended {
            let (mut reader, mut writer) = tokio::io::split(stream);
            let mut buf = vec![0u8; 16 * 1024];
            let mut out = Vec::new();
            let mut was_up = false;
            let limit = self.limit;
            self.session.connect(Instant::now());
            loop {
                if let Some(why) = self.handle_events(&mut was_up) {
                    return Ended::Connection(why, was_up);
                }
                if self.dropped && self.session.pending() == 0 {
                    self.session.disconnect();
                }
                self.session.poll_transmit(&mut out, Instant::now());
                if !out.is_empty() {
                    match tokio::time::timeout(limit, writer.write_all(&out)).await {
                        Ok(Ok(())) => out.clear(),
                        Ok(Err(e)) => return Ended::Connection(e.to_string(), was_up),
                        Err(_) => return Ended::Connection(format!("the broker took nothing for {limit:?}"), was_up),
                    }
                }
                if self.dropped && self.session.pending() == 0 {
                    return Ended::UplinkDropped;
                }
                let timer = self.session.poll_timeout().map(tokio::time::Instant::from_std);
                let far = tokio::time::Instant::now() + Duration::from_secs(3600);
                tokio::select! {
                    read = reader.read(&mut buf) => match read {
                        Ok(0) => return Ended::Connection("the broker closed the connection".into(), was_up),
                        Ok(n) => self.session.handle_input(buf.get(..n).unwrap_or_default(), Instant::now()),
                        Err(e) => return Ended::Connection(e.to_string(), was_up),
                    },
                    request = self.requests.recv(), if self.session.has_room() && !self.dropped => match request {
                        Some(Request { message, answer }) => {
                            self.next_token = self.next_token.wrapping_add(1);
                            self.answers.insert(self.next_token, answer);
                            self.session.publish(self.next_token, message);
                        }
                        None => self.dropped = true,
                    },
                    () = tokio::time::sleep_until(timer.unwrap_or(far)) => self.session.handle_timeout(Instant::now()),
                }
            }
        }
    }
}
