//! Basic content-header properties.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::table::FieldTable;
use crate::wire::{Reader, ShortStr, Writer};

/// The properties of a `basic` content header. Every field is optional on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const KIND: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
const CONTINUATION: u16 = 1;

impl BasicProperties {
    /// Whether the message asks to be persisted (`delivery_mode = 2`).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// Decodes the property flags and list. Continuation flag words (never sent by real
    /// clients) are read and their bits ignored.
    pub fn decode(r: &mut Reader<'_>) -> Result<BasicProperties, DecodeError> {
        let flags = r.u16()?;
        let mut more = flags & CONTINUATION != 0;
        while more {
            more = r.u16()? & CONTINUATION != 0;
        }
        let has = |bit: u16| flags & bit != 0;
        let mut p = BasicProperties::default();
        let short = |r: &mut Reader<'_>, bit| -> Result<Option<ShortStr>, DecodeError> {
            if has(bit) { r.short_str().map(Some) } else { Ok(None) }
        };
        p.content_type = short(r, CONTENT_TYPE)?;
        p.content_encoding = short(r, CONTENT_ENCODING)?;
        if has(HEADERS) {
            p.headers = Some(FieldTable::decode(r)?);
        }
        if has(DELIVERY_MODE) {
            p.delivery_mode = Some(r.u8()?);
        }
        if has(PRIORITY) {
            p.priority = Some(r.u8()?);
        }
        p.correlation_id = short(r, CORRELATION_ID)?;
        p.reply_to = short(r, REPLY_TO)?;
        p.expiration = short(r, EXPIRATION)?;
        p.message_id = short(r, MESSAGE_ID)?;
        if has(TIMESTAMP) {
            p.timestamp = Some(r.u64()?);
        }
        p.kind = short(r, KIND)?;
        p.user_id = short(r, USER_ID)?;
        p.app_id = short(r, APP_ID)?;
        p.cluster_id = short(r, CLUSTER_ID)?;
        Ok(p)
    }

    /// Appends the property flags and list to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut flags = 0u16;
        let mut flag = |present: bool, bit: u16| {
            if present {
                flags |= bit
            }
        };
        flag(self.content_type.is_some(), CONTENT_TYPE);
        flag(self.content_encoding.is_some(), CONTENT_ENCODING);
        flag(self.headers.is_some(), HEADERS);
        flag(self.delivery_mode.is_some(), DELIVERY_MODE);
        flag(self.priority.is_some(), PRIORITY);
        flag(self.correlation_id.is_some(), CORRELATION_ID);
        flag(self.reply_to.is_some(), REPLY_TO);
        flag(self.expiration.is_some(), EXPIRATION);
        flag(self.message_id.is_some(), MESSAGE_ID);
        flag(self.timestamp.is_some(), TIMESTAMP);
        flag(self.kind.is_some(), KIND);
        flag(self.user_id.is_some(), USER_ID);
        flag(self.app_id.is_some(), APP_ID);
        flag(self.cluster_id.is_some(), CLUSTER_ID);
        buf.put_u16(flags);
        let mut w = Writer::new(buf);
        let short = |w: &mut Writer<'_>, s: &Option<ShortStr>| {
            if let Some(s) = s {
                w.short_str(s)
            }
        };
        short(&mut w, &self.content_type);
        short(&mut w, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(&mut w);
        }
        if let Some(v) = self.delivery_mode {
            w.u8(v);
        }
        if let Some(v) = self.priority {
            w.u8(v);
        }
        short(&mut w, &self.correlation_id);
        short(&mut w, &self.reply_to);
        short(&mut w, &self.expiration);
        short(&mut w, &self.message_id);
        if let Some(v) = self.timestamp {
            w.u64(v);
        }
        short(&mut w, &self.kind);
        short(&mut w, &self.user_id);
        short(&mut w, &self.app_id);
        short(&mut w, &self.cluster_id);
    }

    /// The encoded flags and property list, as a content header carries them.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        self.encode(&mut buf);
        buf.freeze()
    }
}
