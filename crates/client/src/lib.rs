//! Postroom's Rust SDK, on lapin: it speaks plain AMQP 0-9-1, so it works against Postroom
//! and RabbitMQ alike.
//!
//! - **Publishing**: [`Publisher`] sends typed [`Message`]s in an [`Envelope`] (message id,
//!   timestamp, source, correlation and causation ids, W3C `traceparent`), encoded by a
//!   [`Codec`] ([`Json`] by default), waits for publisher confirms, and reconnects with
//!   [`Backoff`] through a [`Connector`].
//!
//! This crate owns the client side only; it depends on no other Postroom crate.
//!
//! Layout:
//! - `error`: [`Error`], the crate's one error type.
//! - `codec`: [`Codec`] and [`Json`].
//! - `message`: [`Message`], typed routing.
//! - `envelope`: [`Envelope`] and its header names.
//! - `trace`: [`TraceContext`] and [`TraceContextLayer`] (W3C trace context on `tracing` spans).
//! - `connector`: [`Connector`] and [`Backoff`], a connection that reconnects.
//! - `publisher`: [`Publisher`], [`PublisherConfig`], [`PublishOptions`].
//! - `topology`: [`QueueSpec`], [`ExchangeSpec`], [`bind`]: declarations with retry and
//!   dead-letter arguments.

mod codec;
mod connector;
mod envelope;
mod error;
mod message;
mod publisher;
mod topology;
mod trace;

pub use codec::{Codec, Json};
pub use connector::{Backoff, Connector};
pub use envelope::{CAUSATION_ID, DELIVERY_COUNT, Envelope, TRACEPARENT, X_DEATH};
pub use error::{Error, Result};
pub use message::Message;
pub use publisher::{PublishOptions, Publisher, PublisherConfig, X_DELAY};
pub use topology::{ExchangeSpec, QueueSpec, bind};
pub use trace::{TraceContext, TraceContextLayer};

/// lapin, re-exported so that applications use the same version as the SDK.
pub use lapin;
