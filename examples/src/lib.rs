//! The seed scenarios on the Postroom SDK. Each scenario is a library module, composition
//! root included (`allocation::start`, `scan::start`, `auth::build_worker`), so that the
//! runnable example in `examples/` and the tests in `examples/tests/` wire it the same way.
//!
//! Layout:
//! - [`auth`]: the clean-architecture auth worker (token-blacklist events → handler →
//!   command → store port), with retryable and permanent failures.
//! - [`allocation`]: the allocation service (`BatchQuantityChanged` in → reallocation →
//!   `Allocated` out through the outbox).
//! - [`scan`]: the scan pipeline (envelope → content-based routing → competing consumers →
//!   retry → dead-letter queue).

pub mod allocation;
pub mod auth;
pub mod scan;

/// Why an example's composition root could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExampleError {
    /// The broker refused or could not be reached.
    #[error("broker")]
    Broker(#[from] postroom_client::Error),
    /// The bus or its database failed.
    #[error("message bus")]
    Bus(#[from] postroom_bus::BusError),
    /// A worker or relay task panicked.
    #[error("task")]
    Task(#[from] tokio::task::JoinError),
}

/// The broker the examples connect to: `POSTROOM_URL`, default a local `postroom serve`.
///
/// ```
/// let url = postroom_examples::broker_url();
/// assert!(url.starts_with("amqp://"));
/// ```
pub fn broker_url() -> String {
    std::env::var("POSTROOM_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Logs to stderr (`RUST_LOG`, default `info`) with W3C trace context on every span.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(postroom_client::TraceContextLayer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
}
