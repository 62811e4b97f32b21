//! The Idempotent Receiver: a middleware that processes each message id once, remembering
//! processed ids in a [`ProcessedStore`] port (in memory, or in Redis to share the memory
//! between workers and across restarts).
//!
//! A message is *claimed* before the handler runs (with a lease, so a crashed worker's
//! claim runs out), *completed* when the handler succeeds or drops the message (`Success`,
//! `Drop`), and *released* when it asks for a `Retry` or dead-letters it, so that the retry,
//! or the message moved back from the dead-letter queue, runs the handler again. A handler that panics or is cancelled at the worker's timeout releases its claim
//! too (from a guard's `Drop`, in a spawned task), so its redelivery runs at once.
//!
//! A duplicate of a completed message is acknowledged without running the handler; a
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

    /// How long a claim holds if its worker dies.
    ///
    /// Must be longer than the worker's
    /// [`handler_timeout`](crate::WorkerConfig::handler_timeout) (plus its
    /// [`max_retry_hold`](crate::WorkerConfig::max_retry_hold), for a margin): a claim that
    /// runs out while its handler still runs lets a duplicate run beside it. The receiver
    /// logs a warning when a handler outlasts the lease.
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
        // Armed until the claim is completed or released below: if the handler panics or is
        // cancelled at the worker's timeout, this future is dropped mid-way and the guard
        // gives the claim back, so the redelivery runs at once instead of meeting
        // `InProgress` until the lease runs out (and burning the queue's delivery limit).
        let mut guard = ClaimGuard::new(std::sync::Arc::clone(&self.store), key, token);
        let started = tokio::time::Instant::now();
        let result = self.inner.handle(message).await;
        if started.elapsed() >= self.lease {
            tracing::warn!(
                message_id = key,
                lease = ?self.lease,
                "the handler outlasted the claim's lease, so a duplicate may have run meanwhile; \
                 make the lease longer than the worker's handler timeout"
            );
        }
        let recorded = guard.settle(&result, self.ttl).await;
        if let Err(error) = recorded {
            // The result stands; the price is a possible second run of a duplicate.
            tracing::warn!(%error, message_id = key, "could not record the message's processing");
        }
        result
    }
}

/// A claim held while the handler runs. [`settle`](ClaimGuard::settle) completes or releases
/// it; a guard dropped unsettled (the handler panicked or was cancelled) releases it in a
/// task of its own, since `Drop` cannot await.
struct ClaimGuard<S: ProcessedStore> {
    store: std::sync::Arc<S>,
    key: String,
    token: Option<ClaimToken>,
}

impl<S: ProcessedStore> ClaimGuard<S> {
    fn new(store: std::sync::Arc<S>, key: &str, token: ClaimToken) -> ClaimGuard<S> {
        ClaimGuard { store, key: key.to_string(), token: Some(token) }
    }

    /// Completes the claim for `Success` and `Drop`, releases it otherwise: a `Retry` must
    /// run again, and so must a `DeadLetter`ed message that someone moves back from the
    /// dead-letter queue (it was not processed).
    async fn settle(&mut self, result: &CommandResult, ttl: Duration) -> Result<()> {
        let Some(token) = self.token.as_ref() else { return Ok(()) };
        let recorded = match result {
            CommandResult::Success | CommandResult::Drop { .. } => {
                self.store.complete(&self.key, token, ttl).await
            }
            CommandResult::Retry { .. } | CommandResult::DeadLetter { .. } => {
                self.store.release(&self.key, token).await
            }
        };
        // Disarmed only once the store call returned: cancelled during it, the guard still
        // releases, which is harmless after a completion (a release only removes a claim
        // still held by this token).
        self.token = None;
        recorded
    }
}

impl<S: ProcessedStore> Drop for ClaimGuard<S> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        let (store, key) = (std::sync::Arc::clone(&self.store), std::mem::take(&mut self.key));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = store.release(&key, &token).await {
                        tracing::warn!(%error, message_id = key, "could not release an abandoned claim; it runs out with its lease");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    message_id = key,
                    "no runtime to release an abandoned claim; it runs out with its lease"
                );
            }
        }
    }
}

pub(crate) fn store_error(error: impl std::fmt::Display) -> Error {
    Error::Store { message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::adapter::{ConsumerAdapter, Outcome};
    use crate::handler::HandlerExt;

    /// Fails its first call as `first` says, then succeeds; counts its calls.
    struct FirstCallFails {
        calls: Arc<AtomicUsize>,
        first: &'static str,
    }

    impl Handler for FirstCallFails {
        async fn handle(&self, _: &Incoming) -> CommandResult {
            if self.calls.fetch_add(1, Ordering::SeqCst) > 0 {
                return CommandResult::Success;
            }
            match self.first {
                "panic" => panic!("handler bug"),
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    CommandResult::Success
                }
                "dead_letter" => CommandResult::dead_letter("rule violated"),
                other => unreachable!("{other}"),
            }
        }
    }

    fn receiver(
        first: &'static str,
        timeout: Duration,
    ) -> (ConsumerAdapter<Idempotent<FirstCallFails, MemoryProcessedStore>>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = FirstCallFails { calls: Arc::clone(&calls), first }
            .with(IdempotentReceiver::new(Arc::new(MemoryProcessedStore::new())));
        (ConsumerAdapter::new(handler, timeout), calls)
    }

    fn message() -> Incoming {
        Incoming::new(b"grant 100".to_vec())
            .with_envelope(crate::Envelope::new().with_message_id("grant-7"))
    }

    /// Lets the tasks spawned by dropped claim guards run.
    async fn let_spawned_tasks_run() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Regression: a panic kept the claim for the whole lease (60 s), so every redelivery
    // meanwhile met `InProgress`, was requeued and burnt the queue's delivery limit.
    #[tokio::test]
    async fn a_panicking_handler_gives_its_claim_back_so_the_redelivery_runs_at_once() {
        let (adapter, calls) = receiver("panic", Duration::from_secs(5));
        assert_eq!(adapter.process(message()).await, Outcome::Panicked("handler bug".into()));
        let_spawned_tasks_run().await;
        assert_eq!(adapter.process(message()).await, Outcome::Completed(CommandResult::Success));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the redelivery ran the handler");
    }

    // Regression: a handler cancelled at the timeout kept its claim for the whole lease.
    #[tokio::test]
    async fn a_handler_cancelled_at_its_timeout_gives_its_claim_back() {
        let (adapter, calls) = receiver("hang", Duration::from_millis(50));
        let outcome = adapter.process(message()).await;
        assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(50)));
        let_spawned_tasks_run().await;
        assert_eq!(adapter.process(message()).await, Outcome::Completed(CommandResult::Success));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the redelivery ran the handler");
    }

    // Regression: a dead-lettered message was marked processed, so moving it back from the
    // dead-letter queue acknowledged it as a duplicate without running the handler.
    #[tokio::test]
    async fn a_dead_lettered_message_runs_again_when_it_comes_back_from_the_dead_letter_queue() {
        let (adapter, calls) = receiver("dead_letter", Duration::from_secs(5));
        let outcome = adapter.process(message()).await;
        assert_eq!(outcome, Outcome::Completed(CommandResult::dead_letter("rule violated")));
        assert_eq!(adapter.process(message()).await, Outcome::Completed(CommandResult::Success));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the redriven message ran the handler");
        assert_eq!(adapter.process(message()).await, Outcome::Completed(CommandResult::Success));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "once processed, a duplicate does not");
    }
}
