//! [`Encode`]: every packet type encodes on its own, as [`Packet::encode`](super::Packet::encode) does for it, so
//! a program links only the encoders of the packets it sends (a device's client leaves out CONNACK, SUBACK, AUTH
//! and their property writers).

use super::wire::{Writer, varint_len};
use super::{
    Auth, ConnAck, Connect, Disconnect, EncodeError, MAX_REMAINING_LENGTH, PacketType, PubResponse, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, Version,
};

/// A packet that encodes into a caller's buffer.
pub trait Encode: sealed::Body {
    /// The number of bytes [`Encode::encode`] writes.
    fn encoded_len(&self, version: Version) -> usize {
        let body = self.body_len(version);
        1 + varint_len(body) + body
    }

    /// Encodes the packet at `version` (CONNECT at its own) into `buf`; returns the number of bytes written.
    fn encode(&self, version: Version, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let body = self.body_len(version);
        if body > MAX_REMAINING_LENGTH {
            return Err(EncodeError::TooLarge);
        }
        let needed = 1 + varint_len(body) + body;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let mut w = Writer::new(buf);
        w.u8(self.first_byte())?;
        w.varint(body)?;
        self.write_body(version, &mut w)?;
        debug_assert_eq!(w.position(), needed);
        Ok(w.position())
    }
}

/// PINGREQ, to encode on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PingReq;

/// PINGRESP, to encode on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PingResp;

pub(crate) mod sealed {
    use super::{EncodeError, Version, Writer};

    /// The parts every packet type supplies: its first byte, the size and the bytes of its body.
    pub trait Body {
        fn first_byte(&self) -> u8;
        fn body_len(&self, version: Version) -> usize;
        fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError>;
    }
}

/// The first byte of a packet of `packet_type` with its required flags.
pub(crate) const fn first_byte(packet_type: PacketType) -> u8 {
    let flags = match packet_type.required_flags() {
        Some(flags) => flags,
        None => 0,
    };
    ((packet_type as u8) << 4) | flags
}

/// Implements [`Encode`] for packet types through their `body_len` and `write_body` and a first byte.
macro_rules! encodes {
    ($($ty:ident: $first:expr;)*) => {
        $(
            impl sealed::Body for $ty<'_> {
                fn first_byte(&self) -> u8 {
                    let first: fn(&$ty<'_>) -> u8 = $first;
                    first(self)
                }
                fn body_len(&self, version: Version) -> usize {
                    $ty::body_len(self, version)
                }
                fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                    $ty::write_body(self, version, w)
                }
            }
            impl Encode for $ty<'_> {}
        )*
    };
}

encodes! {
    Connect: |_| first_byte(PacketType::Connect);
    ConnAck: |_| first_byte(PacketType::ConnAck);
    Publish: |p| ((PacketType::Publish as u8) << 4) | p.flags();
    PubResponse: |p| first_byte(p.kind.packet_type());
    Subscribe: |_| first_byte(PacketType::Subscribe);
    SubAck: |_| first_byte(PacketType::SubAck);
    Unsubscribe: |_| first_byte(PacketType::Unsubscribe);
    UnsubAck: |_| first_byte(PacketType::UnsubAck);
    Disconnect: |_| first_byte(PacketType::Disconnect);
    Auth: |_| first_byte(PacketType::Auth);
}

/// Implements [`Encode`] for the packets that are a fixed header alone.
macro_rules! header_only {
    ($($ty:ident),*) => {
        $(
            impl sealed::Body for $ty {
                fn first_byte(&self) -> u8 {
                    first_byte(PacketType::$ty)
                }
                fn body_len(&self, _: Version) -> usize {
                    0
                }
                fn write_body(&self, _: Version, _: &mut Writer<'_>) -> Result<(), EncodeError> {
                    Ok(())
                }
            }
            impl Encode for $ty {}
        )*
    };
}

header_only!(PingReq, PingResp);
