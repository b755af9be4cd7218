//! The client's protocol state, sans-IO: it encodes what to send into the caller's buffer, reads what arrived
//! from the caller's bytes, and keeps time only through the `now_ms` it is given. Transports drive it.
//!
//! ```text
//! connect() ──CONNECT──▶            ◀──CONNACK── handle() → Event::Connected, then poll_transmit() resends
//! publish(QoS 1) ──PUBLISH──▶ (kept in the outbox)  ◀──PUBACK── handle() → Event::Acknowledged
//! subscribe() ──SUBSCRIBE──▶        ◀──SUBACK── handle() → Event::Subscribed
//!                                   ◀──PUBLISH── handle() → Event::Message (PUBACK owed: poll_transmit)
//! poll_transmit() ──PINGREQ──▶ when keep-alive is due; a PINGRESP that never comes is Error::KeepAliveTimeout
//! ```

use heapless::Deque;
use meshgate_protocols::mqtt::{
    ConnAck, Connect, DecodeError, Disconnect, Encode, EncodeError, List, Malformed, Packet, PingReq, PubResponse,
    PubResponseKind, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter, Version,
};

use crate::outbox::{Outbox, OutboxFull};

/// What went wrong. Nothing here panics; hostile input is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// Not connected (or CONNACK not received yet).
    NotConnected,
    /// The server refused the connection with this reason (MQTT 5) or return code (3.1.1).
    Refused(ReasonCode),
    /// The caller's buffer is too small for the packet.
    BufferTooSmall,
    /// The packet exceeds the server's Maximum Packet Size (or the protocol's).
    PacketTooLarge,
    /// As many QoS 1 publishes are unacknowledged as the server's Receive Maximum or the outbox allows: send
    /// again once an acknowledgement arrived.
    InflightFull,
    /// The outbox arena has no room for the packet now.
    OutboxFull,
    /// The server sent a packet that breaks the protocol here (an unexpected CONNACK, a message before it, a
    /// QoS this client does not take).
    Protocol,
    /// The server sent bytes that are not a valid packet (or a packet only clients send); what is wrong.
    Malformed(Malformed),
    /// No PINGRESP within the keep-alive interval: the connection is dead.
    KeepAliveTimeout,
    /// The server ended the connection (MQTT 5 DISCONNECT with this reason).
    Disconnected(ReasonCode),
    /// What was asked for is left out of this build: MQTT 5 (the `mqtt5` feature) or QoS 2 (`qos2`).
    Unsupported,
}

impl Error {
    /// The MQTT 5 reason code to end the connection with, for errors in what the server sent.
    pub fn reason_code(&self) -> Option<ReasonCode> {
        match self {
            Error::Malformed(m) => Some(m.reason_code()),
            Error::Protocol => Some(ReasonCode::PROTOCOL_ERROR),
            _ => None,
        }
    }
}

/// What the server told the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "returned once by value, borrowing the input; no allocator to box with")]
pub enum Event<'p> {
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
    },
    /// A QoS 1 publish was acknowledged (the server has it).
    Acknowledged {
        /// Its packet identifier.
        packet_id: u16,
        /// The reason code (MQTT 5; 0 in 3.1.1).
        reason: ReasonCode,
    },
    /// A SUBACK.
    Subscribed {
        /// The SUBSCRIBE's packet identifier.
        packet_id: u16,
        /// The granted QoS or failure code per filter.
        codes: &'p [u8],
    },
    /// A message on a subscribed topic (a QoS 1 one is acknowledged by the next `poll_transmit`).
    Message(Publish<'p>),
    /// PINGRESP, or anything else that needs no action.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Connecting,
    Connected,
}

/// Acknowledgements owed to the server (PUBACK, and with QoS 2 PUBREC, PUBREL, PUBCOMP), bounded.
const OWED_ACKS: usize = 8;

/// QoS 2 messages received and not yet released by the server (their ids, so a resent PUBLISH is not delivered
/// twice), bounded.
#[cfg(feature = "qos2")]
const AWAITING_RELEASE: usize = 8;

/// An acknowledgement the client owes: its kind, packet identifier and reason.
type Owed = (PubResponseKind, u16, ReasonCode);

/// One MQTT connection's client state, with up to `N` unacknowledged QoS 1 publishes kept for resending.
#[derive(Debug)]
pub struct Client<'a, const N: usize> {
    version: Version,
    state: State,
    keep_alive_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    next_id: u16,
    server_receive_maximum: u16,
    server_max_packet: usize,
    outbox: Outbox<'a, N>,
    /// Resend position in the outbox after a reconnect (`None`: nothing to resend).
    resend: Option<usize>,
    /// The server broke the protocol: the DISCONNECT (MQTT 5) with this reason is the last thing to send.
    refusal: Option<ReasonCode>,
    owed: Deque<Owed, OWED_ACKS>,
    #[cfg(feature = "qos2")]
    awaiting_release: heapless::Vec<u16, AWAITING_RELEASE>,
}

impl<'a, const N: usize> Client<'a, N> {
    /// A disconnected client speaking `version`, keeping unacknowledged publishes in `outbox_arena`.
    pub fn new(version: Version, outbox_arena: &'a mut [u8]) -> Self {
        Client {
            version,
            state: State::Disconnected,
            keep_alive_ms: 0,
            last_sent_ms: 0,
            ping_sent_ms: None,
            next_id: 1,
            server_receive_maximum: u16::MAX,
            server_max_packet: usize::MAX,
            outbox: Outbox::new(outbox_arena),
            resend: None,
            refusal: None,
            owed: Deque::new(),
            #[cfg(feature = "qos2")]
            awaiting_release: heapless::Vec::new(),
        }
    }

    /// The protocol level spoken.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether CONNACK accepted the connection and it has not ended since.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// QoS 1 (and 2) publishes waiting for their acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.outbox.len()
    }

    /// Encodes `packet` into `out` within the server's Maximum Packet Size.
    fn write(&self, packet: &impl Encode, out: &mut [u8]) -> Result<usize, Error> {
        if packet.encoded_len(self.version) > self.server_max_packet {
            return Err(Error::PacketTooLarge);
        }
        packet.encode(self.version, out).map_err(|e| match e {
            EncodeError::BufferTooSmall { .. } => Error::BufferTooSmall,
            _ => Error::PacketTooLarge,
        })
    }

    /// [`Client::write`] for a packet that is sent now.
    fn encode(&mut self, packet: &impl Encode, out: &mut [u8], now_ms: u64) -> Result<usize, Error> {
        let n = self.write(packet, out)?;
        self.last_sent_ms = now_ms;
        Ok(n)
    }

    /// Encodes CONNECT (at `connect.version`, which the client then speaks) into `out`; returns its length.
    /// Unacknowledged publishes from an earlier connection are resent after CONNACK.
    pub fn connect(&mut self, connect: &Connect<'_>, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        if !connect.version.is_supported() {
            return Err(Error::Unsupported);
        }
        self.refusal = None;
        self.version = connect.version;
        self.server_max_packet = usize::MAX;
        let n = self.encode(connect, out, now_ms)?;
        self.state = State::Connecting;
        self.keep_alive_ms = u64::from(connect.keep_alive) * 1000;
        self.ping_sent_ms = None;
        self.owed.clear();
        Ok(n)
    }

    /// The transport failed or was closed: the outbox is kept, to be resent after the next CONNACK.
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.ping_sent_ms = None;
        self.refusal = None;
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.outbox.contains(id) {
                return id;
            }
        }
    }

    /// Encodes a PUBLISH into `out`; returns its length and, for QoS 1 (and 2, with the `qos2` feature), its packet
    /// identifier (the packet is kept until acknowledged). `publish.packet_id` and `dup` are set here.
    pub fn publish(
        &mut self,
        publish: &Publish<'_>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<(usize, Option<u16>), Error> {
        if self.state != State::Connected {
            return Err(Error::NotConnected);
        }
        let mut p = *publish;
        p.dup = false;
        if p.qos == QoS::AtMostOnce {
            p.packet_id = None;
            return Ok((self.encode(&p, out, now_ms)?, None));
        }
        #[cfg(not(feature = "qos2"))]
        if p.qos == QoS::ExactlyOnce {
            return Err(Error::Unsupported);
        }
        if self.outbox.len() >= usize::from(self.server_receive_maximum).min(N) {
            return Err(Error::InflightFull);
        }
        let id = self.packet_id();
        p.packet_id = Some(id);
        let n = self.write(&p, out)?;
        let stored = out.get(..n).ok_or(Error::BufferTooSmall)?;
        self.outbox.push(id, stored).map_err(|e| match e {
            OutboxFull::Slots => Error::InflightFull,
            OutboxFull::Bytes | OutboxFull::TooLarge => Error::OutboxFull,
        })?;
        self.last_sent_ms = now_ms;
        Ok((n, Some(id)))
    }

    /// Encodes a SUBSCRIBE for `filters` (each with its options) with packet identifier `packet_id`.
    pub fn subscribe(
        &mut self,
        packet_id: u16,
        filters: &[SubscribeFilter<'_>],
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if self.state != State::Connected {
            return Err(Error::NotConnected);
        }
        let subscribe = Subscribe { packet_id, filters: List::new(filters), ..Subscribe::default() };
        self.encode(&subscribe, out, now_ms)
    }

    /// Encodes DISCONNECT; the connection is over for the client.
    pub fn disconnect(&mut self, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        self.disconnect_with(ReasonCode::SUCCESS, now_ms, out)
    }

    /// Encodes DISCONNECT with `reason` (MQTT 5; 3.1.1 has none), e.g. [`Error::reason_code`] after the server
    /// sent something malformed. Unacknowledged publishes stay for the next connection.
    pub fn disconnect_with(&mut self, reason: ReasonCode, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        let n = self.encode(&Disconnect::with_reason(reason), out, now_ms)?;
        self.state = State::Disconnected;
        Ok(n)
    }

    /// Reads one packet from the start of `input`: `Ok(None)` until it is complete, else the bytes it used and
    /// what it means. When the server broke the protocol the connection is over: the error says how, and on MQTT 5
    /// `poll_transmit` yields the DISCONNECT with its reason code, the last packet of the connection.
    pub fn handle<'p>(&mut self, input: &'p [u8], now_ms: u64) -> Result<Option<(usize, Event<'p>)>, Error> {
        let _ = now_ms;
        let (packet, used) = match Packet::decode_from_server(input, self.version, usize::MAX) {
            Ok(decoded) => decoded,
            Err(DecodeError::Incomplete { .. }) => return Ok(None),
            Err(DecodeError::Malformed(m)) => return Err(self.refuse(Error::Malformed(m))),
            Err(DecodeError::TooLarge { .. }) => return Err(Error::PacketTooLarge),
        };
        let event = match packet {
            Packet::ConnAck(ack) => self.on_connack(&ack)?,
            Packet::PubResponse(r) => self.on_pub_response(&r)?,
            Packet::SubAck(s) => Event::Subscribed { packet_id: s.packet_id, codes: s.codes },
            Packet::Publish(p) => {
                if self.state != State::Connected {
                    return Err(self.refuse(Error::Protocol));
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, _) => {}
                    (QoS::AtLeastOnce, Some(id)) => self.owe(PubResponseKind::PubAck, id, ReasonCode::SUCCESS)?,
                    #[cfg(feature = "qos2")]
                    (QoS::ExactlyOnce, Some(id)) => {
                        // Delivered once: a PUBLISH resent before its PUBREL is answered but not delivered again.
                        let duplicate = self.awaiting_release.contains(&id);
                        if !duplicate {
                            self.awaiting_release.push(id).map_err(|_| Error::InflightFull)?;
                        }
                        self.owe(PubResponseKind::PubRec, id, ReasonCode::SUCCESS)?;
                        if duplicate {
                            return Ok(Some((used, Event::Nothing)));
                        }
                    }
                    // QoS 2 needs the `qos2` feature.
                    _ => return Err(self.refuse(Error::Protocol)),
                }
                Event::Message(p)
            }
            Packet::PingResp => {
                self.ping_sent_ms = None;
                Event::Nothing
            }
            Packet::UnsubAck(_) => Event::Nothing,
            Packet::Disconnect(d) => {
                self.state = State::Disconnected;
                return Err(Error::Disconnected(d.reason));
            }
            // Packets only a client sends, or flows this client never starts (QoS 2, AUTH).
            _ => return Err(self.refuse(Error::Protocol)),
        };
        Ok(Some((used, event)))
    }

    /// The server broke the protocol: the connection is over, and on MQTT 5 `poll_transmit` yields a DISCONNECT
    /// saying why. Returns `e`.
    fn refuse(&mut self, e: Error) -> Error {
        log!(warn, "the server broke the protocol ({}); ending the connection", e);
        self.state = State::Disconnected;
        self.ping_sent_ms = None;
        if self.version.is_v5() {
            self.refusal = e.reason_code();
        }
        e
    }

    /// Queues an acknowledgement for `poll_transmit`. Bounded: a server sending faster than the client flushes is
    /// refused.
    fn owe(&mut self, kind: PubResponseKind, packet_id: u16, reason: ReasonCode) -> Result<(), Error> {
        self.owed.push_back((kind, packet_id, reason)).map_err(|_| Error::InflightFull)
    }

    /// PUBACK, and with QoS 2 PUBREC, PUBCOMP (for what the client sent) and PUBREL (for what it received).
    fn on_pub_response(&mut self, r: &PubResponse<'_>) -> Result<Event<'static>, Error> {
        match r.kind {
            PubResponseKind::PubAck => {}
            // A refusing PUBREC ends the exchange, as PUBCOMP does.
            #[cfg(feature = "qos2")]
            PubResponseKind::PubComp => {}
            #[cfg(feature = "qos2")]
            PubResponseKind::PubRec if r.reason.is_error() => {}
            #[cfg(feature = "qos2")]
            PubResponseKind::PubRec => {
                let known = self.outbox.release(r.packet_id);
                let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
                self.owe(PubResponseKind::PubRel, r.packet_id, reason)?;
                return Ok(Event::Nothing);
            }
            #[cfg(feature = "qos2")]
            PubResponseKind::PubRel => {
                let position = self.awaiting_release.iter().position(|&id| id == r.packet_id);
                let reason = match position {
                    Some(i) => {
                        self.awaiting_release.swap_remove(i);
                        ReasonCode::SUCCESS
                    }
                    None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                };
                self.owe(PubResponseKind::PubComp, r.packet_id, reason)?;
                return Ok(Event::Nothing);
            }
            #[cfg(not(feature = "qos2"))]
            _ => return Err(self.refuse(Error::Protocol)),
        }
        if !self.outbox.ack(r.packet_id) {
            // Not ours (a duplicate after a resend): harmless.
            return Ok(Event::Nothing);
        }
        Ok(Event::Acknowledged { packet_id: r.packet_id, reason: r.reason })
    }

    fn on_connack(&mut self, ack: &ConnAck<'_>) -> Result<Event<'static>, Error> {
        if self.state != State::Connecting {
            return Err(self.refuse(Error::Protocol));
        }
        if ack.code != ReasonCode::SUCCESS {
            log!(warn, "connection refused: {}", ack.code);
            self.state = State::Disconnected;
            return Err(Error::Refused(ack.code));
        }
        self.state = State::Connected;
        #[cfg(feature = "qos2")]
        if !ack.session_present {
            // The server forgot the QoS 2 exchanges it had started.
            self.awaiting_release.clear();
        }
        self.server_receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX).max(1);
        self.server_max_packet =
            ack.properties.maximum_packet_size.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        if let Some(k) = ack.properties.server_keep_alive {
            self.keep_alive_ms = u64::from(k) * 1000;
        }
        log!(
            info,
            "connected (session present: {}); {} unacknowledged publishes to send again",
            ack.session_present,
            self.outbox.len()
        );
        if !self.outbox.is_empty() {
            // Sent before and not acknowledged: again, flagged DUP if the server kept the session.
            if ack.session_present {
                self.outbox.mark_dup();
            }
            self.resend = Some(0);
        }
        Ok(Event::Connected { session_present: ack.session_present })
    }

    /// The next packet the client owes the server, encoded into `out` (0: nothing now): acknowledgements (of
    /// received messages, and PUBREL), then resent publishes after a reconnect (PUBREL for a QoS 2 one the
    /// server already has), then PINGREQ when keep-alive is due.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Result<usize, Error> {
        if let Some(reason) = self.refusal {
            let n = self.write(&Disconnect::with_reason(reason), out)?;
            self.refusal = None;
            return Ok(n);
        }
        if self.state != State::Connected {
            return Ok(0);
        }
        if let Some(&(kind, packet_id, reason)) = self.owed.front() {
            let response = PubResponse { kind, packet_id, reason, ..PubResponse::default() };
            let n = self.encode(&response, out, now_ms)?;
            self.owed.pop_front();
            return Ok(n);
        }
        if let Some(index) = self.resend {
            match self.outbox.get(index) {
                None => self.resend = None,
                Some(stored) if stored.released => {
                    let release = PubResponse::new(PubResponseKind::PubRel, stored.packet_id);
                    let n = self.encode(&release, out, now_ms)?;
                    self.resend = Some(index + 1);
                    return Ok(n);
                }
                Some(stored) => {
                    let dst = out.get_mut(..stored.packet.len()).ok_or(Error::BufferTooSmall)?;
                    dst.copy_from_slice(stored.packet);
                    self.resend = Some(index + 1);
                    self.last_sent_ms = now_ms;
                    return Ok(dst.len());
                }
            }
        }
        if self.keep_alive_ms > 0
            && self.ping_sent_ms.is_none()
            && now_ms.saturating_sub(self.last_sent_ms) >= self.keep_alive_ms
        {
            let n = self.encode(&PingReq, out, now_ms)?;
            self.ping_sent_ms = Some(now_ms);
            return Ok(n);
        }
        Ok(0)
    }

    /// When the client next has timed work (a PINGREQ, or giving up on one), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state != State::Connected || self.keep_alive_ms == 0 {
            return None;
        }
        Some(match self.ping_sent_ms {
            Some(sent) => sent + self.keep_alive_ms,
            None => self.last_sent_ms + self.keep_alive_ms,
        })
    }

    /// Checks the keep-alive: a PINGREQ unanswered for a whole interval ends the connection.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), Error> {
        if let Some(sent) = self.ping_sent_ms
            && now_ms.saturating_sub(sent) >= self.keep_alive_ms
        {
            log!(warn, "no PINGRESP within the keep-alive; the connection is dead");
            self.connection_lost();
            return Err(Error::KeepAliveTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
