//! CONNECT and CONNACK.

use super::properties::{Context, Properties};
use super::wire::{Reader, Writer, prefixed_len};
use super::{EncodeError, Malformed, PacketType, QoS, ReasonCode, Version, topic};

const CTX_CONNECT: Context = Context::Packet(PacketType::Connect);
const CTX_CONNACK: Context = Context::Packet(PacketType::ConnAck);

/// A CONNECT packet, MQTT 3.1.1 or 5 (the version is part of the packet), or MQTT 3.1 (`MQIsdp`, level 3),
/// which is read as 3.1.1: its packets are 3.1.1's but for CONNACK's Session Present flag, which 3.1 lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Connect<'a> {
    /// The protocol level the client speaks.
    pub version: Version,
    /// 3.1.1 Clean Session, 5 Clean Start.
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties<'a>,
    /// The client identifier; empty asks the server to assign one.
    pub client_id: &'a str,
    /// The Will message, if any.
    pub will: Option<Will<'a>>,
    /// The user name, if any.
    pub username: Option<&'a str>,
    /// The password, if any.
    pub password: Option<&'a [u8]>,
    /// The client spoke MQTT 3.1 (`MQIsdp`, level 3); `version` is then 3.1.1.
    pub mqtt31: bool,
}

/// The message a server publishes when the connection ends abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Will<'a> {
    /// The Will topic (a topic name, no wildcards).
    pub topic: &'a str,
    /// The Will payload.
    pub payload: &'a [u8],
    /// The QoS to publish the Will at.
    pub qos: QoS,
    /// Whether the Will is retained.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> Connect<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let name = r.utf8()?;
        let level = r.u8()?;
        let mqtt31 = name == "MQIsdp";
        let version = match (name, level) {
            ("MQIsdp", 3) | ("MQTT", 4) => Version::V311,
            ("MQTT", 5) if Version::V5.is_supported() => Version::V5,
            // Recognisably MQTT, at a level we do not speak: the server can answer it.
            ("MQTT" | "MQIsdp", other) => return Err(Malformed::UnsupportedProtocolVersion(other)),
            _ => return Err(Malformed::ProtocolName),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(Malformed::ConnectReservedFlag);
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = QoS::from_bits((flags >> 3) & 0x03).ok_or(Malformed::WillFlags)?;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(Malformed::WillFlags);
        }
        if version == Version::V311 && has_password && !has_username {
            return Err(Malformed::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if version.is_v5() { Properties::read(r, CTX_CONNECT)? } else { Properties::default() };
        let client_id = r.utf8()?;
        let will = if will_flag {
            let properties = if version.is_v5() { Properties::read(r, Context::Will)? } else { Properties::default() };
            let topic = r.utf8()?;
            topic::validate_name(topic)?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if has_username { Some(r.utf8()?) } else { None };
        let password = if has_password { Some(r.binary()?) } else { None };
        if !r.is_empty() {
            return Err(Malformed::TrailingBytes);
        }
        Ok(Connect { version, clean_start, keep_alive, properties, client_id, will, username, password, mqtt31 })
    }

    fn protocol_name(&self) -> &'static str {
        if self.mqtt31 { "MQIsdp" } else { "MQTT" }
    }

    /// CONNECT is encoded at its own version; `_version` is for the shape [`Encode`](super::Encode) needs.
    pub(crate) fn body_len(&self, _version: Version) -> usize {
        let v5 = self.version.is_v5();
        let mut len = prefixed_len(self.protocol_name().len()) + 1 + 1 + 2 + prefixed_len(self.client_id.len());
        if v5 {
            len += self.properties.wire_len();
        }
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.wire_len();
            }
            len += prefixed_len(will.topic.len()) + prefixed_len(will.payload.len());
        }
        len += self.username.map_or(0, |u| prefixed_len(u.len()));
        len += self.password.map_or(0, |p| prefixed_len(p.len()));
        len
    }

    pub(crate) fn write_body(&self, _version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let v5 = self.version.is_v5();
        w.utf8(self.protocol_name())?;
        w.u8(if self.mqtt31 { 3 } else { self.version.level() })?;
        let mut flags = 0u8;
        flags |= u8::from(self.clean_start) << 1;
        if let Some(will) = &self.will {
            flags |= 0x04 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
        }
        flags |= u8::from(self.password.is_some()) << 6;
        flags |= u8::from(self.username.is_some()) << 7;
        w.u8(flags)?;
        w.u16(self.keep_alive)?;
        if v5 {
            self.properties.write(w)?;
        }
        w.utf8(self.client_id)?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(w)?;
            }
            w.utf8(will.topic)?;
            w.binary(will.payload)?;
        }
        if let Some(u) = self.username {
            w.utf8(u)?;
        }
        if let Some(p) = self.password {
            w.binary(p)?;
        }
        Ok(())
    }
}

/// A CONNACK packet. In MQTT 3.1.1 `code` holds the return code (0 to 5, see [`super::reason::v311`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnAck<'a> {
    /// Whether the server resumed a session.
    pub session_present: bool,
    /// The reason code (MQTT 5) or return code (MQTT 3.1.1).
    pub code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> ConnAck<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        let flags = r.u8()?;
        if flags & 0xfe != 0 {
            return Err(Malformed::ConnAckFlags);
        }
        let code = ReasonCode(r.u8()?);
        let properties = if version.is_v5() {
            if !code.allowed_in_connack() {
                return Err(Malformed::InvalidReasonCode(code.0));
            }
            Properties::read(r, CTX_CONNACK)?
        } else {
            if code.0 > 5 {
                return Err(Malformed::InvalidReturnCode(code.0));
            }
            Properties::default()
        };
        if !r.is_empty() {
            return Err(Malformed::TrailingBytes);
        }
        Ok(ConnAck { session_present: flags & 1 != 0, code, properties })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        2 + if version.is_v5() { self.properties.wire_len() } else { 0 }
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u8(u8::from(self.session_present))?;
        w.u8(self.code.0)?;
        if version.is_v5() {
            self.properties.write(w)?;
        }
        Ok(())
    }
}
