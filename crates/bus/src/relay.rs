//! [`OutboxRelay`]: publishes outbox rows to the broker with confirms, in insertion order,
//! and marks each one sent after its confirm.
//!
//! At-least-once and ordered: rows go one at a time, with `mandatory`, the next only after
//! the previous one was confirmed (a publisher without confirms is refused), and a failure
//! (an unroutable row included) stops the batch (so no later event of the same aggregate
//! overtakes it). A crash between a confirm and the `sent_at` update publishes that row
//! again, with the same `message_id`: consumers drop the copy with an idempotent receiver,
//! or the queue with `x-message-deduplication`.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postroom_client::{Codec, PublishOptions, Publisher};
use rusqlite::Connection;
use tokio::sync::Notify;

use crate::error::BusError;
use crate::outbox;

/// Relay settings.
///
/// ```
/// let config = postroom_bus::RelayConfig { batch_size: 50, ..Default::default() };
/// assert_eq!(config.batch_size, 50);
/// ```
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read per round.
    pub batch_size: usize,
    /// Longest wait between rounds when nothing wakes the relay.
    pub poll_interval: Duration,
    /// Wait after a failed round before trying again.
    pub retry_delay: Duration,
    /// Publish with `mandatory`, so that an event no queue takes comes back as a failure of
    /// its row instead of being marked sent and lost (on by default). Turn it off for
    /// exchanges where an event nobody subscribes to yet is normal.
    pub mandatory: bool,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            mandatory: true,
        }
    }
}

/// Moves committed events from the outbox to the broker.
///
/// It has its own connection to the database file (WAL lets it read while the application
/// writes).
///
/// ```no_run
/// # async fn run() -> Result<(), postroom_bus::BusError> {
/// use std::sync::{Arc, Mutex};
/// use postroom_bus::{OutboxRelay, RelayConfig};
/// use postroom_client::{Publisher, PublisherConfig};
/// let publisher = Publisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f", PublisherConfig::default())
///     .await
///     .map_err(postroom_bus::BusError::Publish)?;
/// let relay = OutboxRelay::open("app.db".as_ref(), Arc::new(publisher), RelayConfig::default())?;
/// relay.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct OutboxRelay<C: Codec> {
    // A std mutex makes the relay's futures `Send` (a SQLite connection is not `Sync`); it
    // is held only around SQLite calls, never across an `.await`.
    connection: Mutex<Connection>,
    publisher: Arc<Publisher<C>>,
    config: RelayConfig,
    wake: Arc<Notify>,
}

impl<C: Codec> std::fmt::Debug for OutboxRelay<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<C: Codec> OutboxRelay<C> {
    /// A relay for the database at `path`, publishing through `publisher`, which must have
    /// confirms on (as by default): a row is marked sent on the broker's confirm, and
    /// without confirms there is none to wait for.
    ///
    /// ```no_run
    /// # fn build(publisher: std::sync::Arc<postroom_client::Publisher>) -> Result<(), postroom_bus::BusError> {
    /// use postroom_bus::{OutboxRelay, RelayConfig};
    /// let relay = OutboxRelay::open("app.db".as_ref(), publisher, RelayConfig::default())?;
    /// # drop(relay); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`BusError::Config`] for a publisher without confirms; [`BusError::Database`].
    pub fn open(
        path: &Path,
        publisher: Arc<Publisher<C>>,
        config: RelayConfig,
    ) -> Result<OutboxRelay<C>, BusError> {
        if !publisher.config().confirms {
            return Err(BusError::Config(
                "the outbox relay needs a publisher with confirms (PublisherConfig::confirms): \
                 without them a row would be marked sent before the broker took it"
                    .into(),
            ));
        }
        let connection = Mutex::new(outbox::open(path)?);
        Ok(OutboxRelay { connection, publisher, config, wake: Arc::default() })
    }

    /// A handle that makes the relay look at the outbox now (give it to
    /// [`SqliteUnitOfWork::wake_on_commit`](crate::SqliteUnitOfWork::wake_on_commit)).
    ///
    /// ```no_run
    /// # fn wire(relay: &postroom_bus::OutboxRelay<postroom_client::Json>) -> Result<(), postroom_bus::BusError> {
    /// let uow = postroom_bus::SqliteUnitOfWork::open("app.db".as_ref())?.wake_on_commit(relay.waker());
    /// # drop(uow); Ok(()) }
    /// ```
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Publishes up to one batch of unsent rows, in order, stopping at the first failure.
    /// Returns how many were published.
    ///
    /// ```no_run
    /// # async fn run(relay: postroom_bus::OutboxRelay<postroom_client::Json>) -> Result<(), postroom_bus::BusError> {
    /// let published = relay.relay_once().await?;
    /// println!("{published} events published");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`BusError::Publish`] for the row that failed (earlier rows of the batch are marked
    /// sent); [`BusError::Database`].
    pub async fn relay_once(&self) -> Result<usize, BusError> {
        let records = outbox::unsent(&self.database(), self.config.batch_size)?;
        let options = PublishOptions::default().with_mandatory(self.config.mandatory);
        let mut sent = 0;
        for record in records {
            let published = self
                .publisher
                .publish_raw(
                    &record.exchange,
                    &record.routing_key,
                    &record.payload,
                    &record.envelope(),
                    &options,
                )
                .await;
            match published {
                Ok(()) => {
                    outbox::mark_sent(&self.database(), record.id)?;
                    sent += 1;
                }
                Err(error) => {
                    outbox::mark_failed(&self.database(), record.id, &error.to_string())?;
                    return Err(BusError::Publish(error));
                }
            }
        }
        Ok(sent)
    }

    fn database(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Every use is one SQLite statement; a panic inside one leaves nothing half-done.
        self.connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Relays until `shutdown` completes: a round whenever woken, every `poll_interval`
    /// otherwise, and `retry_delay` after a failure. Finishes the row in progress before
    /// returning.
    ///
    /// ```no_run
    /// # async fn run(relay: postroom_bus::OutboxRelay<postroom_client::Json>) {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let relaying = tokio::spawn(relay.run(async move { let _ = stopped.await; }));
    /// // … at shutdown:
    /// let _ = stop.send(());
    /// let _ = relaying.await;
    /// # }
    /// ```
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        loop {
            let wait = match self.relay_once().await {
                // A full batch means more may be waiting: go again at once.
                Ok(count) if count == self.config.batch_size => Duration::ZERO,
                Ok(_) => self.config.poll_interval,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay round failed; retrying");
                    self.config.retry_delay
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
