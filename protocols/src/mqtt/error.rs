//! Decode and encode errors, each mapped to the MQTT 5 reason code a receiver sends back.

use core::fmt;

use super::ReasonCode;

/// Why [`Packet::decode`](super::Packet::decode) returned no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// The input ends before the packet does; at least `needed` more bytes are required.
    Incomplete {
        /// The minimum number of further bytes before decoding can make progress.
        needed: usize,
    },
    /// The packet's total size (fixed header included) exceeds the receiver's maximum.
    TooLarge {
        /// The packet's size in bytes, from its fixed header.
        size: usize,
        /// The maximum the receiver accepts.
        max: usize,
    },
    /// The packet breaks a rule of the specification.
    Malformed(Malformed),
}

impl DecodeError {
    /// The MQTT 5 reason code a receiver reports for this error (in DISCONNECT or CONNACK).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Incomplete { .. } => ReasonCode::MALFORMED_PACKET,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::Malformed(m) => m.reason_code(),
        }
    }
}

impl From<Malformed> for DecodeError {
    fn from(m: Malformed) -> Self {
        DecodeError::Malformed(m)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => {
                write!(f, "incomplete packet: {needed} more bytes needed")
            }
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// A precise account of what is wrong with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Malformed {
    /// The remaining length is longer than four bytes or not minimally encoded.
    RemainingLength,
    /// A variable byte integer inside the packet is longer than four bytes or not minimally encoded.
    VariableByteInteger,
    /// Packet type 0 (reserved).
    UnknownPacketType(u8),
    /// The fixed header's low four bits are not what the packet type requires.
    ReservedFlags {
        /// The packet type (upper four bits).
        packet_type: u8,
        /// The flags found.
        flags: u8,
    },
    /// A QoS of 3.
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH.
    DupWithQoS0,
    /// A field runs past the end of the packet.
    Truncated,
    /// Bytes left over after the packet's last field.
    TrailingBytes,
    /// A string is not well-formed UTF-8 (this includes surrogate code points).
    InvalidUtf8,
    /// A string contains U+0000.
    NullCharacter,
    /// CONNECT's protocol name is not `MQTT`.
    ProtocolName,
    /// CONNECT's protocol level is neither 4 (3.1.1) nor 5.
    UnsupportedProtocolVersion(u8),
    /// CONNECT's reserved flag bit is set.
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will flag, or Will QoS 3.
    WillFlags,
    /// MQTT 3.1.1: the password flag set without the user name flag.
    PasswordWithoutUsername,
    /// A topic name contains `+` or `#`.
    WildcardInTopicName,
    /// A topic name or filter is empty where one is required.
    EmptyTopic,
    /// A topic filter places `+` or `#` other than as a whole level (`#` only last).
    InvalidTopicFilter,
    /// A packet identifier of 0 where a non-zero one is required.
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without a single topic filter.
    NoTopicFilters,
    /// Reserved bits set in subscription options, or Retain Handling 3.
    SubscriptionOptions,
    /// A property identifier the specification does not define.
    UnknownProperty(u8),
    /// A property that may appear once appears twice.
    DuplicateProperty(u8),
    /// A property that this packet may not carry.
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// The packet type carrying it.
        packet_type: u8,
    },
    /// A property with a value the specification forbids (e.g. Receive Maximum 0).
    PropertyValue(u8),
    /// A reason code this packet type may not carry.
    InvalidReasonCode(u8),
    /// MQTT 3.1.1 CONNACK return code above 5.
    InvalidReturnCode(u8),
    /// The connect acknowledge flags have reserved bits set.
    ConnAckFlags,
    /// A packet type only clients send (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ), read from a server.
    ClientOnlyPacket(u8),
}

impl Malformed {
    /// The MQTT 5 reason code that reports this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Malformed::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            Malformed::WildcardInTopicName => ReasonCode::TOPIC_NAME_INVALID,
            Malformed::DuplicateProperty(_)
            | Malformed::PropertyNotAllowed { .. }
            | Malformed::PropertyValue(_)
            | Malformed::ZeroPacketId
            | Malformed::DupWithQoS0
            | Malformed::ProtocolName
            | Malformed::NoTopicFilters
            | Malformed::ClientOnlyPacket(_) => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::RemainingLength => f.write_str("remaining length is not a minimal 1-4 byte integer"),
            Malformed::VariableByteInteger => f.write_str("variable byte integer is not minimal or too long"),
            Malformed::UnknownPacketType(t) => write!(f, "unknown packet type {t}"),
            Malformed::ReservedFlags { packet_type, flags } => {
                write!(f, "reserved flags {flags:#x} on packet type {packet_type}")
            }
            Malformed::InvalidQoS => f.write_str("QoS 3 is invalid"),
            Malformed::DupWithQoS0 => f.write_str("DUP set on a QoS 0 PUBLISH"),
            Malformed::Truncated => f.write_str("a field runs past the end of the packet"),
            Malformed::TrailingBytes => f.write_str("bytes after the last field"),
            Malformed::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            Malformed::NullCharacter => f.write_str("string contains U+0000"),
            Malformed::ProtocolName => f.write_str("protocol name is not MQTT"),
            Malformed::UnsupportedProtocolVersion(v) => write!(f, "unsupported protocol level {v}"),
            Malformed::ConnectReservedFlag => f.write_str("CONNECT reserved flag is set"),
            Malformed::WillFlags => f.write_str("will QoS/retain inconsistent with the will flag"),
            Malformed::PasswordWithoutUsername => f.write_str("password flag without user name flag"),
            Malformed::WildcardInTopicName => f.write_str("topic name contains a wildcard"),
            Malformed::EmptyTopic => f.write_str("empty topic"),
            Malformed::InvalidTopicFilter => f.write_str("invalid topic filter"),
            Malformed::ZeroPacketId => f.write_str("packet identifier 0"),
            Malformed::NoTopicFilters => f.write_str("no topic filters"),
            Malformed::SubscriptionOptions => f.write_str("invalid subscription options"),
            Malformed::UnknownProperty(p) => write!(f, "unknown property {p:#04x}"),
            Malformed::DuplicateProperty(p) => write!(f, "duplicate property {p:#04x}"),
            Malformed::PropertyNotAllowed { property, packet_type } => {
                write!(f, "property {property:#04x} not allowed on packet type {packet_type}")
            }
            Malformed::PropertyValue(p) => write!(f, "invalid value for property {p:#04x}"),
            Malformed::InvalidReasonCode(c) => write!(f, "reason code {c:#04x} not allowed here"),
            Malformed::InvalidReturnCode(c) => write!(f, "CONNACK return code {c} is invalid"),
            Malformed::ConnAckFlags => f.write_str("reserved CONNACK flags set"),
            Malformed::ClientOnlyPacket(t) => write!(f, "packet type {t} is sent only by clients"),
        }
    }
}

impl core::error::Error for Malformed {}

/// Why [`Packet::encode`](super::Packet::encode) wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The caller's buffer is shorter than the `needed` bytes of the packet.
    BufferTooSmall {
        /// The packet's encoded size.
        needed: usize,
    },
    /// The packet would exceed the largest remaining length MQTT can express.
    TooLarge,
    /// A field is out of range for the wire (e.g. a string longer than 65,535 bytes).
    FieldTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
            EncodeError::TooLarge => f.write_str("packet exceeds the MQTT maximum size"),
            EncodeError::FieldTooLong => f.write_str("field too long for its length prefix"),
        }
    }
}

impl core::error::Error for EncodeError {}
