//! Sans-IO bookkeeping of a connection's inbound publishes: topic aliases, the Receive Maximum quota, and the
//! QoS 2 packet ids waiting for PUBREL. No sockets, no clock; the driver asks it what to do.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use meshgate_protocols::mqtt::{Publish, QoS, ReasonCode};

/// What to do with an inbound QoS 1 or 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new message: ingest it, acknowledge when durable.
    New,
    /// A QoS 2 resend of a message already received and not yet released: acknowledge again, do not ingest twice.
    Duplicate,
}

/// Inbound state of one connection.
#[derive(Debug)]
pub struct InboundState {
    receive_maximum: usize,
    topic_alias_maximum: u16,
    aliases: HashMap<u16, String>,
    awaiting_release: HashSet<u16>,
    /// Of `awaiting_release`, the ids carried over from an earlier connection of the session: not counted in
    /// `inflight` (this connection's quota).
    carried: HashSet<u16>,
    inflight: usize,
}

impl InboundState {
    /// State for a connection with these limits.
    pub fn new(receive_maximum: u16, topic_alias_maximum: u16) -> Self {
        InboundState {
            receive_maximum: usize::from(receive_maximum),
            topic_alias_maximum,
            aliases: HashMap::new(),
            awaiting_release: HashSet::new(),
            carried: HashSet::new(),
            inflight: 0,
        }
    }

    /// Lifts the Receive Maximum quota (MQTT 3.1.1, which has none: the driver slows the client by not reading
    /// instead, and a client that pipelines past the limit is never refused for it).
    pub fn without_quota(&mut self) {
        self.receive_maximum = usize::MAX;
    }

    /// The topic a PUBLISH is for, applying and recording its topic alias (MQTT 5).
    pub fn resolve_topic<'p>(&mut self, publish: &Publish<'p>) -> Result<Cow<'p, str>, ReasonCode> {
        let Some(alias) = publish.properties.topic_alias else {
            return Ok(Cow::Borrowed(publish.topic));
        };
        if alias > self.topic_alias_maximum {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        if publish.topic.is_empty() {
            return self.aliases.get(&alias).map(|t| Cow::Owned(t.clone())).ok_or(ReasonCode::PROTOCOL_ERROR);
        }
        self.aliases.insert(alias, publish.topic.to_string());
        Ok(Cow::Borrowed(publish.topic))
    }

    /// Takes over the QoS 2 packet ids an earlier connection of the session answered with PUBREC and that still
    /// wait for their PUBREL (the session keeps them).
    pub fn resume(&mut self, awaiting_release: impl IntoIterator<Item = u16>) {
        for id in awaiting_release {
            if self.awaiting_release.insert(id) {
                self.carried.insert(id);
            }
        }
    }

    /// Admits a QoS 1 or 2 PUBLISH against the Receive Maximum, recognising QoS 2 resends.
    ///
    /// An id carried over from an earlier connection is a resend only with DUP set: a client that re-delivers
    /// must set it [MQTT-3.3.1-1], so a PUBLISH without it reuses an id the client considers released (the PUBREL
    /// went out just before a crash the session's stored state predates) and is a new message.
    pub fn admit(&mut self, qos: QoS, packet_id: u16, dup: bool) -> Result<Admission, ReasonCode> {
        if qos == QoS::ExactlyOnce && self.awaiting_release.contains(&packet_id) {
            if dup || !self.carried.contains(&packet_id) {
                return Ok(Admission::Duplicate);
            }
            self.carried.remove(&packet_id);
            self.awaiting_release.remove(&packet_id);
        }
        if self.inflight >= self.receive_maximum {
            return Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
        }
        self.inflight += 1;
        if qos == QoS::ExactlyOnce {
            self.awaiting_release.insert(packet_id);
        }
        Ok(Admission::New)
    }

    /// A PUBACK was sent, or a PUBREC with an error code (which ends a QoS 2 flow).
    pub fn completed(&mut self, qos: QoS, packet_id: u16) {
        if qos == QoS::ExactlyOnce {
            self.awaiting_release.remove(&packet_id);
        }
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// A PUBREL arrived; returns whether the packet id was waiting for it (the PUBCOMP then completes the flow).
    pub fn release(&mut self, packet_id: u16) -> bool {
        let found = self.awaiting_release.remove(&packet_id);
        if found && !self.carried.remove(&packet_id) {
            self.inflight = self.inflight.saturating_sub(1);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_protocols::mqtt::Properties;

    #[test]
    fn qos2_resends_are_recognised_until_released() {
        let mut s = InboundState::new(10, 0);
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, false), Ok(Admission::New));
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, true), Ok(Admission::Duplicate));
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, false), Ok(Admission::Duplicate), "this connection's own id");
        assert!(s.release(7));
        assert!(!s.release(7));
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, false), Ok(Admission::New));
    }

    #[test]
    fn ids_carried_over_from_the_session_are_duplicates_and_cost_no_quota() {
        let mut s = InboundState::new(1, 0);
        s.resume([7, 8]);
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, true), Ok(Admission::Duplicate), "resent after a reconnect");
        assert_eq!(s.admit(QoS::ExactlyOnce, 9, false), Ok(Admission::New), "the quota is this connection's own");
        assert!(s.release(7) && s.release(8));
        assert_eq!(s.admit(QoS::AtLeastOnce, 10, false), Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED), "9 still counts");
        assert!(s.release(9));
        assert_eq!(s.admit(QoS::AtLeastOnce, 10, false), Ok(Admission::New));
    }

    #[test]
    fn a_carried_id_without_dup_is_a_new_message() {
        let mut s = InboundState::new(10, 0);
        s.resume([7]);
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, false), Ok(Admission::New), "the client had released 7");
        assert_eq!(s.admit(QoS::ExactlyOnce, 7, true), Ok(Admission::Duplicate), "now this connection's own");
        assert!(s.release(7));
    }

    #[test]
    fn the_receive_maximum_is_enforced() {
        let mut s = InboundState::new(2, 0);
        assert!(s.admit(QoS::AtLeastOnce, 1, false).is_ok());
        assert!(s.admit(QoS::ExactlyOnce, 2, false).is_ok());
        assert_eq!(s.admit(QoS::AtLeastOnce, 3, false), Err(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
        s.completed(QoS::AtLeastOnce, 1);
        assert!(s.admit(QoS::AtLeastOnce, 3, false).is_ok());
    }

    #[test]
    fn without_a_quota_nothing_is_refused_for_being_in_flight() {
        let mut s = InboundState::new(1, 0);
        s.without_quota();
        for id in 1..=300 {
            assert_eq!(s.admit(QoS::AtLeastOnce, id, false), Ok(Admission::New));
        }
    }

    #[test]
    fn topic_aliases_are_set_then_used() {
        let mut s = InboundState::new(10, 4);
        let with = |topic, alias| Publish {
            topic,
            properties: Properties { topic_alias: Some(alias), ..Properties::default() },
            ..Publish::default()
        };
        assert_eq!(s.resolve_topic(&with("", 1)), Err(ReasonCode::PROTOCOL_ERROR));
        assert_eq!(s.resolve_topic(&with("a/b", 1)), Ok(Cow::Borrowed("a/b")));
        assert_eq!(s.resolve_topic(&with("", 1)).as_deref(), Ok("a/b"));
        assert_eq!(s.resolve_topic(&with("x", 5)), Err(ReasonCode::TOPIC_ALIAS_INVALID));
    }
}
