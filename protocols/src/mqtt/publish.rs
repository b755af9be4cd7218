//! PUBLISH and its acknowledgements: PUBACK, PUBREC, PUBREL, PUBCOMP.

use super::properties::{Context, Properties};
use super::topic::has_wildcard;
use super::wire::{Reader, Writer, prefixed_len};
use super::{EncodeError, Malformed, PacketType, QoS, ReasonCode, Version};

/// A PUBLISH packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Publish<'a> {
    /// Set on a redelivery of a QoS 1 or 2 message.
    pub dup: bool,
    /// The delivery QoS.
    pub qos: QoS,
    /// Whether the server retains the message.
    pub retain: bool,
    /// The topic name; empty in MQTT 5 when a topic alias stands in for it.
    pub topic: &'a str,
    /// The packet identifier; present exactly when QoS > 0.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties<'a>,
    /// The application message.
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, flags: u8, version: Version) -> Result<Self, Malformed> {
        let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(Malformed::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(Malformed::DupWithQoS0);
        }
        let topic = r.utf8()?;
        if has_wildcard(topic) {
            return Err(Malformed::WildcardInTopicName);
        }
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            match r.u16()? {
                0 => return Err(Malformed::ZeroPacketId),
                id => Some(id),
            }
        };
        let properties = if version.is_v5() {
            Properties::read(r, Context::Packet(PacketType::Publish))?
        } else {
            Properties::default()
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(Malformed::EmptyTopic);
        }
        let payload = r.rest();
        Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    }

    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        prefixed_len(self.topic.len())
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + if version.is_v5() { self.properties.wire_len() } else { 0 }
            + self.payload.len()
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.utf8(self.topic)?;
        if self.qos != QoS::AtMostOnce {
            w.u16(self.packet_id.unwrap_or(0))?;
        }
        if version.is_v5() {
            self.properties.write(w)?;
        }
        w.bytes(self.payload)
    }
}

/// Which of the four publish acknowledgements a [`PubResponse`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PubResponseKind {
    /// QoS 1 acknowledgement.
    #[default]
    PubAck,
    /// QoS 2, first step: received.
    PubRec,
    /// QoS 2, second step: release.
    PubRel,
    /// QoS 2, last step: complete.
    PubComp,
}

impl PubResponseKind {
    /// The packet type on the wire.
    pub const fn packet_type(self) -> PacketType {
        match self {
            PubResponseKind::PubAck => PacketType::PubAck,
            PubResponseKind::PubRec => PacketType::PubRec,
            PubResponseKind::PubRel => PacketType::PubRel,
            PubResponseKind::PubComp => PacketType::PubComp,
        }
    }

    fn allows(self, code: ReasonCode) -> bool {
        match self {
            PubResponseKind::PubAck | PubResponseKind::PubRec => code.allowed_in_puback(),
            PubResponseKind::PubRel | PubResponseKind::PubComp => code.allowed_in_pubrel(),
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier, and in MQTT 5 a reason code and properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PubResponse<'a> {
    /// Which acknowledgement this is.
    pub kind: PubResponseKind,
    /// The packet identifier it acknowledges.
    pub packet_id: u16,
    /// The reason code (MQTT 5; always success in 3.1.1).
    pub reason: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> PubResponse<'a> {
    /// A successful acknowledgement of `kind` for `packet_id`.
    pub fn new(kind: PubResponseKind, packet_id: u16) -> Self {
        PubResponse { kind, packet_id, ..PubResponse::default() }
    }

    pub(crate) fn read(r: &mut Reader<'a>, kind: PubResponseKind, version: Version) -> Result<Self, Malformed> {
        let packet_id = r.u16()?;
        if packet_id == 0 {
            return Err(Malformed::ZeroPacketId);
        }
        let mut reason = ReasonCode::SUCCESS;
        let mut properties = Properties::default();
        if version.is_v5() && !r.is_empty() {
            reason = ReasonCode(r.u8()?);
            if !kind.allows(reason) {
                return Err(Malformed::InvalidReasonCode(reason.0));
            }
            if !r.is_empty() {
                properties = Properties::read(r, Context::Packet(kind.packet_type()))?;
            }
        }
        if !r.is_empty() {
            return Err(Malformed::TrailingBytes);
        }
        Ok(PubResponse { kind, packet_id, reason, properties })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        if !version.is_v5() {
            return 2;
        }
        match (self.reason, self.properties.is_empty()) {
            (ReasonCode::SUCCESS, true) => 2,
            (_, true) => 3,
            (_, false) => 3 + self.properties.wire_len(),
        }
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        let len = self.body_len(version);
        if len >= 3 {
            w.u8(self.reason.0)?;
        }
        if len > 3 {
            self.properties.write(w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_topic_may_be_empty_only_with_an_alias() {
        // topic "" , QoS 0, v5, properties: none
        let mut r = Reader::new(&[0, 0, 0]);
        assert_eq!(Publish::read(&mut r, 0, Version::V5), Err(Malformed::EmptyTopic));
        let mut r = Reader::new(&[0, 0, 3, 0x23, 0, 1]);
        assert!(Publish::read(&mut r, 0, Version::V5).is_ok());
    }

    #[test]
    fn qos_above_zero_needs_a_non_zero_packet_id() {
        let mut r = Reader::new(&[0, 1, b'a', 0, 0]);
        assert_eq!(Publish::read(&mut r, 0b0010, Version::V311), Err(Malformed::ZeroPacketId));
    }
}
