//! The MQTT 3.1.1 and 5.0 packet codec.
//!
//! One codec serves both ends of a connection: the gateway's server sessions and the `#![no_std]` client decode
//! and encode the same [`Packet`] type.
//!
//! Decoding is zero-copy: [`Packet::decode`] borrows topics, payloads and properties from the input and reports a
//! complete packet with its length, that more bytes are needed ([`DecodeError::Incomplete`]), that the packet
//! exceeds the receiver's maximum ([`DecodeError::TooLarge`]), or precisely what is malformed
//! ([`DecodeError::Malformed`], which maps to the MQTT 5 reason code to send back).
//!
//! Encoding writes into a caller's buffer: [`Packet::encoded_len`] says how many bytes [`Packet::encode`] needs.
//! Lists (topic filters, user properties, subscription identifiers) are either borrowed slices of items, for
//! encoding, or the validated wire bytes they were decoded from; both compare equal when their items do.
//!
//! ```
//! use meshgate_protocols::mqtt::{Packet, Publish, QoS, Version};
//!
//! let publish = Packet::Publish(Publish {
//!     qos: QoS::AtLeastOnce,
//!     packet_id: Some(7),
//!     topic: "devices/d1/events",
//!     payload: b"21.5",
//!     ..Publish::default()
//! });
//! let mut buf = [0u8; 64];
//! let n = publish.encode(Version::V5, &mut buf).unwrap();
//! let (decoded, used) = Packet::decode(&buf[..n], Version::V5, 1024).unwrap();
//! assert_eq!(used, n);
//! assert_eq!(decoded, publish);
//! ```

mod connect;
mod disconnect;
mod encode;
mod error;
mod fixed_header;
mod list;
mod packet;
mod properties;
mod publish;
pub mod reason;
mod subscribe;
pub mod topic;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use encode::{Encode, PingReq, PingResp};
pub use error::{DecodeError, EncodeError, Malformed};
pub use fixed_header::{FixedHeader, PacketType};
pub use list::{List, ListItem, PropertyItem, PropertyList};
pub use packet::Packet;
pub use properties::{Properties, UserProperty};
pub use publish::{PubResponse, PubResponseKind, Publish};
pub use reason::ReasonCode;
pub use subscribe::{RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe};

/// The largest value a remaining length (a four-byte variable byte integer) can hold: 268,435,455.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The MQTT protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    #[default]
    V5,
}

impl Version {
    /// The protocol level byte in CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    /// Whether this version carries properties and reason codes (never in a build with `mqtt-v311` alone).
    pub const fn is_v5(self) -> bool {
        cfg!(feature = "mqtt") && matches!(self, Version::V5)
    }

    /// Whether this build speaks the version (MQTT 5 needs the `mqtt` feature; `mqtt-v311` alone leaves it out).
    pub const fn is_supported(self) -> bool {
        match self {
            Version::V311 => true,
            Version::V5 => cfg!(feature = "mqtt"),
        }
    }
}

/// Quality of service of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QoS {
    /// At most once: no acknowledgement.
    #[default]
    AtMostOnce = 0,
    /// At least once: PUBLISH, PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its two-bit wire value, or `None` for the invalid value 3.
    pub const fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}
