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

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{SinkExt, StreamExt};

use meshgate_protocols::cloudevents::CloudEvent;
use meshgate_protocols::mqtt::{QoS, SubscriptionOptions, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::WsContext;
use super::request::{Refusal, Request};
use crate::acks::{Outcome, PendingAcks};
use crate::acl::DeviceAcl;
use crate::broker::local::now_ms;
use crate::broker::{Message as BrokerMessage, Outbound, SessionOwner, SessionRefused, session_name};
use crate::limits::MessageRate;
use crate::metrics::{Protocol, RejectReason};
use crate::normalize::{Inbound, Normalized};

const PROTOCOL: Protocol = Protocol::Ws;

/// Deliveries sent per wake-up.
const DELIVERIES_PER_WAKE: usize = 64;

/// Bytes of deliveries taken per wake-up (at least one): a slow reader's backlog stays in its bounded queue.
const DELIVERY_BYTES_PER_WAKE: u64 = 256 * 1024;

/// Who is on the other end.
pub struct Device {
    /// The device's name: the `client` query parameter, else its user name, else `ws-{n}`.
    pub client_id: String,
    /// Its ACL.
    pub acl: DeviceAcl,
    /// The user its subscriptions' session belongs to (`""`: anonymous).
    pub owner: String,
}

/// Why the session ended.
enum End {
    Close(CloseCode, &'static str),
    Gone,
}

/// Serves a `cloudevents.json` session until it ends.
pub async fn serve<S>(mut ws: WebSocketStream<S>, ctx: Arc<WsContext>, device: Device)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.shared.metrics.connection_opened(PROTOCOL);
    let session = session_name::ws_client(&device.client_id);
    let notify = Arc::new(tokio::sync::Notify::new());
    let end = match claim(&ctx, &device, &session, &notify) {
        Err(end) => end,
        Ok(registration) => {
            let (limits, rates) = (&ctx.shared.limits, &ctx.shared.user_rates);
            let rate = MessageRate::for_connection(limits, rates, &device.owner, std::time::Instant::now());
            let pending = PendingAcks::new(&ctx.shared, PROTOCOL);
            let conn_id = registration.conn_id;
            let mut s = Session { ctx: Arc::clone(&ctx), device, session, pending, notify, rate };
            let end = s.run(&mut ws, registration.taken_over).await;
            ctx.mqtt.registry.unregister(&s.session, conn_id);
            // A newer connection of the same user holds the session now: it is not ours to end.
            if ctx.shared.broker.detach(&s.session, conn_id) {
                ctx.shared.broker.disconnect(&s.session, Some(0));
            }
            end
        }
    };
    if let End::Close(code, why) = end {
        let frame = CloseFrame { code, reason: why.into() };
        let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
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
) -> Result<crate::mqtt::registry::Registration, End> {
    let owner = SessionOwner::new(&device.owner, &device.acl);
    let not_owner = || {
        ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
        tracing::info!(client = %device.client_id, user = %device.owner, "cloudevents.json client name belongs to another user");
        End::Close(CloseCode::Policy, "client name belongs to another user")
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
            Err(End::Close(CloseCode::Again, "session limit reached"))
        }
    }
}

struct Session {
    ctx: Arc<WsContext>,
    device: Device,
    /// The broker session of its subscriptions.
    session: String,
    /// The events waiting for the spool, by id.
    pending: PendingAcks<String>,
    /// Woken when the broker queued messages for the session.
    notify: Arc<tokio::sync::Notify>,
    /// `limits.max_messages_per_second` and `max_messages_per_second_per_user`: an event waits (and nothing more
    /// is read) until they allow it.
    rate: MessageRate,
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        mut taken_over: tokio::sync::oneshot::Receiver<()>,
    ) -> End {
        let config = &self.ctx.config;
        let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
        let ping_every = Duration::from_secs(config.ping_interval_secs.max(1));
        let mut last_heard = Instant::now();
        let mut invalid_in_a_row = 0u32;
        let mut shutdown = self.ctx.shared.shutdown.clone();
        let deliveries = Arc::clone(&self.notify);
        loop {
            let can_read = self.pending.len() < self.ctx.config.max_unacked;
            let next_ping = last_heard + ping_every;
            tokio::select! {
                biased;
                _ = &mut taken_over => {
                    return self.answer_pending(ws, End::Close(CloseCode::Normal, "session taken over")).await;
                }
                _ = crate::listener::stopped(&mut shutdown) => {
                    return self.answer_pending(ws, End::Close(CloseCode::Away, "gateway shutting down")).await;
                }
                _ = self.pending.ready() => {
                    if self.answer_ready(ws).await.is_err() {
                        return End::Gone;
                    }
                }
                message = ws.next(), if can_read => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            match self.on_text(ws, text.as_bytes()).await {
                                Ok(true) => invalid_in_a_row = 0,
                                Ok(false) => {
                                    invalid_in_a_row += 1;
                                    if invalid_in_a_row >= self.ctx.config.max_invalid.max(1) {
                                        return End::Close(CloseCode::Invalid, "too many invalid events");
                                    }
                                }
                                Err(()) => return End::Gone,
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
                            return End::Close(CloseCode::Unsupported, "cloudevents.json carries text messages");
                        }
                        Some(Ok(Message::Close(_))) | None => return End::Gone,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            use tokio_tungstenite::tungstenite::Error as E;
                            return match e {
                                E::Capacity(_) => {
                                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::TooLarge);
                                    End::Close(CloseCode::Size, "message too large")
                                }
                                E::Utf8(_) => {
                                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::Malformed);
                                    End::Close(CloseCode::Invalid, "text message is not UTF-8")
                                }
                                E::Protocol(_) => {
                                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::Malformed);
                                    End::Close(CloseCode::Protocol, "WebSocket protocol error")
                                }
                                _ => End::Gone,
                            };
                        }
                    }
                }
                _ = deliveries.notified() => {
                    if self.pump(ws).await.is_err() {
                        return End::Gone;
                    }
                }
                _ = tokio::time::sleep_until(next_ping) => {
                    if last_heard.elapsed() >= idle {
                        self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::KeepAliveTimeout);
                        return End::Close(CloseCode::Away, "idle");
                    }
                    if send(ws, Message::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// Handles a text message; `Ok(false)` when it was refused as invalid, `Err` when the socket failed.
    async fn on_text<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        text: &[u8],
    ) -> Result<bool, ()> {
        let event = match Request::parse(text, &self.ctx.shared.limits) {
            Request::Subscribe(filter) => {
                let granted = self.subscribe(&filter);
                return send_json(ws, &json!({ "subscribed": filter, "granted": granted })).await.map(|()| true);
            }
            Request::Unsubscribe(filter) => {
                let session = self.session.clone();
                self.ctx.shared.broker.with(|b| b.unsubscribe(&session, &filter));
                return send_json(ws, &json!({ "unsubscribed": filter })).await.map(|()| true);
            }
            Request::Refused { id, reason, kind } => {
                let metric = match kind {
                    Refusal::NotJson => None,
                    Refusal::InvalidEvent => Some(RejectReason::InvalidCloudEvent),
                    Refusal::TooDeep => Some(RejectReason::LimitExceeded),
                };
                if let Some(m) = metric {
                    self.ctx.shared.metrics.reject(PROTOCOL, m);
                }
                return self.nack(ws, id.as_deref(), &reason).await.map(|()| false);
            }
            Request::Publish(event) => *event,
        };
        self.rate.pace().await;
        // ACL publish rules judge the subject; an event without one is judged as the empty topic, which only a `#`
        // rule or `acl_default = "allow"` lets through.
        let topic = event.subject.clone().unwrap_or_default();
        if !self.device.acl.may_publish(&topic) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            return self.nack(ws, Some(&event.id), "not authorized").await.map(|()| true);
        }
        let local = local_message(&event, &topic, &self.device.client_id);
        let id = event.id.clone();
        let Normalized { event, route, .. } = self.ctx.shared.normalizer.kept(event, &topic);
        self.ctx.shared.metrics.message_in(PROTOCOL);
        // A message for persistent sessions is made durable with the event, and the commit routes it.
        let (companion, local) = match local {
            Some(m) => self.ctx.shared.broker.companion(m, None),
            None => (None, None),
        };
        match self.ctx.shared.ingest.submit_with(event, route, companion).await {
            Ok(ticket) => {
                self.pending.push(id, Some(ticket), local);
                Ok(true)
            }
            Err(_) => self.nack(ws, Some(&id), "gateway shutting down").await.map(|()| true),
        }
    }

    /// Answers every event still waiting for the spool, then ends with `end` (or `Gone` if the device left).
    async fn answer_pending<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        end: End,
    ) -> End {
        let mut answers = Vec::new();
        let _ = self
            .pending
            .resolve_all(&self.ctx.shared, |id, outcome| {
                answers.push(answer(id, outcome));
                Ok::<_, Infallible>(())
            })
            .await;
        if send_all(ws, answers).await.is_err() {
            return End::Gone;
        }
        end
    }

    /// Answers, in one write, every event whose outcome is known.
    async fn answer_ready<S: AsyncRead + AsyncWrite + Unpin>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), ()> {
        let mut answers = Vec::new();
        let _ = self.pending.resolve(&self.ctx.shared, |id, outcome| {
            answers.push(answer(id, outcome));
            Ok::<_, Infallible>(())
        });
        send_all(ws, answers).await
    }

    fn subscribe(&mut self, filter: &str) -> bool {
        if meshgate_protocols::mqtt::topic::validate_filter(filter).is_err() || !self.device.acl.may_subscribe(filter) {
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

    /// Sends what the broker queued for the device's subscriptions; a delivery counts as done once written.
    async fn pump<S: AsyncRead + AsyncWrite + Unpin>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), ()> {
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
                send(ws, Message::text(text)).await?;
            }
        }
        if more {
            self.ctx.shared.broker.wake(&session);
        }
        Ok(())
    }

    /// A broker message as the event sent to the device: a structured CloudEvent as published, anything else
    /// wrapped with the default mapping.
    fn delivery_text(&self, m: &BrokerMessage) -> Option<String> {
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
        let mut event = self.ctx.shared.normalizer.wrap(&inbound, uuid::Uuid::now_v7(), Utc::now()).ok()?.event;
        // The event the mesh received for this message: the same id, source and time on every delivery.
        if let Some(identity) = &m.event {
            event.id.clone_from(&identity.id);
            event.source.clone_from(&identity.source);
            event.time.clone_from(&identity.time);
        }
        Some(event.to_json_string())
    }

    async fn nack<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        id: Option<&str>,
        reason: &str,
    ) -> Result<(), ()> {
        send_json(ws, &json!({ "nack": id, "reason": reason })).await
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

async fn send_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, value: &Value) -> Result<(), ()> {
    send(ws, Message::text(value.to_string())).await
}

/// How long one message may take to leave: a client that stops reading is cut off after this, rather than
/// holding its session (and the acknowledgements behind it) forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to an event once its outcome is known.
fn answer(id: String, outcome: Outcome) -> Message {
    let value = match outcome {
        Outcome::Stored | Outcome::Settled => json!({ "ack": id }),
        Outcome::Failed(e) => json!({ "nack": id, "reason": format!("not stored: {e}") }),
    };
    Message::text(value.to_string())
}

/// Sends `messages` with one flush (within [`SEND_TIMEOUT`]).
async fn send_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    messages: Vec<Message>,
) -> Result<(), ()> {
    if messages.is_empty() {
        return Ok(());
    }
    let sent = async {
        for m in messages {
            ws.feed(m).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
