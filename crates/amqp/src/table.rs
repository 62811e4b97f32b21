//! Field tables and field values, with the type letters RabbitMQ and its clients use
//! (which differ from the 0-9-1 spec's errata for `s`, `l` and `x`).
//!
//! A table keeps its entries in wire order, so a message's headers are delivered exactly as
//! they were published.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::wire::{LongStr, Reader, ShortStr, Writer};

/// A decimal value: `value × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One value in a field table or array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ: signed 16-bit)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l` (RabbitMQ: signed 64-bit)
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`
    Decimal(Decimal),
    /// `S`
    LongStr(LongStr),
    /// `x`
    Bytes(Bytes),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the Unix epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
}

impl FieldValue {
    /// The value as a string, for `S` values holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(s) => s.to_str(),
            _ => None,
        }
    }

    /// The value as a signed integer, for any integer type (and a string holding one,
    /// as some clients send numeric arguments as strings — RabbitMQ refuses those, and so
    /// do callers that check [`FieldValue::as_int`] only).
    pub fn as_int(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as a boolean, for `t` values.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as a float, for `f`, `d`, `D` (decimal) and integer values.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::F32(v) => Some(v.into()),
            FieldValue::F64(v) => Some(v),
            FieldValue::Decimal(d) => Some(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    /// The value as a table, for `F` values.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The value as an array, for `A` values.
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A string value.
    pub fn string(s: &str) -> FieldValue {
        FieldValue::LongStr(LongStr::from(s))
    }

    fn decode(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, DecodeError> {
        let letter = r.u8()?;
        Ok(match letter {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.u8()? as i8),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.u16()? as i16),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.u32()? as i32),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' => FieldValue::I64(r.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
            b'D' => FieldValue::Decimal(Decimal { scale: r.u8()?, value: r.u32()? }),
            b'S' => FieldValue::LongStr(r.long_str()?),
            b'x' => FieldValue::Bytes(r.long_str()?.0),
            b'A' => {
                if depth > MAX_NESTING {
                    return Err(DecodeError::TooDeep(MAX_NESTING));
                }
                let len = r.u32()? as usize;
                let data = r.bytes(len, "array")?;
                let mut inner = Reader::new(&data);
                let mut values = Vec::new();
                while inner.remaining() > 0 {
                    values.push(FieldValue::decode(&mut inner, depth + 1)?);
                }
                FieldValue::Array(values)
            }
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => FieldValue::Table(FieldTable::decode_nested(r, depth)?),
            b'V' => FieldValue::Void,
            other => return Err(DecodeError::UnknownFieldType(other as char)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        match self {
            FieldValue::Bool(v) => {
                buf.put_u8(b't');
                buf.put_u8(*v as u8);
            }
            FieldValue::I8(v) => {
                buf.put_u8(b'b');
                buf.put_i8(*v);
            }
            FieldValue::U8(v) => {
                buf.put_u8(b'B');
                buf.put_u8(*v);
            }
            FieldValue::I16(v) => {
                buf.put_u8(b's');
                buf.put_i16(*v);
            }
            FieldValue::U16(v) => {
                buf.put_u8(b'u');
                buf.put_u16(*v);
            }
            FieldValue::I32(v) => {
                buf.put_u8(b'I');
                buf.put_i32(*v);
            }
            FieldValue::U32(v) => {
                buf.put_u8(b'i');
                buf.put_u32(*v);
            }
            FieldValue::I64(v) => {
                buf.put_u8(b'l');
                buf.put_i64(*v);
            }
            FieldValue::F32(v) => {
                buf.put_u8(b'f');
                buf.put_f32(*v);
            }
            FieldValue::F64(v) => {
                buf.put_u8(b'd');
                buf.put_f64(*v);
            }
            FieldValue::Decimal(d) => {
                buf.put_u8(b'D');
                buf.put_u8(d.scale);
                buf.put_u32(d.value);
            }
            FieldValue::LongStr(s) => {
                buf.put_u8(b'S');
                buf.put_u32(s.0.len() as u32);
                buf.put_slice(&s.0);
            }
            FieldValue::Bytes(b) => {
                buf.put_u8(b'x');
                buf.put_u32(b.len() as u32);
                buf.put_slice(b);
            }
            FieldValue::Array(values) => {
                buf.put_u8(b'A');
                with_length_prefix(buf, |buf| {
                    for v in values {
                        v.encode(buf);
                    }
                });
            }
            FieldValue::Timestamp(v) => {
                buf.put_u8(b'T');
                buf.put_u64(*v);
            }
            FieldValue::Table(t) => {
                buf.put_u8(b'F');
                t.encode_into(buf);
            }
            FieldValue::Void => buf.put_u8(b'V'),
        }
    }
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::string(s)
    }
}

impl From<bool> for FieldValue {
    fn from(b: bool) -> Self {
        FieldValue::Bool(b)
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}

impl From<FieldTable> for FieldValue {
    fn from(t: FieldTable) -> Self {
        FieldValue::Table(t)
    }
}

/// How deeply tables and arrays may nest in a decoded value. Real clients nest a few
/// levels (RabbitMQ's `x-death` is an array of tables); the limit only stops abuse.
pub const MAX_NESTING: usize = 128;

/// Writes a u32 length placeholder, runs `body`, then patches in the length it wrote.
fn with_length_prefix(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A field table: named values in wire order. Lookups are linear, which beats hashing for
/// the handful of entries real tables hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> FieldTable {
        FieldTable(Vec::new())
    }

    /// The value under `key`, if any (the first, should a peer repeat a key).
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, replacing an existing entry in place.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let index = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(index).1)
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Decodes a table (length-prefixed) from `r`.
    pub fn decode(r: &mut Reader<'_>) -> Result<FieldTable, DecodeError> {
        FieldTable::decode_nested(r, 0)
    }

    /// Decodes a table `depth` levels inside others. Nesting is bounded so that a peer
    /// cannot exhaust the stack with a small, deeply nested frame.
    fn decode_nested(r: &mut Reader<'_>, depth: usize) -> Result<FieldTable, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep(MAX_NESTING));
        }
        let len = r.u32()? as usize;
        if len == 0 {
            return Ok(FieldTable::new());
        }
        let data = r.bytes(len, "table")?;
        let mut inner = Reader::new(&data);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.short_str()?;
            let value = FieldValue::decode(&mut inner, depth + 1)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// Appends the table (length-prefixed) to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        with_length_prefix(buf, |buf| {
            for (k, v) in &self.0 {
                buf.put_u8(k.len() as u8);
                buf.put_slice(k.as_bytes());
                v.encode(buf);
            }
        });
    }

    /// Appends the table through a method writer.
    pub fn encode(&self, w: &mut Writer<'_>) {
        self.encode_into(w.buf());
    }
}

impl FromIterator<(ShortStr, FieldValue)> for FieldTable {
    fn from_iter<T: IntoIterator<Item = (ShortStr, FieldValue)>>(iter: T) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}
