//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate` values a
//! message carries from its producer, in whichever protocol it travels (an HTTP header, an MQTT 5 user property,
//! an AMQP application header, the CloudEvents distributed-tracing extension).
//!
//! Parsing borrows nothing and allocates nothing; formatting writes into a fixed array. A value that is not valid
//! is `None`: the W3C rule is that a receiver then starts a new trace rather than guess.
//!
//! ```
//! use meshgate_protocols::trace_context::TraceParent;
//!
//! let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! assert!(tp.sampled());
//! assert_eq!(tp.to_array(), *b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! ```

/// The length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// The longest `tracestate` kept (the W3C limit a vendor must propagate: 32 members of at most 256 characters,
/// of which 512 characters must be kept; a longer one is dropped rather than cut mid-member).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// The sampled bit of `trace-flags`.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the trace, the parent span in it, and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The parent span id (never all zero).
    pub parent_id: [u8; 8],
    /// `trace-flags` (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value: version `00` exactly as specified; a later version is read by its first four
    /// fields when it is at least as long and the next character is `-` (the specification's forward-compatible
    /// rule); `ff` and anything malformed are `None`. Leading and trailing spaces and tabs are allowed (HTTP's OWS).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(v[0], v[1])?;
        // Upper-case hex is invalid throughout; `hex_byte` takes only lower case.
        if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        if version == 0 && v.len() != TRACEPARENT_LEN {
            return None;
        }
        if version != 0 && v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(v[36 + 2 * i], v[37 + 2 * i])?;
        }
        let flags = hex_byte(v[53], v[54])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, flags })
    }

    /// Whether the producer sampled (recorded) its span.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The version-00 text, as bytes.
    pub fn to_array(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.parent_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }
}

impl core::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = self.to_array();
        // Only ASCII hex digits and dashes were written.
        f.write_str(core::str::from_utf8(&text).map_err(|_| core::fmt::Error)?)
    }
}

/// Whether `value` may be propagated as a `tracestate`: at most [`MAX_TRACESTATE_LEN`] characters, printable ASCII
/// (the list's grammar is the vendors' business; a receiver must not choke on it, nor forward control bytes).
pub fn is_valid_tracestate(value: &str) -> bool {
    value.len() <= MAX_TRACESTATE_LEN && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_examples_and_its_refusals() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled());
        assert!(!TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled());
        assert_eq!(TraceParent::parse(&format!(" {EXAMPLE}\t")), Some(tp));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version: its first four fields, when what follows starts a new field.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some());
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn tracestate_is_bounded_and_printable() {
        assert!(is_valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!is_valid_tracestate("a=b\r\nx: y"));
        assert!(!is_valid_tracestate(&"a".repeat(MAX_TRACESTATE_LEN + 1)));
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking_and_what_parses_prints_back(s in ".{0,80}") {
            if let Some(tp) = TraceParent::parse(&s) {
                let text = tp.to_string();
                prop_assert_eq!(TraceParent::parse(&text), Some(tp));
            }
        }

        #[test]
        fn every_valid_context_round_trips(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags: u8) {
            prop_assume!(trace != [0; 16] && parent != [0; 8]);
            let tp = TraceParent { trace_id: trace, parent_id: parent, flags };
            prop_assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        }
    }
}
