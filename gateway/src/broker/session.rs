//! One client's broker session: its subscriptions, the messages queued for it, and the outbound QoS 1/2 flows in
//! flight. It outlives the connection when the client asked for a persistent session.
//!
//! Outbound flows (MQTT 5 section 4.3): QoS 1 `PUBLISH → PUBACK`; QoS 2 `PUBLISH → PUBREC`, `PUBREL → PUBCOMP`.
//! At most the client's Receive Maximum are in flight; the rest wait in a bounded queue, oldest first. On
//! reconnect the flows in flight are resent: PUBLISH with DUP until PUBREC, then PUBREL.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use meshgate_protocols::mqtt::{QoS, SubscriptionOptions, Version};
use serde::{Deserialize, Serialize};

use super::message::Message;

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
    /// When its connection ended (ms since the epoch); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Messages dropped because the queue was full.
    #[serde(default)]
    pub dropped: u64,
    #[serde(skip, default = "default_receive_maximum")]
    receive_maximum: u16,
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
            disconnected_at_ms: None,
            dropped: 0,
            receive_maximum: u16::MAX,
        }
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

    /// Queues a delivery; `max_queued` bounds the queue (QoS 0 messages are dropped first, then the oldest).
    pub fn enqueue(&mut self, delivery: Delivery, max_queued: usize) {
        if self.queue.len() >= max_queued {
            let victim = self.queue.iter().position(|d| d.qos == 0).unwrap_or(0);
            self.queue.remove(victim);
            self.dropped += 1;
        }
        self.queue.push_back(delivery);
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
    pub fn poll_outbound(&mut self, now_ms: u64, max: usize) -> Vec<Outbound> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = self.queue.front() else { break };
            if front.message.is_expired(now_ms) {
                self.queue.pop_front();
                continue;
            }
            if front.qos > 0 && self.inflight.len() >= usize::from(self.receive_maximum) {
                break;
            }
            let Some(delivery) = self.queue.pop_front() else { break };
            let packet_id = match delivery.qos {
                0 => 0,
                qos => {
                    let Some(id) = self.next_packet_id() else {
                        self.queue.push_front(delivery);
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
            Some((_, delivery)) => {
                self.queue.push_front(delivery);
                true
            }
            None => false,
        }
    }

    /// Drops every queued delivery (not those in flight); returns how many (AMQP queue.purge).
    pub fn purge(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        n
    }

    /// Takes every delivery not yet acknowledged (queued or in flight), ending the flows: for handing shared
    /// messages to another member when this session ends.
    pub fn take_unacknowledged(&mut self) -> Vec<Delivery> {
        let inflight = std::mem::take(&mut self.inflight);
        let mut out: Vec<Delivery> =
            inflight.into_values().filter(|(stage, _)| *stage != Stage::AwaitPubComp).map(|(_, d)| d).collect();
        out.extend(self.queue.drain(..));
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
        };
        Delivery { message: Arc::new(message), qos, retain: false, subscription_ids: vec![], shared: None }
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
            s.enqueue(delivery(1, n), 10);
        }
        s.enqueue(delivery(2, 9), 10);
        assert_eq!(ids(&s.poll_outbound(0, 10)), [(1, false), (2, false)]);
        assert!(s.poll_outbound(0, 10).is_empty(), "two in flight = Receive Maximum");
        assert!(s.puback(1));
        assert!(!s.puback(1), "a second PUBACK is not a flow");
        assert_eq!(ids(&s.poll_outbound(0, 10)), [(3, false)]);
        assert!(s.puback(2) && s.puback(3));
        assert_eq!(ids(&s.poll_outbound(0, 10)), [(4, false), (5, false)]);
        assert!(s.pubrec(5, false), "QoS 2 moves to PUBREL");
        assert!(!s.pubcomp(4), "PUBCOMP does not end a QoS 1 flow");
        assert!(s.pubcomp(5));
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_reconnect_resends_publishes_with_dup_and_pubrels() {
        let mut s = Session::new(Version::V311, u32::MAX);
        s.connected(Version::V311, 10);
        s.enqueue(delivery(1, 0), 10);
        s.enqueue(delivery(2, 1), 10);
        s.enqueue(delivery(2, 2), 10);
        s.poll_outbound(0, 10);
        assert!(s.pubrec(3, false));
        let json = serde_json::to_string(&s).unwrap();
        let mut back: Session = serde_json::from_str(&json).unwrap();
        assert_eq!(ids(&back.connected(Version::V311, 10)), [(1, true), (2, true), (3, false)]);
        assert!(matches!(back.connected(Version::V311, 10)[2], Outbound::PubRel(3)));
    }

    #[test]
    fn a_full_queue_drops_qos0_first_then_the_oldest() {
        let mut s = Session::new(Version::V5, 0);
        s.enqueue(delivery(1, 0), 2);
        s.enqueue(delivery(0, 1), 2);
        s.enqueue(delivery(1, 2), 2);
        s.enqueue(delivery(1, 3), 2);
        let payloads: Vec<u8> = s.queue.iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(payloads, [2, 3]);
        assert_eq!(s.dropped, 2);
    }
}
