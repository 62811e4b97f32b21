//! The Idempotent Receiver: a middleware that processes each message id once, remembering
//! processed ids in a [`ProcessedStore`] port (in memory, or in Redis to share the memory
//! between workers and across restarts).
//!
//! A message is *claimed* before the handler runs (with a lease, so a crashed worker's
//! claim runs out), *completed* when the handler reaches a final result (`Success`, `Drop`,
//! `DeadLetter`), and *released* when it asks for a `Retry`, so the retry runs the handler
//! again. A duplicate of a completed message is acknowledged without running the handler; a
//! duplicate of one still being handled elsewhere is requeued until the first finishes.

mod memory;
mod redis;

use std::future::Future;
use std::time::Duration;

pub use memory::MemoryProcessedStore;
pub use redis::RedisProcessedStore;

use crate::error::{Error, Result};
use crate::handler::{Handler, Middleware};
use crate::incoming::Incoming;
use crate::result::CommandResult;

/// Proof of a claim, needed to release it (so that a late worker cannot release a claim
/// that has passed to another).
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{Claim, MemoryProcessedStore, ProcessedStore};
/// # futures_lite::future::block_on(async {
/// let store = MemoryProcessedStore::new();
/// if let Claim::Acquired(token) = store.claim("m-1", Duration::from_secs(5)).await.unwrap() {
///     store.release("m-1", &token).await.unwrap();
/// }
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub(crate) String);

impl ClaimToken {
    pub(crate) fn new() -> ClaimToken {
        ClaimToken(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// The answer to a claim.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{Claim, MemoryProcessedStore, ProcessedStore};
/// # futures_lite::future::block_on(async {
/// let store = MemoryProcessedStore::new();
/// assert!(matches!(store.claim("m-1", Duration::from_secs(5)).await.unwrap(), Claim::Acquired(_)));
/// assert_eq!(store.claim("m-1", Duration::from_secs(5)).await.unwrap(), Claim::InProgress);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller may process the message.
    Acquired(ClaimToken),
    /// The message was processed before.
    AlreadyProcessed,
    /// Another caller holds a live claim.
    InProgress,
}

/// Remembers which messages were processed. The port of the Idempotent Receiver.
///
/// Implementations are shared by concurrent tasks; `claim` must be atomic (two concurrent
/// claims of one key: at most one `Acquired`).
///
/// ```
/// use std::time::Duration;
/// use postroom_client::{Claim, MemoryProcessedStore, ProcessedStore};
/// # futures_lite::future::block_on(async {
/// let store = MemoryProcessedStore::new();
/// let Claim::Acquired(token) = store.claim("m-1", Duration::from_secs(30)).await.unwrap() else { panic!() };
/// assert_eq!(store.claim("m-1", Duration::from_secs(30)).await.unwrap(), Claim::InProgress);
/// store.complete("m-1", &token, Duration::from_secs(3600)).await.unwrap();
/// assert_eq!(store.claim("m-1", Duration::from_secs(30)).await.unwrap(), Claim::AlreadyProcessed);
/// # });
/// ```
pub trait ProcessedStore: Send + Sync + 'static {
    /// Claims `key` for `lease` unless it is processed or claimed.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot answer (the message is then retried).
    fn claim(&self, key: &str, lease: Duration) -> impl Future<Output = Result<Claim>> + Send;

    /// Marks `key` processed for `ttl`.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be written.
    fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Gives up the claim on `key` if `token` still holds it.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be written.
    fn release(&self, key: &str, token: &ClaimToken) -> impl Future<Output = Result<()>> + Send;
}

/// The middleware: wraps a handler so each message id is processed once.
///
/// Messages are keyed by their `message_id`; messages without one are handled every time
/// (nothing to recognise them by).
///
/// A duplicate that arrives while another worker holds the claim answers
/// `Retry { after: lease }`: on Postroom the queue's retry policy spaces its redeliveries;
/// on a broker without one, set [`WorkerConfig::max_retry_hold`](crate::WorkerConfig::max_retry_hold)
/// so that the duplicate waits in the worker instead of coming straight back.
///
/// ```
/// use std::sync::Arc;
/// use postroom_client::{CommandResult, HandlerExt, IdempotentReceiver, MemoryProcessedStore, handler_fn};
/// let store = Arc::new(MemoryProcessedStore::new());
/// let handler = handler_fn(|_| async { CommandResult::Success })
///     .with(IdempotentReceiver::new(store));
/// # drop(handler);
/// ```
#[derive(Debug)]
pub struct IdempotentReceiver<S> {
    store: std::sync::Arc<S>,
    ttl: Duration,
    lease: Duration,
}

impl<S> IdempotentReceiver<S> {
    /// Remembers processed ids for 24 h; claims last 60 s.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let receiver = postroom_client::IdempotentReceiver::new(Arc::new(postroom_client::MemoryProcessedStore::new()));
    /// # drop(receiver);
    /// ```
    pub fn new(store: std::sync::Arc<S>) -> IdempotentReceiver<S> {
        IdempotentReceiver {
            store,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
        }
    }

    /// How long a processed id is remembered (longer than the broker may redeliver).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// let receiver = postroom_client::IdempotentReceiver::new(Arc::new(postroom_client::MemoryProcessedStore::new()))
    ///     .remember_for(Duration::from_secs(7 * 24 * 3600));
    /// # drop(receiver);
    /// ```
    pub fn remember_for(mut self, ttl: Duration) -> IdempotentReceiver<S> {
        self.ttl = ttl;
        self
    }

    /// How long a claim holds if its worker dies (longer than the handler timeout).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// let receiver = postroom_client::IdempotentReceiver::new(Arc::new(postroom_client::MemoryProcessedStore::new()))
    ///     .lease(Duration::from_secs(120));
    /// # drop(receiver);
    /// ```
    pub fn lease(mut self, lease: Duration) -> IdempotentReceiver<S> {
        self.lease = lease;
        self
    }
}

/// The handler [`IdempotentReceiver`] makes.
///
/// ```
/// use std::sync::Arc;
/// use postroom_client::{CommandResult, HandlerExt, Idempotent, IdempotentReceiver, MemoryProcessedStore, handler_fn};
/// let handler: Idempotent<_, MemoryProcessedStore> = handler_fn(|_| async { CommandResult::Success })
///     .with(IdempotentReceiver::new(Arc::new(MemoryProcessedStore::new())));
/// # drop(handler);
/// ```
#[derive(Debug)]
pub struct Idempotent<H, S> {
    inner: H,
    store: std::sync::Arc<S>,
    ttl: Duration,
    lease: Duration,
}

impl<H: Handler, S: ProcessedStore> Middleware<H> for IdempotentReceiver<S> {
    type Output = Idempotent<H, S>;
    fn wrap(self, inner: H) -> Idempotent<H, S> {
        Idempotent { inner, store: self.store, ttl: self.ttl, lease: self.lease }
    }
}

impl<H: Handler, S: ProcessedStore> Handler for Idempotent<H, S> {
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let key = message.envelope.message_id.as_str();
        if key.is_empty() {
            return self.inner.handle(message).await;
        }
        let token = match self.store.claim(key, self.lease).await {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::AlreadyProcessed) => {
                tracing::debug!(message_id = key, "duplicate of a processed message; acknowledged");
                return CommandResult::Success;
            }
            Ok(Claim::InProgress) => return CommandResult::retry_after(self.lease),
            Err(error) => {
                tracing::warn!(%error, "processed-message store unavailable; retrying later");
                return CommandResult::retry();
            }
        };
        let result = self.inner.handle(message).await;
        let recorded = if result.is_final() {
            self.store.complete(key, &token, self.ttl).await
        } else {
            self.store.release(key, &token).await
        };
        if let Err(error) = recorded {
            // The result stands; the price is a possible second run of a duplicate.
            tracing::warn!(%error, message_id = key, "could not record the message's processing");
        }
        result
    }
}

pub(crate) fn store_error(error: impl std::fmt::Display) -> Error {
    Error::Store { message: error.to_string() }
}
