//! Who the client is to the runtime, and the event as the runtime wants it.

use alloc::format;
use alloc::string::String;

use crate::cloudevents::{CloudEvent, ExtensionValue};

/// The `protocoltype` meshgate publishes with: the runtime's CloudEvents adaptor.
pub const PROTOCOL_TYPE: &str = "cloudevents";

/// The `protocolversion`: the CloudEvents specification version.
pub const PROTOCOL_VERSION: &str = "1.0";

/// The identity a client presents to an EventMesh runtime: gRPC attributes, HTTP headers, the TCP `UserAgent`.
///
/// The runtime checks that `env`, `idc`, `ip`, `pid`, `sys`, `username`, `password` and `language` are not blank
/// (gRPC status 6, HTTP `retCode` 6 otherwise), that `pid` is numeric, and, on TCP, that the producer group
/// (`group`) is not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Environment, e.g. `PRD`.
    pub env: String,
    /// Data-centre id, e.g. `DEFAULT`.
    pub idc: String,
    /// Subsystem id, e.g. `0000`.
    pub sys: String,
    /// The client's address as it reports it (the runtime uses it as the client id).
    pub ip: String,
    /// The client's process id, numeric.
    pub pid: String,
    /// User name.
    pub username: String,
    /// Password (`passwd` on HTTP and gRPC, `password` on TCP).
    pub password: String,
    /// A token for the runtime's `auth-token` plugin, if any.
    pub token: Option<String>,
    /// The client's language, e.g. `RUST`.
    pub language: String,
    /// The producer group.
    pub producer_group: String,
}

/// A 30-digit sequence number for an event, derived from its `source` and `id` so that every retry of the same
/// event carries the same value (the Java SDK sends random 30-digit `bizseqno`/`uniqueid`; stable ones let the
/// mesh deduplicate at-least-once deliveries).
pub fn sequence_number(event: &CloudEvent) -> String {
    // Two FNV-1a hashes with different offsets, 15 decimal digits each.
    let fnv = |offset: u64| {
        let mut h = offset;
        for b in event.source.bytes().chain([0]).chain(event.id.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h % 1_000_000_000_000_000
    };
    format!("{:015}{:015}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4))
}

/// The event as meshgate hands it to a runtime: `subject` set to the topic (the runtime routes by it), and the
/// extensions the runtime needs: `bizseqno` and `uniqueid` (kept if the event has them, else
/// [`sequence_number`]) and `ttl` in milliseconds (kept if present).
pub fn mesh_event(event: &CloudEvent, topic: &str, ttl_ms: u64) -> CloudEvent {
    let mut out = event.clone();
    out.subject = Some(topic.into());
    let seq = sequence_number(event);
    for name in ["bizseqno", "uniqueid"] {
        out.extensions.entry(name.into()).or_insert_with(|| ExtensionValue::String(seq.clone()));
    }
    out.extensions.entry("ttl".into()).or_insert_with(|| ExtensionValue::String(format!("{ttl_ms}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_thirty_stable_digits_per_event() {
        let a = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        let b = CloudEvent { id: "2".into(), ..a.clone() };
        let sa = sequence_number(&a);
        assert_eq!(sa.len(), 30);
        assert!(sa.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(sa, sequence_number(&a.clone()));
        assert_ne!(sa, sequence_number(&b));
    }

    #[test]
    fn the_mesh_event_keeps_the_devices_own_sequence_numbers() {
        let mut e = CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() };
        e.extensions.insert("uniqueid".into(), "u-1".into());
        let m = mesh_event(&e, "devices/7", 4000);
        assert_eq!(m.subject.as_deref(), Some("devices/7"));
        assert_eq!(m.extensions["uniqueid"], "u-1".into());
        assert_eq!(m.extensions["bizseqno"], ExtensionValue::String(sequence_number(&e)));
        assert_eq!(m.extensions["ttl"], "4000".into());
        assert_eq!(m.validate(), Ok(()));
    }
}
