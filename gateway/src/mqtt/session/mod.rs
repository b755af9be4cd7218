//! The MQTT server session, sans-IO: one device connection's protocol as a state machine that takes bytes and
//! time and returns events and bytes, in quinn-proto's shape. No socket, no clock, no randomness: the driver
//! ([`crate::mqtt::connection`]) reads the socket, passes the time in milliseconds of its own monotonic clock,
//! authenticates, stores and routes, and writes what the session transmits.
//!
//! The session keeps MQTT's rules: CONNECT first and in time; the protocol level's checks (3.1.1's empty client id
//! without a clean session, keep-alive bounds, Server Keep Alive on 5); topic aliases; topic depth; Receive
//! Maximum (MQTT 5 refuses a client past it; MQTT 3.1.1, which has none, is slowed by not reading past it); QoS 2
//! duplicates and PUBREL; acknowledgements in the order the publishes came, each when the driver completes it;
//! keep-alive; DISCONNECT with its will and session expiry rules; the will delay.
//!
//! A driver's loop:
//! 1. read the socket into [`ServerSession::read_buffer`] and call [`ServerSession::handle_read`] (or hand the bytes
//!    to [`ServerSession::handle_input`]);
//! 2. take [`ServerSession::poll_event`] until `None` and act on each [`Event`], answering with
//!    [`ServerSession::accept`]/[`ServerSession::refuse`], [`ServerSession::complete`], [`ServerSession::suback`],
//!    [`ServerSession::unsuback`]; deliveries from the broker go out with [`ServerSession::deliver`] and
//!    [`ServerSession::send_pubrel`];
//! 3. write what [`ServerSession::poll_transmit`] gives;
//! 4. sleep until [`ServerSession::poll_timeout`], then call [`ServerSession::handle_timeout`].

mod event;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use meshgate_protocols::mqtt::reason::v311;
use meshgate_protocols::mqtt::{
    ConnAck, DecodeError, Disconnect, Malformed, Packet, Properties, PubResponse, PubResponseKind, QoS, ReasonCode,
    SubAck, UnsubAck, Version,
};

pub use self::event::{Accepted, Close, ClosedBy, Event, Token, Verdict};
use super::inbound::{Admission, InboundState};
use super::outbound::{self, OutboundAliases, Skipped};
use super::will::PendingWill;
use crate::broker::Outbound;
use crate::limits::topic_levels_within;
use crate::metrics::RejectReason;

/// The read buffer's first size: enough for a CONNECT and small publishes. A busy connection's buffer grows to
/// what it needs; an idle one stays small, which is most of a gateway's connections.
const READ_BUFFER_START: usize = 256;

/// The limits a session enforces (`[listeners.mqtt]` and `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// The largest packet accepted (advertised as Maximum Packet Size in MQTT 5).
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged (MQTT 5 Receive Maximum; 3.1.1 is slowed to it).
    pub receive_maximum: u16,
    /// The highest inbound topic alias accepted (0: none).
    pub topic_alias_maximum: u16,
    /// The longest keep-alive accepted, in seconds (0: any).
    pub max_keep_alive_secs: u16,
    /// Milliseconds a new connection has to send CONNECT and be accepted.
    pub connect_timeout_ms: u64,
    /// The deepest topic name accepted, in levels.
    pub max_topic_levels: usize,
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for CONNECT.
    AwaitingConnect,
    /// CONNECT handed out; waiting for the driver's accept or refuse.
    Authenticating,
    /// Accepted: packets flow.
    Connected,
    /// Over (a will may still be waiting for its delay).
    Closed,
}

/// An answer owed to the client, in the order its packet came.
#[derive(Debug)]
struct Owed {
    token: u64,
    /// `None`: a QoS 0 publish, answered with nothing.
    kind: Option<PubResponseKind>,
    qos: QoS,
    packet_id: u16,
    /// The reason code when the outcome is good (PUBCOMP: whether the id was found).
    reason: ReasonCode,
    /// What to do once decided; `None` while the driver has not completed it.
    decided: Option<Decided>,
}

#[derive(Debug, Clone, Copy)]
enum Decided {
    Answer(ReasonCode),
    Close(ReasonCode, &'static str),
}

/// The input side: bytes read and not handled yet.
#[derive(Debug)]
struct Input {
    rbuf: BytesMut,
    /// Bytes at the front of `rbuf` that belong to events already handed out; dropped at the next poll.
    consumed: usize,
    /// Room the next packet needs, reserved before the next read.
    wanted: usize,
}

impl Input {
    fn drop_consumed(&mut self) {
        let consumed = std::mem::take(&mut self.consumed);
        self.rbuf.advance(consumed);
        if self.rbuf.is_empty() && self.rbuf.capacity() > 64 * 1024 {
            // A burst of large packets is over: an idle connection does not keep its big buffer.
            self.rbuf = BytesMut::with_capacity(READ_BUFFER_START);
        }
    }
}

/// One MQTT server connection, sans-IO (see the module doc).
#[derive(Debug)]
pub struct ServerSession {
    input: Input,
    state: State,
}

/// Everything but the input, so an event can borrow the input while the state changes.
#[derive(Debug)]
struct State {
    config: SessionConfig,
    phase: Phase,
    version: Version,
    /// Output not taken yet.
    tbuf: Vec<u8>,
    inbound: InboundState,
    aliases: OutboundAliases,
    /// Answers owed, in order, and how many of them are PUBACK/PUBREC/PUBCOMP (the rest are QoS 0 places).
    owed: VecDeque<Owed>,
    owed_acks: usize,
    next_token: u64,
    /// The latest time the driver passed in.
    now: u64,
    /// CONNECT's deadline before the session is connected; the keep-alive deadline after.
    deadline: Option<u64>,
    /// The keep-alive in effect, in milliseconds, 1.5 times the negotiated one [MQTT-3.1.2-24]; `None`: none.
    keep_alive_ms: Option<u64>,
    keep_alive_secs: u16,
    server_keep_alive: Option<u16>,
    client_max_packet: usize,
    client_receive_maximum: u16,
    problem_info: bool,
    mqtt31: bool,
    session_expiry: u32,
    disconnect_expiry: Option<u32>,
    disconnect_with_will: bool,
    will: Option<PendingWill>,
    /// A will waiting for its delay: due at this time.
    will_due: Option<u64>,
    /// Events ready before any input.
    closed: Option<Close>,
    will_ready: Option<PendingWill>,
}

impl ServerSession {
    /// A session for a connection accepted at `now` (milliseconds on the driver's clock).
    pub fn new(config: SessionConfig, now: u64) -> ServerSession {
        let input = Input { rbuf: BytesMut::with_capacity(READ_BUFFER_START), consumed: 0, wanted: 0 };
        let state = State {
            config,
            phase: Phase::AwaitingConnect,
            version: Version::V5,
            tbuf: Vec::new(),
            inbound: InboundState::new(config.receive_maximum, config.topic_alias_maximum),
            aliases: OutboundAliases::default(),
            owed: VecDeque::new(),
            owed_acks: 0,
            next_token: 0,
            now,
            deadline: Some(now.saturating_add(config.connect_timeout_ms)),
            keep_alive_ms: None,
            keep_alive_secs: 0,
            server_keep_alive: None,
            client_max_packet: usize::MAX,
            client_receive_maximum: u16::MAX,
            problem_info: true,
            mqtt31: false,
            session_expiry: 0,
            disconnect_expiry: None,
            disconnect_with_will: false,
            will: None,
            will_due: None,
            closed: None,
            will_ready: None,
        };
        ServerSession { input, state }
    }

    // ---- getters ----

    /// The protocol version (MQTT 5 until CONNECT says otherwise).
    pub fn version(&self) -> Version {
        self.state.version
    }

    /// Whether CONNECT was accepted and the connection is not over.
    pub fn is_connected(&self) -> bool {
        self.state.phase == Phase::Connected
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state.phase == Phase::Closed
    }

    /// Acknowledgements owed (PUBACK, PUBREC, PUBCOMP not sent yet); a driver reads no more while this is at
    /// Receive Maximum.
    pub fn owed_acks(&self) -> usize {
        self.state.owed_acks
    }

    /// The keep-alive the client asked for in CONNECT, in seconds.
    pub fn keep_alive_secs(&self) -> u16 {
        self.state.keep_alive_secs
    }

    /// The Session Expiry Interval of CONNECT (MQTT 3.1.1: 0 for a clean session, else forever).
    pub fn session_expiry(&self) -> u32 {
        self.state.session_expiry
    }

    /// The Session Expiry Interval the client sent with DISCONNECT (MQTT 5), if it did.
    pub fn disconnect_expiry(&self) -> Option<u32> {
        self.state.disconnect_expiry
    }

    /// The client's Receive Maximum for deliveries (MQTT 5; 65,535 when it set none).
    pub fn client_receive_maximum(&self) -> u16 {
        self.state.client_receive_maximum
    }

    // ---- input ----

    /// The buffer a driver reads the socket into, then calls [`ServerSession::handle_read`]: input lands where the
    /// session decodes it, without a copy.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.input.drop_consumed();
        let wanted = std::mem::take(&mut self.input.wanted);
        self.input.rbuf.reserve(wanted.max(1));
        &mut self.input.rbuf
    }

    /// Input arrived in [`ServerSession::read_buffer`] at `now`: the keep-alive starts again.
    pub fn handle_read(&mut self, now: u64) {
        let state = &mut self.state;
        state.now = state.now.max(now);
        if state.phase == Phase::Connected {
            state.deadline = state.keep_alive_ms.map(|k| state.now.saturating_add(k));
        }
    }

    /// Takes `input` from the client at `now`: [`ServerSession::read_buffer`] and [`ServerSession::handle_read`]
    /// in one, with a copy.
    pub fn handle_input(&mut self, input: &[u8], now: u64) {
        if self.is_closed() {
            return;
        }
        self.read_buffer().extend_from_slice(input);
        self.handle_read(now);
    }

    /// The transport ended (the peer closed it or it failed) without a DISCONNECT: the will is due as the
    /// session says. [`Event::Closed`] follows.
    pub fn handle_lost(&mut self, now: u64) {
        let state = &mut self.state;
        state.now = state.now.max(now);
        let reason = ReasonCode::UNSPECIFIED_ERROR;
        state.end(Close { why: "connection lost", reason, reject: None, by: ClosedBy::Lost });
    }

    // ---- time ----

    /// When [`ServerSession::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state.phase {
            Phase::Closed => self.state.will_due,
            _ => self.state.deadline,
        }
    }

    /// Time passed to `now`: CONNECT did not come in time, the keep-alive lapsed, or a will's delay is over.
    pub fn handle_timeout(&mut self, now: u64) {
        let state = &mut self.state;
        state.now = state.now.max(now);
        let due = state.deadline.is_some_and(|d| d <= now);
        match state.phase {
            Phase::Closed if state.will_due.is_some_and(|due| due <= now) => {
                state.will_due = None;
                state.will_ready = state.will.take();
            }
            Phase::AwaitingConnect | Phase::Authenticating if due => {
                let reason = ReasonCode::UNSPECIFIED_ERROR;
                state.end(Close { why: "no CONNECT in time", reason, reject: None, by: ClosedBy::Timeout });
            }
            Phase::Connected if due => {
                let reject = Some(RejectReason::KeepAliveTimeout);
                state.close_with(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep-alive expired", reject);
            }
            _ => {}
        }
    }

    /// Ends a will's delay now, whatever was left of it (the gateway is stopping, which ends every session).
    pub fn expire_will(&mut self) {
        let state = &mut self.state;
        if state.will_due.take().is_some() {
            state.will_ready = state.will.take();
        }
    }

    // ---- events ----

    /// The next thing the driver must act on, if any (see [`Event`]).
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let ServerSession { input, state } = self;
        if let Some(event) = state.ready_event() {
            return Some(event);
        }
        input.drop_consumed();
        let buf: &[u8] = &input.rbuf;
        let max = state.config.max_packet_size as usize;
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            let version = match state.phase {
                Phase::AwaitingConnect => Version::V5,
                Phase::Connected => state.version,
                Phase::Authenticating | Phase::Closed => return None,
            };
            // MQTT 3.1.1 is slowed at Receive Maximum: the next QoS 1/2 PUBLISH waits in the buffer.
            let acknowledged_publish = rest.first().is_some_and(|b| b >> 4 == 3 && (b >> 1) & 3 != 0);
            if acknowledged_publish && state.phase == Phase::Connected && state.stalled() {
                return None;
            }
            match Packet::decode(rest, version, max) {
                Ok((packet, len)) => {
                    pos += len;
                    input.consumed = pos;
                    let event = match state.phase {
                        Phase::AwaitingConnect => state.on_connect(packet),
                        _ => state.on_packet(packet),
                    };
                    if event.is_some() {
                        return event;
                    }
                    if state.closed.is_some() {
                        return state.ready_event();
                    }
                    // Answered by the session itself (PINGREQ): on to the next packet.
                }
                Err(DecodeError::Incomplete { needed }) => {
                    input.wanted = needed;
                    return None;
                }
                Err(e) => {
                    state.on_decode_error(e);
                    return state.ready_event();
                }
            }
        }
    }

    // ---- answers ----

    /// Accepts the CONNECT handed out with [`Event::Connect`]: CONNACK goes out with the negotiated properties,
    /// and packets flow.
    pub fn accept(&mut self, accepted: Accepted<'_>, now: u64) {
        let state = &mut self.state;
        if state.phase != Phase::Authenticating {
            return;
        }
        state.now = state.now.max(now);
        state.phase = Phase::Connected;
        state.inbound.resume(accepted.awaiting_release.iter().copied());
        state.will = accepted.will;
        state.deadline = state.keep_alive_ms.map(|k| state.now.saturating_add(k));
        let cfg = state.config;
        let properties = if state.version.is_v5() {
            Properties {
                assigned_client_identifier: accepted.assigned_client_id,
                receive_maximum: Some(cfg.receive_maximum),
                maximum_packet_size: Some(cfg.max_packet_size),
                topic_alias_maximum: Some(cfg.topic_alias_maximum),
                server_keep_alive: state.server_keep_alive,
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        // MQTT 3.1's CONNACK has no Session Present flag: the byte is reserved.
        let session_present = accepted.session_present && !state.mqtt31;
        state.send(&Packet::ConnAck(ConnAck { session_present, code: ReasonCode::SUCCESS, properties }));
    }

    /// Refuses the CONNECT handed out with [`Event::Connect`] with an MQTT 5 reason code (sent as its 3.1.1 return
    /// code to a 3.1.1 client), and ends the connection.
    pub fn refuse(&mut self, reason: ReasonCode, why: &'static str) {
        let state = &mut self.state;
        if state.phase != Phase::Authenticating {
            return;
        }
        state.refuse_connect(reason, why, None);
    }

    /// The outcome of the publish or PUBREL `token` names: its answer goes out once every answer owed before it
    /// has.
    pub fn complete(&mut self, token: Token, verdict: Verdict) {
        let state = &mut self.state;
        let v5 = state.version.is_v5();
        let Some(owed) = state.owed.iter_mut().find(|o| o.token == token.0) else { return };
        let answered = v5 && owed.kind.is_some();
        let decided = match verdict {
            // PUBCOMP has no failure to report: a release holds in memory even when it could not be stored.
            _ if owed.kind == Some(PubResponseKind::PubComp) => Decided::Answer(owed.reason),
            Verdict::Stored => Decided::Answer(owed.reason),
            Verdict::Dropped(code) if answered => Decided::Answer(code),
            Verdict::Dropped(_) => Decided::Answer(ReasonCode::SUCCESS),
            Verdict::Refused(code, _) if answered => Decided::Answer(code),
            Verdict::Refused(code, why) => Decided::Close(code, why),
        };
        owed.decided = Some(decided);
        state.answer_decided();
    }

    /// SUBACK for SUBSCRIBE `packet_id`, with a code per filter.
    pub fn suback(&mut self, packet_id: u16, codes: &[u8]) {
        if self.is_connected() {
            let properties = Properties::default();
            self.state.send(&Packet::SubAck(SubAck { packet_id, properties, codes }));
        }
    }

    /// UNSUBACK for UNSUBSCRIBE `packet_id`, with a code per filter (MQTT 5; 3.1.1 has none).
    pub fn unsuback(&mut self, packet_id: u16, codes: &[u8]) {
        if self.is_connected() {
            let codes: &[u8] = if self.state.version.is_v5() { codes } else { &[] };
            let properties = Properties::default();
            self.state.send(&Packet::UnsubAck(UnsubAck { packet_id, properties, codes }));
        }
    }

    /// Encodes a delivery of the broker's for this client (topic aliases applied, the expiry left at the wall
    /// time `now_ms`). A message larger than the client's Maximum Packet Size is not sent ([`Skipped`]).
    pub fn deliver(&mut self, delivery: &Outbound, now_ms: u64) -> Result<(), Skipped> {
        if !self.is_connected() {
            return Ok(());
        }
        let state = &mut self.state;
        outbound::encode(delivery, state.version, now_ms, state.client_max_packet, &mut state.aliases, &mut state.tbuf)
    }

    /// PUBREL for a delivery the client answered with PUBREC.
    pub fn send_pubrel(&mut self, packet_id: u16, reason: ReasonCode) {
        if self.is_connected() {
            let mut rel = PubResponse::new(PubResponseKind::PubRel, packet_id);
            rel.reason = reason;
            self.state.send(&Packet::PubResponse(rel));
        }
    }

    /// Ends the connection for the driver's reason (takeover, shutdown, a failure): MQTT 5 hears it in a
    /// DISCONNECT (reason string unless the client asked for none), 3.1.1 is just closed. [`Event::Closed`] follows.
    pub fn close(&mut self, reason: ReasonCode, why: &'static str) {
        if !self.is_closed() {
            self.state.close_with(reason, why, None);
        }
    }

    // ---- output ----

    /// Moves what is to be sent into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.state.tbuf);
        } else {
            buf.append(&mut self.state.tbuf);
        }
    }

    /// Whether anything waits to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.state.tbuf.is_empty()
    }
}

impl State {
    /// An event that needs no input: the end of the connection, then a due will.
    fn ready_event(&mut self) -> Option<Event<'static>> {
        if let Some(close) = self.closed.take() {
            return Some(Event::Closed(close));
        }
        self.will_ready.take().map(Event::WillDue)
    }

    /// Whether an MQTT 3.1.1 client has Receive Maximum acknowledgements owed (it has no quota to be refused by).
    fn stalled(&self) -> bool {
        !self.version.is_v5() && self.owed_acks >= usize::from(self.config.receive_maximum)
    }

    fn send(&mut self, packet: &Packet<'_>) {
        let start = self.tbuf.len();
        let len = packet.encoded_len(self.version);
        self.tbuf.resize(start + len, 0);
        if packet.encode(self.version, &mut self.tbuf[start..]).is_err() {
            // Only the session's own packets are encoded here, sized just above: nothing to send instead.
            self.tbuf.truncate(start);
        }
    }

    fn on_decode_error(&mut self, error: DecodeError) {
        match (self.phase, error) {
            (Phase::AwaitingConnect, DecodeError::Malformed(Malformed::UnsupportedProtocolVersion(level))) => {
                // Answer in the form the client can read: 3.1.1's return code below level 5, 5's reason above.
                self.version = if level < 5 { Version::V311 } else { Version::V5 };
                let code = if level < 5 {
                    ReasonCode(v311::UNACCEPTABLE_PROTOCOL_VERSION)
                } else {
                    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
                };
                self.send(&Packet::ConnAck(ConnAck { code, ..ConnAck::default() }));
                let reject = Some(RejectReason::UnsupportedVersion);
                self.end(Close { why: "unsupported protocol version", reason: code, reject, by: ClosedBy::Server });
            }
            (Phase::AwaitingConnect, DecodeError::TooLarge { .. }) => {
                let reason = ReasonCode::PACKET_TOO_LARGE;
                let reject = Some(RejectReason::TooLarge);
                self.end(Close { why: "CONNECT too large", reason, reject, by: ClosedBy::Server });
            }
            (Phase::AwaitingConnect, _) => {
                let reason = ReasonCode::MALFORMED_PACKET;
                let reject = Some(RejectReason::Malformed);
                self.end(Close { why: "malformed CONNECT", reason, reject, by: ClosedBy::Server });
            }
            (_, DecodeError::TooLarge { .. }) => {
                self.close_with(ReasonCode::PACKET_TOO_LARGE, "packet too large", Some(RejectReason::TooLarge));
            }
            (_, DecodeError::Malformed(m)) => {
                self.close_with(m.reason_code(), "malformed packet", Some(RejectReason::Malformed));
            }
            (_, DecodeError::Incomplete { .. }) => {}
        }
    }

    /// The first packet: CONNECT, checked against the rules of its protocol level before the driver sees it.
    fn on_connect<'a>(&mut self, packet: Packet<'a>) -> Option<Event<'a>> {
        let Packet::Connect(connect) = packet else {
            let reason = ReasonCode::PROTOCOL_ERROR;
            self.end(Close { why: "first packet was not CONNECT", reason, reject: None, by: ClosedBy::Server });
            return None;
        };
        self.version = connect.version;
        let v5 = self.version.is_v5();
        if !v5 {
            self.inbound.without_quota();
        }
        let protocol_error = Some(RejectReason::ProtocolViolation);
        if connect.client_id.is_empty() && !v5 && !connect.clean_start {
            // MQTT 3.1.1: a zero-length client id requires a clean session [MQTT-3.1.3-7].
            self.refuse_connect(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "empty client id without clean session",
                protocol_error,
            );
            return None;
        }
        // A keep-alive of 0 or above `max_keep_alive_secs`: MQTT 5 is told the maximum (Server Keep Alive); 3.1.1
        // cannot be told and is refused with "identifier rejected", as Mosquitto does.
        let max = self.config.max_keep_alive_secs;
        let beyond_max = max > 0 && (connect.keep_alive == 0 || connect.keep_alive > max);
        if beyond_max && !v5 {
            let why = "keep-alive above listeners.mqtt.max_keepalive";
            self.refuse_connect(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, why, protocol_error);
            return None;
        }
        self.server_keep_alive = (v5 && beyond_max).then_some(max);
        self.keep_alive_secs = connect.keep_alive;
        let keep_alive = self.server_keep_alive.unwrap_or(connect.keep_alive);
        self.keep_alive_ms = (keep_alive > 0).then(|| u64::from(keep_alive) * 1500);
        self.aliases = OutboundAliases::new(connect.properties.topic_alias_maximum.unwrap_or(0));
        self.problem_info = connect.properties.request_problem_information != Some(false);
        self.mqtt31 = connect.mqtt31;
        // 3.1.1: a clean session ends with the connection; any other lasts until the next clean one.
        self.session_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        self.client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        self.client_max_packet =
            connect.properties.maximum_packet_size.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        self.phase = Phase::Authenticating;
        Some(Event::Connect(Box::new(connect)))
    }

    /// A packet of a connected client.
    fn on_packet<'a>(&mut self, packet: Packet<'a>) -> Option<Event<'a>> {
        let protocol_error = Some(RejectReason::ProtocolViolation);
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubResponse(r) if r.kind == PubResponseKind::PubRel => {
                let found = self.inbound.release(r.packet_id);
                let reason = if found || !self.version.is_v5() {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                let token = self.owe(Some(PubResponseKind::PubComp), QoS::ExactlyOnce, r.packet_id, reason);
                Some(Event::Release { token, packet_id: r.packet_id, found })
            }
            Packet::PubResponse(r) => Some(Event::DeliveryAck(r)),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                None
            }
            Packet::Subscribe(s) => {
                if self.version.is_v5()
                    && s.filters.iter().any(|f| f.options.no_local && f.filter.starts_with("$share/"))
                {
                    // [MQTT-3.8.3-4]
                    self.close_with(ReasonCode::PROTOCOL_ERROR, "No Local on a shared subscription", protocol_error);
                    return None;
                }
                Some(Event::Subscribe(s))
            }
            Packet::Unsubscribe(u) => Some(Event::Unsubscribe(u)),
            Packet::Disconnect(d) => {
                if self.session_expiry == 0 && d.properties.session_expiry_interval.is_some_and(|e| e > 0) {
                    // A session that was to end with the connection cannot be made to outlive it [MQTT-3.14.2-2].
                    self.close_with(
                        ReasonCode::PROTOCOL_ERROR,
                        "session expiry set at DISCONNECT after 0 at CONNECT",
                        protocol_error,
                    );
                    return None;
                }
                self.disconnect_with_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL;
                self.disconnect_expiry = d.properties.session_expiry_interval;
                self.end(Close { why: "disconnect", reason: d.reason, reject: None, by: ClosedBy::Client });
                None
            }
            Packet::Connect(_) => {
                self.close_with(ReasonCode::PROTOCOL_ERROR, "second CONNECT", protocol_error);
                None
            }
            Packet::Auth(_) => {
                // No extended authentication was started (the gateway offers none): AUTH is out of protocol. Its
                // own reason, 0x8C Bad authentication method, is for CONNACK only; DISCONNECT cannot carry it.
                self.close_with(ReasonCode::PROTOCOL_ERROR, "extended authentication unsupported", protocol_error);
                None
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close_with(ReasonCode::PROTOCOL_ERROR, "server-to-client packet from a client", protocol_error);
                None
            }
        }
    }

    fn on_publish<'a>(&mut self, publish: meshgate_protocols::mqtt::Publish<'a>) -> Option<Event<'a>> {
        let topic = match self.inbound.resolve_topic(&publish) {
            Ok(topic) => topic,
            Err(code) => {
                self.close_with(code, "invalid topic alias", Some(RejectReason::ProtocolViolation));
                return None;
            }
        };
        if !topic_levels_within(&topic, self.config.max_topic_levels) {
            let why = "topic deeper than limits.max_topic_levels";
            self.close_with(ReasonCode::TOPIC_NAME_INVALID, why, Some(RejectReason::LimitExceeded));
            return None;
        }
        let packet_id = publish.packet_id.unwrap_or(0);
        let kind = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(PubResponseKind::PubAck),
            QoS::ExactlyOnce => Some(PubResponseKind::PubRec),
        };
        if kind.is_some() {
            match self.inbound.admit(publish.qos, packet_id, publish.dup) {
                Ok(Admission::New) => {}
                Ok(Admission::Duplicate) => {
                    // A QoS 2 resend of a message already taken: answered again, in order, not ingested twice.
                    self.owe(kind, publish.qos, packet_id, ReasonCode::SUCCESS);
                    if let Some(owed) = self.owed.back_mut() {
                        owed.decided = Some(Decided::Answer(ReasonCode::SUCCESS));
                    }
                    self.answer_decided();
                    return None;
                }
                Err(code) => {
                    self.close_with(code, "receive maximum exceeded", Some(RejectReason::ProtocolViolation));
                    return None;
                }
            }
        }
        let token = self.owe(kind, publish.qos, packet_id, ReasonCode::SUCCESS);
        Some(Event::Publish { token, topic, publish })
    }

    /// Queues an answer owed, behind the others.
    fn owe(&mut self, kind: Option<PubResponseKind>, qos: QoS, packet_id: u16, reason: ReasonCode) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.owed_acks += usize::from(kind.is_some());
        self.owed.push_back(Owed { token, kind, qos, packet_id, reason, decided: None });
        Token(token)
    }

    /// Sends the answers at the front of the queue that are decided, in order.
    fn answer_decided(&mut self) {
        while self.owed.front().is_some_and(|o| o.decided.is_some()) {
            let Some(owed) = self.owed.pop_front() else { return };
            self.owed_acks -= usize::from(owed.kind.is_some());
            if self.phase == Phase::Closed {
                continue;
            }
            let reason = match owed.decided {
                Some(Decided::Answer(reason)) => reason,
                Some(Decided::Close(reason, why)) => {
                    self.close_with(reason, why, None);
                    continue;
                }
                None => continue,
            };
            let Some(kind) = owed.kind else { continue };
            // A refusal PUBACK and PUBREC cannot carry (the driver's 0x8B Server shutting down) goes as 0x80.
            let reason = if reason.allowed_in_puback() || kind == PubResponseKind::PubComp {
                reason
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            };
            if kind == PubResponseKind::PubAck || (kind == PubResponseKind::PubRec && reason.is_error()) {
                // The flow is over; an error PUBREC ends a QoS 2 flow too.
                self.inbound.completed(owed.qos, owed.packet_id);
            }
            let mut response = PubResponse::new(kind, owed.packet_id);
            response.reason = reason;
            self.send(&Packet::PubResponse(response));
        }
    }

    /// Refuses CONNECT with `reason` (3.1.1: its CONNACK return code) and ends the connection.
    fn refuse_connect(&mut self, reason: ReasonCode, why: &'static str, reject: Option<RejectReason>) {
        let reason = if reason.allowed_in_connack() { reason } else { ReasonCode::UNSPECIFIED_ERROR };
        let code = if self.version.is_v5() { reason } else { ReasonCode(reason.to_v311_connack()) };
        self.send(&Packet::ConnAck(ConnAck { code, ..ConnAck::default() }));
        self.end(Close { why, reason, reject, by: ClosedBy::Server });
    }

    /// Ends a connected session for a reason of the server's: MQTT 5 hears it in a DISCONNECT.
    fn close_with(&mut self, reason: ReasonCode, why: &'static str, reject: Option<RejectReason>) {
        if self.phase == Phase::Closed {
            return;
        }
        // A code DISCONNECT cannot carry (a decoder's 0x84 for a second CONNECT of an unknown level) goes as 0x82.
        let reason = if reason.allowed_in_disconnect() { reason } else { ReasonCode::PROTOCOL_ERROR };
        if self.version.is_v5() && self.phase == Phase::Connected {
            let mut disconnect = Disconnect::with_reason(reason);
            if self.problem_info {
                disconnect.properties.reason_string = Some(why);
            }
            self.send(&Packet::Disconnect(disconnect));
        }
        self.end(Close { why, reason, reject, by: ClosedBy::Server });
    }

    /// The connection is over: the will is due now, after its delay, or never.
    fn end(&mut self, close: Close) {
        if self.phase == Phase::Closed {
            return;
        }
        let was_connected = self.phase == Phase::Connected;
        self.phase = Phase::Closed;
        self.deadline = None;
        self.closed = Some(close);
        let publish_will = was_connected && (close.by != ClosedBy::Client || self.disconnect_with_will);
        match self.will.take().filter(|_| publish_will) {
            // The will goes out when the session ends if that comes before its delay [MQTT-3.1.3-9].
            Some(will) => {
                let delay = will.delay_secs.min(self.disconnect_expiry.unwrap_or(self.session_expiry));
                if delay == 0 {
                    self.will_ready = Some(will);
                } else {
                    self.will_due = Some(self.now.saturating_add(u64::from(delay) * 1000));
                    self.will = Some(will);
                }
            }
            None => self.will = None,
        }
    }
}
