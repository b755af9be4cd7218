//! A `cloudevents.json` session: one structured CloudEvent per text message in, an acknowledgement per event out
//! once it is durable, and the device's subscriptions delivered as events.
//!
//! The CloudEvents WebSocket binding defines no acknowledgement; meshgate's, in JSON text messages:
//!
//! | from | message | meaning |
//! |---|---|---|
//! | device | a CloudEvent (an object with `specversion`) | publish it |
//! | gateway | `{"ack":"ID"}` | event `ID` is durable (in the order the events came) |
//! | gateway | `{"nack":"ID","reason":"…"}` (`ID` null if unreadable) | refused; `max_invalid` in a row close 1007 |
//! | device | `{"subscribe":"FILTER"}` / `{"unsubscribe":"FILTER"}` | local broker topics (MQTT filters) |
//! | gateway | `{"subscribed":"FILTER","granted":true}` / `{"unsubscribed":"FILTER"}` | the answer |
//! | gateway | a CloudEvent | a message on a subscribed topic (structured events as published, others wrapped) |
//!
//! Binary messages close the connection with 1003; messages over `max_message_size` with 1009, text that is not
//! UTF-8 with 1007. A client that stops reading is cut off once a message cannot leave within 10 s.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{SinkExt, StreamExt};

use meshgate_edge_agent::trace::Ingest;
use meshgate_protocols::cloudevents::CloudEvent;
use meshgate_protocols::mqtt::{QoS, SubscriptionOptions, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::WsContext;
use super::session::{Close, Event as SessionEvent, EventsConfig, EventsSession, Incoming, Outgoing, Token, Verdict};
use crate::acks::{Outcome, PendingAcks};
use crate::broker::local::now_ms;
use crate::broker::{Message as BrokerMessage, Outbound, SessionOwner, SessionRefused, session_name};
use crate::clients::{Client, ClientInfo};
use crate::limits::MessageRate;
use crate::metrics::{Protocol, RejectReason};
use crate::normalize::{Inbound, Normalized};
use crate::policy::DevicePolicy;

const PROTOCOL: Protocol = Protocol::Ws;

/// Deliveries sent per wake-up.
const DELIVERIES_PER_WAKE: usize = 64;

/// Bytes of deliveries taken per wake-up (at least one): a slow reader's backlog stays in its bounded queue.
const DELIVERY_BYTES_PER_WAKE: u64 = 256 * 1024;

/// Who is on the other end.
pub struct Device {
    /// The device's name: the `client` query parameter, else its user name, else `ws-{n}`.
    pub client_id: String,
    /// The policy in force and its ACL under it.
    pub policy: DevicePolicy,
    /// The user its subscriptions' session belongs to (`""`: anonymous).
    pub owner: String,
    /// The peer's address.
    pub peer: Option<std::net::SocketAddr>,
}

/// Why the connection ended before its session began (the close frame to send).
struct Refused(CloseCode, &'static str);

/// Serves a `cloudevents.json` session until it ends.
pub async fn serve<S>(mut ws: WebSocketStream<S>, ctx: Arc<WsContext>, device: Device)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.shared.metrics.connection_opened(PROTOCOL);
    let session = session_name::ws_client(&device.client_id);
    let notify = Arc::new(tokio::sync::Notify::new());
    match claim(&ctx, &device, &session, &notify) {
        Err(Refused(code, why)) => {
            let frame = CloseFrame { code, reason: why.into() };
            let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
        }
        Ok(registration) => {
            let mut device = device;
            let limits = device.policy.current(&ctx.shared.policy).limits;
            let rate =
                MessageRate::for_connection(&limits, &ctx.shared.user_rates, &device.owner, std::time::Instant::now());
            let listed = ctx.shared.clients.list(ClientInfo {
                client_id: device.client_id.clone(),
                user: device.owner.clone(),
                protocol: PROTOCOL,
                version: "cloudevents.json",
                peer: device.peer,
                keep_alive_secs: 0,
                session: Some(session.clone()),
            });
            let pending = PendingAcks::new(&ctx.shared, PROTOCOL);
            let conn_id = registration.conn_id;
            let c = &ctx.config;
            let config = EventsConfig {
                max_invalid: c.max_invalid,
                ping_every_ms: c.ping_interval_secs.max(1).saturating_mul(1000),
                idle_ms: c.idle_timeout_secs.max(1).saturating_mul(1000),
                limits,
            };
            let started = Instant::now();
            let events = EventsSession::new(config, 0);
            let client = Arc::clone(listed.client());
            let mut s =
                Session { ctx: Arc::clone(&ctx), device, session, pending, notify, rate, events, started, client };
            s.run(&mut ws, registration.taken_over).await;
            ctx.mqtt.registry.unregister(&s.session, conn_id);
            // A newer connection of the same user holds the session now: it is not ours to end.
            if ctx.shared.broker.detach(&s.session, conn_id) {
                ctx.shared.broker.disconnect(&s.session, Some(0));
            }
        }
    }
    ctx.shared.metrics.connection_closed(PROTOCOL);
}

/// Claims the client name's session for this connection: refused (1008) while another user's connection or
/// session holds the name, or past the broker's session limits (1013); a connection of the same user is taken
/// over (its subscriptions end with it, as a clean start's).
fn claim(
    ctx: &WsContext,
    device: &Device,
    session: &str,
    notify: &Arc<tokio::sync::Notify>,
) -> Result<crate::mqtt::registry::Registration, Refused> {
    let owner = SessionOwner::new(&device.owner, device.policy.acl_seen());
    let not_owner = || {
        ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
        tracing::info!(client = %device.client_id, user = %device.owner, "cloudevents.json client name belongs to another user");
        Refused(CloseCode::Policy, "client name belongs to another user")
    };
    if ctx.shared.broker.read(|b| b.owner_of(session).is_some_and(|o| o != owner.user)) {
        return Err(not_owner());
    }
    let registration = ctx.mqtt.registry.register(session, &owner.user).map_err(|_| not_owner())?;
    let now = now_ms();
    let connected = ctx.shared.broker.with(|b| b.connect(session, &owner, Version::V5, true, 0, u16::MAX, now));
    match connected {
        Ok(connected) => {
            for c in &connected.woken {
                ctx.shared.broker.wake(c);
            }
            ctx.shared.broker.attach_with(session, registration.conn_id, Arc::clone(notify));
            Ok(registration)
        }
        Err(refused) => {
            ctx.mqtt.registry.unregister(session, registration.conn_id);
            if refused == SessionRefused::NotOwner {
                return Err(not_owner());
            }
            ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            Err(Refused(CloseCode::Again, "session limit reached"))
        }
    }
}

struct Session {
    ctx: Arc<WsContext>,
    device: Device,
    /// The broker session of its subscriptions.
    session: String,
    /// The events waiting for the spool.
    pending: PendingAcks<Token>,
    /// Woken when the broker queued messages for the session.
    notify: Arc<tokio::sync::Notify>,
    /// `limits.max_messages_per_second` and `max_messages_per_second_per_user`: an event waits (and nothing more
    /// is read) until they allow it.
    rate: MessageRate,
    /// The protocol's state.
    events: EventsSession,
    /// The session counts milliseconds from here.
    started: Instant,
    /// Its entry in the client list.
    client: Arc<Client>,
}

impl Session {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        mut taken_over: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut shutdown = self.ctx.shared.shutdown.clone();
        let deliveries = Arc::clone(&self.notify);
        let mut out = Vec::new();
        loop {
            if self.act().await {
                // What the session said last (a close frame included) goes out, then the connection ends.
                let _ = send_all(ws, &mut out, &mut self.events).await;
                return;
            }
            if send_all(ws, &mut out, &mut self.events).await.is_err() {
                return;
            }
            let can_read = self.events.owed() < self.ctx.config.max_unacked;
            let timer = self.events.poll_timeout().map(|ms| self.started + Duration::from_millis(ms));
            tokio::select! {
                biased;
                _ = &mut taken_over => {
                    self.answer_all().await;
                    self.events.close(CloseCode::Normal, "session taken over");
                }
                _ = crate::listener::stopped(&mut shutdown) => {
                    self.answer_all().await;
                    self.events.close(CloseCode::Away, "gateway shutting down");
                }
                _ = self.client.kicked() => {
                    self.answer_all().await;
                    self.events.close(CloseCode::Policy, "disconnected by the administrator");
                }
                _ = self.pending.ready() => self.answer_ready(),
                message = ws.next(), if can_read => {
                    let now = self.now();
                    self.read(message, now);
                }
                _ = deliveries.notified() => self.pump(),
                _ = sleep_until(timer) => {
                    let now = self.now();
                    self.events.handle_timeout(now);
                }
            }
        }
    }

    /// Hands what the socket gave to the session.
    fn read(&mut self, message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>, now: u64) {
        use tokio_tungstenite::tungstenite::Error as E;
        let input = match &message {
            Some(Ok(Message::Text(text))) => Incoming::Text(text.as_bytes()),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Close(_))) | None => Incoming::Gone,
            Some(Ok(_)) => Incoming::Control,
            Some(Err(E::Capacity(_))) => Incoming::TooLarge,
            Some(Err(E::Utf8(_))) => Incoming::NotUtf8,
            Some(Err(E::Protocol(_))) => Incoming::ProtocolError,
            Some(Err(_)) => Incoming::Gone,
        };
        self.events.handle_input(input, now);
    }

    /// Acts on every event of the session; `true` once it is over.
    async fn act(&mut self) -> bool {
        while let Some(event) = self.events.poll_event() {
            match event {
                SessionEvent::Publish { token, event, topic } => {
                    if let Some(reason) = self.on_publish(token, *event, topic).await {
                        self.events.complete(token, Verdict::Refused(reason.into()));
                    }
                }
                SessionEvent::Subscribe(filter) => {
                    let granted = self.subscribe(&filter);
                    self.events.subscribed(&filter, granted);
                }
                SessionEvent::Unsubscribe(filter) => {
                    let session = self.session.clone();
                    self.ctx.shared.broker.with(|b| b.unsubscribe(&session, &filter));
                    self.events.unsubscribed(&filter);
                }
                SessionEvent::Refused(reject) | SessionEvent::Closed(Close { reject, .. }) => {
                    if let Some(reason) = reject {
                        self.ctx.shared.metrics.reject(PROTOCOL, reason);
                    }
                }
            }
        }
        self.events.is_closed()
    }

    /// Takes a valid event: `None` when its answer waits for the spool, else the reason it is refused.
    async fn on_publish(&mut self, token: Token, mut event: CloudEvent, topic: String) -> Option<&'static str> {
        self.rate.pace().await;
        if !self.device.policy.acl(&self.ctx.shared.policy).may_publish(&topic) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            return Some("not authorized");
        }
        // Before the local copy is made: subscribers get the event with the gateway's span as its parent.
        let traces = &self.ctx.shared.traces;
        // The event's size, serialized only for a recorded span.
        let at = Ingest { protocol: PROTOCOL.as_str(), client: &self.device.client_id, topic: &topic, bytes: None };
        let span = traces.ingest(&mut event, at);
        let local = local_message(&event, &topic, &self.device.client_id);
        let normalizer = &self.device.policy.current(&self.ctx.shared.policy).normalizer;
        let Normalized { event, route, .. } = normalizer.kept(event, &topic);
        self.ctx.shared.metrics.message_in(PROTOCOL);
        self.client.received();
        // A message for persistent sessions is made durable with the event, and the commit routes it.
        let (companion, local) = match local {
            Some(m) => self.ctx.shared.broker.companion(m, None),
            None => (None, None),
        };
        match self.ctx.shared.ingest.submit_with(event, route, companion, span).await {
            Ok(ticket) => {
                self.pending.push(token, Some(ticket), local);
                None
            }
            Err(_) => Some("gateway shutting down"),
        }
    }

    /// Completes every event whose outcome is known (they leave with the next write).
    fn answer_ready(&mut self) {
        let Session { pending, ctx, events, .. } = self;
        pending.resolve(&ctx.shared, |token, outcome| events.complete(token, verdict(outcome)));
    }

    /// Waits for every event's outcome and completes them (the session is about to end).
    async fn answer_all(&mut self) {
        let Session { pending, ctx, events, .. } = self;
        pending.resolve_all(&ctx.shared, |token, outcome| events.complete(token, verdict(outcome))).await;
    }

    fn subscribe(&mut self, filter: &str) -> bool {
        if meshgate_protocols::mqtt::topic::validate_filter(filter).is_err()
            || !self.device.policy.acl(&self.ctx.shared.policy).may_subscribe(filter)
        {
            return false;
        }
        let now = now_ms();
        let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() };
        let subscribed = self.ctx.shared.broker.with(|b| b.subscribe(&self.session, filter, &options, None, now));
        if subscribed.is_err() {
            // Past a subscription or topic-depth limit of the broker's.
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            return false;
        }
        self.notify.notify_one();
        true
    }

    /// Hands what the broker queued for the device's subscriptions to the session; a delivery counts as done
    /// once handed over.
    fn pump(&mut self) {
        let session = self.session.clone();
        let now = now_ms();
        let out = self
            .ctx
            .shared
            .broker
            .with(|b| b.poll_outbound(&session, now, DELIVERIES_PER_WAKE, DELIVERY_BYTES_PER_WAKE));
        let more = out.len() == DELIVERIES_PER_WAKE;
        for o in out {
            let Outbound::Publish { packet_id, delivery, .. } = o else { continue };
            let text = self.delivery_text(&delivery.message);
            self.ctx.shared.broker.with(|b| b.session_mut(&session).map(|s| s.puback(packet_id)));
            if let Some(text) = text {
                self.events.deliver(text);
                self.client.sent(1);
            }
        }
        if more {
            self.ctx.shared.broker.wake(&session);
        }
    }

    /// A broker message as the event sent to the device: a structured CloudEvent as published, anything else
    /// wrapped with the default mapping.
    fn delivery_text(&mut self, m: &BrokerMessage) -> Option<String> {
        if let Ok(event) = CloudEvent::from_json_slice(&m.payload) {
            return Some(event.to_json_string());
        }
        let inbound = Inbound {
            protocol: Protocol::Mqtt,
            client_id: &m.publisher,
            topic: &m.topic,
            subject: None,
            content_type: m.properties.content_type.as_deref(),
            payload: &m.payload,
        };
        let normalizer = &self.device.policy.current(&self.ctx.shared.policy).normalizer;
        let mut event = normalizer.wrap(&inbound, uuid::Uuid::now_v7(), Utc::now()).ok()?.event;
        // The event the mesh received for this message: the same id, source and time on every delivery.
        if let Some(identity) = &m.event {
            event.id.clone_from(&identity.id);
            event.source.clone_from(&identity.source);
            event.time.clone_from(&identity.time);
        }
        Some(event.to_json_string())
    }
}

/// The event for local subscribers of its subject, as a structured CloudEvent (QoS 1).
fn local_message(event: &CloudEvent, topic: &str, client: &str) -> Option<BrokerMessage> {
    if topic.is_empty() || meshgate_protocols::mqtt::topic::validate_name(topic).is_err() {
        return None;
    }
    let mut m = BrokerMessage::new(
        topic,
        event.to_json_string().as_bytes(),
        QoS::AtLeastOnce,
        false,
        &Default::default(),
        client,
        now_ms(),
    );
    m.properties.content_type = Some("application/cloudevents+json".into());
    m.event = Some(crate::broker::message::EventIdentity::of(event));
    Some(m)
}

/// The answer for an outcome from the spool.
fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Stored | Outcome::Settled => Verdict::Stored,
        Outcome::Failed(e) => Verdict::Refused(format!("not stored: {e}")),
    }
}

/// How long one write may take: a client that stops reading is cut off after this, rather than holding its
/// session (and the acknowledgements behind it) forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends what the session has to send, with one flush (within [`SEND_TIMEOUT`]).
async fn send_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    out: &mut Vec<Outgoing>,
    session: &mut EventsSession,
) -> Result<(), ()> {
    session.poll_transmit(out);
    if out.is_empty() {
        return Ok(());
    }
    let sent = async {
        for o in out.drain(..) {
            match o {
                Outgoing::Text(text) => ws.feed(Message::text(text)).await?,
                Outgoing::Ping => ws.feed(Message::Ping(Default::default())).await?,
                Outgoing::Close(code, why) => ws.close(Some(CloseFrame { code, reason: why.into() })).await?,
            }
        }
        ws.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(())) => Ok(()),
        _ => {
            out.clear();
            Err(())
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
