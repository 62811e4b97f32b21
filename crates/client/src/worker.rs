//! The worker: consumes a queue, runs each delivery through a [`ConsumerAdapter`] with a
//! concurrency limit, applies the acknowledgement, and shuts down gracefully.
//!
//! Ownership: the `run` task owns the consumer; each delivery is handled in a task of a
//! `JoinSet` holding a semaphore permit and a share of its session's channel, and
//! acknowledges through its own lapin `Acker`. A session's channel closes when the session
//! has ended and its last delivery is settled (so a reconnect neither leaks channels nor
//! cuts off the acknowledgements of messages still in flight). Shutdown is a `watch` flag
//! that cuts retry holds short, and it ends every wait of `run` (connecting, consuming,
//! backing off).
//!
//! Shutdown order: cancel the consumer (no new deliveries), wait for in-flight messages (at
//! most the handler timeout plus a retry hold), then close the channel; deliveries the broker
//! had already sent but no task had started are returned to the queue by the close.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::adapter::{Acknowledgement, ConsumerAdapter, Outcome, acknowledgement};
use crate::connector::Connector;
use crate::envelope::short;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::incoming::Incoming;

/// Worker settings.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::WorkerConfig;
/// let config = WorkerConfig { concurrency: 4, prefetch: 8, ..WorkerConfig::new("scan.normal") };
/// config.validate().unwrap();
/// assert!(WorkerConfig { prefetch: 0, ..WorkerConfig::new("q") }.validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The queue to consume (declared beforehand, e.g. with [`QueueSpec`](crate::QueueSpec)).
    pub queue: String,
    /// `basic.qos` prefetch: unacknowledged messages the broker sends ahead (≥ concurrency
    /// keeps every slot busy).
    pub prefetch: u16,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Longest time one message may take; past it the handler is cancelled and the message
    /// requeued.
    pub handler_timeout: Duration,
    /// Longest time the worker holds a message before nacking it when the command asked for
    /// `Retry { after }`. Zero (the default) nacks at once and leaves the delay to the
    /// queue's retry policy (`x-retry-*` on Postroom), which is what a RabbitMQ user
    /// expects; a non-zero hold honours `after` on brokers without such a policy, at the
    /// cost of a concurrency slot.
    pub max_retry_hold: Duration,
    /// The consumer tag (empty: the broker picks one).
    pub consumer_tag: String,
}

impl WorkerConfig {
    /// Defaults for `queue`: prefetch 16, concurrency 8, 30 s per message, no retry hold.
    ///
    /// ```
    /// let config = postroom_client::WorkerConfig::new("jobs");
    /// assert_eq!((config.prefetch, config.concurrency), (16, 8));
    /// ```
    pub fn new(queue: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            queue: queue.into(),
            prefetch: 16,
            concurrency: 8,
            handler_timeout: Duration::from_secs(30),
            max_retry_hold: Duration::ZERO,
            consumer_tag: String::new(),
        }
    }

    /// Checks the values.
    ///
    /// ```
    /// use postroom_client::WorkerConfig;
    /// assert!(WorkerConfig { concurrency: 0, ..WorkerConfig::new("jobs") }.validate().is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.queue.is_empty() || self.queue.len() > 255 {
            return Err(Error::Config("queue must be 1 to 255 bytes".into()));
        }
        if self.prefetch == 0 {
            return Err(Error::Config("prefetch must be at least 1".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.handler_timeout.is_zero() {
            return Err(Error::Config("handler_timeout must be > 0".into()));
        }
        if self.consumer_tag.len() > 255 {
            return Err(Error::Config("consumer_tag must be at most 255 bytes".into()));
        }
        Ok(())
    }
}

/// Counters a worker keeps while it runs; read them from another task.
///
/// ```
/// let stats = postroom_client::WorkerStats::default();
/// assert_eq!(stats.acked(), 0);
/// ```
#[derive(Debug, Default)]
pub struct WorkerStats {
    acked: AtomicU64,
    requeued: AtomicU64,
    rejected: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    ack_failed: AtomicU64,
}

impl WorkerStats {
    /// Messages acknowledged (`Success` and `Drop`).
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().acked(), 0);
    /// ```
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// Messages nacked with requeue (`Retry`, panics, timeouts).
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().requeued(), 0);
    /// ```
    pub fn requeued(&self) -> u64 {
        self.requeued.load(Ordering::Relaxed)
    }
    /// Messages rejected to the dead-letter exchange.
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().rejected(), 0);
    /// ```
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Handler panics.
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().panicked(), 0);
    /// ```
    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }
    /// Handler timeouts.
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().timed_out(), 0);
    /// ```
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
    /// Acknowledgements that could not be sent (channel gone: the broker redelivers).
    ///
    /// ```
    /// assert_eq!(postroom_client::WorkerStats::default().ack_failed(), 0);
    /// ```
    pub fn ack_failed(&self) -> u64 {
        self.ack_failed.load(Ordering::Relaxed)
    }
}

/// Consumes one queue with a handler.
///
/// ```no_run
/// # async fn run() -> postroom_client::Result<()> {
/// use std::sync::Arc;
/// use postroom_client::{Backoff, CommandResult, Connector, Worker, WorkerConfig, handler_fn};
///
/// let connector = Arc::new(Connector::new("amqp://guest:guest@127.0.0.1:5672/%2f", Backoff::default())?);
/// let handler = handler_fn(|message| async move {
///     println!("{} bytes", message.body.len());
///     CommandResult::Success
/// });
/// let worker = Worker::new(connector, handler, WorkerConfig::new("jobs"))?;
/// worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Worker<H> {
    connector: Arc<Connector>,
    adapter: Arc<ConsumerAdapter<H>>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
}

impl<H> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<H: Handler> Worker<H> {
    /// A worker for `config.queue` on `connector`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, CommandResult, Connector, Worker, WorkerConfig, handler_fn};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let handler = handler_fn(|_| async { CommandResult::Success });
    /// let worker = Worker::new(connector, handler, WorkerConfig::new("jobs")).unwrap();
    /// # drop(worker);
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] when the config is invalid.
    pub fn new(connector: Arc<Connector>, handler: H, config: WorkerConfig) -> Result<Worker<H>> {
        config.validate()?;
        let adapter = Arc::new(ConsumerAdapter::new(handler, config.handler_timeout));
        Ok(Worker { connector, adapter, config, stats: Arc::new(WorkerStats::default()) })
    }

    /// The worker's counters (shared; they keep counting while `run` runs).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, CommandResult, Connector, Worker, WorkerConfig, handler_fn};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let worker = Worker::new(connector, handler_fn(|_| async { CommandResult::Success }), WorkerConfig::new("jobs")).unwrap();
    /// let stats = worker.stats();
    /// assert_eq!(stats.acked(), 0);
    /// ```
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes, then stops consuming, finishes the messages in
    /// flight and closes its channel (the connector's connection stays open: it may be shared;
    /// close it with [`Connector::close`]). A lost connection is re-established (with the
    /// connector's backoff) and consuming resumes; messages in flight then are redelivered by
    /// the broker (at-least-once).
    ///
    /// ```no_run
    /// # async fn run(worker: postroom_client::Worker<postroom_client::FnHandler<fn(postroom_client::Incoming) -> std::future::Ready<postroom_client::CommandResult>>>) -> postroom_client::Result<()> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let running = tokio::spawn(worker.run(async move { let _ = stopped.await; }));
    /// // … later: stop consuming, finish in-flight messages, close.
    /// let _ = stop.send(());
    /// running.await.expect("worker task")?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Connect`] when the broker stays unreachable past the connector's
    /// `max_attempts` (never with the default [`Backoff`](crate::Backoff), which retries
    /// forever); [`Error::Amqp`] when it refuses
    /// the consumer (e.g. `404`, no such queue).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = pin!(shutdown);
        let (stopping_tx, stopping) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut in_flight = JoinSet::new();
        let mut attempt = 0;
        let mut session: Option<Arc<SessionChannel>> = None;
        let result = 'sessions: loop {
            let channel = tokio::select! {
                () = &mut shutdown => break Ok(()),
                channel = self.connector.channel() => match channel {
                    Ok(channel) => channel,
                    Err(error) => break Err(error),
                },
            };
            // The previous session's channel stays open while its deliveries are in flight
            // (they acknowledge on it) and closes when the last of them lets go.
            let current = Arc::new(SessionChannel(channel.clone()));
            session = Some(Arc::clone(&current));
            let consumer = async {
                channel
                    .basic_qos(self.config.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(Error::amqp("basic.qos"))?;
                channel
                    .basic_consume(
                        short("queue", &self.config.queue)?,
                        short("consumer_tag", &self.config.consumer_tag)?,
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(Error::amqp("basic.consume"))
            };
            let consumer = tokio::select! {
                () = &mut shutdown => break Ok(()),
                consumer = consumer => consumer,
            };
            let mut consumer = match consumer {
                Ok(consumer) => consumer,
                Err(error) if self.connector.is_connected().await => break Err(error),
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(%error, "consume failed with the connection; reconnecting");
                    if self.back_off(attempt, &mut shutdown).await.is_break() {
                        break Ok(());
                    }
                    continue;
                }
            };
            tracing::info!(queue = %self.config.queue, "consuming");
            loop {
                // Finished tasks are reaped as we go so the set stays the size of what is in
                // flight.
                while in_flight.try_join_next().is_some() {}
                let permit = tokio::select! {
                    () = &mut shutdown => {
                        let tag = consumer.tag();
                        // The broker may already have cancelled it (channel closing); either
                        // way nothing more will be delivered.
                        let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                        break 'sessions Ok(());
                    }
                    permit = Arc::clone(&slots).acquire_owned() => permit,
                };
                let Ok(permit) = permit else { break 'sessions Err(Error::Closed) };
                let next = tokio::select! {
                    () = &mut shutdown => {
                        let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                        break 'sessions Ok(());
                    }
                    next = consumer.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        attempt = 0;
                        let (message, acker) = Incoming::from_delivery(delivery);
                        let adapter = Arc::clone(&self.adapter);
                        let stats = Arc::clone(&self.stats);
                        let hold = self.config.max_retry_hold;
                        let stopping = stopping.clone();
                        let acked_on = Arc::clone(&current);
                        in_flight.spawn(async move {
                            let outcome = adapter.process(message).await;
                            settle(&acker, &outcome, hold, stopping, &stats).await;
                            drop(acked_on);
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "consumer failed; reconnecting");
                        attempt += 1;
                        if self.back_off(attempt, &mut shutdown).await.is_break() {
                            break 'sessions Ok(());
                        }
                        continue 'sessions;
                    }
                    None => {
                        // Cancelled by the broker (queue deleted, or the channel closed).
                        tracing::warn!(queue = %self.config.queue, "consumer cancelled by the broker; consuming again");
                        attempt += 1;
                        if self.back_off(attempt, &mut shutdown).await.is_break() {
                            break 'sessions Ok(());
                        }
                        continue 'sessions;
                    }
                }
            }
        };
        let _ = stopping_tx.send(true);
        let drain =
            self.config.handler_timeout + self.config.max_retry_hold + Duration::from_secs(1);
        let drained =
            tokio::time::timeout(drain, async { while in_flight.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "in-flight messages did not finish; abandoning them"
            );
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
        }
        if let Some(session) = session
            && session.0.status().connected()
        {
            // Closing returns what the broker sent ahead but no task started.
            let _ = session.0.close(200, "worker stopped".into()).await;
        }
        tracing::info!(queue = %self.config.queue, "worker stopped");
        result
    }

    /// Waits the backoff's delay before the next session, or until `shutdown` completes
    /// (then `Break`).
    async fn back_off(
        &self,
        attempt: u32,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> ControlFlow<()> {
        tokio::select! {
            () = shutdown.as_mut() => ControlFlow::Break(()),
            () = tokio::time::sleep(self.connector.backoff().delay(attempt)) => ControlFlow::Continue(()),
        }
    }
}

/// A consuming session's channel, shared by the tasks handling its deliveries: they
/// acknowledge on it, so it must stay open until the last of them is done, and no longer
/// (each session opens a channel; one left open per reconnect would run into
/// `channel_max`). The last holder to let go closes it.
struct SessionChannel(lapin::Channel);

impl Drop for SessionChannel {
    fn drop(&mut self) {
        if !self.0.status().connected() {
            return;
        }
        let channel = self.0.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Already closing, or the connection went: nothing left to release.
                let _ = channel.close(200, "session over".into()).await;
            });
        }
    }
}

/// Sends the acknowledgement for `outcome`, holding a retry first when configured.
async fn settle(
    acker: &Acker,
    outcome: &Outcome,
    max_hold: Duration,
    mut stopping: watch::Receiver<bool>,
    stats: &WorkerStats,
) {
    match outcome {
        // The reason of a Drop or DeadLetter is the command's to log (see the Tracing
        // middleware); here it is only traced at debug level.
        Outcome::Completed(result) if result.reason().is_some() => {
            tracing::debug!(outcome = %result, "message not processed");
        }
        Outcome::Panicked(message) => {
            stats.panicked.fetch_add(1, Ordering::Relaxed);
            tracing::error!(panic = %message, "handler panicked; requeueing");
        }
        Outcome::TimedOut(after) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?after, "handler timed out; requeueing");
        }
        Outcome::Completed(_) => {}
    }
    let (sent, counter) = match acknowledgement(outcome) {
        Acknowledgement::Ack => (acker.ack(BasicAckOptions::default()).await, &stats.acked),
        Acknowledgement::Requeue { after } => {
            let hold = after.unwrap_or(Duration::ZERO).min(max_hold);
            if !hold.is_zero() && !*stopping.borrow() {
                tokio::select! {
                    () = tokio::time::sleep(hold) => {}
                    _ = stopping.changed() => {}
                }
            }
            let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            (acker.nack(options).await, &stats.requeued)
        }
        Acknowledgement::Reject => {
            (acker.reject(BasicRejectOptions { requeue: false }).await, &stats.rejected)
        }
    };
    match sent {
        Ok(true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // lapin answers `false` without sending when the delivery's channel has closed.
        Ok(false) => {
            stats.ack_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "acknowledgement not sent: its channel closed; the broker will redeliver"
            );
        }
        Err(error) => {
            stats.ack_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "acknowledgement not sent; the broker will redeliver");
        }
    }
}
