//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use super::list::{List, ListItem};
use super::properties::{Context, Properties};
use super::wire::{Reader, Writer, prefixed_len};
use super::{EncodeError, Malformed, PacketType, QoS, ReasonCode, Version, topic};

/// When the server sends retained messages for a new subscription (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendOnSubscribe = 0,
    /// Send them only if the subscription did not exist.
    SendIfNew = 1,
    /// Never send them.
    DoNotSend = 2,
}

/// The options byte of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// MQTT 5: do not deliver the client's own publishes back to it.
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag as published.
    pub retain_as_published: bool,
    /// MQTT 5: when to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn from_byte(b: u8) -> Result<Self, Malformed> {
        if b & 0xc0 != 0 {
            return Err(Malformed::SubscriptionOptions);
        }
        let retain_handling = match (b >> 4) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Malformed::SubscriptionOptions),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_bits(b & 0x03).ok_or(Malformed::InvalidQoS)?,
            no_local: b & 0x04 != 0,
            retain_as_published: b & 0x08 != 0,
            retain_handling,
        })
    }

    fn to_byte(self, version: Version) -> u8 {
        let qos = self.qos as u8;
        if !version.is_v5() {
            return qos;
        }
        qos | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SubscribeFilter<'a> {
    /// The topic filter (possibly `$share/{group}/{filter}`).
    pub filter: &'a str,
    /// The subscription options.
    pub options: SubscriptionOptions,
}

fn validate_subscription_filter(filter: &str) -> Result<(), Malformed> {
    match topic::split_shared(filter) {
        Some((group, inner)) if !group.is_empty() && !group.contains(['+', '#']) => topic::validate_filter(inner),
        Some(_) => Err(Malformed::InvalidTopicFilter),
        None if filter == "$share" || filter.starts_with("$share/") => Err(Malformed::InvalidTopicFilter),
        None => topic::validate_filter(filter),
    }
}

impl<'a> ListItem<'a> for SubscribeFilter<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let filter = r.utf8()?;
        validate_subscription_filter(filter)?;
        let options = SubscriptionOptions::from_byte(r.u8()?)?;
        Ok(SubscribeFilter { filter, options })
    }

    fn wire_len(&self) -> usize {
        prefixed_len(self.filter.len()) + 1
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.utf8(self.filter)?;
        w.u8(self.options.to_byte(Version::V5))
    }
}

impl<'a> ListItem<'a> for &'a str {
    fn read(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let filter = r.utf8()?;
        validate_subscription_filter(filter)?;
        Ok(filter)
    }

    fn wire_len(&self) -> usize {
        prefixed_len(self.len())
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.utf8(self)
    }
}

fn read_packet_id(r: &mut Reader<'_>) -> Result<u16, Malformed> {
    match r.u16()? {
        0 => Err(Malformed::ZeroPacketId),
        id => Ok(id),
    }
}

fn read_properties<'a>(r: &mut Reader<'a>, version: Version, t: PacketType) -> Result<Properties<'a>, Malformed> {
    if version.is_v5() { Properties::read(r, Context::Packet(t)) } else { Ok(Properties::default()) }
}

fn properties_len(p: &Properties<'_>, version: Version) -> usize {
    if version.is_v5() { p.wire_len() } else { 0 }
}

fn write_properties(p: &Properties<'_>, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
    if version.is_v5() { p.write(w) } else { Ok(()) }
}

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Subscribe<'a> {
    /// The packet identifier (non-zero).
    pub packet_id: u16,
    /// SUBSCRIBE properties (MQTT 5: a subscription identifier, user properties).
    pub properties: Properties<'a>,
    /// The topic filters, at least one.
    pub filters: List<'a, SubscribeFilter<'a>>,
}

impl<'a> Subscribe<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, version, PacketType::Subscribe)?;
        let filters = List::<SubscribeFilter<'a>>::validate(r.rest())?;
        if filters.is_empty() {
            return Err(Malformed::NoTopicFilters);
        }
        if !version.is_v5() && filters.iter().any(|f| f.options.to_byte(Version::V5) & 0xfc != 0) {
            return Err(Malformed::SubscriptionOptions);
        }
        Ok(Subscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        2 + properties_len(&self.properties, version) + self.filters.wire_len()
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        write_properties(&self.properties, version, w)?;
        if version.is_v5() {
            return self.filters.write(w);
        }
        self.filters.iter().try_for_each(|f| {
            w.utf8(f.filter)?;
            w.u8(f.options.to_byte(version))
        })
    }
}

/// A SUBACK packet: one reason code per requested filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SubAck<'a> {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// SUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// One reason code byte per filter (3.1.1: 0, 1, 2 or 0x80).
    pub codes: &'a [u8],
}

impl<'a> SubAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, version, PacketType::SubAck)?;
        let codes = r.rest();
        for &c in codes {
            let ok = if version.is_v5() { ReasonCode(c).allowed_in_suback() } else { matches!(c, 0 | 1 | 2 | 0x80) };
            if !ok {
                return Err(Malformed::InvalidReasonCode(c));
            }
        }
        Ok(SubAck { packet_id, properties, codes })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        2 + properties_len(&self.properties, version) + self.codes.len()
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        write_properties(&self.properties, version, w)?;
        w.bytes(self.codes)
    }
}

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Unsubscribe<'a> {
    /// The packet identifier (non-zero).
    pub packet_id: u16,
    /// UNSUBSCRIBE properties (MQTT 5).
    pub properties: Properties<'a>,
    /// The topic filters to remove, at least one.
    pub filters: List<'a, &'a str>,
}

impl<'a> Unsubscribe<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, version, PacketType::Unsubscribe)?;
        let filters = List::<&'a str>::validate(r.rest())?;
        if filters.is_empty() {
            return Err(Malformed::NoTopicFilters);
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        2 + properties_len(&self.properties, version) + self.filters.wire_len()
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        write_properties(&self.properties, version, w)?;
        self.filters.write(w)
    }
}

/// An UNSUBACK packet. MQTT 3.1.1 has no reason codes (`codes` is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnsubAck<'a> {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// UNSUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// One reason code byte per filter (MQTT 5).
    pub codes: &'a [u8],
}

impl<'a> UnsubAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, version, PacketType::UnsubAck)?;
        let codes = r.rest();
        if !version.is_v5() && !codes.is_empty() {
            return Err(Malformed::TrailingBytes);
        }
        if let Some(&bad) = codes.iter().find(|&&c| !ReasonCode(c).allowed_in_unsuback()) {
            return Err(Malformed::InvalidReasonCode(bad));
        }
        Ok(UnsubAck { packet_id, properties, codes })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        2 + if version.is_v5() { self.properties.wire_len() + self.codes.len() } else { 0 }
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        if version.is_v5() {
            self.properties.write(w)?;
            w.bytes(self.codes)?;
        }
        Ok(())
    }
}
