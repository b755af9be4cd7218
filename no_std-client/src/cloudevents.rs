//! CloudEvents from a device, without an allocator: MQTT 5 binary mode (attributes as user properties, the data
//! content type as Content Type, the data as the payload) and structured JSON for MQTT 3.1.1 (written into a
//! fixed buffer, strings escaped as JSON requires), with ids from a per-device counter.

use core::fmt::Write as _;

use meshgate_protocols::mqtt::{Properties, PropertyList, UserProperty};

/// An event's context attributes; the data travels separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAttributes<'a> {
    /// `id`: unique per `source` (see [`EventIds`]).
    pub id: &'a str,
    /// `source`: a URI reference naming the device, e.g. `/devices/pump-2`.
    pub source: &'a str,
    /// `type`, e.g. `com.example.pressure`.
    pub ty: &'a str,
    /// `subject`, if any.
    pub subject: Option<&'a str>,
    /// `time` (RFC 3339), if the device knows it.
    pub time: Option<&'a str>,
    /// `datacontenttype`, e.g. `application/json`.
    pub datacontenttype: Option<&'a str>,
    /// Extension attributes as name and string value (names: lowercase letters and digits).
    pub extensions: &'a [(&'a str, &'a str)],
}

/// Why an event could not be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventError {
    /// More attributes than the user-property slots given.
    TooManyAttributes,
    /// The buffer is too small for the structured event.
    BufferTooSmall,
}

/// MQTT 5 binary mode: the PUBLISH properties for `attrs`, with its user properties written into `slots`.
pub fn binary_properties<'a>(
    attrs: &EventAttributes<'a>,
    slots: &'a mut [UserProperty<'a>],
) -> Result<Properties<'a>, EventError> {
    let mut n = 0;
    let mut put = |name: &'a str, value: &'a str| -> Result<(), EventError> {
        let slot = slots.get_mut(n).ok_or(EventError::TooManyAttributes)?;
        *slot = UserProperty { name, value };
        n += 1;
        Ok(())
    };
    put("specversion", "1.0")?;
    put("id", attrs.id)?;
    put("source", attrs.source)?;
    put("type", attrs.ty)?;
    if let Some(subject) = attrs.subject {
        put("subject", subject)?;
    }
    if let Some(time) = attrs.time {
        put("time", time)?;
    }
    for &(name, value) in attrs.extensions {
        put(name, value)?;
    }
    let slots: &'a [UserProperty<'a>] = slots;
    Ok(Properties {
        content_type: attrs.datacontenttype,
        user_properties: PropertyList::new(slots.get(..n).unwrap_or_default()),
        ..Properties::default()
    })
}

/// Writes into a byte slice, failing (never truncating silently) when it is full.
struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl core::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A JSON string literal: quotes, and escapes for `"`, `\` and control characters.
fn json_string(w: &mut SliceWriter<'_>, s: &str) -> core::fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let hex = |nibble: u32| char::from(HEX.get(nibble as usize & 15).copied().unwrap_or(b'0'));
                w.write_str("\\u00")?;
                w.write_char(hex(c as u32 >> 4))?;
                w.write_char(hex(c as u32))?;
            }
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

fn base64(w: &mut SliceWriter<'_>, data: &[u8]) -> core::fmt::Result {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'A'));
    for chunk in data.chunks(3) {
        let b = [chunk.first().copied(), chunk.get(1).copied(), chunk.get(2).copied()];
        let n =
            (u32::from(b[0].unwrap_or(0)) << 16) | (u32::from(b[1].unwrap_or(0)) << 8) | u32::from(b[2].unwrap_or(0));
        w.write_char(sym(n >> 18))?;
        w.write_char(sym(n >> 12))?;
        w.write_char(if b[1].is_some() { sym(n >> 6) } else { '=' })?;
        w.write_char(if b[2].is_some() { sym(n) } else { '=' })?;
    }
    Ok(())
}

/// `n` in decimal (without `core::fmt`, whose integer formatting costs a device about a kilobyte of flash).
fn decimal(w: &mut SliceWriter<'_>, n: u32) -> core::fmt::Result {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        if let Some(d) = digits.get_mut(start) {
            *d = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let text = digits.get(start..).and_then(|d| core::str::from_utf8(d).ok()).unwrap_or("0");
    w.write_str(text)
}

/// An event's data. In binary mode it is the payload as it is; in a structured event it is written as below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventData<'a> {
    /// Already JSON (the caller vouches for it): written as the `data` value.
    Json(&'a str),
    /// Text: written as a JSON string `data`.
    Text(&'a str),
    /// Bytes: written as `data_base64`.
    Binary(&'a [u8]),
}

impl<'a> EventData<'a> {
    /// The data's bytes, as binary mode carries them.
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            EventData::Json(s) | EventData::Text(s) => s.as_bytes(),
            EventData::Binary(b) => b,
        }
    }
}

/// User-property slots [`binary_properties`] needs for an event: `specversion`, `id`, `source`, `type`, `subject`,
/// `time` and up to eight extensions.
pub const MAX_EVENT_PROPERTIES: usize = 14;

/// Writes `attrs` and `data` as a structured-mode JSON event into `buf`; returns its length.
pub fn write_structured(attrs: &EventAttributes<'_>, data: EventData<'_>, buf: &mut [u8]) -> Result<usize, EventError> {
    let mut w = SliceWriter { buf, len: 0 };
    let result = (|| -> core::fmt::Result {
        w.write_str("{\"specversion\":\"1.0\",\"id\":")?;
        json_string(&mut w, attrs.id)?;
        w.write_str(",\"source\":")?;
        json_string(&mut w, attrs.source)?;
        w.write_str(",\"type\":")?;
        json_string(&mut w, attrs.ty)?;
        for (name, value) in
            [("subject", attrs.subject), ("time", attrs.time), ("datacontenttype", attrs.datacontenttype)]
        {
            if let Some(v) = value {
                w.write_str(",\"")?;
                w.write_str(name)?;
                w.write_str("\":")?;
                json_string(&mut w, v)?;
            }
        }
        for &(name, value) in attrs.extensions {
            w.write_char(',')?;
            json_string(&mut w, name)?;
            w.write_char(':')?;
            json_string(&mut w, value)?;
        }
        match data {
            EventData::Json(json) => {
                w.write_str(",\"data\":")?;
                w.write_str(json)?;
            }
            EventData::Text(text) => {
                w.write_str(",\"data\":")?;
                json_string(&mut w, text)?;
            }
            EventData::Binary(bytes) => {
                w.write_str(",\"data_base64\":\"")?;
                base64(&mut w, bytes)?;
                w.write_char('"')?;
            }
        }
        w.write_char('}')
    })();
    result.map_err(|_| EventError::BufferTooSmall)?;
    Ok(w.len)
}

/// Event ids from a per-device counter: `{device}-{n}`, unique per source while the counter is not reset (keep
/// it across reboots, e.g. in flash, or add a boot count to `device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIds<'d> {
    device: &'d str,
    next: u32,
}

impl<'d> EventIds<'d> {
    /// Ids for `device`, starting after `last` (0 for a fresh device).
    pub fn new(device: &'d str, last: u32) -> Self {
        EventIds { device, next: last.wrapping_add(1) }
    }

    /// The next id, written into `buf` (the device name plus 11 bytes is enough).
    pub fn next<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b str, EventError> {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        let mut w = SliceWriter { buf, len: 0 };
        w.write_str(self.device).map_err(|_| EventError::BufferTooSmall)?;
        w.write_char('-').map_err(|_| EventError::BufferTooSmall)?;
        decimal(&mut w, n).map_err(|_| EventError::BufferTooSmall)?;
        let len = w.len;
        let written = buf.get(..len).ok_or(EventError::BufferTooSmall)?;
        core::str::from_utf8(written).map_err(|_| EventError::BufferTooSmall)
    }
}

#[cfg(test)]
mod tests {
    use meshgate_protocols::cloudevents::{CloudEvent, decode_mqtt};
    use meshgate_protocols::mqtt::Version;

    use super::*;

    fn attrs<'a>(id: &'a str, subject: Option<&'a str>, ext: &'a [(&'a str, &'a str)]) -> EventAttributes<'a> {
        EventAttributes {
            id,
            source: "/devices/pump-2",
            ty: "com.example.pressure",
            subject,
            time: Some("2026-12-01T04:00:00Z"),
            datacontenttype: Some("application/json"),
            extensions: ext,
        }
    }

    #[test]
    fn binary_mode_is_read_back_by_the_mqtt_binding() {
        let mut slots = [UserProperty { name: "", value: "" }; 8];
        let a = attrs("p2-1", Some("line-3"), &[("site", "berlin")]);
        let props = binary_properties(&a, &mut slots).unwrap();
        let event = decode_mqtt(Version::V5, &props, br#"{"bar":3.1}"#).unwrap().expect("a CloudEvent");
        assert_eq!((event.id.as_str(), event.ty.as_str()), ("p2-1", "com.example.pressure"));
        assert_eq!(event.subject.as_deref(), Some("line-3"));
        assert_eq!(event.extensions.get("site"), Some(&"berlin".into()));
        let mut two = [UserProperty { name: "", value: "" }; 2];
        assert_eq!(binary_properties(&a, &mut two).unwrap_err(), EventError::TooManyAttributes);
    }

    #[test]
    fn structured_events_parse_and_a_small_buffer_is_an_error() {
        let mut buf = [0u8; 512];
        let a = attrs("p2-2", None, &[]);
        let n = write_structured(&a, EventData::Json(r#"{"bar":3.1}"#), &mut buf).unwrap();
        let event = CloudEvent::from_json_slice(&buf[..n]).unwrap();
        assert_eq!(event.id, "p2-2");
        let n = write_structured(&a, EventData::Binary(&[0, 1, 2, 250, 255]), &mut buf).unwrap();
        let event = CloudEvent::from_json_slice(&buf[..n]).unwrap();
        assert_eq!(event.data.map(|d| d.to_bytes()), Some(std::vec![0, 1, 2, 250, 255]));
        let mut tiny = [0u8; 40];
        assert_eq!(write_structured(&a, EventData::Text("x"), &mut tiny), Err(EventError::BufferTooSmall));
    }

    #[test]
    fn ids_count_per_device() {
        let mut ids = EventIds::new("pump-2", 41);
        let mut buf = [0u8; 24];
        assert_eq!(ids.next(&mut buf), Ok("pump-2-42"));
        assert_eq!(ids.next(&mut buf), Ok("pump-2-43"));
        assert_eq!(EventIds::new("a-very-long-device-name", 0).next(&mut [0u8; 8]), Err(EventError::BufferTooSmall));
    }

    proptest::proptest! {
        /// Any text in any attribute and in the data comes back exactly from the JSON a device writes.
        #[test]
        fn escaping_round_trips(subject in "\\PC*", text in "\\PC*", ext in "\\PC*") {
            let extensions = [("note", ext.as_str())];
            let a = EventAttributes { subject: Some(&subject), datacontenttype: Some("text/plain"), ..attrs("x", None, &extensions) };
            let mut buf = std::vec![0u8; 64 + 8 * (subject.len() + text.len() + ext.len()) + 256];
            let n = write_structured(&a, EventData::Text(&text), &mut buf).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            proptest::prop_assert_eq!(value["subject"].as_str(), Some(subject.as_str()));
            proptest::prop_assert_eq!(value["data"].as_str(), Some(text.as_str()));
            proptest::prop_assert_eq!(value["note"].as_str(), Some(ext.as_str()));
        }
    }
}
