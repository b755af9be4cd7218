//! The tokio driver of one AMQP connection: feeds socket bytes to the sans-IO [`ServerConnection`], checks
//! credentials, turns each publish into a CloudEvent for the spool, confirms it only once it is durable, pumps
//! the broker's messages to consumers, and keeps time for heartbeats.
//!
//! Flow control: before a publish goes to the spool the driver looks at the spool's credit. With none left it
//! sends channel.flow(false) to the publishing channels and holds their confirms; it resumes them once half of the
//! credit is back. A client that ignores channel.flow is slowed anyway: the driver waits for the spool before it
//! reads the socket again, and stops reading while `max_unconfirmed` confirms are owed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::{Buf, BytesMut};
use chrono::Utc;
use meshgate_edge_agent::pipeline::IngestShare;
use meshgate_protocols::cloudevents::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::AmqpContext;
use super::broker_queues::BrokerQueues;
use super::connection::{Event, Limits, ServerConnection, reply};
use super::topic;
use crate::acks::{Outcome, PendingAcks};
use crate::auth::AuthOutcome;
use crate::broker::local::now_ms as wall_ms;
use crate::broker::message::EventIdentity;
use crate::broker::{Message, MessageProperties};
use crate::clients::{ClientInfo, Listed, kicked};
use crate::limits::MessageRate;
use crate::listener::Peer;
use crate::metrics::{Protocol, RejectReason};
use crate::normalize::{AmqpInbound, Normalized, cloudevent_headers};
use crate::policy::DevicePolicy;
use meshgate_edge_agent::trace::Ingest;

const PROTOCOL: Protocol = Protocol::Amqp;

/// Deliveries written per wake-up before the driver checks its other work again.
const DELIVERIES_PER_WAKE: usize = 64;

/// How often a paused connection looks whether the spool's credit is back.
const CREDIT_CHECK: Duration = Duration::from_millis(20);

/// How long a closing connection waits for the client's close-ok.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(2);

/// Connection ids for the broker's queue sessions.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The answer a publish is owed: its channel and, in confirm mode, its delivery tag (without confirm mode a
/// message still waits in order behind earlier ones to reach local subscribers).
type Confirm = (u16, Option<u64>);

/// Serves one accepted connection until it ends. A peer that proved an identity with a client certificate (amqps
/// with mTLS) may log in with the SASL mechanism EXTERNAL as that device.
pub async fn serve_as<S>(stream: S, ctx: Arc<AmqpContext>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.shared.metrics.connection_opened(PROTOCOL);
    let mut driver = Driver::new(stream, Arc::clone(&ctx), peer);
    let outcome = driver.run().await;
    driver.conn.release(&mut driver.queues);
    driver.queues.close();
    ctx.shared.metrics.connection_closed(PROTOCOL);
    let client = driver.client_id.as_str();
    match outcome {
        Ok(()) => tracing::debug!(client, "AMQP connection closed"),
        Err(e) => tracing::debug!(client, error = %e, "AMQP connection failed"),
    }
}

struct Driver<S> {
    stream: S,
    ctx: Arc<AmqpContext>,
    conn: ServerConnection,
    queues: BrokerQueues,
    deliveries: Arc<Notify>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    started: Instant,
    client_id: String,
    /// The policy in force and what this device may publish and bind under it.
    device: DevicePolicy,
    /// Its place in the client list, once it logged in.
    listed: Option<Listed>,
    pending: PendingAcks<Confirm>,
    /// The peer's address and certificate identity.
    peer: Peer,
    /// Its share of the spool's queue for publishes without confirms.
    share: IngestShare,
    /// `limits.max_messages_per_second` and `max_messages_per_second_per_user`.
    rate: MessageRate,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    fn new(stream: S, ctx: Arc<AmqpContext>, peer: Peer) -> Self {
        let c = &ctx.config;
        let limits = Limits {
            frame_max: c.frame_max,
            channel_max: c.channel_max,
            heartbeat: c.heartbeat_secs,
            max_body: c.max_message_size,
            max_table_depth: ctx.shared.policy.load().limits.max_table_depth,
        };
        let conn_id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let queues = BrokerQueues::new(Arc::clone(&ctx.shared.broker), conn_id, crate::acl::DeviceAcl::default());
        Driver {
            stream,
            conn: ServerConnection::new(limits, 0).with_certificate_identity(peer.identity.clone()),
            peer,
            share: IngestShare::new(ctx.shared.policy.load().limits.max_unconfirmed_per_connection),
            rate: MessageRate::default(),
            deliveries: queues.notifier(),
            queues,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: Vec::with_capacity(4096),
            started: Instant::now(),
            client_id: String::new(),
            device: DevicePolicy::new(&ctx.shared.policy),
            listed: None,
            pending: PendingAcks::new(&ctx.shared, PROTOCOL),
            ctx,
        }
    }

    /// Milliseconds on the connection's own clock, as the state machine counts them.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends what the state machine has to send, once the durable queues its answers speak of are durable.
    async fn flush(&mut self) -> std::io::Result<()> {
        for id in self.queues.take_durable_changes() {
            if let Err(e) = self.ctx.shared.broker.persist_session(&id).await {
                tracing::warn!(queue = %id, error = %e, "durable queue could not be made durable before its answer");
            }
        }
        let now = self.now();
        self.conn.poll_transmit(&mut self.wbuf, now);
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            // A no-op on TCP; a TLS stream sends what it buffered.
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let handshake_deadline = Instant::now() + Duration::from_secs(self.ctx.config.connect_timeout_secs);
        let mut shutdown = self.ctx.shared.shutdown.clone();
        loop {
            self.flush().await?;
            if self.conn.is_closed() {
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
            let can_read = self.pending.len() < self.ctx.config.max_unconfirmed;
            let timer = self.conn.poll_timeout().map(|at| self.started + Duration::from_millis(at));
            let handshake = (!self.conn.is_open()).then_some(handshake_deadline);
            let paused = !self.conn.publish_flow();
            let deliveries = Arc::clone(&self.deliveries);
            let listed = self.listed.as_ref().map(|l| l.client().as_ref());
            tokio::select! {
                biased;
                _ = crate::listener::stopped(&mut shutdown) => {
                    return self.shut_down("CONNECTION_FORCED - gateway shutting down").await;
                }
                _ = kicked(listed) => {
                    tracing::info!(client = %self.client_id, "AMQP connection closed by the administrator");
                    return self.shut_down("CONNECTION_FORCED - closed by the administrator").await;
                }
                _ = self.pending.ready() => {
                    self.complete_ready();
                }
                read = self.stream.read_buf(&mut self.rbuf), if can_read => {
                    if read? == 0 {
                        return Ok(());
                    }
                    self.process_input().await;
                    self.complete_ready();
                }
                _ = deliveries.notified() => {
                    if self.conn.pump_deliveries(&mut self.queues, DELIVERIES_PER_WAKE) {
                        self.deliveries.notify_one();
                    }
                    let sent = self.queues.take_delivered();
                    if let Some(listed) = &self.listed {
                        listed.client().sent(sent);
                    }
                }
                _ = sleep_until(timer) => {
                    let now = self.now();
                    self.conn.handle_timeout(now);
                }
                _ = sleep_until(handshake) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
                    self.conn.close(reply::CONNECTION_FORCED, "CONNECTION_FORCED - handshake timed out", 0, 0);
                    let _ = self.flush().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(CREDIT_CHECK), if paused => {
                    if self.ctx.shared.ingest.credits() * 2 >= self.ctx.shared.ingest.max_credits() {
                        self.conn.set_publish_flow(true);
                    }
                }
            }
        }
    }

    /// The gateway stops, or the administrator kicked the connection: the confirms owed go out, then
    /// connection.close 320 with `text` and a short wait for close-ok.
    async fn shut_down(&mut self, text: &str) -> std::io::Result<()> {
        let Driver { pending, ctx, conn, .. } = self;
        pending.resolve_all(&ctx.shared, |confirm, outcome| answer(conn, confirm, outcome)).await;
        self.conn.set_publish_flow(true);
        self.conn.close(reply::CONNECTION_FORCED, text, 0, 0);
        self.flush().await?;
        let _ = tokio::time::timeout(CLOSE_OK_WAIT, async {
            while !self.conn.is_closed() {
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => self.process_input().await,
                }
            }
        })
        .await;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Hands complete frames to the state machine and acts on its events, until the buffer holds no whole frame.
    async fn process_input(&mut self) {
        if self.listed.is_some() && self.device.refresh(&self.ctx.shared.policy) {
            // A reload changed the rules: bindings are judged by the new ones from now on.
            self.queues.set_acl(self.device.acl_seen().clone());
        }
        loop {
            let now = self.now();
            let used = self.conn.handle_input(&self.rbuf, now, &mut self.queues);
            self.rbuf.advance(used);
            let mut acted = false;
            while let Some(event) = self.conn.poll_event() {
                acted = true;
                self.on_event(event).await;
            }
            if (used == 0 && !acted) || self.conn.is_closed() {
                return;
            }
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Authenticate { mechanism, username, password, connection_name } => {
                let (outcome, known) = if mechanism == "EXTERNAL" {
                    // The state machine offers EXTERNAL only with a verified certificate, whose name this is.
                    (AuthOutcome::Allowed, true)
                } else {
                    let auth = self.ctx.shared.policy.load().auth.clone();
                    auth.check_presented(&username, password.as_bytes(), self.peer.login(PROTOCOL)).await
                };
                let mut ok = outcome == AuthOutcome::Allowed;
                if ok {
                    match self.device_name(connection_name, &username, known) {
                        Ok(name) => self.client_id = name,
                        Err(why) => {
                            tracing::info!(user = %username, "AMQP login refused: {why}");
                            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                            ok = false;
                        }
                    }
                }
                if ok {
                    let cell = &self.ctx.shared.policy;
                    let acl = self.device.admit(cell, known.then_some(username.as_str()), &self.client_id).clone();
                    let owner = if known { username.as_str() } else { "" };
                    self.queues.set_device(acl, owner);
                    let (limits, rates) = (self.device.current(cell).limits, &self.ctx.shared.user_rates);
                    self.rate = MessageRate::for_connection(&limits, rates, owner, std::time::Instant::now());
                    self.listed = Some(self.ctx.shared.clients.list(ClientInfo {
                        client_id: self.client_id.clone(),
                        user: owner.to_string(),
                        protocol: PROTOCOL,
                        version: "0-9-1",
                        peer: self.peer.addr,
                        keep_alive_secs: u32::from(self.ctx.config.heartbeat_secs),
                        session: None,
                    }));
                } else if outcome != AuthOutcome::Allowed {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::BadCredentials);
                }
                self.conn.accept_credentials(ok);
            }
            Event::Publish { channel, delivery_tag, exchange, routing_key, properties, body } => {
                self.on_publish(channel, delivery_tag, &exchange, &routing_key, &properties, body).await;
            }
            Event::Closed { code, text } => {
                if let Some(reason) = reject_reason(code) {
                    self.ctx.shared.metrics.reject(PROTOCOL, reason);
                }
                if code >= 300 {
                    tracing::debug!(client = %self.client_id, code, text, "AMQP connection closed with an error");
                }
            }
        }
    }

    /// The device's name: its `connection_name` client property (else its user name), which must fit
    /// `auth.clientid_must_match` when that is set; the certificate name with `auth.clientid_from_certificate`.
    fn device_name(
        &self,
        connection_name: Option<String>,
        username: &str,
        known: bool,
    ) -> Result<String, crate::auth::client_id::ClientIdRefused> {
        let (user, certificate) = (known.then_some(username), self.peer.identity.as_deref());
        let rules = &self.ctx.shared.policy.load().client_ids;
        rules.name(connection_name.as_deref(), || username.to_string(), user, certificate)
    }

    async fn on_publish(
        &mut self,
        channel: u16,
        tag: Option<u64>,
        exchange: &str,
        routing_key: &str,
        properties: &AMQPProperties,
        body: Vec<u8>,
    ) {
        // Over its message rate the connection waits here, and reads nothing meanwhile.
        self.rate.pace().await;
        let topic = topic::routing_key_to_topic(routing_key);
        if !self.device.acl(&self.ctx.shared.policy).may_publish(&topic) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            let text = format!("ACCESS_REFUSED - publishing to '{routing_key}' is not allowed");
            self.conn.refuse_publish(channel, reply::ACCESS_REFUSED, &text);
            return;
        }
        let content_type = properties.content_type().as_ref().map(|c| c.as_str());
        // The headers are read once: as CloudEvents attributes here, as user properties for local subscribers.
        let headers = cloudevent_headers(properties.headers().as_ref());
        let normalized = match &headers {
            Ok(headers) => {
                let inbound = AmqpInbound {
                    client_id: &self.client_id,
                    exchange,
                    routing_key,
                    topic: &topic,
                    content_type,
                    headers,
                    body: &body,
                };
                self.device
                    .current(&self.ctx.shared.policy)
                    .normalizer
                    .amqp(&inbound, uuid::Uuid::now_v7(), Utc::now())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.clone()),
        };
        let Normalized { mut event, route, when_full } = match normalized {
            Ok(n) => n,
            Err(why) => {
                self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::InvalidCloudEvent);
                tracing::debug!(client = %self.client_id, error = %why, routing_key, "invalid CloudEvent refused");
                match tag {
                    // Confirms leave in tag order: the state machine holds this nack behind earlier publishes.
                    Some(tag) => self.conn.confirm(channel, tag, false),
                    None => {
                        let text = format!("PRECONDITION_FAILED - invalid CloudEvent: {why}");
                        self.conn.refuse_publish(channel, reply::PRECONDITION_FAILED, &text);
                    }
                }
                return;
            }
        };
        self.ctx.shared.metrics.message_in(PROTOCOL);
        if let Some(listed) = &self.listed {
            listed.client().received();
        }
        let traces = &self.ctx.shared.traces;
        let at =
            Ingest { protocol: PROTOCOL.as_str(), client: &self.client_id, topic: &topic, bytes: Some(body.len()) };
        let span = traces.ingest(&mut event, at);
        let mut local = self.local_message(&topic, properties, &headers.unwrap_or_default(), body, tag.is_some());
        if let Some(m) = local.as_mut() {
            m.event = Some(EventIdentity::of(&event));
            if traces.is_on() {
                m.carry_trace(&event);
            }
        }
        if self.ctx.shared.ingest.credits() == 0 && self.conn.publish_flow() {
            // The spool withholds credit: tell the publishers before waiting on it.
            self.conn.set_publish_flow(false);
            self.ctx.shared.metrics.flow_paused(PROTOCOL);
            let _ = self.flush().await;
        }
        // A message for a durable queue (or a persistent MQTT session) is made durable with the event, and the
        // commit routes it (`local` is then `None`).
        let (companion, local) = match local {
            Some(m) => self.ctx.shared.broker.companion(m, None),
            None => (None, None),
        };
        match tag {
            Some(tag) => match self.ctx.shared.ingest.submit_with(event, route, companion, span).await {
                Ok(ticket) => self.pending.push((channel, Some(tag)), Some(ticket), local),
                Err(_) => self.conn.confirm(channel, tag, false),
            },
            None => {
                let share = Some(&self.share);
                let ingest = &self.ctx.shared.ingest;
                if ingest.submit_unconfirmed_within(event, route, when_full, share, companion, span).await.is_ok() {
                    self.pending.push((channel, None), None, local);
                }
            }
        }
    }

    /// The broker message for local subscribers (QoS 1 with confirms or delivery mode 2, else 0): headers become user properties,
    /// reply-to the response topic, correlation-id the correlation data, expiration the message expiry.
    fn local_message(
        &self,
        topic: &str,
        p: &AMQPProperties,
        headers: &[(String, HeaderValue)],
        body: Vec<u8>,
        confirmed: bool,
    ) -> Option<Message> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return None;
        }
        let user_properties = headers
            .iter()
            .map(|(name, value)| {
                let text = match value {
                    HeaderValue::String(s) => s.clone(),
                    HeaderValue::Bool(b) => b.to_string(),
                    HeaderValue::Int(i) => i.to_string(),
                    HeaderValue::Timestamp(t) => t.to_string(),
                };
                (name.clone(), text)
            })
            .collect();
        let now = wall_ms();
        let expiry = p.expiration().as_ref().and_then(|e| e.as_str().parse::<u64>().ok());
        Some(Message {
            topic: topic.to_string(),
            payload: body,
            // Kept until acknowledged by durable queues when confirmed or persistent (delivery mode 2), as
            // RabbitMQ keeps it; a transient message without confirms is QoS 0 and may be dropped under pressure.
            qos: u8::from(confirmed || *p.delivery_mode() == Some(2)),
            retain: false,
            properties: MessageProperties {
                content_type: p.content_type().as_ref().map(|c| c.as_str().to_string()),
                response_topic: p.reply_to().as_ref().map(|r| topic::routing_key_to_topic(r.as_str())),
                correlation_data: p.correlation_id().as_ref().map(|c| c.as_str().as_bytes().to_vec()),
                user_properties,
                ..MessageProperties::default()
            },
            publisher: self.client_id.clone(),
            expires_at_ms: expiry.map(|ms| now.saturating_add(ms)),
            event: None,
        })
    }

    /// Settles every pending publish whose outcome is known, in order.
    fn complete_ready(&mut self) {
        let Driver { pending, ctx, conn, .. } = self;
        pending.resolve(&ctx.shared, |confirm, outcome| answer(conn, confirm, outcome));
    }
}

/// Confirms a settled publish (with a nack if it could not be stored).
fn answer(conn: &mut ServerConnection, (channel, tag): Confirm, outcome: Outcome) {
    if let Some(tag) = tag {
        conn.confirm(channel, tag, !matches!(outcome, Outcome::Failed(_)));
    }
}

/// The reject counted for a connection closed with `code` (a refused login is counted where it is refused; the
/// handshake timeout where it fires).
fn reject_reason(code: u16) -> Option<RejectReason> {
    match code {
        0..300 | reply::ACCESS_REFUSED | reply::CONNECTION_FORCED => None,
        reply::FRAME_ERROR => Some(RejectReason::Malformed),
        reply::RESOURCE_ERROR => Some(RejectReason::TooLarge),
        _ => Some(RejectReason::ProtocolViolation),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
