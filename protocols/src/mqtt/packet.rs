//! The [`Packet`] enum: decode one packet from a byte stream, encode one into a buffer.

use super::encode::{Encode, first_byte, sealed};
use super::wire::{Reader, Writer};
use super::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, FixedHeader, Malformed, PacketType, PubResponse,
    PubResponseKind, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};

/// Any MQTT control packet, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
// CONNECT carries two property sets; packets are short-lived stack values and boxing would need an allocator.
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    /// PUBACK, PUBREC, PUBREL or PUBCOMP.
    PubResponse(PubResponse<'a>),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
    /// MQTT 5 only.
    Auth(Auth<'a>),
}

impl<'a> Packet<'a> {
    /// Decodes the packet at the start of `buf`.
    ///
    /// `version` is the connection's protocol level; CONNECT carries its own and ignores it. `max_packet_size`
    /// bounds the whole packet, fixed header included, and is checked as soon as the fixed header is complete.
    /// On success returns the packet and the number of bytes it took.
    pub fn decode(buf: &'a [u8], version: Version, max_packet_size: usize) -> Result<(Packet<'a>, usize), DecodeError> {
        Self::decode_directed::<false>(buf, version, max_packet_size)
    }

    /// Decodes only what a server sends (CONNACK, PUBLISH and its acknowledgements, SUBACK, UNSUBACK, PINGRESP,
    /// DISCONNECT, AUTH), as [`Packet::decode`] does; a packet only clients send is
    /// [`Malformed::ClientOnlyPacket`]. A client's decoder: it links none of the code for the packets it never
    /// receives.
    pub fn decode_from_server(
        buf: &'a [u8],
        version: Version,
        max_packet_size: usize,
    ) -> Result<(Packet<'a>, usize), DecodeError> {
        Self::decode_directed::<true>(buf, version, max_packet_size)
    }

    fn decode_directed<const FROM_SERVER: bool>(
        buf: &'a [u8],
        version: Version,
        max_packet_size: usize,
    ) -> Result<(Packet<'a>, usize), DecodeError> {
        let header = FixedHeader::parse(buf, max_packet_size)?;
        let len = header.packet_len();
        let Some(body) = buf.get(header.header_len..len) else {
            return Err(DecodeError::Incomplete { needed: len - buf.len() });
        };
        let mut r = Reader::new(body);
        let packet = Self::decode_body::<FROM_SERVER>(&header, &mut r, version)?;
        Ok((packet, len))
    }

    fn decode_body<const FROM_SERVER: bool>(
        header: &FixedHeader,
        r: &mut Reader<'a>,
        version: Version,
    ) -> Result<Packet<'a>, Malformed> {
        let ack = |kind, r: &mut Reader<'a>| PubResponse::read(r, kind, version).map(Packet::PubResponse);
        if FROM_SERVER
            && matches!(
                header.packet_type,
                PacketType::Connect | PacketType::Subscribe | PacketType::Unsubscribe | PacketType::PingReq
            )
        {
            return Err(Malformed::ClientOnlyPacket(header.packet_type as u8));
        }
        let packet = match header.packet_type {
            PacketType::Connect => Packet::Connect(Connect::read(r)?),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::read(r, version)?),
            PacketType::Publish => Packet::Publish(Publish::read(r, header.flags, version)?),
            PacketType::PubAck => ack(PubResponseKind::PubAck, r)?,
            PacketType::PubRec => ack(PubResponseKind::PubRec, r)?,
            PacketType::PubRel => ack(PubResponseKind::PubRel, r)?,
            PacketType::PubComp => ack(PubResponseKind::PubComp, r)?,
            PacketType::Subscribe => Packet::Subscribe(Subscribe::read(r, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::read(r, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(r, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(r, version)?),
            PacketType::PingReq | PacketType::PingResp => {
                if r.remaining() != 0 {
                    return Err(Malformed::TrailingBytes);
                }
                if header.packet_type == PacketType::PingReq { Packet::PingReq } else { Packet::PingResp }
            }
            PacketType::Disconnect => Packet::Disconnect(Disconnect::read(r, version)?),
            PacketType::Auth if version.is_v5() => Packet::Auth(Auth::read(r)?),
            PacketType::Auth => return Err(Malformed::UnknownPacketType(15)),
        };
        Ok(packet)
    }

    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubResponse(p) => p.kind.packet_type(),
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The number of bytes [`Packet::encode`] writes for this packet.
    pub fn encoded_len(&self, version: Version) -> usize {
        Encode::encoded_len(self, version)
    }

    /// Encodes the packet into `buf` and returns the number of bytes written. CONNECT is encoded at its own
    /// version; every other packet at `version`. (A program that sends few packet types links less by encoding
    /// them through their own [`Encode`].)
    pub fn encode(&self, version: Version, buf: &mut [u8]) -> Result<usize, EncodeError> {
        Encode::encode(self, version, buf)
    }
}

impl sealed::Body for Packet<'_> {
    fn first_byte(&self) -> u8 {
        match self {
            Packet::Publish(p) => p.first_byte(),
            Packet::PubResponse(p) => p.first_byte(),
            other => first_byte(other.packet_type()),
        }
    }

    fn body_len(&self, version: Version) -> usize {
        match self {
            Packet::Connect(p) => p.body_len(version),
            Packet::ConnAck(p) => p.body_len(version),
            Packet::Publish(p) => p.body_len(version),
            Packet::PubResponse(p) => p.body_len(version),
            Packet::Subscribe(p) => p.body_len(version),
            Packet::SubAck(p) => p.body_len(version),
            Packet::Unsubscribe(p) => p.body_len(version),
            Packet::UnsubAck(p) => p.body_len(version),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(p) => p.body_len(version),
            Packet::Auth(p) => p.body_len(version),
        }
    }

    fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(p) => p.write_body(version, w),
            Packet::ConnAck(p) => p.write_body(version, w),
            Packet::Publish(p) => p.write_body(version, w),
            Packet::PubResponse(p) => p.write_body(version, w),
            Packet::Subscribe(p) => p.write_body(version, w),
            Packet::SubAck(p) => p.write_body(version, w),
            Packet::Unsubscribe(p) => p.write_body(version, w),
            Packet::UnsubAck(p) => p.write_body(version, w),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(p) => p.write_body(version, w),
            Packet::Auth(p) => p.write_body(version, w),
        }
    }
}

impl Encode for Packet<'_> {}
