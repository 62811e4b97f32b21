//! Decoding errors.

/// Why a buffer could not be decoded.
///
/// `Incomplete` means "read more bytes", not a protocol error; every other variant is a
/// protocol violation that the server answers with a connection close
/// ([`DecodeError::reply_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// More bytes are needed before the frame can be decoded.
    #[error("incomplete frame")]
    Incomplete,
    /// The frame's declared size exceeds the negotiated `frame_max`.
    #[error("frame of {size} bytes exceeds frame_max {frame_max}")]
    FrameTooLarge {
        /// Size of the whole frame, framing included.
        size: usize,
        /// The negotiated limit.
        frame_max: u32,
    },
    /// The frame did not end with the frame-end octet.
    #[error("frame end octet is {found:#04x}, expected 0xce")]
    BadFrameEnd {
        /// The octet found instead.
        found: u8,
    },
    /// A frame type other than method, header, body or heartbeat.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A class/method pair that AMQP 0-9-1 does not define.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// Class id.
        class_id: u16,
        /// Method id.
        method_id: u16,
    },
    /// A field table value with an unknown type letter.
    #[error("unknown field type {0:?}")]
    UnknownFieldType(char),
    /// A field ran past the end of its frame payload.
    #[error("field {0} runs past the end of the frame")]
    Truncated(&'static str),
    /// A string that is not valid UTF-8 where UTF-8 is required.
    #[error("field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// Tables or arrays nested deeper than the limit.
    #[error("field tables nested deeper than {0} levels")]
    TooDeep(usize),
    /// A frame on a channel where the spec forbids it (e.g. a heartbeat on channel 1).
    #[error("{0}")]
    Invalid(&'static str),
    /// The peer did not start with the AMQP 0-9-1 protocol header.
    #[error("bad protocol header")]
    BadProtocolHeader,
}

impl DecodeError {
    /// The AMQP reply code with which a server closes the connection for this error.
    pub fn reply_code(&self) -> u16 {
        use crate::constants::reply;
        match self {
            DecodeError::UnknownMethod { .. } => reply::COMMAND_INVALID,
            DecodeError::UnknownFieldType(_)
            | DecodeError::Truncated(_)
            | DecodeError::InvalidUtf8(_)
            | DecodeError::TooDeep(_) => reply::SYNTAX_ERROR,
            DecodeError::Invalid(_) => reply::UNEXPECTED_FRAME,
            _ => reply::FRAME_ERROR,
        }
    }
}
