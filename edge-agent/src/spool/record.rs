//! One spool record: the framing on disk and the archived event inside it.
//!
//! ```text
//! +----------+----------+-----------+------------------------------+
//! | len: u32 | crc: u32 | id: u64   | rkyv archive of StoredRecord |
//! +----------+----------+-----------+------------------------------+
//!   LE         LE         LE          `len` bytes
//! ```
//! `crc` is CRC32C over the id bytes and the archive. Records follow each other with no padding; readers copy the
//! archive into an aligned buffer before validating it with bytecheck.
//!
//! DO NOT change the fields of `StoredRecord` or the types inside it without a new segment format: the archived
//! layout is the on-disk format, and recovery would quarantine every record written before the change.

use meshgate_protocols::cloudevents::{CloudEvent, Data, ExtensionValue};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::pipeline::Route;

/// Bytes before the archive: length, CRC32C, record id.
pub const HEADER_LEN: usize = 16;

/// The largest archive a record may hold; a length above it is corruption, not a record.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;

/// An event with its route, as archived in the spool.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StoredRecord {
    /// `None`: every uplink; otherwise the uplinks by name.
    pub route: Option<Vec<String>>,
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub ty: String,
    /// `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// `dataschema`.
    pub dataschema: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `time`.
    pub time: Option<String>,
    /// Extension attributes.
    pub extensions: Vec<(String, StoredExtension)>,
    /// The data.
    pub data: StoredData,
    /// QoS 0 telemetry on a `drop-oldest` route: a full spool may discard it to make room.
    pub droppable: bool,
    /// When the gateway accepted it, in milliseconds since the Unix epoch (for backlog age).
    pub accepted_at_ms: u64,
}

/// An extension attribute's value.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StoredExtension {
    /// A string.
    String(String),
    /// A boolean.
    Boolean(bool),
    /// An integer.
    Integer(i64),
}

impl From<ExtensionValue> for StoredExtension {
    fn from(v: ExtensionValue) -> Self {
        match v {
            ExtensionValue::String(s) => StoredExtension::String(s),
            ExtensionValue::Boolean(b) => StoredExtension::Boolean(b),
            ExtensionValue::Integer(i) => StoredExtension::Integer(i),
        }
    }
}

impl From<StoredExtension> for ExtensionValue {
    fn from(v: StoredExtension) -> Self {
        match v {
            StoredExtension::String(s) => ExtensionValue::String(s),
            StoredExtension::Boolean(b) => ExtensionValue::Boolean(b),
            StoredExtension::Integer(i) => ExtensionValue::Integer(i),
        }
    }
}

/// An event's data.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StoredData {
    /// No data.
    None,
    /// JSON, serialized.
    Json(Vec<u8>),
    /// Text.
    Text(String),
    /// Bytes.
    Binary(Vec<u8>),
}

impl StoredRecord {
    /// About how many bytes it holds in memory (its data and attributes), for byte bounds on queues.
    pub fn size_hint(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let data = match &self.data {
            StoredData::None => 0,
            StoredData::Json(b) | StoredData::Binary(b) => b.len(),
            StoredData::Text(t) => t.len(),
        };
        let extensions: usize = self
            .extensions
            .iter()
            .map(|(k, v)| k.len() + if let StoredExtension::String(s) = v { s.len() } else { 8 })
            .sum();
        self.id.len()
            + self.source.len()
            + self.ty.len()
            + opt(&self.datacontenttype)
            + opt(&self.dataschema)
            + opt(&self.subject)
            + opt(&self.time)
            + extensions
            + data
            + 64
    }

    /// The record for an event and its route (the event's fields move in; nothing is copied).
    pub fn new(event: CloudEvent, route: &Route) -> StoredRecord {
        StoredRecord {
            route: match route {
                Route::All => None,
                Route::Uplinks(names) => Some(names.iter().map(|n| n.to_string()).collect()),
            },
            id: event.id,
            source: event.source,
            ty: event.ty,
            datacontenttype: event.datacontenttype,
            dataschema: event.dataschema,
            subject: event.subject,
            time: event.time,
            extensions: event.extensions.into_iter().map(|(k, v)| (k, v.into())).collect(),
            data: match event.data {
                None => StoredData::None,
                Some(Data::Json(v)) => StoredData::Json(serde_json::to_vec(&v).unwrap_or_default()),
                Some(Data::Text(s)) => StoredData::Text(s),
                Some(Data::Binary(b)) => StoredData::Binary(b),
            },
            droppable: false,
            accepted_at_ms: now_ms(),
        }
    }

    /// Whether the record is only for consumers inside the process (names starting with `@`, which no uplink may
    /// take): the writer hands such records to its commit hook (see [`crate::spool`]).
    pub fn is_local(&self) -> bool {
        self.route.as_ref().is_some_and(|r| local_route(r.iter().map(String::as_str)))
    }

    /// Whether the record goes to the uplink `name`.
    pub fn routed_to(&self, name: &str) -> bool {
        self.route.as_ref().is_none_or(|r| r.iter().any(|n| n == name))
    }

    /// The event again (the record's fields move out).
    pub fn into_event(self) -> CloudEvent {
        CloudEvent {
            id: self.id,
            source: self.source,
            ty: self.ty,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            time: self.time,
            extensions: self.extensions.into_iter().map(|(k, v)| (k, v.into())).collect(),
            data: match self.data {
                StoredData::None => None,
                StoredData::Json(bytes) => Some(match serde_json::from_slice(&bytes) {
                    Ok(v) => Data::Json(v),
                    Err(_) => Data::Binary(bytes),
                }),
                StoredData::Text(s) => Some(Data::Text(s)),
                StoredData::Binary(b) => Some(Data::Binary(b)),
            },
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Appends the framed record `id` to `out`.
pub fn encode(
    id: u64,
    record: &StoredRecord,
    out: &mut Vec<u8>,
    scratch: &mut AlignedVec,
) -> Result<(), rancor::Error> {
    // The archive is built in `scratch`, kept by the caller: no allocation per record once it is warm.
    let mut archive = std::mem::take(scratch);
    archive.clear();
    let archive = rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, archive)?;
    let len = u32::try_from(archive.len()).map_err(<rancor::Error as rancor::Source>::new)?;
    let id_bytes = id.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&id_bytes), &archive);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&id_bytes);
    out.extend_from_slice(&archive);
    *scratch = archive;
    Ok(())
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub enum Frame {
    /// A valid record and its size on disk.
    Record(u64, Box<StoredRecord>, usize),
    /// A valid record left undecoded (see [`decode_unless_local`]), its id and size on disk.
    Skipped(u64, usize),
    /// The bytes end cleanly here.
    End,
    /// The bytes end inside a record (a torn write).
    Torn,
    /// A record whose length, checksum or archive is invalid.
    Corrupt(&'static str),
}

/// Whether a route names only consumers inside the process (at least one, each starting with `@`).
fn local_route<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for name in names {
        if !name.starts_with('@') {
            return false;
        }
        any = true;
    }
    any
}

/// Reads the frame at the start of `bytes`, validating length, CRC32C and the archive.
pub fn decode(bytes: &[u8], scratch: &mut AlignedVec) -> Frame {
    decode_unless_local(bytes, scratch, false)
}

/// [`decode`], except that with `skip_local` a valid record only for in-process consumers
/// ([`StoredRecord::is_local`]) is not deserialized: [`Frame::Skipped`] (an uplink's reader has no use for it).
pub fn decode_unless_local(bytes: &[u8], scratch: &mut AlignedVec, skip_local: bool) -> Frame {
    if bytes.is_empty() {
        return Frame::End;
    }
    let Some(header) = bytes.get(..HEADER_LEN) else { return Frame::Torn };
    let field = |r: std::ops::Range<usize>| header.get(r).unwrap_or_default();
    let len = u32::from_le_bytes(field(0..4).try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
    let id_bytes = field(8..16);
    if len == 0 || len > MAX_RECORD_LEN {
        return Frame::Corrupt("record length out of range");
    }
    let Some(archive) = bytes.get(HEADER_LEN..HEADER_LEN + len) else { return Frame::Torn };
    if crc32c::crc32c_append(crc32c::crc32c(id_bytes), archive) != crc {
        return Frame::Corrupt("checksum mismatch");
    }
    scratch.clear();
    scratch.extend_from_slice(archive);
    let Ok(archived) = rkyv::access::<ArchivedStoredRecord, rancor::Error>(scratch) else {
        return Frame::Corrupt("archive fails validation");
    };
    let id = u64::from_le_bytes(id_bytes.try_into().unwrap_or_default());
    if skip_local && archived.route.as_ref().is_some_and(|r| local_route(r.iter().map(|n| n.as_str()))) {
        return Frame::Skipped(id, HEADER_LEN + len);
    }
    let Ok(record) = rkyv::deserialize::<StoredRecord, rancor::Error>(archived) else {
        return Frame::Corrupt("archive fails to deserialize");
    };
    Frame::Record(id, Box::new(record), HEADER_LEN + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StoredRecord {
        let mut e = CloudEvent { id: "e1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        e.extensions.insert("deviceid".into(), "d".into());
        e.data = Some(Data::Json(serde_json::json!({"t": 1})));
        StoredRecord::new(e, &Route::All)
    }

    #[test]
    fn records_round_trip_and_every_damage_is_detected() {
        // One record: each carries its own acceptance time.
        let original = record();
        let mut buf = Vec::new();
        encode(7, &original, &mut buf, &mut AlignedVec::new()).unwrap();
        let mut scratch = AlignedVec::new();
        match decode(&buf, &mut scratch) {
            Frame::Record(7, r, n) => {
                assert_eq!(*r, original);
                assert_eq!(n, buf.len());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&buf[..buf.len() - 1], &mut scratch), Frame::Torn));
        assert!(matches!(decode(&buf[..10], &mut scratch), Frame::Torn));
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(decode(&flipped, &mut scratch), Frame::Corrupt("checksum mismatch")));
        assert!(matches!(decode(&[0u8; 16], &mut scratch), Frame::Corrupt(_)));
        assert_eq!(record().into_event().extensions.get("deviceid"), Some(&"d".into()));
    }
}
