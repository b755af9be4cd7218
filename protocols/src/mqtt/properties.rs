//! MQTT 5 properties: every property the specification defines, which packets may carry it, and the rules on
//! duplicates and values.

use super::list::{PropertyItem, PropertyList};
use super::topic;
use super::wire::{Reader, Writer, prefixed_len, varint_len};
use super::{EncodeError, Malformed, QoS};

/// Where a property block sits: a packet type, or the Will properties of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Will,
    Packet(super::PacketType),
}

impl Context {
    const fn bit(self) -> u16 {
        match self {
            Context::Will => 1,
            Context::Packet(t) => 1 << (t as u16),
        }
    }

    const fn type_byte(self) -> u8 {
        match self {
            Context::Will => 1,
            Context::Packet(t) => t as u8,
        }
    }
}

const CONNECT: u16 = 1 << 1;
const CONNACK: u16 = 1 << 2;
const PUBLISH: u16 = 1 << 3;
const PUB_ACKS: u16 = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7);
const SUBSCRIBE: u16 = 1 << 8;
const SUBACK: u16 = 1 << 9;
const UNSUBSCRIBE: u16 = 1 << 10;
const UNSUBACK: u16 = 1 << 11;
const DISCONNECT: u16 = 1 << 14;
const AUTH: u16 = 1 << 15;
const WILL: u16 = 1;
const ALL: u16 =
    CONNECT | CONNACK | PUBLISH | PUB_ACKS | SUBSCRIBE | SUBACK | UNSUBSCRIBE | UNSUBACK | DISCONNECT | AUTH | WILL;

/// The wire type of a property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

/// The type and the packets allowed for each property identifier (MQTT 5, section 2.2.2.2).
const fn spec(id: u8) -> Option<(Kind, u16)> {
    Some(match id {
        0x01 => (Kind::Byte, PUBLISH | WILL),
        0x02 => (Kind::U32, PUBLISH | WILL),
        0x03 => (Kind::Str, PUBLISH | WILL),
        0x08 => (Kind::Str, PUBLISH | WILL),
        0x09 => (Kind::Bin, PUBLISH | WILL),
        0x0B => (Kind::VarInt, PUBLISH | SUBSCRIBE),
        0x11 => (Kind::U32, CONNECT | CONNACK | DISCONNECT),
        0x12 => (Kind::Str, CONNACK),
        0x13 => (Kind::U16, CONNACK),
        0x15 => (Kind::Str, CONNECT | CONNACK | AUTH),
        0x16 => (Kind::Bin, CONNECT | CONNACK | AUTH),
        0x17 => (Kind::Byte, CONNECT),
        0x18 => (Kind::U32, WILL),
        0x19 => (Kind::Byte, CONNECT),
        0x1A => (Kind::Str, CONNACK),
        0x1C => (Kind::Str, CONNACK | DISCONNECT),
        0x1F => (Kind::Str, CONNACK | PUB_ACKS | SUBACK | UNSUBACK | DISCONNECT | AUTH),
        0x21 => (Kind::U16, CONNECT | CONNACK),
        0x22 => (Kind::U16, CONNECT | CONNACK),
        0x23 => (Kind::U16, PUBLISH),
        0x24 => (Kind::Byte, CONNACK),
        0x25 => (Kind::Byte, CONNACK),
        0x26 => (Kind::Pair, ALL),
        0x27 => (Kind::U32, CONNECT | CONNACK),
        0x28 => (Kind::Byte, CONNACK),
        0x29 => (Kind::Byte, CONNACK),
        0x2A => (Kind::Byte, CONNACK),
        _ => return None,
    })
}

/// A decoded property value (public only so the sealed [`PropertyItem`] trait can name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub enum PropertyValue<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl<'a> PropertyValue<'a> {
    fn read(kind: Kind, r: &mut Reader<'a>) -> Result<Self, Malformed> {
        Ok(match kind {
            Kind::Byte => PropertyValue::Byte(r.u8()?),
            Kind::U16 => PropertyValue::U16(r.u16()?),
            Kind::U32 => PropertyValue::U32(r.u32()?),
            Kind::VarInt => PropertyValue::VarInt(r.varint()?),
            Kind::Str => PropertyValue::Str(r.utf8()?),
            Kind::Bin => PropertyValue::Bin(r.binary()?),
            Kind::Pair => PropertyValue::Pair(r.utf8()?, r.utf8()?),
        })
    }

    pub(crate) fn wire_len(&self) -> usize {
        match self {
            PropertyValue::Byte(_) => 1,
            PropertyValue::U16(_) => 2,
            PropertyValue::U32(_) => 4,
            PropertyValue::VarInt(v) => varint_len(*v as usize),
            PropertyValue::Str(s) => prefixed_len(s.len()),
            PropertyValue::Bin(b) => prefixed_len(b.len()),
            PropertyValue::Pair(k, v) => prefixed_len(k.len()) + prefixed_len(v.len()),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match *self {
            PropertyValue::Byte(v) => w.u8(v),
            PropertyValue::U16(v) => w.u16(v),
            PropertyValue::U32(v) => w.u32(v),
            PropertyValue::VarInt(v) => w.varint(v as usize),
            PropertyValue::Str(s) => w.utf8(s),
            PropertyValue::Bin(b) => w.binary(b),
            PropertyValue::Pair(k, v) => {
                w.utf8(k)?;
                w.utf8(v)
            }
        }
    }
}

/// Iterates `(identifier, value)` over a property block that has been validated.
pub(crate) struct RawProperties<'a> {
    r: Reader<'a>,
}

impl<'a> RawProperties<'a> {
    pub(crate) fn new(block: &'a [u8]) -> Self {
        RawProperties { r: Reader::new(block) }
    }

    fn read_one(r: &mut Reader<'a>) -> Result<(u8, PropertyValue<'a>), Malformed> {
        // Identifiers are variable byte integers; every defined one fits in a single byte.
        let id = r.varint()?;
        let id = u8::try_from(id).map_err(|_| Malformed::UnknownProperty(0xff))?;
        let (kind, _) = spec(id).ok_or(Malformed::UnknownProperty(id))?;
        Ok((id, PropertyValue::read(kind, r)?))
    }
}

impl<'a> Iterator for RawProperties<'a> {
    type Item = (u8, PropertyValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.r.is_empty() {
            return None;
        }
        Self::read_one(&mut self.r).ok()
    }
}

/// A User Property: a name/value pair of UTF-8 strings. May repeat, and the same name may appear twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UserProperty<'a> {
    /// The property's name.
    pub name: &'a str,
    /// The property's value.
    pub value: &'a str,
}

impl<'a> PropertyItem<'a> for UserProperty<'a> {
    const ID: u8 = 0x26;

    fn from_value(v: PropertyValue<'a>) -> Option<Self> {
        match v {
            PropertyValue::Pair(name, value) => Some(UserProperty { name, value }),
            _ => None,
        }
    }

    fn to_value(&self) -> PropertyValue<'a> {
        PropertyValue::Pair(self.name, self.value)
    }
}

/// A Subscription Identifier (1 to 268,435,455): one in SUBSCRIBE, any number in a PUBLISH to a subscriber.
impl<'a> PropertyItem<'a> for u32 {
    const ID: u8 = 0x0B;

    fn from_value(v: PropertyValue<'a>) -> Option<Self> {
        match v {
            PropertyValue::VarInt(id) => Some(id),
            _ => None,
        }
    }

    fn to_value(&self) -> PropertyValue<'a> {
        PropertyValue::VarInt(*self)
    }
}

/// The properties of one MQTT 5 packet (or of a CONNECT's Will). Every field is optional; which fields a packet
/// may carry is checked when decoding. MQTT 3.1.1 packets have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Properties<'a> {
    /// 0x01: `true` when the payload is UTF-8 text.
    pub payload_format_utf8: Option<bool>,
    /// 0x02: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: the payload's content type (CloudEvents: `datacontenttype`).
    pub content_type: Option<&'a str>,
    /// 0x08: the topic for a response.
    pub response_topic: Option<&'a str>,
    /// 0x09: correlation data for a response.
    pub correlation_data: Option<&'a [u8]>,
    /// 0x0B: subscription identifiers.
    pub subscription_identifiers: PropertyList<'a, u32>,
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: the client identifier the server assigned.
    pub assigned_client_identifier: Option<&'a str>,
    /// 0x13: the keep-alive the server imposes, in seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15: the extended authentication method.
    pub authentication_method: Option<&'a str>,
    /// 0x16: extended authentication data.
    pub authentication_data: Option<&'a [u8]>,
    /// 0x17: whether the client wants reason strings and user properties on failures.
    pub request_problem_information: Option<bool>,
    /// 0x18: seconds to delay the Will after the connection ends.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client wants response information in CONNACK.
    pub request_response_information: Option<bool>,
    /// 0x1A: the basis for response topics.
    pub response_information: Option<&'a str>,
    /// 0x1C: another server to use.
    pub server_reference: Option<&'a str>,
    /// 0x1F: a human-readable reason.
    pub reason_string: Option<&'a str>,
    /// 0x21: how many QoS 1 and 2 publishes the sender accepts unacknowledged.
    pub receive_maximum: Option<u16>,
    /// 0x22: the highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: a topic alias standing in for the topic name.
    pub topic_alias: Option<u16>,
    /// 0x24: the highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<bool>,
    /// 0x26: user properties.
    pub user_properties: PropertyList<'a, UserProperty<'a>>,
    /// 0x27: the largest packet the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
}

fn flag(id: u8, v: u8) -> Result<bool, Malformed> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Malformed::PropertyValue(id)),
    }
}

fn non_zero_u16(id: u8, v: u16) -> Result<u16, Malformed> {
    if v == 0 { Err(Malformed::PropertyValue(id)) } else { Ok(v) }
}

fn set<T>(slot: &mut Option<T>, id: u8, v: T) -> Result<(), Malformed> {
    if slot.is_some() {
        return Err(Malformed::DuplicateProperty(id));
    }
    *slot = Some(v);
    Ok(())
}

/// Reads a single-valued property out of [`Properties`].
type Getter = for<'x> fn(&Properties<'x>) -> Option<PropertyValue<'x>>;

/// Builds the getter table: one small function per property.
macro_rules! getters {
    ($($id:literal => |$p:ident| $value:expr),* $(,)?) => {
        &[$(($id, {
            fn get<'x>($p: &Properties<'x>) -> Option<PropertyValue<'x>> {
                $value
            }
            get as Getter
        })),*]
    };
}

/// One getter per single-valued property, in identifier order: a table, so sizing and writing a property block is
/// one small loop each rather than code per property (which a device's flash notices).
const SINGLE_VALUED: &[(u8, Getter)] = getters![
    0x01 => |p| p.payload_format_utf8.map(byte_flag),
    0x02 => |p| p.message_expiry_interval.map(PropertyValue::U32),
    0x03 => |p| p.content_type.map(PropertyValue::Str),
    0x08 => |p| p.response_topic.map(PropertyValue::Str),
    0x09 => |p| p.correlation_data.map(PropertyValue::Bin),
    0x11 => |p| p.session_expiry_interval.map(PropertyValue::U32),
    0x12 => |p| p.assigned_client_identifier.map(PropertyValue::Str),
    0x13 => |p| p.server_keep_alive.map(PropertyValue::U16),
    0x15 => |p| p.authentication_method.map(PropertyValue::Str),
    0x16 => |p| p.authentication_data.map(PropertyValue::Bin),
    0x17 => |p| p.request_problem_information.map(byte_flag),
    0x18 => |p| p.will_delay_interval.map(PropertyValue::U32),
    0x19 => |p| p.request_response_information.map(byte_flag),
    0x1A => |p| p.response_information.map(PropertyValue::Str),
    0x1C => |p| p.server_reference.map(PropertyValue::Str),
    0x1F => |p| p.reason_string.map(PropertyValue::Str),
    0x21 => |p| p.receive_maximum.map(PropertyValue::U16),
    0x22 => |p| p.topic_alias_maximum.map(PropertyValue::U16),
    0x23 => |p| p.topic_alias.map(PropertyValue::U16),
    0x24 => |p| p.maximum_qos.map(|q| PropertyValue::Byte(q as u8)),
    0x25 => |p| p.retain_available.map(byte_flag),
    0x27 => |p| p.maximum_packet_size.map(PropertyValue::U32),
    0x28 => |p| p.wildcard_subscription_available.map(byte_flag),
    0x29 => |p| p.subscription_identifier_available.map(byte_flag),
    0x2A => |p| p.shared_subscription_available.map(byte_flag),
];

fn byte_flag(x: bool) -> PropertyValue<'static> {
    PropertyValue::Byte(u8::from(x))
}

impl<'a> Properties<'a> {
    /// Reads a length-prefixed property block and validates it for `ctx`.
    pub(crate) fn read(r: &mut Reader<'a>, ctx: Context) -> Result<Self, Malformed> {
        let len = r.varint()? as usize;
        let block = r.take(len)?;
        Self::parse(block, ctx)
    }

    fn parse(block: &'a [u8], ctx: Context) -> Result<Self, Malformed> {
        let mut p = Properties {
            user_properties: PropertyList::Wire(block, core::marker::PhantomData),
            subscription_identifiers: PropertyList::Wire(block, core::marker::PhantomData),
            ..Properties::default()
        };
        let mut sub_ids = 0usize;
        let mut r = Reader::new(block);
        while !r.is_empty() {
            let (id, value) = RawProperties::read_one(&mut r)?;
            let (_, allowed) = spec(id).ok_or(Malformed::UnknownProperty(id))?;
            if allowed & ctx.bit() == 0 {
                return Err(Malformed::PropertyNotAllowed { property: id, packet_type: ctx.type_byte() });
            }
            use PropertyValue as V;
            match (id, value) {
                (0x01, V::Byte(v)) => set(&mut p.payload_format_utf8, id, flag(id, v)?)?,
                (0x02, V::U32(v)) => set(&mut p.message_expiry_interval, id, v)?,
                (0x03, V::Str(v)) => set(&mut p.content_type, id, v)?,
                (0x08, V::Str(v)) => {
                    topic::validate_name(v).map_err(|_| Malformed::PropertyValue(id))?;
                    set(&mut p.response_topic, id, v)?
                }
                (0x09, V::Bin(v)) => set(&mut p.correlation_data, id, v)?,
                (0x0B, V::VarInt(v)) => {
                    if v == 0 {
                        return Err(Malformed::PropertyValue(id));
                    }
                    sub_ids += 1;
                    if sub_ids > 1 && ctx != Context::Packet(super::PacketType::Publish) {
                        return Err(Malformed::DuplicateProperty(id));
                    }
                }
                (0x11, V::U32(v)) => set(&mut p.session_expiry_interval, id, v)?,
                (0x12, V::Str(v)) => set(&mut p.assigned_client_identifier, id, v)?,
                (0x13, V::U16(v)) => set(&mut p.server_keep_alive, id, v)?,
                (0x15, V::Str(v)) => set(&mut p.authentication_method, id, v)?,
                (0x16, V::Bin(v)) => set(&mut p.authentication_data, id, v)?,
                (0x17, V::Byte(v)) => set(&mut p.request_problem_information, id, flag(id, v)?)?,
                (0x18, V::U32(v)) => set(&mut p.will_delay_interval, id, v)?,
                (0x19, V::Byte(v)) => set(&mut p.request_response_information, id, flag(id, v)?)?,
                (0x1A, V::Str(v)) => set(&mut p.response_information, id, v)?,
                (0x1C, V::Str(v)) => set(&mut p.server_reference, id, v)?,
                (0x1F, V::Str(v)) => set(&mut p.reason_string, id, v)?,
                (0x21, V::U16(v)) => set(&mut p.receive_maximum, id, non_zero_u16(id, v)?)?,
                (0x22, V::U16(v)) => set(&mut p.topic_alias_maximum, id, v)?,
                (0x23, V::U16(v)) => set(&mut p.topic_alias, id, non_zero_u16(id, v)?)?,
                (0x24, V::Byte(v)) => {
                    let qos = if flag(id, v)? { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                    set(&mut p.maximum_qos, id, qos)?
                }
                (0x25, V::Byte(v)) => set(&mut p.retain_available, id, flag(id, v)?)?,
                (0x26, V::Pair(..)) => {}
                (0x27, V::U32(v)) => {
                    if v == 0 {
                        return Err(Malformed::PropertyValue(id));
                    }
                    set(&mut p.maximum_packet_size, id, v)?
                }
                (0x28, V::Byte(v)) => set(&mut p.wildcard_subscription_available, id, flag(id, v)?)?,
                (0x29, V::Byte(v)) => set(&mut p.subscription_identifier_available, id, flag(id, v)?)?,
                (0x2A, V::Byte(v)) => set(&mut p.shared_subscription_available, id, flag(id, v)?)?,
                _ => return Err(Malformed::UnknownProperty(id)),
            }
        }
        Ok(p)
    }

    /// Calls `f` with every single-valued property that is set, as `(identifier, value)`, in identifier order.
    fn for_each_single(
        &self,
        mut f: impl FnMut(u8, PropertyValue<'a>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        for &(id, get) in SINGLE_VALUED {
            if let Some(v) = get(self) {
                f(id, v)?;
            }
        }
        Ok(())
    }

    /// The size of the property block without its length prefix.
    pub(crate) fn block_len(&self) -> usize {
        let mut len = 0;
        let _ = self.for_each_single(|_, v| {
            len += 1 + v.wire_len();
            Ok(())
        });
        len + self.subscription_identifiers.wire_len() + self.user_properties.wire_len()
    }

    /// The size of the property block with its length prefix.
    pub(crate) fn wire_len(&self) -> usize {
        let block = self.block_len();
        varint_len(block) + block
    }

    /// Writes the length prefix and the properties.
    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.varint(self.block_len())?;
        self.for_each_single(|id, v| {
            w.u8(id)?;
            v.write(w)
        })?;
        self.subscription_identifiers.write(w)?;
        self.user_properties.write(w)
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.block_len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::PacketType;

    fn parse(block: &[u8], t: PacketType) -> Result<Properties<'_>, Malformed> {
        Properties::parse(block, Context::Packet(t))
    }

    #[test]
    fn duplicate_single_properties_are_protocol_errors() {
        let block = [0x21, 0x00, 0x0a, 0x21, 0x00, 0x0b];
        assert_eq!(parse(&block, PacketType::Connect), Err(Malformed::DuplicateProperty(0x21)));
    }

    #[test]
    fn user_properties_repeat_and_keep_their_order() {
        let block = [0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2'];
        let p = parse(&block, PacketType::Publish).unwrap();
        let values: [&str; 2] =
            [p.user_properties.iter().next().unwrap().value, p.user_properties.iter().nth(1).unwrap().value];
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn properties_outside_their_packets_are_refused() {
        let block = [0x23, 0x00, 0x01]; // Topic Alias on CONNECT
        assert_eq!(
            parse(&block, PacketType::Connect),
            Err(Malformed::PropertyNotAllowed { property: 0x23, packet_type: 1 })
        );
    }

    #[test]
    fn forbidden_values_are_refused() {
        assert_eq!(parse(&[0x21, 0, 0], PacketType::Connect), Err(Malformed::PropertyValue(0x21)));
        assert_eq!(parse(&[0x01, 2], PacketType::Publish), Err(Malformed::PropertyValue(0x01)));
        assert_eq!(parse(&[0x0B, 0], PacketType::Subscribe), Err(Malformed::PropertyValue(0x0B)));
        assert_eq!(parse(&[0x0B, 1, 0x0B, 2], PacketType::Subscribe), Err(Malformed::DuplicateProperty(0x0B)));
        assert!(parse(&[0x0B, 1, 0x0B, 2], PacketType::Publish).is_ok());
        assert_eq!(parse(&[0x7f, 0], PacketType::Publish), Err(Malformed::UnknownProperty(0x7f)));
    }
}
