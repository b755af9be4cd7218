//! The fixed header: packet type, flags and remaining length.

use super::wire::{VarInt, decode_varint};
use super::{DecodeError, Malformed};

/// The fourteen MQTT control packet types plus AUTH (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The packet type for the upper four bits of the first byte.
    pub const fn from_bits(bits: u8) -> Option<PacketType> {
        Some(match bits {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The flags every packet of this type must carry; `None` for PUBLISH, whose flags are DUP, QoS and RETAIN.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low four bits of the first byte.
    pub flags: u8,
    /// The number of bytes after the fixed header.
    pub remaining_length: usize,
    /// The size of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FixedHeader {
    /// Parses a fixed header and checks the packet's total size against `max_packet_size`.
    ///
    /// Succeeds as soon as the header is complete, so a receiver can learn a packet's size (and refuse an
    /// oversized one) before its body arrives.
    pub fn parse(buf: &[u8], max_packet_size: usize) -> Result<FixedHeader, DecodeError> {
        let Some((&first, rest)) = buf.split_first() else {
            return Err(DecodeError::Incomplete { needed: 2 });
        };
        let type_bits = first >> 4;
        let flags = first & 0x0f;
        let packet_type = PacketType::from_bits(type_bits).ok_or(Malformed::UnknownPacketType(type_bits))?;
        if let Some(required) = packet_type.required_flags()
            && flags != required
        {
            return Err(Malformed::ReservedFlags { packet_type: type_bits, flags }.into());
        }
        let (remaining_length, len_bytes) = match decode_varint(rest) {
            VarInt::Value(v, n) => (v as usize, n),
            VarInt::Incomplete => return Err(DecodeError::Incomplete { needed: 1 }),
            VarInt::Invalid => return Err(Malformed::RemainingLength.into()),
        };
        let header_len = 1 + len_bytes;
        let size = header_len + remaining_length;
        if size > max_packet_size {
            return Err(DecodeError::TooLarge { size, max: max_packet_size });
        }
        Ok(FixedHeader { packet_type, flags, remaining_length, header_len })
    }

    /// The packet's total size in bytes.
    pub const fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length
    }
}
