//! Primitive readers and writers, and the two string types of AMQP.
//!
//! [`Reader`] walks a `Bytes` payload and hands out zero-copy slices for strings and tables.
//! Consecutive `bit` fields share one octet (spec 4.2.5.2); both [`Reader`] and [`Writer`]
//! keep the packing state so that method definitions can list bits as plain `bool`s.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use crate::error::DecodeError;

/// An AMQP `shortstr`: at most 255 bytes of UTF-8, stored as a zero-copy `Bytes` slice.
///
/// Invariant: the bytes are valid UTF-8 and at most 255 long (checked on decode and on
/// construction; longer input is cut at a character boundary).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShortStr(Bytes);

// Hashes as `str` does, so that maps keyed by `ShortStr` can be queried with `&str`
// (`Borrow<str>` requires equal hashes).
impl std::hash::Hash for ShortStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl ShortStr {
    /// The empty string.
    pub const EMPTY: ShortStr = ShortStr(Bytes::new());

    /// A `ShortStr` from a static string, without copying.
    ///
    /// # Panics
    /// If `s` is longer than 255 bytes (at compile time when used in a constant).
    pub const fn from_static(s: &'static str) -> ShortStr {
        assert!(s.len() <= 255, "a shortstr holds at most 255 bytes");
        ShortStr(Bytes::from_static(s.as_bytes()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // The invariant makes this infallible; the fallback keeps it panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn truncated(s: &str) -> &str {
        if s.len() <= 255 {
            return s;
        }
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
}

impl From<&str> for ShortStr {
    fn from(s: &str) -> Self {
        ShortStr(Bytes::copy_from_slice(ShortStr::truncated(s).as_bytes()))
    }
}

impl From<String> for ShortStr {
    fn from(s: String) -> Self {
        if s.len() <= 255 { ShortStr(Bytes::from(s)) } else { ShortStr::from(s.as_str()) }
    }
}

impl std::ops::Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// An AMQP `longstr`: arbitrary bytes with a 32-bit length, zero-copy.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct LongStr(pub Bytes);

impl LongStr {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8, if they are.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl From<&str> for LongStr {
    fn from(s: &str) -> Self {
        LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Vec<u8>> for LongStr {
    fn from(v: Vec<u8>) -> Self {
        LongStr(Bytes::from(v))
    }
}

impl fmt::Debug for LongStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "LongStr({:?})", &self.0[..]),
        }
    }
}

/// Reads primitives from a payload. Every read is bounds-checked and returns
/// [`DecodeError::Truncated`] naming the field when the payload ends early.
pub struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    bit_byte: u8,
    bit_pos: u8,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a Bytes) -> Reader<'a> {
        Reader { data, pos: 0, bit_byte: 0, bit_pos: 8 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.bit_pos = 8;
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated(what))?;
        let slice = self.data.get(self.pos..end).ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(slice)
    }

    fn take_bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.data.slice(start..self.pos))
    }

    /// An octet.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "octet")?[0])
    }

    /// A big-endian short.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2, "short")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian long.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "long")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian long long.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8, "longlong")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// One `bit`; consecutive bits are packed into one octet, least significant first.
    pub fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bit_pos >= 8 {
            self.bit_byte = self.u8()?;
            self.bit_pos = 0;
        }
        let value = self.bit_byte & (1 << self.bit_pos) != 0;
        self.bit_pos += 1;
        Ok(value)
    }

    /// A `shortstr`, which must be UTF-8.
    pub fn short_str(&mut self) -> Result<ShortStr, DecodeError> {
        let len = self.u8()? as usize;
        let bytes = self.take_bytes(len, "shortstr")?;
        std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8("shortstr"))?;
        Ok(ShortStr(bytes))
    }

    /// A `longstr`.
    pub fn long_str(&mut self) -> Result<LongStr, DecodeError> {
        let len = self.u32()? as usize;
        Ok(LongStr(self.take_bytes(len, "longstr")?))
    }

    /// `n` raw bytes, zero-copy.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.take_bytes(n, what)
    }
}

/// Writes primitives to a caller-owned buffer, packing consecutive bits into one octet.
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
    bit_index: Option<usize>,
    bit_pos: u8,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut BytesMut) -> Writer<'a> {
        Writer { buf, bit_index: None, bit_pos: 0 }
    }

    /// The buffer written to.
    pub fn buf(&mut self) -> &mut BytesMut {
        self.bit_index = None;
        self.buf
    }

    /// An octet.
    pub fn u8(&mut self, v: u8) {
        self.buf().put_u8(v);
    }

    /// A short.
    pub fn u16(&mut self, v: u16) {
        self.buf().put_u16(v);
    }

    /// A long.
    pub fn u32(&mut self, v: u32) {
        self.buf().put_u32(v);
    }

    /// A long long.
    pub fn u64(&mut self, v: u64) {
        self.buf().put_u64(v);
    }

    /// One bit, packed with the bits written just before it.
    pub fn bit(&mut self, v: bool) {
        let index = match self.bit_index {
            Some(i) if self.bit_pos < 8 => i,
            _ => {
                self.buf.put_u8(0);
                self.bit_pos = 0;
                let i = self.buf.len() - 1;
                self.bit_index = Some(i);
                i
            }
        };
        if v {
            self.buf[index] |= 1 << self.bit_pos;
        }
        self.bit_pos += 1;
    }

    /// A `shortstr`.
    pub fn short_str(&mut self, s: &ShortStr) {
        let buf = self.buf();
        buf.put_u8(s.len() as u8);
        buf.put_slice(s.as_bytes());
    }

    /// A `longstr`.
    pub fn long_str(&mut self, s: &[u8]) {
        let buf = self.buf();
        buf.put_u32(s.len() as u32);
        buf.put_slice(s);
    }
}
