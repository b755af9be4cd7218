//! AMQP 0-9-1 frames on the server side, over the `amq-protocol` codec (the one lapin is built on): the protocol
//! header, and frames checked against the negotiated `frame_max` before a byte of their payload is parsed.
//!
//! ```text
//! +------+---------+---------+---------------+-----------+
//! | type | channel | size    | payload       | frame-end |
//! | u8   | u16 BE  | u32 BE  | `size` bytes  | 0xCE      |
//! +------+---------+---------+---------------+-----------+
//! ```

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};

/// What an AMQP 0-9-1 client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Bytes of a frame besides its payload: type, channel, size, frame-end.
pub const FRAME_OVERHEAD: usize = 8;

/// The frame-end octet.
pub const FRAME_END: u8 = 0xCE;

/// Why bytes are not a frame the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first eight bytes are not `AMQP\0\0\9\1`: the server answers with its own header and closes.
    BadProtocolHeader,
    /// A frame larger than the negotiated maximum (connection error 501, frame-error).
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The frame does not parse, or does not end with 0xCE (501, frame-error).
    Malformed(String),
    /// A field table or array in it nests deeper than the limit (501, frame-error): refused before parsing, which
    /// would recurse once per level.
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// Reads the protocol header at the start of `input`: `Ok(Some(8))` once it is there and right.
pub fn decode_protocol_header(input: &[u8]) -> Result<Option<usize>, FrameError> {
    let seen = input.len().min(PROTOCOL_HEADER.len());
    if input.get(..seen) != PROTOCOL_HEADER.get(..seen) {
        return Err(FrameError::BadProtocolHeader);
    }
    Ok((seen == PROTOCOL_HEADER.len()).then_some(PROTOCOL_HEADER.len()))
}

/// Decodes the frame at the start of `input`; `Ok(None)` until it is complete. `frame_max` (0: no limit) is
/// checked from the size field, before the payload is read or buffered further; the nesting of its field tables
/// is checked against `max_table_depth` before it is parsed.
pub fn decode(
    input: &[u8],
    frame_max: usize,
    max_table_depth: usize,
) -> Result<Option<(AMQPFrame, usize)>, FrameError> {
    let Some(size) = input.get(3..7).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes) else {
        return Ok(None);
    };
    let total = usize::try_from(size).unwrap_or(usize::MAX).saturating_add(FRAME_OVERHEAD);
    if frame_max > 0 && total > frame_max {
        return Err(FrameError::TooLarge { size: total, max: frame_max });
    }
    let Some(frame) = input.get(..total) else { return Ok(None) };
    if frame.last() != Some(&FRAME_END) {
        return Err(FrameError::Malformed("frame does not end with 0xCE".into()));
    }
    if let Err(e) = super::table_depth::check_frame(frame, max_table_depth) {
        return Err(match e {
            super::table_depth::DepthError::TooDeep { max } => FrameError::TooDeep { max },
            super::table_depth::DepthError::Malformed => FrameError::Malformed("malformed field table".into()),
        });
    }
    match parse_frame(frame) {
        Ok(([], parsed)) => Ok(Some((parsed, total))),
        Ok(_) => Err(FrameError::Malformed("trailing bytes in frame".into())),
        Err(e) => Err(FrameError::Malformed(format!("{e:?}"))),
    }
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &AMQPFrame, out: &mut Vec<u8>) {
    let buf = std::mem::take(out);
    match gen_frame(frame)(WriteContext::from(buf)) {
        Ok(ctx) => *out = ctx.write,
        // Only the server's own frames are encoded; a failure is a bug, not bad input.
        Err(e) => tracing::error!(error = ?e, "could not encode an AMQP frame"),
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::{AMQPClass, channel};

    use super::*;

    #[test]
    fn frames_round_trip_and_sizes_are_checked_before_parsing() {
        let frame = AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})));
        let mut wire = Vec::new();
        encode(&frame, &mut wire);
        assert_eq!(decode(&wire, 4096, 32), Ok(Some((frame, wire.len()))));
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut], 4096, 32), Ok(None), "prefix {cut}");
        }
        let mut huge = vec![1, 0, 1];
        huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(
            matches!(decode(&huge, 131_072, 32), Err(FrameError::TooLarge { .. })),
            "refused from the header alone"
        );
        let mut bad_end = wire.clone();
        if let Some(last) = bad_end.last_mut() {
            *last = 0;
        }
        assert!(matches!(decode(&bad_end, 4096, 32), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn the_protocol_header_is_checked_byte_by_byte() {
        assert_eq!(decode_protocol_header(b"AMQ"), Ok(None));
        assert_eq!(decode_protocol_header(PROTOCOL_HEADER), Ok(Some(8)));
        assert_eq!(decode_protocol_header(b"AMQP\x00\x00\x08\x00"), Err(FrameError::BadProtocolHeader));
        assert_eq!(decode_protocol_header(b"GET / HTTP/1.1"), Err(FrameError::BadProtocolHeader));
    }
}
