//! Frames: the check-then-parse decoder and the encoders.
//!
//! [`check`] looks only at the 7-byte frame header to decide whether a whole frame is
//! buffered and whether it fits `frame_max`, so an oversized frame is refused before its body
//! is read. [`Frame::parse`] then decodes the exact bytes that `check` measured.

use bytes::{BufMut, Bytes, BytesMut};

use crate::constants::{
    CLASS_BASIC, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD, PROTOCOL_HEADER,
};
use crate::error::DecodeError;
use crate::method::Method;
use crate::properties::BasicProperties;
use crate::wire::Reader;

/// A content header: body size and properties. `raw_properties` keeps the encoded flags
/// and property list so that a message is delivered with its properties byte for byte,
/// without re-encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Content class; always `basic` (60) in 0-9-1.
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The decoded properties.
    pub properties: BasicProperties,
    /// The encoded property flags and list.
    pub raw_properties: Bytes,
}

impl ContentHeader {
    /// A header for `properties`, encoding them once.
    pub fn new(body_size: u64, properties: BasicProperties) -> ContentHeader {
        let raw_properties = properties.to_bytes();
        ContentHeader { class_id: CLASS_BASIC, body_size, properties, raw_properties }
    }
}

/// One decoded frame.
// Frames live for one loop iteration; boxing the big variants would cost an allocation per
// frame on the hot path to save stack bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// The header.
        header: ContentHeader,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// The body bytes, zero-copy.
        payload: Bytes,
    },
    /// A heartbeat frame (channel 0).
    Heartbeat,
}

/// Checks whether `buf` starts with a whole frame, returning its length.
///
/// # Errors
/// [`DecodeError::Incomplete`] if more bytes are needed; [`DecodeError::FrameTooLarge`] as
/// soon as the header shows a frame larger than `frame_max` (0 means no limit);
/// [`DecodeError::BadFrameEnd`] if the frame-end octet is wrong.
pub fn check(buf: &[u8], frame_max: u32) -> Result<usize, DecodeError> {
    if buf.len() < 7 {
        return Err(DecodeError::Incomplete);
    }
    let payload = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let size = payload + FRAME_OVERHEAD;
    if frame_max != 0 && size > frame_max as usize {
        return Err(DecodeError::FrameTooLarge { size, frame_max });
    }
    if buf.len() < size {
        return Err(DecodeError::Incomplete);
    }
    match buf[size - 1] {
        FRAME_END => Ok(size),
        found => Err(DecodeError::BadFrameEnd { found }),
    }
}

/// Checks the 8-byte protocol header a client opens with.
///
/// # Errors
/// `Incomplete` until 8 bytes are there; `BadProtocolHeader` for anything but AMQP 0-9-1.
pub fn check_protocol_header(buf: &[u8]) -> Result<(), DecodeError> {
    if buf.len() < PROTOCOL_HEADER.len() {
        // A wrong prefix is refused at once rather than waiting for 8 bytes.
        if !PROTOCOL_HEADER.starts_with(buf) {
            return Err(DecodeError::BadProtocolHeader);
        }
        return Err(DecodeError::Incomplete);
    }
    if buf[..8] == PROTOCOL_HEADER { Ok(()) } else { Err(DecodeError::BadProtocolHeader) }
}

impl Frame {
    /// Decodes one frame, exactly as measured by [`check`].
    pub fn parse(frame: Bytes) -> Result<Frame, DecodeError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(DecodeError::Incomplete);
        }
        let kind = frame[0];
        let channel = u16::from_be_bytes([frame[1], frame[2]]);
        let payload = frame.slice(7..frame.len() - 1);
        match kind {
            FRAME_METHOD => Ok(Frame::Method { channel, method: Method::decode(&payload)? }),
            FRAME_HEADER => {
                let mut r = Reader::new(&payload);
                let class_id = r.u16()?;
                let _weight = r.u16()?;
                let body_size = r.u64()?;
                let raw_properties = payload.slice(12..);
                let properties = BasicProperties::decode(&mut r)?;
                Ok(Frame::Header {
                    channel,
                    header: ContentHeader { class_id, body_size, properties, raw_properties },
                })
            }
            FRAME_BODY => Ok(Frame::Body { channel, payload }),
            FRAME_HEARTBEAT if channel == 0 => Ok(Frame::Heartbeat),
            FRAME_HEARTBEAT => Err(DecodeError::Invalid("heartbeat frame on a non-zero channel")),
            other => Err(DecodeError::UnknownFrameType(other)),
        }
    }

    /// Appends the frame to `buf`; body frames are written as given (see
    /// [`encode_content`] to split a body by `frame_max`).
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Frame::Method { channel, method } => method.encode_frame(*channel, buf),
            Frame::Header { channel, header } => encode_header(
                *channel,
                header.class_id,
                header.body_size,
                &header.raw_properties,
                buf,
            ),
            Frame::Body { channel, payload } => encode_body_frame(*channel, payload, buf),
            Frame::Heartbeat => encode_heartbeat(buf),
        }
    }
}

/// Appends a content header frame carrying already-encoded properties.
pub fn encode_header(channel: u16, class_id: u16, body_size: u64, raw: &[u8], buf: &mut BytesMut) {
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32(12 + raw.len() as u32);
    buf.put_u16(class_id);
    buf.put_u16(0);
    buf.put_u64(body_size);
    buf.put_slice(raw);
    buf.put_u8(FRAME_END);
}

/// Appends one body frame.
pub fn encode_body_frame(channel: u16, payload: &[u8], buf: &mut BytesMut) {
    buf.put_u8(FRAME_BODY);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(FRAME_END);
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header and as many body frames as `frame_max` requires (none for an
/// empty body). `frame_max` of 0 means no limit.
pub fn encode_content(
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
    buf: &mut BytesMut,
) {
    encode_header(channel, CLASS_BASIC, body.len() as u64, raw_properties, buf);
    let chunk = match frame_max as usize {
        0 => usize::MAX,
        max => max.saturating_sub(FRAME_OVERHEAD).max(1),
    };
    buf.reserve(body.len() + body.len().div_ceil(chunk.min(body.len().max(1))) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        encode_body_frame(channel, part, buf);
    }
}
