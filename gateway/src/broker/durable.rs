//! The broker's records in the spool: what makes routing to persistent sessions survive a crash.
//!
//! A QoS 1 or 2 message that a persistent session subscribes to (an MQTT session that outlives its connection, a
//! durable AMQP queue) is appended with its event as a *companion* record for the consumer [`CONSUMER`], in the
//! same commit (see `meshgate_edge_agent::spool`). A QoS 2 publish of a persistent session's own client carries its
//! packet id in the companion too; a downlink's command is a broker record on its own. After each commit the
//! spool's writer hands these records, in id order, to [`super::LocalBroker`], which routes their messages and
//! records their packet ids in their sessions there and then, before anyone is acknowledged, and moves the
//! broker's position ([`super::Broker::routed_through`]) to the commit's last id in the same step.
//!
//! The session store writes each changed session with the position its state includes
//! ([`super::Session::routed_through`]) and then confirms that position to the spool, which keeps every record
//! after it. At start the companions after the confirmed position are routed again into the sessions whose state
//! does not include them, and their QoS 2 packet ids await PUBREL again: a message acknowledged to its publisher
//! and routed to a persistent session reaches that session after any crash, once.

use meshgate_edge_agent::spool::StoredRecord;
use meshgate_edge_agent::spool::record::StoredData;
use serde::{Deserialize, Serialize};

use super::message::Message;

/// The spool consumer the broker reads its companion records as (uplink names may not start with `@`).
pub const CONSUMER: &str = "@broker";

/// The `type` of a companion record.
const RECORD_TYPE: &str = "io.meshgate.broker.v1";

/// A QoS 2 publish a persistent session's client sent, stored with its event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundQos2 {
    /// The session's name.
    pub session: String,
    /// The PUBLISH's packet id.
    pub packet_id: u16,
}

/// What a companion record holds for the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// The message to route (when a persistent session subscribes to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// The QoS 2 packet id of a persistent session's publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_qos2: Option<InboundQos2>,
    /// A persistent session's client released this QoS 2 packet id (PUBREL): stored before the PUBCOMP, so a
    /// crash never brings the id back as awaiting PUBREL, where the client's next message under that id (sent
    /// again with DUP after the crash) would be taken for a resend of the released one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_qos2: Option<InboundQos2>,
    /// A companion: written right before its event, and counted after a crash only if that event follows it (a
    /// write a crash tore between them was never acknowledged, and its publisher sends it again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_event: bool,
}

impl BrokerRecord {
    /// Whether it holds anything: an empty one is not written.
    pub fn is_empty(&self) -> bool {
        self.message.is_none() && self.inbound_qos2.is_none() && self.released_qos2.is_none()
    }

    /// The record of `session`'s PUBREL for `packet_id`, on its own (no event).
    pub fn released(session: &str, packet_id: u16) -> StoredRecord {
        let released = InboundQos2 { session: session.to_string(), packet_id };
        let record = BrokerRecord { released_qos2: Some(released), ..BrokerRecord::default() };
        record.into_stored(&uuid::Uuid::now_v7().simple().to_string())
    }

    /// The spool record for the event `event_id` (the record's id, for a reader of the spool files). The data is
    /// `[u32 LE: header length][header: this record as JSON, the payload left out][the payload's bytes]`: a large
    /// payload is neither base64-encoded nor copied through a string.
    pub fn into_stored(mut self, event_id: &str) -> StoredRecord {
        let payload = self.message.as_mut().map(|m| std::mem::take(&mut m.payload)).unwrap_or_default();
        // Serializing owned strings into a Vec cannot fail.
        let header = serde_json::to_vec(&self).unwrap_or_default();
        let mut data = Vec::with_capacity(4 + header.len() + payload.len());
        data.extend_from_slice(&u32::try_from(header.len()).unwrap_or(u32::MAX).to_le_bytes());
        data.extend_from_slice(&header);
        data.extend_from_slice(&payload);
        StoredRecord {
            route: Some(vec![CONSUMER.to_string()]),
            id: event_id.to_string(),
            source: "meshgate".into(),
            ty: RECORD_TYPE.into(),
            datacontenttype: Some("application/octet-stream".into()),
            dataschema: None,
            subject: None,
            time: None,
            extensions: Vec::new(),
            data: StoredData::Binary(data),
            droppable: false,
            accepted_at_ms: super::local::now_ms(),
        }
    }

    /// The broker's record in a spool record, if it is one (an event for the uplinks is not; an unreadable one
    /// is logged and skipped).
    pub fn from_stored(record: &StoredRecord) -> Option<BrokerRecord> {
        let bytes = Self::data_of(record)?;
        let (mut r, at) = Self::header(record, bytes)?;
        if let (Some(m), Some(payload)) = (r.message.as_mut(), bytes.get(at..)) {
            m.payload = payload.to_vec();
        }
        Some(r)
    }

    /// [`BrokerRecord::from_stored`], taking the record: the payload keeps the record's buffer (no copy).
    pub fn from_stored_owned(record: StoredRecord) -> Option<BrokerRecord> {
        let bytes = Self::data_of(&record)?;
        let (mut r, at) = Self::header(&record, bytes)?;
        if let (Some(m), StoredData::Binary(mut data)) = (r.message.as_mut(), record.data) {
            data.drain(..at);
            m.payload = data;
        }
        Some(r)
    }

    fn data_of(record: &StoredRecord) -> Option<&[u8]> {
        if record.ty != RECORD_TYPE || !matches!(record.route.as_deref(), Some([only]) if only == CONSUMER) {
            return None;
        }
        match &record.data {
            StoredData::Binary(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The record without its payload, and where the payload starts in `bytes`.
    fn header(record: &StoredRecord, bytes: &[u8]) -> Option<(BrokerRecord, usize)> {
        let parsed = bytes.split_at_checked(4).and_then(|(len, rest)| {
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let header = rest.get(..len)?;
            Some((serde_json::from_slice(header).ok()?, 4 + len))
        });
        if parsed.is_none() {
            tracing::warn!(event = %record.id, "unreadable broker record in the spool skipped");
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_record_round_trips_through_a_spool_record_and_events_are_not_mistaken_for_one() {
        let message = Message {
            topic: "cmd/1".into(),
            payload: vec![0, 159, 146, 150],
            qos: 2,
            retain: false,
            properties: Default::default(),
            publisher: "dev-1".into(),
            expires_at_ms: None,
            event: None,
        };
        let record = BrokerRecord {
            message: Some(message),
            inbound_qos2: Some(InboundQos2 { session: "dev-1".into(), packet_id: 7 }),
            with_event: true,
            ..BrokerRecord::default()
        };
        let stored = record.clone().into_stored("e-1");
        assert!(!stored.routed_to("file") && stored.is_local(), "no uplink reads it");
        assert_eq!(BrokerRecord::from_stored(&stored), Some(record.clone()));
        assert_eq!(BrokerRecord::from_stored_owned(stored.clone()), Some(record));
        let mut event = stored.clone();
        event.route = None;
        assert_eq!(BrokerRecord::from_stored(&event), None, "an event for every uplink");
        let released = BrokerRecord::released("dev-1", 7);
        assert!(released.is_local());
        let expected = InboundQos2 { session: "dev-1".into(), packet_id: 7 };
        assert_eq!(BrokerRecord::from_stored(&released).and_then(|r| r.released_qos2), Some(expected));
        let mut garbage = stored;
        garbage.data = StoredData::Binary(b"{".to_vec());
        assert_eq!(BrokerRecord::from_stored(&garbage), None);
    }
}
