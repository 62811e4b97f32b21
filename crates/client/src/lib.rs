//! Postroom's Rust SDK, on lapin: it speaks plain AMQP 0-9-1, so it works against Postroom
//! and RabbitMQ alike.
//!
//! - **Publishing**: [`Publisher`] sends typed [`Message`]s in an [`Envelope`] (message id,
//!   timestamp, source, correlation and causation ids, W3C `traceparent`), encoded by a
//!   [`Codec`] ([`Json`] by default), waits for publisher confirms, and reconnects with
//!   [`Backoff`] through a [`Connector`].
//! - **Consuming**, as a clean-architecture worker: a [`Handler`] decodes and validates a
//!   message and calls a [`Command`], which answers a [`CommandResult`] (`Success`,
//!   `Retry`, `Drop`, `DeadLetter`); the [`ConsumerAdapter`] maps that to ack, nack with
//!   requeue or reject in one function ([`acknowledgement`]); the [`Worker`] adds prefetch,
//!   a concurrency limit, a per-message timeout, panic containment, reconnects and graceful
//!   shutdown. [`Middleware`] wraps handlers: [`Tracing`], [`Metrics`], and the
//!   [`IdempotentReceiver`] over a [`ProcessedStore`] ([`MemoryProcessedStore`],
//!   [`RedisProcessedStore`]).
//! - **Request-reply** over direct reply-to: [`RpcClient`] and [`Responder`].
//!
//! | result | acknowledgement |
//! |---|---|
//! | `Success` | `basic.ack` |
//! | `Retry { after }` | `basic.nack` requeue=true (the queue's retry policy does the backoff) |
//! | `Drop { reason }` | `basic.ack` (reason logged) |
//! | `DeadLetter { reason }`, invalid payload | `basic.reject` requeue=false (to the DLX) |
//! | panic, timeout | `basic.nack` requeue=true |
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
//! - `result`: [`CommandResult`].
//! - `incoming`: [`Incoming`], a received message without its acknowledger.
//! - `handler`: [`Handler`], [`Command`], [`Validate`], [`CommandHandler`], [`handler_fn`],
//!   [`Middleware`].
//! - `adapter`: [`ConsumerAdapter`], [`Outcome`], [`Acknowledgement`], [`acknowledgement`].
//! - `worker`: [`Worker`], [`WorkerConfig`], [`WorkerStats`].
//! - `middleware`: [`Tracing`], [`Metrics`], [`MetricsRecorder`], [`CountingMetrics`].
//! - `idempotent`: [`IdempotentReceiver`], [`ProcessedStore`] and its memory and Redis
//!   implementations.
//! - `rpc`: [`RpcClient`], [`Responder`].

mod adapter;
mod codec;
mod connector;
mod envelope;
mod error;
mod handler;
mod idempotent;
mod incoming;
mod message;
mod middleware;
mod publisher;
mod result;
mod rpc;
mod topology;
mod trace;
mod worker;

pub use adapter::{Acknowledgement, ConsumerAdapter, Outcome, acknowledgement};
pub use handler::{
    Command, CommandHandler, FnHandler, Handler, HandlerExt, Middleware, Received, Validate,
    handler_fn,
};
pub use idempotent::{
    Claim, ClaimToken, Idempotent, IdempotentReceiver, MemoryProcessedStore, ProcessedStore,
    RedisProcessedStore,
};
pub use incoming::Incoming;
pub use middleware::{
    CountingMetrics, Metered, Metrics, MetricsRecorder, MetricsSnapshot, Traced, Tracing,
};
pub use result::CommandResult;
pub use rpc::{DIRECT_REPLY_TO, RPC_ERROR, Responder, RpcClient};
pub use worker::{Worker, WorkerConfig, WorkerStats};

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
