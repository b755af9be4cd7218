//! What the session hands its driver ([`Event`]) and what the driver answers ([`Verdict`], [`Accepted`]).

use std::borrow::Cow;

use meshgate_protocols::mqtt::{Connect, PubResponse, Publish, ReasonCode, Subscribe, Unsubscribe};

use crate::metrics::RejectReason;
use crate::mqtt::will::PendingWill;

/// Names an answer the session owes: handed out with [`Event::Publish`] and [`Event::Release`], given back with
/// [`super::ServerSession::complete`]. Opaque; one per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub(super) u64);

/// Something the driver must act on. Events borrow the session's input; act on one before polling the next.
#[derive(Debug)]
pub enum Event<'a> {
    /// A CONNECT that passed the protocol's checks: authenticate the device, open its session, then
    /// [`super::ServerSession::accept`] or [`super::ServerSession::refuse`]. Nothing more is read until then. (Boxed:
    /// it is the largest event and comes once.)
    Connect(Box<Connect<'a>>),
    /// A message to ingest: `topic` is resolved (topic alias applied, depth checked) and, for QoS 1 and 2,
    /// admitted against Receive Maximum. Answer with [`super::ServerSession::complete`] once its outcome is known
    /// (QoS 0 too: its place keeps the order of the answers).
    Publish {
        /// The answer owed.
        token: Token,
        /// The topic name.
        topic: Cow<'a, str>,
        /// The packet.
        publish: Publish<'a>,
    },
    /// PUBREL for a QoS 2 message from the device: complete `token` once the release is stored (a persistent
    /// session's) and PUBCOMP goes out.
    Release {
        /// The answer owed (PUBCOMP).
        token: Token,
        /// The packet id released.
        packet_id: u16,
        /// Whether the id was waiting for its PUBREL here.
        found: bool,
    },
    /// SUBSCRIBE: answer with [`super::ServerSession::suback`].
    Subscribe(Subscribe<'a>),
    /// UNSUBSCRIBE: answer with [`super::ServerSession::unsuback`].
    Unsubscribe(Unsubscribe<'a>),
    /// PUBACK, PUBREC or PUBCOMP for a delivery of the broker's.
    DeliveryAck(PubResponse<'a>),
    /// The connection is over: send what [`super::ServerSession::poll_transmit`] holds (a DISCONNECT or a refusing
    /// CONNACK) and close. Comes once.
    Closed(Close),
    /// The will is due: publish it unless the client is back.
    WillDue(PendingWill),
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// What ended it, for the log.
    pub why: &'static str,
    /// The reason code sent (MQTT 5), or the one the client sent with DISCONNECT.
    pub reason: ReasonCode,
    /// The refusal to count, when the session refused the client for it (the driver counts its own).
    pub reject: Option<RejectReason>,
    /// Who ended it.
    pub by: ClosedBy,
}

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client, with DISCONNECT.
    Client,
    /// The transport, without DISCONNECT (the driver's [`super::ServerSession::handle_lost`]).
    Lost,
    /// The session, for a protocol reason (or the driver, through [`super::ServerSession::close`]).
    Server,
    /// Nobody: no CONNECT came in time.
    Timeout,
}

/// The outcome of a publish (or PUBREL) for [`super::ServerSession::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (QoS 0: taken): acknowledge it.
    Stored,
    /// Not taken, and the device need not know why: MQTT 5 hears the reason code; MQTT 3.1.1, which cannot be
    /// refused a publish, is acknowledged and the message dropped (an ACL refusal).
    Dropped(ReasonCode),
    /// Refused: MQTT 5 QoS 1 and 2 hear the reason code; MQTT 3.1.1 and QoS 0, which have no refusal, are closed.
    Refused(ReasonCode, &'static str),
}

/// What the driver decided about a CONNECT it accepts.
#[derive(Debug, Default)]
pub struct Accepted<'a> {
    /// The broker held a session for this client id.
    pub session_present: bool,
    /// The client id the gateway assigned (MQTT 5, a CONNECT with an empty one).
    pub assigned_client_id: Option<&'a str>,
    /// QoS 2 packet ids an earlier connection of the session answered with PUBREC, still awaiting PUBREL.
    pub awaiting_release: &'a [u16],
    /// The will, published when the connection ends without a normal DISCONNECT.
    pub will: Option<PendingWill>,
}
