//! One client's broker session: its subscriptions, the messages queued for it, and the outbound QoS 1/2 flows in
//! flight. It outlives the connection when the client asked for a persistent session.
//!
//! Outbound flows (MQTT 5 section 4.3): QoS 1 `PUBLISH → PUBACK`; QoS 2 `PUBLISH → PUBREC`, `PUBREL → PUBCOMP`.
//! At most the client's Receive Maximum are in flight; the rest wait in a bounded queue, oldest first. On
//! reconnect the flows in flight are resent: PUBLISH with DUP until PUBREC, then PUBREL.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshgate_protocols::mqtt::{QoS, SubscriptionOptions, Version};
use serde::{Deserialize, Serialize};

use super::message::Message;
use crate::acl::DeviceAcl;

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Maximum QoS.
    pub qos: u8,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier.
    pub id: Option<u32>,
}

impl Subscription {
    /// A subscription with `options` and identifier `id`.
    pub fn new(options: &SubscriptionOptions, id: Option<u32>) -> Subscription {
        Subscription {
            qos: options.qos as u8,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            id,
        }
    }
}

/// A message on its way to this session, with the QoS and flags it is delivered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// Delivery QoS: the lower of the message's and the subscription's.
    pub qos: u8,
    /// The RETAIN flag sent.
    pub retain: bool,
    /// Identifiers of the matching subscriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/{group}/{filter}`) it came through, if any: if this session ends before
    /// the message is acknowledged, another member of the group gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    /// It was delivered before and put back (AMQP reject or nack with requeue, recover, a consumer gone):
    /// AMQP's `redelivered`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivered: bool,
    /// Its place in the session's queue, in the order messages were queued: a delivery put back returns to it.
    #[serde(default)]
    pub seq: u64,
}

impl Delivery {
    /// A first delivery of `message` at `qos`, with the RETAIN flag `retain`, for the subscriptions `ids`
    /// (through the shared subscription `shared`, if any).
    pub fn new(message: Arc<Message>, qos: u8, retain: bool, ids: Vec<u32>, shared: Option<String>) -> Delivery {
        Delivery { message, qos, retain, subscription_ids: ids, shared, redelivered: false, seq: 0 }
    }

    /// The bytes it holds while queued, as the queue limits count them.
    pub fn size(&self) -> u64 {
        self.message.queued_size()
    }
}

/// Bytes queued for delivery over all sessions, against `limits.max_memory_bytes`. Shared by the broker's
/// sessions; each session adds and removes its own.
#[derive(Debug, Clone, Default)]
pub struct MemoryBudget {
    used: Arc<AtomicU64>,
    limit: Arc<AtomicU64>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { used: Arc::new(AtomicU64::new(0)), limit: Arc::new(AtomicU64::new(limit)) }
    }

    /// Changes the limit for every session sharing the budget (a reload); 0: none.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn would_exceed(&self, more: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit > 0 && self.used().saturating_add(more) > limit
    }

    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
    }
}

/// How much one session may queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages (`broker.max_queued_messages`).
    pub messages: usize,
    /// Bytes (`broker.max_queued_bytes`).
    pub bytes: u64,
}

/// Where an outbound flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    AwaitPubRec,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitPubComp,
}

/// What the driver sends for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A PUBLISH.
    Publish {
        /// Packet identifier (0 for QoS 0).
        packet_id: u16,
        /// DUP flag.
        dup: bool,
        /// The delivery.
        delivery: Delivery,
    },
    /// A PUBREL.
    PubRel(u16),
}

/// A client's session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The protocol version of its last connection.
    #[serde(with = "version_serde")]
    pub version: Version,
    /// Seconds it outlives its connection (`u32::MAX`: forever; 0: it ends with the connection).
    pub expiry_secs: u32,
    /// Subscriptions by filter as subscribed (shared ones with their `$share/{group}/` prefix).
    pub subscriptions: BTreeMap<String, Subscription>,
    queue: VecDeque<Delivery>,
    inflight: BTreeMap<u16, (Stage, Delivery)>,
    next_id: u16,
    /// The `seq` of the next delivery queued.
    #[serde(default)]
    next_seq: u64,
    /// When its connection ended (ms since the epoch); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Messages dropped because the queue was full.
    #[serde(default)]
    pub dropped: u64,
    #[serde(skip, default = "default_receive_maximum")]
    receive_maximum: u16,
    /// Packet ids of QoS 2 publishes the client sent that were stored and answered with PUBREC, awaiting its
    /// PUBREL: a resend of one, after a reconnect or a restart, is answered again and not ingested twice.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub inbound_qos2: BTreeSet<u16>,
    /// The user that created it (`""`: an anonymous device); nobody else may resume or take it over.
    #[serde(default)]
    pub owner: String,
    /// As stored: the highest spool record id whose companion messages this state includes. After a crash the
    /// broker routes the companions after it into the session again (see [`super::durable`]).
    #[serde(default)]
    pub routed_through: u64,
    /// What its user may read, where that is not everything: set by every connection, so the ACL in force then
    /// decides (a restored session reads nothing it is not allowed once its device is back).
    #[serde(skip)]
    reader: Option<Arc<DeviceAcl>>,
    /// Bytes of `queue`.
    #[serde(skip)]
    queued_bytes: u64,
    /// The process-wide budget `queued_bytes` is part of.
    #[serde(skip)]
    budget: MemoryBudget,
}

fn default_receive_maximum() -> u16 {
    u16::MAX
}

mod version_serde {
    use meshgate_protocols::mqtt::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(if v.is_v5() { 5 } else { 4 })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        Ok(if u8::deserialize(d)? == 5 { Version::V5 } else { Version::V311 })
    }
}

impl Session {
    /// A fresh session.
    pub fn new(version: Version, expiry_secs: u32) -> Session {
        Session {
            version,
            expiry_secs,
            subscriptions: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            next_id: 1,
            next_seq: 0,
            disconnected_at_ms: None,
            dropped: 0,
            receive_maximum: u16::MAX,
            inbound_qos2: BTreeSet::new(),
            owner: String::new(),
            routed_through: 0,
            reader: None,
            queued_bytes: 0,
            budget: MemoryBudget::default(),
        }
    }

    /// Counts its queue in `budget` (a new or restored session joining the broker).
    pub fn join_budget(&mut self, budget: &MemoryBudget) {
        self.queued_bytes = self.queue.iter().map(Delivery::size).sum();
        self.budget = budget.clone();
        self.budget.add(self.queued_bytes);
    }

    /// Bytes of the messages waiting to be sent.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    fn push_back(&mut self, d: Delivery) {
        self.account_in(d.size());
        self.queue.push_back(d);
    }

    fn push_front(&mut self, d: Delivery) {
        self.account_in(d.size());
        self.queue.push_front(d);
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.account_out(d.size());
        Some(d)
    }

    fn remove_at(&mut self, i: usize) -> Option<Delivery> {
        let d = self.queue.remove(i)?;
        self.account_out(d.size());
        Some(d)
    }

    fn account_in(&mut self, n: u64) {
        self.queued_bytes += n;
        self.budget.add(n);
    }

    fn account_out(&mut self, n: u64) {
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        self.budget.sub(n);
    }

    /// Empties the queue, handing its bytes back to the budget.
    fn drain_queue(&mut self) -> VecDeque<Delivery> {
        self.budget.sub(self.queued_bytes);
        self.queued_bytes = 0;
        std::mem::take(&mut self.queue)
    }

    /// Drops one queued delivery to make room: the oldest QoS 0 one, else the oldest.
    fn evict(&mut self) -> bool {
        let victim = self.queue.iter().position(|d| d.qos == 0).unwrap_or(0);
        let evicted = self.remove_at(victim).is_some();
        self.dropped += u64::from(evicted);
        evicted
    }

    /// Whether its user may be delivered a message on `topic`.
    pub fn may_read(&self, topic: &str) -> bool {
        self.reader.as_ref().is_none_or(|r| r.may_read(topic))
    }

    /// Sets what its user may read (`None`: everything) and drops queued deliveries it may not (queued before the
    /// ACL in force was known, as after a restart). Returns how many were dropped.
    pub fn set_reader(&mut self, reader: Option<Arc<DeviceAcl>>) -> usize {
        if self.reader == reader {
            return 0;
        }
        self.reader = reader;
        let Some(reader) = self.reader.clone() else { return 0 };
        let (before, mut bytes) = (self.queue.len(), 0);
        self.queue.retain(|d| {
            let keep = reader.may_read(&d.message.topic);
            bytes += if keep { 0 } else { d.size() };
            keep
        });
        self.account_out(bytes);
        before - self.queue.len()
    }

    /// A (re)connection: sets the client's Receive Maximum and returns what must be resent, in order.
    pub fn connected(&mut self, version: Version, receive_maximum: u16) -> Vec<Outbound> {
        self.version = version;
        self.receive_maximum = receive_maximum.max(1);
        self.disconnected_at_ms = None;
        self.inflight
            .iter()
            .map(|(&id, (stage, d))| match stage {
                Stage::AwaitPubComp => Outbound::PubRel(id),
                _ => Outbound::Publish { packet_id: id, dup: true, delivery: d.clone() },
            })
            .collect()
    }

    /// Queues a delivery within `limits` (QoS 0 messages are dropped first, then the oldest) and the process-wide
    /// budget (past it a QoS 0 delivery is dropped, and a QoS 1/2 one takes the place of this session's own
    /// queued deliveries, or is dropped when it has none). Returns whether it was queued.
    pub fn enqueue(&mut self, mut delivery: Delivery, limits: QueueLimits) -> bool {
        delivery.seq = self.next_seq;
        self.next_seq += 1;
        let size = delivery.size();
        if size > limits.bytes || (delivery.qos == 0 && self.budget.would_exceed(size)) {
            self.dropped += 1;
            return false;
        }
        while self.queue.len() >= limits.messages || self.queued_bytes + size > limits.bytes {
            if !self.evict() {
                break;
            }
        }
        while self.budget.would_exceed(size) {
            if !self.evict() {
                self.dropped += 1;
                return false;
            }
        }
        self.push_back(delivery);
        true
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Flows in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Takes up to `max` queued deliveries that may go out now (QoS 1/2 only while fewer than the client's
    /// Receive Maximum are in flight), skipping expired ones, and starts their flows.
    /// Stops after `max_bytes` (at least one delivery goes out), so a slow reader's write buffer stays small.
    pub fn poll_outbound(&mut self, now_ms: u64, max: usize, max_bytes: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while out.len() < max && (out.is_empty() || bytes < max_bytes) {
            let Some(front) = self.queue.front() else { break };
            if front.message.is_expired(now_ms) {
                self.pop_front();
                continue;
            }
            if front.qos > 0 && self.inflight.len() >= usize::from(self.receive_maximum) {
                break;
            }
            let Some(delivery) = self.pop_front() else { break };
            bytes += delivery.size();
            let packet_id = match delivery.qos {
                0 => 0,
                qos => {
                    let Some(id) = self.next_packet_id() else {
                        self.push_front(delivery);
                        break;
                    };
                    let stage = if qos == 1 { Stage::AwaitPubAck } else { Stage::AwaitPubRec };
                    self.inflight.insert(id, (stage, delivery.clone()));
                    id
                }
            };
            out.push(Outbound::Publish { packet_id, dup: false, delivery });
        }
        out
    }

    /// PUBACK from the client: ends a QoS 1 flow. Returns whether it was one.
    pub fn puback(&mut self, id: u16) -> bool {
        matches!(self.inflight.get(&id), Some((Stage::AwaitPubAck, _))) && self.inflight.remove(&id).is_some()
    }

    /// PUBREC from the client: a QoS 2 flow moves on to PUBREL (also when PUBREC repeats). With an error reason
    /// the flow ends instead. Returns whether a PUBREL is owed.
    pub fn pubrec(&mut self, id: u16, error: bool) -> bool {
        match self.inflight.get_mut(&id) {
            Some((stage @ (Stage::AwaitPubRec | Stage::AwaitPubComp), _)) if !error => {
                *stage = Stage::AwaitPubComp;
                true
            }
            Some((Stage::AwaitPubRec, _)) => {
                self.inflight.remove(&id);
                false
            }
            _ => false,
        }
    }

    /// Ends the flow `id` without an acknowledgement (the message could not be sent, e.g. too large for the
    /// client).
    pub fn discard(&mut self, id: u16) {
        self.inflight.remove(&id);
    }

    /// PUBCOMP from the client: ends a QoS 2 flow. Returns whether it was one.
    pub fn pubcomp(&mut self, id: u16) -> bool {
        matches!(self.inflight.get(&id), Some((Stage::AwaitPubComp, _))) && self.inflight.remove(&id).is_some()
    }

    /// Puts the in-flight delivery `id` back at the front of the queue, to be sent again (AMQP basic.reject with
    /// requeue). Returns whether it was in flight.
    pub fn requeue(&mut self, id: u16) -> bool {
        match self.inflight.remove(&id) {
            Some((_, mut delivery)) => {
                // Back to its place: the queue stays in the order messages came, as RabbitMQ keeps it.
                delivery.redelivered = true;
                let at = self.queue.iter().position(|d| d.seq > delivery.seq).unwrap_or(self.queue.len());
                self.account_in(delivery.size());
                self.queue.insert(at, delivery);
                true
            }
            None => false,
        }
    }

    /// Drops every queued delivery (not those in flight); returns how many (AMQP queue.purge).
    pub fn purge(&mut self) -> usize {
        self.drain_queue().len()
    }

    /// Takes every delivery not yet acknowledged (queued or in flight), ending the flows: for handing shared
    /// messages to another member when this session ends.
    pub fn take_unacknowledged(&mut self) -> Vec<Delivery> {
        let inflight = std::mem::take(&mut self.inflight);
        let mut out: Vec<Delivery> =
            inflight.into_values().filter(|(stage, _)| *stage != Stage::AwaitPubComp).map(|(_, d)| d).collect();
        out.extend(self.drain_queue());
        out
    }

    /// The QoS it would deliver `message` with under `sub`.
    pub fn delivery_qos(message: &Message, sub: &Subscription) -> QoS {
        QoS::from_bits(message.qos.min(sub.qos)).unwrap_or(QoS::AtMostOnce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: u8, n: u8) -> Delivery {
        let message = Message {
            topic: "t".into(),
            payload: vec![n],
            qos,
            retain: false,
            properties: Default::default(),
            publisher: String::new(),
            expires_at_ms: None,
            event: None,
        };
        Delivery::new(Arc::new(message), qos, false, vec![], None)
    }

    fn lim(messages: usize) -> QueueLimits {
        QueueLimits { messages, bytes: u64::MAX }
    }

    fn ids(out: &[Outbound]) -> Vec<(u16, bool)> {
        out.iter()
            .map(|o| match o {
                Outbound::Publish { packet_id, dup, .. } => (*packet_id, *dup),
                Outbound::PubRel(id) => (*id, false),
            })
            .collect()
    }

    #[test]
    fn receive_maximum_bounds_flows_and_acks_free_them() {
        let mut s = Session::new(Version::V5, 0);
        s.connected(Version::V5, 2);
        for n in 0..4 {
            s.enqueue(delivery(1, n), lim(10));
        }
        s.enqueue(delivery(2, 9), lim(10));
        assert_eq!(ids(&s.poll_outbound(0, 10, u64::MAX)), [(1, false), (2, false)]);
        assert!(s.poll_outbound(0, 10, u64::MAX).is_empty(), "two in flight = Receive Maximum");
        assert!(s.puback(1));
        assert!(!s.puback(1), "a second PUBACK is not a flow");
        assert_eq!(ids(&s.poll_outbound(0, 10, u64::MAX)), [(3, false)]);
        assert!(s.puback(2) && s.puback(3));
        assert_eq!(ids(&s.poll_outbound(0, 10, u64::MAX)), [(4, false), (5, false)]);
        assert!(s.pubrec(5, false), "QoS 2 moves to PUBREL");
        assert!(!s.pubcomp(4), "PUBCOMP does not end a QoS 1 flow");
        assert!(s.pubcomp(5));
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_reconnect_resends_publishes_with_dup_and_pubrels() {
        let mut s = Session::new(Version::V311, u32::MAX);
        s.connected(Version::V311, 10);
        s.enqueue(delivery(1, 0), lim(10));
        s.enqueue(delivery(2, 1), lim(10));
        s.enqueue(delivery(2, 2), lim(10));
        s.poll_outbound(0, 10, u64::MAX);
        assert!(s.pubrec(3, false));
        let json = serde_json::to_string(&s).unwrap();
        let mut back: Session = serde_json::from_str(&json).unwrap();
        assert_eq!(ids(&back.connected(Version::V311, 10)), [(1, true), (2, true), (3, false)]);
        assert!(matches!(back.connected(Version::V311, 10)[2], Outbound::PubRel(3)));
    }

    #[test]
    fn a_full_queue_drops_qos0_first_then_the_oldest() {
        let mut s = Session::new(Version::V5, 0);
        s.enqueue(delivery(1, 0), lim(2));
        s.enqueue(delivery(0, 1), lim(2));
        s.enqueue(delivery(1, 2), lim(2));
        s.enqueue(delivery(1, 3), lim(2));
        let payloads: Vec<u8> = s.queue.iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(payloads, [2, 3]);
        assert_eq!(s.dropped, 2);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_the_budget_is_shared() {
        let budget = MemoryBudget::new(3 * delivery(1, 0).size());
        let (mut a, mut b) = (Session::new(Version::V5, 0), Session::new(Version::V5, 0));
        a.join_budget(&budget);
        b.join_budget(&budget);
        let two = QueueLimits { messages: 100, bytes: 2 * delivery(1, 0).size() };
        for n in 0..5 {
            assert!(a.enqueue(delivery(1, n), two));
        }
        assert_eq!((a.queued(), a.dropped), (2, 3), "two fit in the session's bytes; the oldest went");
        assert!(b.enqueue(delivery(1, 7), two));
        assert_eq!(budget.used(), 3 * delivery(1, 0).size(), "the process-wide budget is full");
        assert!(!b.enqueue(delivery(0, 8), two), "past the budget, QoS 0 is dropped");
        assert!(b.enqueue(delivery(1, 9), two), "QoS 1 takes the place of the session's own oldest");
        assert_eq!(b.queue.iter().map(|d| d.message.payload[0]).collect::<Vec<_>>(), [9]);
        let mut c = Session::new(Version::V5, 0);
        c.join_budget(&budget);
        assert!(!c.enqueue(delivery(1, 10), two), "a session with nothing queued cannot make room");
        a.poll_outbound(0, 1, u64::MAX);
        assert_eq!(budget.used(), 2 * delivery(1, 0).size(), "a delivery sent hands its bytes back");
        a.purge();
        b.purge();
        assert_eq!(budget.used(), 0);
        let too_big = QueueLimits { messages: 100, bytes: delivery(1, 0).size() - 1 };
        assert!(!c.enqueue(delivery(1, 0), too_big), "one message above the session's bytes is dropped");
    }

    #[test]
    fn polling_stops_after_its_bytes_but_always_sends_one() {
        let mut s = Session::new(Version::V5, 0);
        s.connected(Version::V5, 100);
        for n in 0..5 {
            s.enqueue(delivery(0, n), lim(10));
        }
        assert_eq!(s.poll_outbound(0, 10, 1).len(), 1);
        assert_eq!(s.poll_outbound(0, 10, 2 * delivery(0, 0).size()).len(), 2);
        assert_eq!(s.queued_bytes(), 2 * delivery(0, 0).size());
    }
}
