//! The upstream MQTT client session, sans-IO: it takes bytes and time and returns events and bytes, and never
//! touches a socket (the driver in [`super`] does).
//!
//! It publishes at QoS 1 or 2 within a window (the smaller of the configured `inflight` and the broker's Receive
//! Maximum) and keeps what is in flight across connections: after a reconnect that resumes the session, unanswered
//! PUBLISHes go again with DUP set and their packet identifiers, and PUBRELs again for QoS 2 messages the broker
//! has received; when the broker has lost the session they go again as new. An outcome is reported once per
//! publish: [`Event::Confirmed`] on PUBACK (QoS 1) or PUBCOMP (QoS 2) with a success code, [`Event::Rejected`]
//! with the broker's refusal code.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use meshgate_protocols::mqtt::{
    ConnAck, Connect, DecodeError, Packet, Properties, PropertyList, PubResponse, PubResponseKind, Publish, QoS,
    ReasonCode, UserProperty, Version,
};

/// The largest packet accepted from the broker (only acknowledgements are expected).
const MAX_INCOMING_PACKET: usize = 64 * 1024;

/// What the caller learns from the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        /// Whether it resumed the session.
        session_present: bool,
    },
    /// The broker refused the connection (CONNACK code).
    ConnectRefused(u8),
    /// The broker confirmed publish `token`.
    Confirmed(u64),
    /// The broker refused publish `token` with this reason code.
    Rejected(u64, u8),
    /// The connection must be dropped: broken protocol, keep-alive expired, or DISCONNECT from the broker.
    Lost(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The protocol level.
    pub version: Version,
    /// The client identifier.
    pub client_id: String,
    /// User name and password.
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// Keep-alive in seconds.
    pub keep_alive_secs: u16,
    /// MQTT 5 session expiry in seconds.
    pub session_expiry_secs: u32,
}

/// One message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// QoS 1 or 2.
    pub qos: u8,
    /// MQTT 5 Content Type.
    pub content_type: Option<String>,
    /// MQTT 5 User Properties.
    pub user_properties: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

#[derive(Debug)]
enum Stage {
    /// Sent (or to send); PUBACK or PUBREC awaited.
    Published,
    /// QoS 2: PUBREC received, PUBREL sent; PUBCOMP awaited.
    Released,
}

#[derive(Debug)]
struct InFlight {
    token: u64,
    message: Message,
    stage: Stage,
}

/// The connection's state.
#[derive(Debug, PartialEq, Eq)]
enum Link {
    Down,
    /// CONNECT sent, CONNACK awaited.
    Connecting,
    Up,
}

/// An MQTT client session for publishing.
#[derive(Debug)]
pub struct ClientSession {
    options: ConnectOptions,
    inflight_limit: usize,
    window: usize,
    link: Link,
    /// What is in flight, by packet identifier.
    inflight: BTreeMap<u16, InFlight>,
    /// Accepted but not yet sent (the window is full or the link down).
    queued: VecDeque<(u64, Message)>,
    next_packet_id: u16,
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<Event>,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    ping_outstanding: bool,
    /// The first connection of a session store starts clean (stale QoS 2 state from an earlier process must not
    /// swallow a new message with a reused identifier); every later one resumes.
    connected_before: bool,
}

impl ClientSession {
    /// A session that publishes with at most `inflight` messages awaiting their acknowledgement.
    pub fn new(options: ConnectOptions, inflight: usize) -> ClientSession {
        let inflight_limit = inflight.clamp(1, usize::from(u16::MAX));
        ClientSession {
            options,
            inflight_limit,
            window: inflight_limit,
            link: Link::Down,
            inflight: BTreeMap::new(),
            queued: VecDeque::new(),
            next_packet_id: 1,
            input: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            last_sent: None,
            last_received: None,
            ping_outstanding: false,
            connected_before: false,
        }
    }

    /// Starts a connection: queues CONNECT. Call on a fresh transport.
    pub fn connect(&mut self, now: Instant) {
        self.input.clear();
        self.output.clear();
        self.ping_outstanding = false;
        let o = &self.options;
        let properties = Properties {
            session_expiry_interval: o.version.is_v5().then_some(o.session_expiry_secs),
            receive_maximum: None,
            ..Properties::default()
        };
        let connect = Connect {
            version: o.version,
            clean_start: !self.connected_before,
            keep_alive: o.keep_alive_secs,
            properties,
            client_id: &o.client_id,
            will: None,
            username: o.username.as_deref(),
            password: o.password.as_deref().map(str::as_bytes),
            mqtt31: false,
        };
        let _ = encode(&Packet::Connect(connect), o.version, &mut self.output);
        self.link = Link::Connecting;
        self.last_sent = Some(now);
        self.last_received = Some(now);
    }

    /// Accepts a message to publish; it goes out as soon as the link is up and the window has room.
    pub fn publish(&mut self, token: u64, message: Message) {
        self.queued.push_back((token, message));
        self.flush_queue();
    }

    /// Messages accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.inflight.len() + self.queued.len()
    }

    /// Whether the session would take more messages without growing past its window and a window's worth queued.
    pub fn has_room(&self) -> bool {
        self.pending() < self.window.saturating_mul(2)
    }

    /// Feeds bytes read from the transport (ignored once the connection is lost or closed).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.link == Link::Down {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.last_received = Some(now);
        loop {
            let version = self.options.version;
            let input = std::mem::take(&mut self.input);
            let decoded = Packet::decode_from_server(&input, version, MAX_INCOMING_PACKET);
            let used = match decoded {
                Ok((packet, used)) => {
                    self.handle_packet(packet);
                    used
                }
                Err(DecodeError::Incomplete { .. }) => {
                    self.input = input;
                    return;
                }
                Err(e) => {
                    self.events.push_back(Event::Lost(format!("malformed packet from the broker: {e:?}")));
                    self.link = Link::Down;
                    return;
                }
            };
            self.input = input;
            self.input.drain(..used);
            if self.link == Link::Down {
                return;
            }
        }
    }

    fn handle_packet(&mut self, packet: Packet<'_>) {
        match packet {
            Packet::ConnAck(ack) if self.link == Link::Connecting => self.handle_connack(&ack),
            Packet::PubResponse(r) if self.link == Link::Up => self.handle_response(&r),
            Packet::PingResp => self.ping_outstanding = false,
            Packet::Disconnect(d) => {
                self.events.push_back(Event::Lost(format!("the broker disconnected: reason 0x{:02x}", d.reason.0)));
                self.link = Link::Down;
            }
            Packet::Publish(p) => {
                // Nothing is subscribed; a broker that delivers anyway is answered so its flow completes.
                if let Some(id) = p.packet_id {
                    let kind =
                        if p.qos == QoS::ExactlyOnce { PubResponseKind::PubRec } else { PubResponseKind::PubAck };
                    self.respond(kind, id);
                }
            }
            Packet::PubResponse(r) if r.kind == PubResponseKind::PubRel => {
                self.respond(PubResponseKind::PubComp, r.packet_id)
            }
            other => {
                self.events.push_back(Event::Lost(format!("unexpected {:?} from the broker", other.packet_type())));
                self.link = Link::Down;
            }
        }
    }

    fn handle_connack(&mut self, ack: &ConnAck<'_>) {
        if ack.code.0 != 0 {
            self.events.push_back(Event::ConnectRefused(ack.code.0));
            self.link = Link::Down;
            return;
        }
        self.link = Link::Up;
        self.connected_before = true;
        let receive_maximum = ack.properties.receive_maximum.map_or(usize::from(u16::MAX), usize::from);
        self.window = self.inflight_limit.min(receive_maximum).max(1);
        self.events.push_back(Event::Connected { session_present: ack.session_present });
        // What was in flight goes again: as a retransmission of a resumed session, or anew.
        let resumed = ack.session_present;
        let ids: Vec<u16> = self.inflight.keys().copied().collect();
        for id in ids {
            let Some(f) = self.inflight.get_mut(&id) else { continue };
            match (&f.stage, resumed) {
                (Stage::Released, true) => self.respond(PubResponseKind::PubRel, id),
                (_, resumed) => {
                    f.stage = Stage::Published;
                    let message = f.message.clone();
                    // It was encoded once, so it encodes again.
                    let _ = self.send_publish(id, &message, resumed);
                }
            }
        }
        self.flush_queue();
    }

    fn handle_response(&mut self, r: &PubResponse<'_>) {
        let id = r.packet_id;
        let code = r.reason.0;
        match r.kind {
            PubResponseKind::PubAck | PubResponseKind::PubComp => {
                let expected = match self.inflight.get(&id) {
                    Some(f) if r.kind == PubResponseKind::PubAck => {
                        matches!(f.stage, Stage::Published) && f.message.qos == 1
                    }
                    Some(f) => matches!(f.stage, Stage::Released),
                    None => false,
                };
                if !expected {
                    // An answer to nothing we sent (a duplicate after a resend): ignored.
                    return;
                }
                if let Some(f) = self.inflight.remove(&id) {
                    self.events.push_back(if code < 0x80 {
                        Event::Confirmed(f.token)
                    } else {
                        Event::Rejected(f.token, code)
                    });
                }
                self.flush_queue();
            }
            PubResponseKind::PubRec => {
                let Some(f) = self.inflight.get_mut(&id) else {
                    // Unknown: release it so the broker forgets it.
                    self.respond(PubResponseKind::PubRel, id);
                    return;
                };
                if code >= 0x80 {
                    let token = f.token;
                    self.inflight.remove(&id);
                    self.events.push_back(Event::Rejected(token, code));
                    self.flush_queue();
                    return;
                }
                f.stage = Stage::Released;
                self.respond(PubResponseKind::PubRel, id);
            }
            PubResponseKind::PubRel => self.respond(PubResponseKind::PubComp, id),
        }
    }

    fn respond(&mut self, kind: PubResponseKind, packet_id: u16) {
        let response = PubResponse { kind, packet_id, reason: ReasonCode::SUCCESS, properties: Properties::default() };
        let _ = encode(&Packet::PubResponse(response), self.options.version, &mut self.output);
    }

    fn flush_queue(&mut self) {
        while self.link == Link::Up && self.inflight.len() < self.window {
            let Some((token, message)) = self.queued.pop_front() else { return };
            let Some(id) = self.free_packet_id() else {
                self.queued.push_front((token, message));
                return;
            };
            if !self.send_publish(id, &message, false) {
                // It cannot be encoded (a topic over 65,535 bytes, a packet over 256 MiB): never sendable.
                self.events.push_back(Event::Rejected(token, ReasonCode::PACKET_TOO_LARGE.0));
                continue;
            }
            self.inflight.insert(id, InFlight { token, message, stage: Stage::Published });
        }
    }

    fn free_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn send_publish(&mut self, id: u16, m: &Message, dup: bool) -> bool {
        let user: Vec<UserProperty<'_>> =
            m.user_properties.iter().map(|(name, value)| UserProperty { name, value }).collect();
        let properties = Properties {
            content_type: m.content_type.as_deref(),
            user_properties: PropertyList::new(&user),
            ..Properties::default()
        };
        let publish = Publish {
            dup,
            qos: if m.qos == 2 { QoS::ExactlyOnce } else { QoS::AtLeastOnce },
            retain: false,
            topic: &m.topic,
            packet_id: Some(id),
            properties: if self.options.version.is_v5() { properties } else { Properties::default() },
            payload: &m.payload,
        };
        encode(&Packet::Publish(publish), self.options.version, &mut self.output)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves the bytes to send into `out` (appended).
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, now: Instant) {
        if !self.output.is_empty() {
            out.append(&mut self.output);
            self.last_sent = Some(now);
        }
    }

    /// When [`ClientSession::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keep_alive = Duration::from_secs(u64::from(self.options.keep_alive_secs));
        match self.link {
            Link::Down => None,
            _ if keep_alive.is_zero() => None,
            Link::Connecting => self.last_sent.map(|t| t + keep_alive),
            Link::Up if self.ping_outstanding => self.last_received.map(|t| t + keep_alive),
            Link::Up => self.last_sent.map(|t| t + keep_alive),
        }
    }

    /// Sends a PINGREQ when the link was quiet for the keep-alive, and gives up on a broker that did not answer
    /// CONNECT or a PINGREQ within another keep-alive.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.poll_timeout() else { return };
        if now < due {
            return;
        }
        match self.link {
            Link::Connecting => self.lose("no CONNACK within the keep-alive"),
            Link::Up if self.ping_outstanding => self.lose("no answer to PINGREQ within the keep-alive"),
            Link::Up => {
                let _ = encode(&Packet::PingReq, self.options.version, &mut self.output);
                self.ping_outstanding = true;
                self.last_received = Some(now);
                self.last_sent = Some(now);
            }
            Link::Down => {}
        }
    }

    fn lose(&mut self, why: &str) {
        self.events.push_back(Event::Lost(why.to_string()));
        self.link = Link::Down;
    }

    /// The transport is gone: what is in flight waits for the next connection.
    pub fn connection_lost(&mut self) {
        self.link = Link::Down;
        self.output.clear();
        self.input.clear();
    }

    /// Whether the broker accepted the current connection.
    #[cfg(test)]
    pub fn is_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Queues a DISCONNECT (normal disconnection) for a clean goodbye.
    pub fn disconnect(&mut self) {
        if self.link == Link::Up {
            let d =
                meshgate_protocols::mqtt::Disconnect { reason: ReasonCode::SUCCESS, properties: Properties::default() };
            let _ = encode(&Packet::Disconnect(d), self.options.version, &mut self.output);
        }
        self.link = Link::Down;
    }
}

/// Appends `packet`; `false` (nothing appended) when it cannot be encoded.
fn encode(packet: &Packet<'_>, version: Version, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.resize(start + packet.encoded_len(version), 0);
    match out.get_mut(start..).map(|buf| packet.encode(version, buf)) {
        Some(Ok(n)) => {
            out.truncate(start + n);
            true
        }
        _ => {
            out.truncate(start);
            false
        }
    }
}

#[cfg(test)]
mod tests;
