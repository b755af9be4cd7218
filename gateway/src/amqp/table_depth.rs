//! How deep the field tables of a frame nest, measured before the frame is parsed.
//!
//! `amq-protocol` parses field tables and arrays recursively, so a table nested a few thousand levels deep (a
//! few tens of KB, well under `frame_max`) overflows the parsing thread's stack and aborts the process. Every
//! frame is walked here first, iteratively, and refused when its nesting passes `limits.max_table_depth`.
//!
//! Tables sit at fixed places (AMQP 0-9-1 and the RabbitMQ extensions `amq-protocol` parses): the arguments of
//! exchange.declare/bind/unbind, queue.declare/bind/unbind and basic.consume, the client and server properties of
//! connection.start-ok and connection.start, and the `headers` of a content header frame. The value tags and
//! their sizes are those of `amq-protocol-types` (RabbitMQ's reading of the spec: `s` is a short int).

/// The frame type octet of a method frame.
const METHOD_FRAME: u8 = 1;
/// The frame type octet of a content header frame.
const HEADER_FRAME: u8 = 2;

/// Why a frame's tables are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthError {
    /// A table or array nests deeper than the limit.
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The bytes are not a well-formed table (the parser would refuse them too).
    Malformed,
}

/// One argument before a method's table: how to skip it.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// An octet (version numbers, a packed octet of bits).
    Octet,
    /// A short (the reserved ticket).
    Short,
    /// A short string: a length octet and its bytes.
    ShortStr,
}

use Field::{Octet, Short, ShortStr};

/// The arguments before the field table of each method that has one, by (class, method).
fn fields_before_table(class: u16, method: u16) -> Option<&'static [Field]> {
    Some(match (class, method) {
        (10, 10) => &[Octet, Octet],                                          // connection.start
        (10, 11) => &[],                                                      // connection.start-ok
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],                      // exchange.declare
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet], // exchange.bind, unbind
        (50, 10) => &[Short, ShortStr, Octet],                                // queue.declare
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],            // queue.bind
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],                   // queue.unbind
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],                      // basic.consume
        _ => return None,
    })
}

/// A cursor over bytes that never panics.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DepthError> {
        let end = self.pos.checked_add(n).ok_or(DepthError::Malformed)?;
        let taken = self.bytes.get(self.pos..end).ok_or(DepthError::Malformed)?;
        self.pos = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, DepthError> {
        self.take(1).map(|b| b.first().copied().unwrap_or(0))
    }

    fn u16(&mut self) -> Result<u16, DepthError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)]))
    }

    fn u32(&mut self) -> Result<usize, DepthError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| DepthError::Malformed)?;
        usize::try_from(u32::from_be_bytes(b)).map_err(|_| DepthError::Malformed)
    }

    fn skip_field(&mut self, field: Field) -> Result<(), DepthError> {
        match field {
            Octet => self.take(1).map(drop),
            Short => self.take(2).map(drop),
            ShortStr => {
                let n = usize::from(self.u8()?);
                self.take(n).map(drop)
            }
        }
    }
}

/// Checks the nesting of the tables in a frame (`frame` whole: type, channel, size, payload, frame-end). Frames
/// without tables pass untouched; what is malformed outside the tables is left for the parser to refuse.
pub fn check_frame(frame: &[u8], max_depth: usize) -> Result<(), DepthError> {
    let Some(payload) = frame.get(7..frame.len().saturating_sub(1)) else { return Ok(()) };
    let mut r = Reader { bytes: payload, pos: 0 };
    match frame.first().copied() {
        Some(METHOD_FRAME) => {
            let (Ok(class), Ok(method)) = (r.u16(), r.u16()) else { return Ok(()) };
            let Some(fields) = fields_before_table(class, method) else { return Ok(()) };
            for f in fields {
                if r.skip_field(*f).is_err() {
                    return Ok(());
                }
            }
            check_table(r.bytes.get(r.pos..).unwrap_or_default(), max_depth)
        }
        Some(HEADER_FRAME) => {
            // class, weight, body size, property flags; then content-type and content-encoding before headers.
            if r.take(12).is_err() {
                return Ok(());
            }
            let Ok(flags) = r.u16() else { return Ok(()) };
            for bit in [15, 14] {
                if flags & (1 << bit) != 0 && r.skip_field(ShortStr).is_err() {
                    return Ok(());
                }
            }
            if flags & (1 << 13) == 0 {
                return Ok(());
            }
            check_table(r.bytes.get(r.pos..).unwrap_or_default(), max_depth)
        }
        _ => Ok(()),
    }
}

/// Checks the nesting of the field table at the start of `input` (its length first). Iterative: a table's
/// depth never becomes stack depth.
pub fn check_table(input: &[u8], max_depth: usize) -> Result<(), DepthError> {
    let mut r = Reader { bytes: input, pos: 0 };
    let len = r.u32()?;
    let end = r.pos.checked_add(len).filter(|&e| e <= input.len()).ok_or(DepthError::Malformed)?;
    // Open tables and arrays: where each ends, and whether it is a table (entries have names).
    let mut open: Vec<(usize, bool)> = vec![(end, true)];
    if max_depth == 0 {
        return Err(DepthError::TooDeep { max: max_depth });
    }
    while let Some(&(end, is_table)) = open.last() {
        if r.pos >= end {
            if r.pos > end {
                return Err(DepthError::Malformed);
            }
            open.pop();
            continue;
        }
        if is_table {
            r.skip_field(ShortStr)?;
        }
        let fixed = match r.u8()? {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => {
                let n = r.u32()?;
                r.take(n)?;
                continue;
            }
            tag @ (b'F' | b'A') => {
                let n = r.u32()?;
                let inner_end = r.pos.checked_add(n).filter(|&e| e <= end).ok_or(DepthError::Malformed)?;
                if open.len() >= max_depth {
                    return Err(DepthError::TooDeep { max: max_depth });
                }
                open.push((inner_end, tag == b'F'));
                continue;
            }
            _ => return Err(DepthError::Malformed),
        };
        r.take(fixed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, connection, queue};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
    use proptest::prelude::*;

    use super::*;

    /// A table nesting `depth` levels (the outer table is level 1), tables and arrays alternating.
    fn nested(depth: usize) -> FieldTable {
        let mut value = AMQPValue::LongString(LongString::from("leaf"));
        for level in 1..depth {
            value = if level % 2 == 0 {
                AMQPValue::FieldArray(FieldArray::from(vec![value]))
            } else {
                let mut t = FieldTable::default();
                t.insert(ShortString::from("k"), value);
                AMQPValue::FieldTable(t)
            };
        }
        let mut outer = FieldTable::default();
        outer.insert(ShortString::from("x"), value);
        outer
    }

    fn encode(frame: &AMQPFrame) -> Vec<u8> {
        let mut out = Vec::new();
        crate::amqp::frames::encode(frame, &mut out);
        out
    }

    fn start_ok(props: FieldTable) -> AMQPFrame {
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: ShortString::from("PLAIN"),
                response: LongString::from("\0u\0p"),
                locale: ShortString::from("en_US"),
            })),
        )
    }

    #[test]
    fn tables_as_deep_as_the_limit_pass_and_deeper_ones_are_refused() {
        assert_eq!(check_frame(&encode(&start_ok(nested(8))), 8), Ok(()));
        assert_eq!(check_frame(&encode(&start_ok(nested(9))), 8), Err(DepthError::TooDeep { max: 8 }));
        let declare = AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: ShortString::from("q"),
                arguments: nested(40),
                ..Default::default()
            })),
        );
        assert_eq!(check_frame(&encode(&declare), 32), Err(DepthError::TooDeep { max: 32 }));
        assert_eq!(check_frame(&encode(&declare), 40), Ok(()));
    }

    #[test]
    fn headers_of_a_content_header_are_checked() {
        let props = amq_protocol::protocol::BasicProperties::default()
            .with_content_type(ShortString::from("text/plain"))
            .with_headers(nested(50));
        let content = amq_protocol::frame::AMQPContentHeader { class_id: 60, body_size: 3, properties: props };
        let header = AMQPFrame::Header(1, content);
        assert_eq!(check_frame(&encode(&header), 32), Err(DepthError::TooDeep { max: 32 }));
        assert_eq!(check_frame(&encode(&header), 64), Ok(()));
    }

    #[test]
    fn a_table_nested_100_000_deep_is_refused_without_recursion() {
        // Built by hand: the parser (and the encoder) would recurse.
        let depth = 100_000;
        let mut table = Vec::new();
        for _ in 0..depth {
            table.extend_from_slice(&[1, b'k', b'F']);
        }
        table.extend_from_slice(&[1, b'k', b'V']);
        // Lengths from the inside out: each level's table is 4 + its entry.
        let mut bytes = Vec::with_capacity(table.len() + 4 * (depth + 1));
        let mut sizes = Vec::with_capacity(depth + 1);
        let mut inner = 3;
        for _ in 0..=depth {
            sizes.push(inner);
            inner += 3 + 4;
        }
        for (i, size) in sizes.iter().rev().enumerate() {
            bytes.extend_from_slice(&u32::try_from(*size).unwrap().to_be_bytes());
            bytes.extend_from_slice(&table[i * 3..i * 3 + 3]);
        }
        assert_eq!(check_table(&bytes, 32), Err(DepthError::TooDeep { max: 32 }));
    }

    proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_table(&bytes, 4);
            let mut frame = vec![1, 0, 0];
            frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
            frame.extend_from_slice(&bytes);
            frame.push(0xCE);
            let _ = check_frame(&frame, 4);
        }

        #[test]
        fn the_depth_found_is_the_depth_built(depth in 1usize..60) {
            let bytes = encode(&start_ok(nested(depth)));
            prop_assert_eq!(check_frame(&bytes, depth), Ok(()));
            prop_assert!(check_frame(&bytes, depth - 1).is_err());
        }
    }
}
