//! AMQP 0-9-1 wire codec for Postroom.
//!
//! Pure: no I/O, no async, no knowledge of brokers or storage. The same codec serves the
//! server and the tests. Decoding is two steps — [`frame::check`] tells whether a whole frame
//! is buffered (and rejects an oversized one from its 7-byte header, before the body is
//! read), then [`Frame::parse`] decodes it. Encoders append to a caller-owned `BytesMut`.
//!
//! Strings and tables decoded from a frame are zero-copy slices of the frame's `Bytes`, so
//! the publish / deliver / ack hot path does not allocate per field.
//!
//! Layout:
//! - [`error`]: [`DecodeError`], with `Incomplete` kept apart from protocol errors.
//! - [`wire`]: the primitive reader and writer, [`ShortStr`] and [`LongStr`].
//! - [`table`]: field tables and values with RabbitMQ's type letters.
//! - [`method`]: every method of connection/channel/access/exchange/queue/basic/confirm/tx.
//! - [`properties`]: basic content-header properties.
//! - [`frame`]: frames, the protocol header, frame checks and encoders.
//! - [`constants`]: reply codes and frame constants.

pub mod constants;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod table;
pub mod wire;

pub use error::DecodeError;
pub use frame::{ContentHeader, Frame};
pub use method::Method;
pub use properties::BasicProperties;
pub use table::{Decimal, FieldTable, FieldValue};
pub use wire::{LongStr, ShortStr};
