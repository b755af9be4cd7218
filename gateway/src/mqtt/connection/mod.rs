//! The tokio driver of one MQTT connection: reads and decodes packets, admits publishes into the pipeline,
//! acknowledges each one only when its event is durable, and writes acknowledgements in batches.
//!
//! Order of work per wake-up: flush what is queued for the socket, then wait for whichever comes first of a
//! takeover, shutdown, the oldest pending acknowledgement becoming durable, socket input (only while fewer than Receive Maximum
//! acknowledgements are pending, which is how a fast device is slowed), or the keep-alive deadline.
//! Acknowledgements leave in the order the publishes arrived, as MQTT 3.1.1 requires.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use chrono::Utc;
use meshgate_edge_agent::pipeline::{IngestShare, Ticket};
use meshgate_edge_agent::spool::StoredRecord;
use meshgate_protocols::mqtt::{
    DecodeError, Disconnect, Packet, PubResponse, PubResponseKind, Publish, QoS, ReasonCode, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::inbound::{Admission, InboundState};
use super::will::{self, PendingWill};
use super::{MqttContext, outbound, registry::Registration};
use crate::acks::{Outcome, PendingAcks};
use crate::broker::Message;
use crate::broker::durable::BrokerRecord;
use crate::broker::local::now_ms;
use crate::broker::message::EventIdentity;
use crate::listener::Peer;
use crate::metrics::{Protocol, RejectReason};
use crate::normalize::{Lifecycle, MqttInbound, Normalized};

mod delivery;
mod handshake;

const PROTOCOL: Protocol = Protocol::Mqtt;

/// Why a connection ended (for the log).
#[derive(Debug)]
enum Closed {
    /// The client disconnected normally.
    Normal,
    /// The client went away without DISCONNECT.
    Dropped,
    /// We closed it for a reason.
    Refused(&'static str),
    /// The socket failed.
    Io(std::io::Error),
}

impl From<std::io::Error> for Closed {
    fn from(e: std::io::Error) -> Self {
        Closed::Io(e)
    }
}

/// The answer a publish (or PUBREL) is owed, held in the [`PendingAcks`] until its outcome is known; with no
/// `kind`, a QoS 0 message that answers nothing but waits to reach local subscribers in order.
#[derive(Debug, Clone, Copy)]
struct Answer {
    kind: Option<PubResponseKind>,
    qos: QoS,
    packet_id: u16,
    /// The reason code when the outcome is good (or decided at admission).
    reason: ReasonCode,
}

impl Answer {
    /// A QoS 0 message: nothing to send.
    const NONE: Answer = Answer { kind: None, qos: QoS::AtMostOnce, packet_id: 0, reason: ReasonCode::SUCCESS };

    fn new(kind: PubResponseKind, qos: QoS, packet_id: u16, reason: ReasonCode) -> Answer {
        Answer { kind: Some(kind), qos, packet_id, reason }
    }
}

/// Deliveries written per wake-up before the driver checks its other work again.
const OUTBOUND_PER_WAKE: usize = 64;

/// Packets handled from the read buffer before the driver yields to the worker's other tasks.
const INPUT_PACKETS_PER_TURN: usize = 256;

/// How long, at most, a connection the gateway closes is still read (and its input dropped) after the DISCONNECT
/// went out, so the client can read the DISCONNECT before the socket closes.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// How many bytes, at most, are read and dropped that way.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;

/// Bytes of deliveries taken per wake-up (at least one delivery): what waits for a slow reader stays in its
/// session's bounded queue, not in the connection's write buffer.
const OUTBOUND_BYTES_PER_WAKE: u64 = 256 * 1024;

/// Serves one accepted connection until it ends. A peer that proved an identity with a client certificate (mTLS)
/// and sends a CONNECT without a user name is that device, for authentication and ACLs.
pub async fn serve_as<S>(stream: S, ctx: Arc<MqttContext>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.shared.metrics.connection_opened(PROTOCOL);
    let mut conn = Connection::new(stream, Arc::clone(&ctx));
    conn.peer = peer;
    let outcome = conn.run().await;
    if let Some((client_id, reg)) = &conn.session {
        ctx.registry.unregister(client_id, reg.conn_id);
        if ctx.shared.broker.detach(client_id, reg.conn_id) {
            // What the client acknowledged before it left is durable too: a crash redelivers nothing it has; a
            // session ended by DISCONNECT's expiry 0 is deleted from the store.
            let persistent = ctx.shared.broker.read(|b| b.session(client_id).is_some_and(|s| s.expiry_secs > 0));
            ctx.shared.broker.disconnect(client_id, conn.disconnect_expiry);
            if persistent && let Err(e) = ctx.shared.broker.persist_session(client_id).await {
                tracing::warn!(client = %client_id, error = %e, "session could not be made durable at disconnect");
            }
        }
        let publish_will = match &outcome {
            Closed::Normal => conn.disconnect_with_will,
            _ => true,
        };
        if let Some(mut w) = conn.will.take().filter(|_| publish_will) {
            // The will goes out when the session ends if that comes before its delay [MQTT-3.1.3-9].
            w.delay_secs = w.delay_secs.min(conn.disconnect_expiry.unwrap_or(conn.session_expiry));
            will::schedule(&ctx, client_id, conn.version, w);
        }
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
    let client = conn.session.as_ref().map_or("-", |(c, _)| c.as_str());
    match outcome {
        Closed::Normal | Closed::Dropped => tracing::debug!(client, ?outcome, "connection closed"),
        Closed::Refused(why) => tracing::info!(client, why, "connection closed by the gateway"),
        Closed::Io(e) => tracing::debug!(client, error = %e, "connection failed"),
    }
}

/// Why the driver stopped handling the input it has: it resumes when the reason is gone, and reads no more of the
/// socket meanwhile (native backpressure: the client's TCP window closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// An MQTT 3.1.1 client pipelined more QoS 1/2 publishes than `receive_maximum` acknowledgements may be
    /// owed: the next one waits for a durable acknowledgement to go out.
    Acks,
    /// The connection is over `limits.max_messages_per_second`: the next publish waits until then.
    Until(Instant),
}

/// The read buffer's first size: enough for a CONNECT and small publishes. A busy connection's buffer grows to
/// what it needs (and keeps that); an idle one stays small, which is most of a gateway's connections (8 KiB of
/// RSS per idle connection is the goal, docs/benchmarks.md).
const READ_BUFFER_START: usize = 512;

struct Connection<S> {
    stream: S,
    ctx: Arc<MqttContext>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    version: Version,
    session: Option<(String, Registration)>,
    keep_alive: Option<Duration>,
    deadline: Option<Instant>,
    inbound: InboundState,
    pending: PendingAcks<Answer>,
    /// Wakes the driver when the broker queued deliveries for this client.
    deliveries: Option<Arc<Notify>>,
    /// The client's Maximum Packet Size (MQTT 5).
    client_max_packet: usize,
    /// The will to publish if the connection ends abnormally.
    will: Option<PendingWill>,
    /// DISCONNECT 0x04: publish the will even though the client disconnected.
    disconnect_with_will: bool,
    /// A Session Expiry Interval sent with DISCONNECT (MQTT 5).
    disconnect_expiry: Option<u32>,
    /// The Session Expiry Interval of CONNECT (3.1.1: 0 for a clean session, else forever).
    session_expiry: u32,
    /// What this device may publish and subscribe to.
    acl: crate::acl::DeviceAcl,
    /// Topic aliases for deliveries to this client (MQTT 5).
    aliases: outbound::OutboundAliases,
    /// Whether the client wants reason strings (MQTT 5 Request Problem Information, default yes).
    problem_info: bool,
    /// The peer's address and the subject of a verified client certificate (mTLS).
    peer: Peer,
    /// Set while input waits (see [`Stall`]).
    stall: Option<Stall>,
    /// `limits.max_messages_per_second` and `max_messages_per_second_per_user`.
    rate: crate::limits::MessageRate,
    /// The publish at the front of the buffer already took its tokens.
    rate_paid: bool,
    /// Its share of the spool's queue for QoS 0 publishes (`limits.max_unconfirmed_per_connection`).
    share: IngestShare,
    /// PUBRELs owed for the PUBRECs just read: packet id, reason code, whether the flow moved on (see
    /// [`Connection::release_and_pump`]).
    pubrels: Vec<(u16, ReasonCode, bool)>,
    /// Acknowledgements freed the window: poll the session for deliveries.
    pump_wanted: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, ctx: Arc<MqttContext>) -> Self {
        let inbound = InboundState::new(ctx.config.receive_maximum, ctx.config.topic_alias_maximum);
        let share = IngestShare::new(ctx.shared.limits.max_unconfirmed_per_connection);
        let pending = PendingAcks::new(&ctx.shared, PROTOCOL);
        Connection {
            stream,
            ctx,
            rbuf: BytesMut::with_capacity(READ_BUFFER_START),
            wbuf: Vec::new(),
            version: Version::V5,
            session: None,
            keep_alive: None,
            deadline: None,
            inbound,
            pending,
            deliveries: None,
            client_max_packet: usize::MAX,
            will: None,
            disconnect_with_will: false,
            disconnect_expiry: None,
            session_expiry: 0,
            acl: crate::acl::DeviceAcl::default(),
            aliases: outbound::OutboundAliases::default(),
            problem_info: true,
            peer: Peer::default(),
            stall: None,
            rate: crate::limits::MessageRate::default(),
            rate_paid: false,
            share,
            pubrels: Vec::new(),
            pump_wanted: false,
        }
    }

    fn max_packet(&self) -> usize {
        self.ctx.config.max_packet_size as usize
    }

    /// Queues a packet for the next flush.
    fn send(&mut self, packet: &Packet<'_>) {
        encode_into(&mut self.wbuf, self.version, packet);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            // A no-op on TCP; a WebSocket or TLS stream sends what it buffered.
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Ends the connection: MQTT 5 hears the reason in a DISCONNECT; MQTT 3.1.1 is just closed.
    async fn close_with(&mut self, reason: ReasonCode, why: &'static str) -> Closed {
        if self.version.is_v5() && self.session.is_some() {
            let mut disconnect = Disconnect::with_reason(reason);
            if self.problem_info {
                disconnect.properties.reason_string = Some(why);
            }
            self.send(&Packet::Disconnect(disconnect));
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        // Closing a socket with unread input resets it, and the client loses the DISCONNECT it has not read yet:
        // read what it still sends for a moment (bounded in time and bytes) so it can read ours first.
        let deadline = Instant::now() + CLOSE_DRAIN;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        Closed::Refused(why)
    }

    async fn run(&mut self) -> Closed {
        let timeout = Duration::from_secs(self.ctx.config.connect_timeout_secs);
        match tokio::time::timeout(timeout, self.handshake()).await {
            Err(_) => return Closed::Refused("no CONNECT in time"),
            Ok(Err(closed)) => return closed,
            Ok(Ok(())) => {}
        }
        // Packets that arrived right behind CONNECT.
        if let Err(closed) = self.process_input().await {
            return closed;
        }
        match self.serve_session().await {
            Ok(closed) | Err(closed) => closed,
        }
    }

    fn touch(&mut self) {
        self.deadline = self.keep_alive.map(|k| Instant::now() + k);
    }

    async fn serve_session(&mut self) -> Result<Closed, Closed> {
        let mut shutdown = self.ctx.shared.shutdown.clone();
        loop {
            self.release_and_pump().await;
            self.flush().await?;
            let acks_room = self.pending.len() < usize::from(self.ctx.config.receive_maximum);
            if self.stall == Some(Stall::Acks) && acks_room {
                // Acknowledgements went out: the publishes that waited in the buffer go on.
                self.stall = None;
                if let Some(closed) = self.process_input().await? {
                    return Ok(closed);
                }
                continue;
            }
            let can_read = acks_room && self.stall.is_none();
            let resume_at = match self.stall {
                Some(Stall::Until(at)) => Some(at),
                _ => None,
            };
            let deadline = self.deadline;
            let Some((_, registration)) = self.session.as_mut() else {
                return Err(Closed::Refused("no session"));
            };
            let deliveries = self.deliveries.clone();
            tokio::select! {
                biased;
                _ = &mut registration.taken_over => {
                    self.drain_acks(false).await?;
                    return Ok(self.close_with(ReasonCode::SESSION_TAKEN_OVER, "session taken over").await);
                }
                _ = super::stopped(&mut shutdown) => {
                    self.drain_acks(true).await?;
                    return Ok(self.close_with(ReasonCode::SERVER_SHUTTING_DOWN, "gateway shutting down").await);
                }
                _ = self.pending.ready() => {
                    self.drain_acks(false).await?;
                }
                read = self.stream.read_buf(&mut self.rbuf), if can_read => {
                    if read? == 0 {
                        return Ok(Closed::Dropped);
                    }
                    self.touch();
                    if let Some(closed) = self.process_input().await? {
                        return Ok(closed);
                    }
                    self.drain_acks(false).await?;
                }
                _ = notified(deliveries.as_deref()) => {
                    self.pump_outbound().await;
                }
                _ = sleep_until(resume_at) => {
                    self.stall = None;
                    if let Some(closed) = self.process_input().await? {
                        return Ok(closed);
                    }
                    self.drain_acks(false).await?;
                }
                _ = sleep_until(deadline) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::KeepAliveTimeout);
                    return Ok(self.close_with(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep-alive expired").await);
                }
            }
        }
    }

    /// Queues an acknowledgement whose outcome is decided (`reason`), behind the ones already owed.
    fn queue_ack(&mut self, kind: PubResponseKind, qos: QoS, packet_id: u16, reason: ReasonCode) {
        self.pending.push_settled(Answer::new(kind, qos, packet_id, reason));
    }

    /// Sends every acknowledgement whose outcome is known, in order; with `wait`, waits for all of them.
    async fn drain_acks(&mut self, wait: bool) -> Result<(), Closed> {
        let Connection { pending, ctx, inbound, session, version, wbuf, .. } = self;
        let mut answered =
            Answered { ctx, inbound, session: session.as_ref().map(|(c, _)| c.as_str()), version: *version, wbuf };
        let result = if wait {
            pending.resolve_all(&ctx.shared, |a, outcome| answered.answer(a, outcome)).await
        } else {
            pending.resolve(&ctx.shared, |a, outcome| answered.answer(a, outcome))
        };
        match result {
            Ok(()) => Ok(()),
            Err(why) => Err(self.close_with(ReasonCode::UNSPECIFIED_ERROR, why).await),
        }
    }

    /// Runs `f` on this connection's broker session, if it has one.
    fn with_session<R>(&self, f: impl FnOnce(&mut crate::broker::Session) -> R) -> Option<R> {
        let (client, _) = self.session.as_ref()?;
        self.ctx.shared.broker.with(|b| b.session_mut(client).map(f))
    }

    /// Whether the publish about to be handled must wait (see [`Stall`]); sets the stall if so.
    fn must_wait(&mut self, publish: &Publish<'_>) -> bool {
        if !self.version.is_v5()
            && publish.qos != QoS::AtMostOnce
            && self.pending.len() >= usize::from(self.ctx.config.receive_maximum)
        {
            self.stall = Some(Stall::Acks);
            return true;
        }
        // A publish that waited for its tokens already took them.
        if !std::mem::take(&mut self.rate_paid)
            && let Some(wait) = self.rate.take(std::time::Instant::now())
        {
            self.rate_paid = true;
            self.stall = Some(Stall::Until(Instant::now() + wait));
            return true;
        }
        false
    }

    /// Decodes and handles the complete packets in the read buffer, until one must wait (see [`Stall`]).
    async fn process_input(&mut self) -> Result<Option<Closed>, Closed> {
        let mut handled = 0usize;
        loop {
            handled += 1;
            if handled.is_multiple_of(INPUT_PACKETS_PER_TURN) {
                // A full buffer of small packets is a lot of work: let the worker's other connections have a turn.
                tokio::task::yield_now().await;
            }
            let rbuf = std::mem::take(&mut self.rbuf);
            let decoded = Packet::decode(&rbuf, self.version, self.max_packet());
            let step = match decoded {
                Ok((Packet::Publish(p), _)) if self.must_wait(&p) => {
                    self.rbuf = rbuf;
                    return Ok(None);
                }
                Ok((packet, len)) => Ok((self.handle(packet).await, len)),
                Err(e) => Err(e),
            };
            self.rbuf = rbuf;
            match step {
                Ok((Some(closed), _)) => return Ok(Some(closed)),
                Ok((None, len)) => self.rbuf.advance(len),
                Err(DecodeError::Incomplete { needed }) => {
                    self.rbuf.reserve(needed);
                    return Ok(None);
                }
                Err(DecodeError::TooLarge { .. }) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::TooLarge);
                    return Ok(Some(self.close_with(ReasonCode::PACKET_TOO_LARGE, "packet too large").await));
                }
                Err(DecodeError::Malformed(m)) => {
                    tracing::debug!(error = %m, "malformed packet");
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::Malformed);
                    return Ok(Some(self.close_with(m.reason_code(), "malformed packet").await));
                }
            }
        }
    }

    /// Handles one packet. `Ok(Some(_))` ends the connection.
    async fn handle(&mut self, packet: Packet<'_>) -> Option<Closed> {
        match packet {
            Packet::Publish(publish) => self.on_publish(&publish).await,
            Packet::PubResponse(r) if r.kind == PubResponseKind::PubRel => self.on_pubrel(r.packet_id).await,
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                None
            }
            Packet::Subscribe(s) => match self.on_subscribe(&s).await {
                Some(why) => Some(self.protocol_error(why).await),
                None => None,
            },
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(&u);
                None
            }
            Packet::Disconnect(d) => {
                self.disconnect_with_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL;
                self.disconnect_expiry = d.properties.session_expiry_interval;
                Some(Closed::Normal)
            }
            Packet::PubResponse(r) => {
                self.on_delivery_ack(&r);
                None
            }
            Packet::Connect(_) => Some(self.protocol_error("second CONNECT").await),
            Packet::Auth(_) => Some(
                self.close_with(ReasonCode::BAD_AUTHENTICATION_METHOD, "extended authentication unsupported").await,
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Some(self.protocol_error("server-to-client packet from a client").await)
            }
        }
    }

    /// PUBREL: the QoS 2 flow ends with PUBCOMP, queued behind the PUBREC it completes. A persistent session's
    /// release is stored first (see [`crate::broker::durable::BrokerRecord::released_qos2`]), so no crash brings
    /// the id back as awaiting PUBREL.
    async fn on_pubrel(&mut self, packet_id: u16) -> Option<Closed> {
        let here = self.inbound.release(packet_id);
        let (kept, persistent) =
            self.with_session(|s| (s.inbound_qos2.remove(&packet_id), s.expiry_secs > 0)).unwrap_or_default();
        let found = here || kept;
        let reason =
            if found || !self.version.is_v5() { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        let answer = Answer::new(PubResponseKind::PubComp, QoS::ExactlyOnce, packet_id, reason);
        if found && persistent {
            let record = BrokerRecord::released(self.client_id(), packet_id);
            match self.ctx.shared.ingest.submit_local(record).await {
                Ok(ticket) => self.pending.push_record(answer, ticket),
                Err(_) => return Some(self.close_with(ReasonCode::SERVER_SHUTTING_DOWN, "pipeline stopped").await),
            }
        } else {
            self.pending.push_settled(answer);
        }
        None
    }

    async fn protocol_error(&mut self, why: &'static str) -> Closed {
        self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
        self.close_with(ReasonCode::PROTOCOL_ERROR, why).await
    }

    async fn on_publish(&mut self, publish: &Publish<'_>) -> Option<Closed> {
        let v5 = self.version.is_v5();
        let topic = match self.inbound.resolve_topic(publish) {
            Ok(t) => t,
            Err(code) => {
                self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
                return Some(self.close_with(code, "invalid topic alias").await);
            }
        };
        if !self.ctx.shared.limits.topic_depth_ok(&topic) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            return Some(
                self.close_with(ReasonCode::TOPIC_NAME_INVALID, "topic deeper than limits.max_topic_levels").await,
            );
        }
        let packet_id = publish.packet_id.unwrap_or(0);
        let ack_kind = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(PubResponseKind::PubAck),
            QoS::ExactlyOnce => Some(PubResponseKind::PubRec),
        };
        if let Some(kind) = ack_kind {
            match self.inbound.admit(publish.qos, packet_id, publish.dup) {
                Ok(Admission::New) => {}
                Ok(Admission::Duplicate) => {
                    self.queue_ack(kind, publish.qos, packet_id, ReasonCode::SUCCESS);
                    return None;
                }
                Err(code) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
                    return Some(self.close_with(code, "receive maximum exceeded").await);
                }
            }
        }
        if !self.acl.may_publish(&topic) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            tracing::debug!(client = self.client_id(), topic = %topic, "publish not authorized");
            if let Some(kind) = ack_kind {
                // MQTT 5 refuses with 0x87; 3.1.1 has no refusal short of closing, so it acknowledges and drops.
                let reason = if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
                self.queue_ack(kind, publish.qos, packet_id, reason);
            }
            return None;
        }
        let mut local = Message::from_publish(publish, &topic, self.client_id(), now_ms());
        if local.retain && !self.ctx.shared.broker.read(|b| b.may_retain(&local)) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            if let (Some(kind), true) = (ack_kind, v5) {
                // MQTT 5 refuses it whole; 3.1.1 (and QoS 0) cannot be told, so it is delivered without retaining.
                self.queue_ack(kind, publish.qos, packet_id, ReasonCode::QUOTA_EXCEEDED);
                return None;
            }
            local.retain = false;
        }
        // Validated before anything is stored: a publish refused here leaves no retained message behind.
        let normalized = match self.normalize(publish, &topic) {
            Ok(n) => n,
            Err((reason, why)) => return self.refuse_publish(ack_kind, publish.qos, packet_id, reason, why).await,
        };
        local.event = Some(EventIdentity::of(&normalized.event));
        if local.retain
            && let Err(e) = self.ctx.shared.broker.log_retained(&local).await
        {
            tracing::warn!(error = %e, "retained message not stored; refusing the publish");
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::StorageFailed);
            let reason = ReasonCode::UNSPECIFIED_ERROR;
            return self.refuse_publish(ack_kind, publish.qos, packet_id, reason, "retained message not stored").await;
        }
        let wait_durable = ack_kind.is_some() || self.ctx.config.qos0_wait_durable;
        // A message for persistent sessions, and a QoS 2 packet id, are made durable with the event; the commit
        // routes such a message (`local` is then `None`).
        let inbound_qos2 = (publish.qos == QoS::ExactlyOnce).then_some(packet_id);
        let publisher = self.session.as_ref().map(|(c, _)| c.as_str());
        let (companion, local) = self.ctx.shared.broker.companion(local, publisher.zip(inbound_qos2));
        match (self.submit(normalized, wait_durable, companion).await, ack_kind) {
            // Acknowledged, and given to local subscribers, once durable.
            (Ok(ticket), Some(kind)) => {
                self.pending.push(Answer::new(kind, publish.qos, packet_id, ReasonCode::SUCCESS), ticket, local);
                None
            }
            // `qos0_wait_durable`: reaches local subscribers once durable; closes the connection if not stored.
            (Ok(Some(ticket)), None) => {
                self.pending.push(Answer::NONE, Some(ticket), local);
                None
            }
            (Ok(None), None) => {
                self.route_in_order(local);
                None
            }
            (Err((reason, why)), _) => self.refuse_publish(ack_kind, publish.qos, packet_id, reason, why).await,
        }
    }

    /// Refuses a publish: MQTT 5 QoS 1/2 in order with the other acknowledgements (the flow ends with the error
    /// code); otherwise, as 3.1.1 and QoS 0 have no refusal, by closing the connection.
    async fn refuse_publish(
        &mut self,
        ack_kind: Option<PubResponseKind>,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        why: &'static str,
    ) -> Option<Closed> {
        match ack_kind {
            Some(kind) if self.version.is_v5() => {
                self.queue_ack(kind, qos, packet_id, reason);
                tracing::debug!(why, "publish refused");
                None
            }
            _ => Some(self.close_with(reason, why).await),
        }
    }

    /// Turns a publish into its CloudEvent, or the reason code refusing it (an invalid CloudEvent, a payload
    /// flagged UTF-8 that is not).
    fn normalize(&mut self, publish: &Publish<'_>, topic: &str) -> Result<Normalized, (ReasonCode, &'static str)> {
        if publish.properties.payload_format_utf8 == Some(true) && std::str::from_utf8(publish.payload).is_err() {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::InvalidPayloadFormat);
            return Err((ReasonCode::PAYLOAD_FORMAT_INVALID, "payload flagged UTF-8 is not"));
        }
        let client_id = self.session.as_ref().map_or("", |(c, _)| c.as_str());
        let inbound = MqttInbound {
            version: self.version,
            client_id,
            topic,
            properties: &publish.properties,
            payload: publish.payload,
        };
        self.ctx.shared.normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), Utc::now()).map_err(|e| {
            tracing::debug!(error = %e, topic, "invalid CloudEvent refused");
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::InvalidCloudEvent);
            (ReasonCode::PAYLOAD_FORMAT_INVALID, "invalid CloudEvent")
        })
    }

    /// Hands a normalized publish (and the broker's companion record) to the pipeline. Returns the ticket to
    /// wait for when `confirmed`.
    async fn submit(
        &mut self,
        normalized: Normalized,
        confirmed: bool,
        companion: Option<StoredRecord>,
    ) -> Result<Option<Ticket>, (ReasonCode, &'static str)> {
        let Normalized { event, route, when_full } = normalized;
        self.ctx.shared.metrics.message_in(PROTOCOL);
        let stopped = (ReasonCode::SERVER_SHUTTING_DOWN, "pipeline stopped");
        if confirmed {
            self.ctx.shared.ingest.submit_with(event, route, companion).await.map(Some).map_err(|_| stopped)
        } else {
            let share = Some(&self.share);
            let ingest = &self.ctx.shared.ingest;
            let submitted = ingest.submit_unconfirmed_within(event, route, when_full, share, companion).await;
            submitted.map(|_| None).map_err(|_| stopped)
        }
    }
}

/// Appends a packet to a write buffer.
fn encode_into(wbuf: &mut Vec<u8>, version: Version, packet: &Packet<'_>) {
    let start = wbuf.len();
    let len = packet.encoded_len(version);
    wbuf.resize(start + len, 0);
    if let Err(e) = packet.encode(version, &mut wbuf[start..]) {
        // Only our own packets are encoded here; a failure is a bug, not bad input.
        tracing::error!(error = %e, "could not encode an outgoing packet");
        wbuf.truncate(start);
    }
}

/// Writes the packets that settled answers call for (see [`Connection::drain_acks`]).
struct Answered<'a> {
    ctx: &'a MqttContext,
    inbound: &'a mut InboundState,
    session: Option<&'a str>,
    version: Version,
    wbuf: &'a mut Vec<u8>,
}

impl Answered<'_> {
    /// Queues the packet for one settled answer; `Err` when the connection must close instead (a failure MQTT
    /// 3.1.1, or QoS 0, cannot report).
    fn answer(&mut self, a: Answer, outcome: Outcome) -> Result<(), &'static str> {
        let mut reason = a.reason;
        if let Outcome::Failed(e) = &outcome {
            if a.kind == Some(PubResponseKind::PubComp) {
                // PUBCOMP has no failure to report: the release holds in memory, and a client reusing the id after
                // a crash sends its next message without DUP, which is taken as new.
                tracing::warn!(error = %e, client = self.session.unwrap_or(""), "QoS 2 release not stored");
            } else if a.kind.is_none() || !self.version.is_v5() {
                // MQTT 3.1.1 has no negative acknowledgement, nor QoS 0 any acknowledgement: closing refuses it.
                return Err("event could not be stored");
            } else {
                reason = ReasonCode::UNSPECIFIED_ERROR;
            }
        }
        let Some(kind) = a.kind else { return Ok(()) };
        if kind == PubResponseKind::PubAck || reason.is_error() {
            self.inbound.completed(a.qos, a.packet_id);
        }
        if kind == PubResponseKind::PubRec
            && outcome == Outcome::Stored
            && !reason.is_error()
            && let Some(client) = self.session
        {
            // Stored and about to be answered: the session remembers the id until PUBREL, across reconnects.
            self.ctx.shared.broker.with(|b| b.session_mut(client).map(|s| s.inbound_qos2.insert(a.packet_id)));
        }
        let mut response = PubResponse::new(kind, a.packet_id);
        response.reason = reason;
        encode_into(self.wbuf, self.version, &Packet::PubResponse(response));
        Ok(())
    }
}

/// Sends a lifecycle event for `client` into the pipeline (unconfirmed: nobody waits for it).
async fn lifecycle(ctx: &MqttContext, what: Lifecycle, client: &str, data: serde_json::Value) {
    let event = ctx.shared.normalizer.lifecycle(what, PROTOCOL, client, data, uuid::Uuid::now_v7(), Utc::now());
    let route = meshgate_edge_agent::pipeline::Route::All;
    let when_full = meshgate_edge_agent::spool::WhenFull::Block;
    if ctx.shared.ingest.submit_unconfirmed(event, route, when_full).await.is_err() {
        tracing::debug!(client, "pipeline closed; lifecycle event not sent");
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
