//! [`OutboxRelay`]: publishes outbox rows to the broker with confirms, in insertion order,
//! and marks each one sent after its confirm.
//!
//! At-least-once and ordered per aggregate: rows go one at a time, with `mandatory`, the
//! next only after the previous one was confirmed (a publisher without confirms is
//! refused). A crash between a confirm and the `sent_at` update publishes that row again,
//! with the same `message_id`: consumers drop the copy with an idempotent receiver, or the
//! queue with `x-message-deduplication`.
//!
//! Failures are told apart by what they say about the broker:
//! - the broker is out of reach (connection lost, no confirm in time): the round stops, and
//!   the row is tried again in the next one, uncounted;
//! - the broker refused this row (a missing exchange, no queue for it, a `basic.nack`): the
//!   row's attempt is counted, its aggregate's later rows wait, and the other aggregates'
//!   rows still go out; after [`RelayConfig::park_after`] attempts the row is *parked*
//!   (see [`outbox::park`]), which stops its aggregate until someone unparks it;
//! - the row can never be sent (a name over AMQP's 255 bytes): parked at once.

use std::collections::HashSet;
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
    /// Refused attempts after which a row is parked (≥ 1).
    pub park_after: u32,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            mandatory: true,
            park_after: 10,
        }
    }
}

impl RelayConfig {
    /// Checks the values.
    ///
    /// ```
    /// use postroom_bus::RelayConfig;
    /// assert!(RelayConfig { park_after: 0, ..RelayConfig::default() }.validate().is_err());
    /// ```
    ///
    /// # Errors
    /// [`BusError::Config`] naming the bad field.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.batch_size == 0 {
            return Err(BusError::Config("batch_size must be at least 1".into()));
        }
        if self.park_after == 0 {
            return Err(BusError::Config("park_after must be at least 1".into()));
        }
        Ok(())
    }
}

/// What a failed publish says about the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The broker is out of reach: nothing else would go out either.
    Broker,
    /// The broker refused this row; it may take it later (the exchange declared, a queue
    /// bound).
    Refused,
    /// The row can never be sent as it is.
    Permanent,
}

fn failure_of(error: &postroom_client::Error) -> Failure {
    use postroom_client::Error;
    match error {
        Error::Invalid { .. } | Error::Codec { .. } => Failure::Permanent,
        Error::Unroutable { .. } | Error::Nacked { .. } => Failure::Refused,
        // A channel-level (soft) error: the broker closed the channel over this publish
        // (404 NOT_FOUND, 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED); the connection
        // stays up.
        Error::Amqp { source, .. } if source.is_amqp_soft_error() => Failure::Refused,
        _ => Failure::Broker,
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

/// The error and its sources, for the row's `last_error`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // lapin's errors repeat their source's text; once is enough.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
    /// [`BusError::Config`] for a publisher without confirms or an invalid config;
    /// [`BusError::Database`].
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
        config.validate()?;
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

    /// Publishes up to one batch of unsent rows, in order per aggregate. A row the broker
    /// refuses holds back its aggregate's later rows for this round (and is parked after
    /// [`RelayConfig::park_after`] attempts); the other aggregates' rows still go out. A
    /// broker out of reach ends the round. Returns how many rows were published.
    ///
    /// ```no_run
    /// # async fn run(relay: postroom_bus::OutboxRelay<postroom_client::Json>) -> Result<(), postroom_bus::BusError> {
    /// let published = relay.relay_once().await?;
    /// println!("{published} events published");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`BusError::Publish`] for the first row that failed (every row published before it,
    /// and after it for other aggregates, is marked sent); [`BusError::Database`].
    pub async fn relay_once(&self) -> Result<usize, BusError> {
        let records = outbox::unsent(&self.database(), self.config.batch_size)?;
        let options = PublishOptions::default().with_mandatory(self.config.mandatory);
        let mut held_back: HashSet<String> = HashSet::new();
        let mut first_failure = None;
        let mut sent = 0;
        for record in records {
            if held_back.contains(&record.aggregate_id) {
                continue;
            }
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
            let error = match published {
                Ok(()) => {
                    outbox::mark_sent(&self.database(), record.id)?;
                    sent += 1;
                    continue;
                }
                Err(error) => error,
            };
            let failure = failure_of(&error);
            if failure == Failure::Broker {
                return Err(BusError::Publish(error));
            }
            let attempts = record.attempts.saturating_add(1);
            let reason = error_chain(&error);
            if failure == Failure::Permanent || attempts >= self.config.park_after {
                outbox::park(&self.database(), record.id, &reason)?;
                tracing::error!(
                    message_id = record.message_id,
                    aggregate_id = record.aggregate_id,
                    attempts,
                    error = reason,
                    "outbox row parked: it and its aggregate's later events wait for outbox::unpark"
                );
            } else {
                outbox::mark_failed(&self.database(), record.id, &reason)?;
                tracing::warn!(
                    message_id = record.message_id,
                    aggregate_id = record.aggregate_id,
                    attempts,
                    error = reason,
                    "outbox row refused by the broker; its aggregate waits for the next round"
                );
            }
            held_back.insert(record.aggregate_id);
            first_failure.get_or_insert(error);
        }
        match first_failure {
            Some(error) => Err(BusError::Publish(error)),
            None => Ok(sent),
        }
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
