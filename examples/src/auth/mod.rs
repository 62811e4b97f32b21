//! The auth worker of seed 000: a message consumer laid out as a clean architecture.
//!
//! ```text
//! Worker (infrastructure: connection, prefetch, ack/nack)        postroom_client::Worker
//!   │ message stream
//!   ▼
//! ConsumerAdapter (presentation: decode errors, panics, ack/nack) postroom_client::ConsumerAdapter
//!   ▼
//! BlacklistHandler (presentation: schema validation → DTO)        handler.rs
//!   ▼
//! PersistBlacklist (application: classify failures)               application.rs
//!   ▼
//! BlacklistStore port ◀── RedisBlacklistStore / MemoryBlacklistStore (infrastructure)
//! ```
//!
//! The composition root ([`build_worker`], and `examples/auth_worker.rs`) wires them; the
//! queue's retry policy does the backoff of retryable failures, and its dead-letter queue
//! receives invalid and permanently failed events.
//!
//! Layout:
//! - [`schema`]: the `TokenBlacklisted` message and its validation.
//! - [`application`]: the `BlacklistEntry` DTO, the `BlacklistStore` port, the command.
//! - [`handler`]: `BlacklistHandler`, message → command.
//! - [`infrastructure`]: Redis and memory implementations of the port.

pub mod application;
pub mod handler;
pub mod infrastructure;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use postroom_client::{
    Connector, ExchangeSpec, HandlerExt, Idempotent, IdempotentReceiver, MemoryProcessedStore,
    QueueSpec, Traced, Tracing, Worker, WorkerConfig, bind,
};

use self::application::{BlacklistStore, PersistBlacklist};
use self::handler::BlacklistHandler;

/// The exchange auth events are published to.
pub const EXCHANGE: &str = "auth";
/// The worker's queue.
pub const QUEUE: &str = "auth.blacklist";
/// Where invalid and permanently failed events end up.
pub const DEAD_LETTER_QUEUE: &str = "auth.blacklist.dead";
/// The dead-letter exchange.
pub const DEAD_LETTER_EXCHANGE: &str = "auth.dlx";

/// Declares the exchange, the worker's queue (retry 200 ms doubling to 5 s, at most 5
/// returns) and its dead-letter queue.
///
/// # Errors
/// When the broker refuses a declaration.
pub async fn declare_topology(connector: &Connector) -> postroom_client::Result<()> {
    let channel = connector.channel().await?;
    ExchangeSpec::topic(EXCHANGE).declare(&channel).await?;
    ExchangeSpec::direct(DEAD_LETTER_EXCHANGE).declare(&channel).await?;
    QueueSpec::new(DEAD_LETTER_QUEUE).declare(&channel).await?;
    bind(&channel, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE).await?;
    QueueSpec::new(QUEUE)
        .retry(Duration::from_millis(200), 2.0, Duration::from_secs(5))
        .quorum() // RabbitMQ honours x-delivery-limit only on quorum queues
        .delivery_limit(5)
        .dead_letter(DEAD_LETTER_EXCHANGE, Some(DEAD_LETTER_QUEUE))
        .declare(&channel)
        .await?;
    bind(&channel, QUEUE, EXCHANGE, schema::ROUTING_KEY).await?;
    // Closing the declaring channel is tidy but not required; a failure here is harmless.
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The handler stack the worker runs: tracing, then idempotency, then the handler.
pub type AuthHandler<S> =
    Traced<Idempotent<BlacklistHandler<PersistBlacklist<S>>, MemoryProcessedStore>>;

/// Wires the worker: store → command → handler → middleware → worker.
///
/// # Errors
/// [`postroom_client::Error::Config`] for an invalid worker config.
pub fn build_worker<S: BlacklistStore>(
    connector: Arc<Connector>,
    store: Arc<S>,
) -> postroom_client::Result<Worker<AuthHandler<S>>> {
    let command = PersistBlacklist::new(store);
    let handler = BlacklistHandler::new(command)
        .with(IdempotentReceiver::new(Arc::new(MemoryProcessedStore::new())))
        .with(Tracing);
    let config = WorkerConfig { prefetch: 20, concurrency: 8, ..WorkerConfig::new(QUEUE) };
    Worker::new(connector, handler, config)
}
