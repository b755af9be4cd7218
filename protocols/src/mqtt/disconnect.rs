//! DISCONNECT and AUTH: a reason code and properties, both omitted when the reason is success and nothing else
//! is said.

use super::properties::{Context, Properties};
use super::wire::{Reader, Writer};
use super::{EncodeError, Malformed, PacketType, ReasonCode, Version};

fn read_reason_and_properties<'a>(
    r: &mut Reader<'a>,
    t: PacketType,
    allowed: fn(ReasonCode) -> bool,
) -> Result<(ReasonCode, Properties<'a>), Malformed> {
    let mut reason = ReasonCode::SUCCESS;
    let mut properties = Properties::default();
    if !r.is_empty() {
        reason = ReasonCode(r.u8()?);
        if !allowed(reason) {
            return Err(Malformed::InvalidReasonCode(reason.0));
        }
        if !r.is_empty() {
            properties = Properties::read(r, Context::Packet(t))?;
        }
    }
    if !r.is_empty() {
        return Err(Malformed::TrailingBytes);
    }
    Ok((reason, properties))
}

fn body_len(reason: ReasonCode, properties: &Properties<'_>) -> usize {
    match (reason, properties.is_empty()) {
        (ReasonCode::SUCCESS, true) => 0,
        (_, true) => 1,
        (_, false) => 1 + properties.wire_len(),
    }
}

fn write_body(reason: ReasonCode, properties: &Properties<'_>, w: &mut Writer<'_>) -> Result<(), EncodeError> {
    let len = body_len(reason, properties);
    if len >= 1 {
        w.u8(reason.0)?;
    }
    if len > 1 {
        properties.write(w)?;
    }
    Ok(())
}

/// A DISCONNECT packet (MQTT 3.1.1: always empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Disconnect<'a> {
    /// Why the connection ends (MQTT 5).
    pub reason: ReasonCode,
    /// DISCONNECT properties (MQTT 5).
    pub properties: Properties<'a>,
}

impl<'a> Disconnect<'a> {
    /// A DISCONNECT with a reason code and no properties.
    pub fn with_reason(reason: ReasonCode) -> Self {
        Disconnect { reason, properties: Properties::default() }
    }

    pub(crate) fn read(r: &mut Reader<'a>, version: Version) -> Result<Self, Malformed> {
        if !version.is_v5() {
            if !r.is_empty() {
                return Err(Malformed::TrailingBytes);
            }
            return Ok(Disconnect::default());
        }
        let (reason, properties) =
            read_reason_and_properties(r, PacketType::Disconnect, ReasonCode::allowed_in_disconnect)?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn body_len(&self, version: Version) -> usize {
        if version.is_v5() { body_len(self.reason, &self.properties) } else { 0 }
    }

    pub(crate) fn write_body(&self, version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if version.is_v5() { write_body(self.reason, &self.properties, w) } else { Ok(()) }
    }
}

/// An AUTH packet (MQTT 5 extended authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Auth<'a> {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// AUTH properties: method, data, reason string, user properties.
    pub properties: Properties<'a>,
}

impl<'a> Auth<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let (reason, properties) = read_reason_and_properties(r, PacketType::Auth, ReasonCode::allowed_in_auth)?;
        Ok(Auth { reason, properties })
    }

    /// AUTH exists only in MQTT 5; `_version` is for the shape [`Encode`](super::Encode) needs.
    pub(crate) fn body_len(&self, _version: Version) -> usize {
        body_len(self.reason, &self.properties)
    }

    pub(crate) fn write_body(&self, _version: Version, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        write_body(self.reason, &self.properties, w)
    }
}
