//! Checked primitives: a cursor that reads MQTT data types out of a borrowed slice and one that writes them into
//! a caller's buffer. Neither can panic; every read past the end is [`Malformed::Truncated`].

use super::{EncodeError, Malformed};

/// A bounds-checked cursor over one packet's bytes (public only so sealed traits can name it).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, tail) = self.buf.split_first().ok_or(Malformed::Truncated)?;
        self.buf = tail;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?.try_into().map_err(|_| Malformed::Truncated)?;
        Ok(u16::from_be_bytes(b))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?.try_into().map_err(|_| Malformed::Truncated)?;
        Ok(u32::from_be_bytes(b))
    }

    /// A variable byte integer inside a packet (property lengths, subscription identifiers).
    pub(crate) fn varint(&mut self) -> Result<u32, Malformed> {
        match decode_varint(self.buf) {
            VarInt::Value(v, n) => {
                self.buf = self.buf.get(n..).unwrap_or_default();
                Ok(v)
            }
            VarInt::Incomplete => Err(Malformed::Truncated),
            VarInt::Invalid => Err(Malformed::VariableByteInteger),
        }
    }

    /// Binary data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string as MQTT restricts it: well-formed, no surrogates, no U+0000.
    pub(crate) fn utf8(&mut self) -> Result<&'a str, Malformed> {
        let bytes = self.binary()?;
        check_utf8(bytes)
    }
}

/// Validates an MQTT UTF-8 string. `core::str::from_utf8` already rejects surrogates and overlong forms.
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, Malformed> {
    let s = core::str::from_utf8(bytes).map_err(|_| Malformed::InvalidUtf8)?;
    #[allow(clippy::manual_contains, reason = "a byte scan: `contains` pulls memchr into a device's flash")]
    if bytes.iter().any(|&b| b == 0) {
        return Err(Malformed::NullCharacter);
    }
    Ok(s)
}

/// The outcome of reading a variable byte integer.
pub(crate) enum VarInt {
    /// The value and the number of bytes it took.
    Value(u32, usize),
    /// The input ends inside the integer.
    Incomplete,
    /// More than four bytes, or not the minimal encoding.
    Invalid,
}

pub(crate) fn decode_varint(buf: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return VarInt::Incomplete;
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero byte after the first means a longer encoding than needed.
            if i > 0 && byte == 0 {
                return VarInt::Invalid;
            }
            return VarInt::Value(value, i + 1);
        }
    }
    VarInt::Invalid
}

/// How many bytes a variable byte integer takes.
pub(crate) const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Length of a two-byte-prefixed string or binary field.
pub(crate) const fn prefixed_len(len: usize) -> usize {
    2 + len
}

/// A bounds-checked cursor writing into a caller's buffer.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos.checked_add(data.len()).ok_or(EncodeError::TooLarge)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(EncodeError::BufferTooSmall { needed: end })?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn varint(&mut self, v: usize) -> Result<(), EncodeError> {
        if v > super::MAX_REMAINING_LENGTH {
            return Err(EncodeError::TooLarge);
        }
        let mut x = v;
        loop {
            // The mask keeps the value below 128, so the cast is lossless.
            let mut byte = (x & 0x7f) as u8;
            x >>= 7;
            if x > 0 {
                byte |= 0x80;
            }
            self.u8(byte)?;
            if x == 0 {
                return Ok(());
            }
        }
    }

    pub(crate) fn binary(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong)?;
        self.u16(len)?;
        self.bytes(data)
    }

    pub(crate) fn utf8(&mut self, s: &str) -> Result<(), EncodeError> {
        self.binary(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_rejects_non_minimal_and_five_byte_encodings() {
        assert!(matches!(decode_varint(&[0x80, 0x00]), VarInt::Invalid));
        assert!(matches!(decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]), VarInt::Invalid));
        assert!(matches!(decode_varint(&[0x80]), VarInt::Incomplete));
        assert!(matches!(decode_varint(&[0xff, 0xff, 0xff, 0x7f]), VarInt::Value(268_435_455, 4)));
        assert!(matches!(decode_varint(&[0xc1, 0x02]), VarInt::Value(321, 2)));
    }

    #[test]
    fn utf8_rejects_null_and_surrogates() {
        assert_eq!(check_utf8(b"a\0b"), Err(Malformed::NullCharacter));
        // U+D800 encoded as if it were a scalar value.
        assert_eq!(check_utf8(&[0xed, 0xa0, 0x80]), Err(Malformed::InvalidUtf8));
        assert_eq!(check_utf8("température".as_bytes()), Ok("température"));
    }

    #[test]
    fn writer_reports_the_size_it_needed() {
        let mut buf = [0u8; 2];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.u32(1), Err(EncodeError::BufferTooSmall { needed: 4 }));
    }
}
