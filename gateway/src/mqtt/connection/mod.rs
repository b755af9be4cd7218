//! The tokio driver of one MQTT connection, around the sans-IO [`ServerSession`]: it reads the socket into the
//! session, acts on its events (authenticates CONNECT, ingests publishes, subscribes, hands deliveries back),
//! writes what the session transmits, and sleeps until the session's timers.
//!
//! Order of work per wake-up: act on every event the session has, send the PUBRELs and deliveries owed, flush,
//! then wait for whichever comes first of a takeover, shutdown, the oldest answer owed becoming durable (the
//! acknowledgement seam, [`crate::acks`]), socket input (while fewer than Receive Maximum answers are pending,
//! which is how a fast device is slowed), deliveries queued by the broker, or the session's next timer.
//!
//! - `connect.rs`: CONNECT authenticated, the client id registered (taking over an older connection), the broker
//!   session opened or resumed.
//! - `ingest.rs`: a publish checked against the ACL, retain limits and the CloudEvents mapping, then submitted.
//! - `delivery.rs`: the broker side: subscriptions, deliveries, their acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meshgate_edge_agent::pipeline::IngestShare;
use meshgate_protocols::mqtt::ReasonCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::registry::Registration;
use super::session::{Close, ClosedBy, Event, ServerSession, SessionConfig, Token, Verdict};
use super::{MqttContext, will};
use crate::acks::{Outcome, PendingAcks};
use crate::clients::{Listed, kicked};
use crate::listener::Peer;
use crate::metrics::Protocol;
use crate::normalize::Lifecycle;
use crate::policy::DevicePolicy;

mod connect;
mod delivery;
mod ingest;

const PROTOCOL: Protocol = Protocol::Mqtt;

/// Deliveries written per wake-up before the driver checks its other work again.
const OUTBOUND_PER_WAKE: usize = 64;

/// Bytes of deliveries taken per wake-up (at least one delivery): what waits for a slow reader stays in its
/// session's bounded queue, not in the connection's write buffer.
const OUTBOUND_BYTES_PER_WAKE: u64 = 256 * 1024;

/// Events handled before the driver yields to the worker's other tasks.
const EVENTS_PER_TURN: usize = 256;

/// How long, at most, a connection the gateway closes is still read (and its input dropped) after the DISCONNECT
/// went out, so the client can read the DISCONNECT before the socket closes.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// How many bytes, at most, are read and dropped that way.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;

/// Why a connection ended (for the log).
#[derive(Debug)]
enum Closed {
    /// The client disconnected normally.
    Normal,
    /// The client went away without DISCONNECT.
    Dropped,
    /// The gateway closed it for a reason.
    Refused(&'static str),
    /// The socket failed.
    Io(std::io::Error),
}

/// Serves one accepted connection until it ends. A peer that proved an identity with a client certificate (mTLS)
/// and sends a CONNECT without a user name is that device, for authentication and ACLs.
pub async fn serve_as<S>(stream: S, ctx: Arc<MqttContext>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.shared.metrics.connection_opened(PROTOCOL);
    let mut conn = Connection::new(stream, Arc::clone(&ctx), peer);
    let outcome = conn.run().await;
    let Connection { session, driver, .. } = conn;
    if let Some((client_id, reg)) = &driver.client {
        ctx.registry.unregister(client_id, reg.conn_id);
        if ctx.shared.broker.detach(client_id, reg.conn_id) {
            // What the client acknowledged before it left is durable too: a crash redelivers nothing it has; a
            // session ended by DISCONNECT's expiry 0 is deleted from the store.
            let persistent = ctx.shared.broker.read(|b| b.session(client_id).is_some_and(|s| s.expiry_secs > 0));
            ctx.shared.broker.disconnect(client_id, session.disconnect_expiry());
            if persistent && let Err(e) = ctx.shared.broker.persist_session(client_id).await {
                tracing::warn!(client = %client_id, error = %e, "session could not be made durable at disconnect");
            }
        }
        // The session keeps its will until it is due (now, after its delay, or never).
        will::schedule(&ctx, client_id, session, driver.started);
        if ctx.lifecycle_events {
            let reason = match &outcome {
                Closed::Normal => "disconnect".to_string(),
                Closed::Dropped => "connection lost".to_string(),
                Closed::Refused(why) => (*why).to_string(),
                Closed::Io(e) => format!("I/O error: {e}"),
            };
            lifecycle(&ctx, Lifecycle::Disconnected, client_id, serde_json::json!({ "reason": reason })).await;
        }
    }
    ctx.shared.metrics.connection_closed(PROTOCOL);
    let client = driver.client.as_ref().map_or("-", |(c, _)| c.as_str());
    match outcome {
        Closed::Normal | Closed::Dropped => tracing::debug!(client, ?outcome, "connection closed"),
        Closed::Refused(why) => tracing::info!(client, why, "connection closed by the gateway"),
        Closed::Io(e) => tracing::debug!(client, error = %e, "connection failed"),
    }
}

/// The session's limits from `[listeners.mqtt]` and `[limits]`.
fn session_config(ctx: &MqttContext) -> SessionConfig {
    let c = &ctx.config;
    SessionConfig {
        max_packet_size: c.max_packet_size,
        receive_maximum: c.receive_maximum,
        topic_alias_maximum: c.topic_alias_maximum,
        max_keep_alive_secs: c.max_keep_alive_secs,
        connect_timeout_ms: c.connect_timeout_secs.saturating_mul(1000),
        max_topic_levels: ctx.shared.policy.load().limits.max_topic_levels,
    }
}

/// The driver's note of an answer waiting in the acknowledgement seam.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// The session's name for the answer.
    token: Token,
    /// A QoS 2 publish's packet id: once stored, the broker session remembers it until PUBREL.
    pubrec: Option<u16>,
    /// A persistent session's QoS 2 release (PUBCOMP), not a message.
    release: bool,
}

/// One connection: the session, the socket, and the driver's own state.
struct Connection<S> {
    stream: S,
    session: ServerSession,
    driver: Driver,
    wbuf: Vec<u8>,
}

/// Everything of a connection's but its socket and session, so the session's events (which borrow the session)
/// can be acted on with it.
struct Driver {
    ctx: Arc<MqttContext>,
    /// The driver's clock: the session counts milliseconds from here.
    started: Instant,
    /// The client id and its registration, once CONNECT is accepted.
    client: Option<(String, Registration)>,
    /// Wakes the driver when the broker queued deliveries for this client.
    deliveries: Option<Arc<Notify>>,
    /// The policy in force and what this device may publish and subscribe to under it.
    device: DevicePolicy,
    /// Its place in the client list, once CONNECT is accepted.
    listed: Option<Listed>,
    /// The peer's address and the subject of a verified client certificate (mTLS).
    peer: Peer,
    /// `limits.max_messages_per_second` and `max_messages_per_second_per_user`.
    rate: crate::limits::MessageRate,
    /// Its share of the spool's queue for QoS 0 publishes (`limits.max_unconfirmed_per_connection`).
    share: IngestShare,
    /// Answers waiting for their events to be durable.
    pending: PendingAcks<Ack>,
    /// PUBRELs owed for the PUBRECs just read: packet id, reason code, whether the flow moved on (see
    /// [`Connection::release_and_pump`]).
    pubrels: Vec<(u16, ReasonCode, bool)>,
    /// Acknowledgements freed the window: poll the session for deliveries.
    pump_wanted: bool,
    /// How the session ended, once it has.
    closed: Option<Close>,
}

impl Driver {
    /// Milliseconds on the connection's clock.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connected client's id ("" before CONNECT is accepted).
    fn client_id(&self) -> &str {
        self.client.as_ref().map_or("", |(c, _)| c.as_str())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, ctx: Arc<MqttContext>, peer: Peer) -> Self {
        let session = ServerSession::new(session_config(&ctx), 0);
        let driver = Driver {
            share: IngestShare::new(ctx.shared.policy.load().limits.max_unconfirmed_per_connection),
            pending: PendingAcks::new(&ctx.shared, PROTOCOL),
            device: DevicePolicy::new(&ctx.shared.policy),
            ctx,
            started: Instant::now(),
            client: None,
            deliveries: None,
            listed: None,
            peer,
            rate: crate::limits::MessageRate::default(),
            pubrels: Vec::new(),
            pump_wanted: false,
            closed: None,
        };
        Connection { stream, session, driver, wbuf: Vec::new() }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.session.poll_transmit(&mut self.wbuf);
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            // A no-op on TCP; a WebSocket or TLS stream sends what it buffered.
            self.stream.flush().await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > 64 * 1024 {
                // A burst of deliveries is over: an idle connection does not keep a big write buffer.
                self.wbuf = Vec::new();
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Closed {
        let mut shutdown = self.driver.ctx.shared.shutdown.clone();
        let receive_maximum = usize::from(self.driver.ctx.config.receive_maximum);
        loop {
            self.process_events().await;
            self.release_and_pump().await;
            if let Err(e) = self.flush().await {
                self.session.handle_lost(self.driver.now());
                return Closed::Io(e);
            }
            if let Some(close) = self.driver.closed {
                return self.finish(close).await;
            }
            let can_read = self.driver.pending.len() < receive_maximum;
            let timer = self.session.poll_timeout().map(|ms| self.driver.started + Duration::from_millis(ms));
            let Connection { stream, session, driver, .. } = self;
            let taken_over = driver.client.as_mut().map(|(_, r)| &mut r.taken_over);
            let deliveries = driver.deliveries.clone();
            let listed = driver.listed.as_ref().map(|l| l.client().as_ref());
            tokio::select! {
                biased;
                _ = taken(taken_over) => {
                    self.answer_all().await;
                    self.session.close(ReasonCode::SESSION_TAKEN_OVER, "session taken over");
                }
                _ = kicked(listed) => {
                    self.answer_all().await;
                    self.session.close(ReasonCode::ADMINISTRATIVE_ACTION, "disconnected by the administrator");
                }
                _ = super::stopped(&mut shutdown) => {
                    self.answer_all().await;
                    self.session.close(ReasonCode::SERVER_SHUTTING_DOWN, "gateway shutting down");
                }
                _ = driver.pending.ready() => self.answer_ready(),
                read = stream.read_buf(session.read_buffer()), if can_read => {
                    let now = self.driver.now();
                    match read {
                        Ok(0) => {
                            self.session.handle_lost(now);
                            return Closed::Dropped;
                        }
                        Ok(_) => self.session.handle_read(now),
                        Err(e) => {
                            self.session.handle_lost(now);
                            return Closed::Io(e);
                        }
                    }
                }
                _ = notified(deliveries.as_deref()) => self.driver.pump_wanted = true,
                _ = sleep_until(timer) => {
                    let now = self.driver.now();
                    self.session.handle_timeout(now);
                }
            }
        }
    }

    /// The session ended: what it transmitted went out with the last flush; when the gateway closed it, the
    /// client's input is read (and dropped) for a moment, so it can read the DISCONNECT before the socket closes
    /// (closing a socket with unread input resets it).
    async fn finish(&mut self, close: Close) -> Closed {
        let _ = self.stream.shutdown().await;
        match close.by {
            ClosedBy::Client => return Closed::Normal,
            ClosedBy::Lost => return Closed::Dropped,
            ClosedBy::Timeout => return Closed::Refused(close.why),
            ClosedBy::Server => {}
        }
        let deadline = Instant::now() + CLOSE_DRAIN;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        Closed::Refused(close.why)
    }

    /// Acts on every event the session has, in order.
    async fn process_events(&mut self) {
        let mut handled = 0usize;
        loop {
            handled += 1;
            if handled.is_multiple_of(EVENTS_PER_TURN) {
                // A full buffer of small packets is a lot of work: let the worker's other connections have a turn.
                tokio::task::yield_now().await;
            }
            let Connection { session, driver, .. } = self;
            let version = session.version();
            let Some(event) = session.poll_event() else { return };
            match event {
                Event::Connect(connect) => {
                    let accepted = driver.on_connect(&connect).await;
                    drop(connect);
                    driver.answer_connect(session, accepted).await;
                }
                Event::Publish { token, topic, publish } => {
                    let verdict = driver.on_publish(token, &topic, &publish, version).await;
                    drop(topic);
                    if let Some(verdict) = verdict {
                        session.complete(token, verdict);
                    }
                }
                Event::Release { token, packet_id, found } => {
                    if let Some(verdict) = driver.on_release(token, packet_id, found).await {
                        session.complete(token, verdict);
                    }
                }
                Event::Subscribe(subscribe) => {
                    let packet_id = subscribe.packet_id;
                    let codes = driver.on_subscribe(&subscribe, version).await;
                    session.suback(packet_id, &codes);
                    driver.pump_wanted = true;
                }
                Event::Unsubscribe(unsubscribe) => {
                    let packet_id = unsubscribe.packet_id;
                    let codes = driver.on_unsubscribe(&unsubscribe);
                    session.unsuback(packet_id, &codes);
                }
                Event::DeliveryAck(ack) => driver.on_delivery_ack(&ack, version),
                Event::Closed(close) => {
                    if let Some(reject) = close.reject {
                        driver.ctx.shared.metrics.reject(PROTOCOL, reject);
                    }
                    driver.closed = Some(close);
                    // What comes after (the will) is for `will::schedule` once the connection is gone.
                    return;
                }
                Event::WillDue(_) => {}
            }
        }
    }

    /// Completes every answer whose event's outcome is known, in order; they leave with the next flush.
    fn answer_ready(&mut self) {
        let Connection { session, driver, .. } = self;
        let Driver { pending, ctx, client, .. } = driver;
        let client = client.as_ref().map(|(c, _)| c.as_str());
        pending.resolve(&ctx.shared, |ack, outcome| complete(ctx, session, client, ack, outcome));
    }

    /// Waits for every answer owed and completes them (the connection is about to end).
    async fn answer_all(&mut self) {
        let Connection { session, driver, .. } = self;
        let Driver { pending, ctx, client, .. } = driver;
        let client = client.as_ref().map(|(c, _)| c.as_str());
        pending.resolve_all(&ctx.shared, |ack, outcome| complete(ctx, session, client, ack, outcome)).await;
    }
}

/// Tells the session an answer's outcome.
fn complete(ctx: &MqttContext, session: &mut ServerSession, client: Option<&str>, ack: Ack, outcome: Outcome) {
    let verdict = match outcome {
        Outcome::Stored | Outcome::Settled => {
            if let (Some(packet_id), Some(client), Outcome::Stored) = (ack.pubrec, client, &outcome) {
                // Stored and about to be answered: the session remembers the id until PUBREL, across reconnects.
                ctx.shared.broker.with(|b| b.session_mut(client).map(|s| s.inbound_qos2.insert(packet_id)));
            }
            Verdict::Stored
        }
        Outcome::Failed(e) => {
            if ack.release {
                // PUBCOMP has no failure to report: the release holds in memory, and a client reusing the id after
                // a crash sends its next message without DUP, which is taken as new.
                tracing::warn!(error = %e, client = client.unwrap_or(""), "QoS 2 release not stored");
            }
            Verdict::Refused(ReasonCode::UNSPECIFIED_ERROR, "event could not be stored")
        }
    };
    session.complete(ack.token, verdict);
}

/// Sends a lifecycle event for `client` into the pipeline (unconfirmed: nobody waits for it).
async fn lifecycle(ctx: &MqttContext, what: Lifecycle, client: &str, data: serde_json::Value) {
    let event =
        ctx.shared.policy.load().normalizer.lifecycle(what, PROTOCOL, client, data, uuid::Uuid::now_v7(), Utc::now());
    let route = meshgate_edge_agent::pipeline::Route::All;
    let when_full = meshgate_edge_agent::spool::WhenFull::Block;
    if ctx.shared.ingest.submit_unconfirmed(event, route, when_full).await.is_err() {
        tracing::debug!(client, "pipeline closed; lifecycle event not sent");
    }
}

/// Resolves when the registration was taken over; never without one.
async fn taken(taken_over: Option<&mut tokio::sync::oneshot::Receiver<()>>) {
    match taken_over {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when the broker queued deliveries; never without a notifier.
async fn notified(deliveries: Option<&Notify>) {
    match deliveries {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
