//! The allocation service of seeds 002/003: an application that is a message handler.
//!
//! ```text
//! broker ── BatchQuantityChanged ──▶ Worker ─▶ BatchQuantityChangedHandler (entrypoint)
//!                                                  │ ChangeBatchQuantity (command)
//!                                                  ▼
//!                                           MessageBus ─▶ handlers ─▶ Product (aggregate)
//!                                                  │ Deallocated → Reallocate → Allocated
//!                                                  ▼
//!                            SQLite: products + postroom_outbox (one transaction)
//!                                                  │
//! broker ◀── Allocated (line_allocated) ── OutboxRelay (confirms, in order)
//! ```
//!
//! Layout:
//! - [`domain`]: `Product`, `Batch`, `OrderLine`; the events and commands.
//! - [`repository`]: products in SQLite and `AllocationUnitOfWork`.
//! - [`handlers`]: the command and event handlers, `build_bus`.
//! - this file: the external message in, the entrypoint handler, the topology, and
//!   `AllocationService` (the composition of bus and unit of work).

pub mod domain;
pub mod handlers;
pub mod repository;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postroom_bus::{BusError, Command, MessageBus, OutboxRelay, RelayConfig};
use postroom_client::{
    CommandResult, Connector, ExchangeSpec, Handler, Incoming, Json, Message, Publisher,
    PublisherConfig, QueueSpec, Validate, Worker, WorkerConfig, WorkerStats, bind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;

use crate::ExampleError;

use self::domain::ChangeBatchQuantity;
use self::handlers::Invalid;
use self::repository::AllocationUnitOfWork;

/// The exchange for messages in and out.
pub const EXCHANGE: &str = "allocation";
/// The routing key of `BatchQuantityChanged`.
pub const CHANGE_KEY: &str = "change_batch_quantity";
/// The routing key of `Allocated`.
pub const ALLOCATED_KEY: &str = "line_allocated";
/// The service's inbound queue.
pub const QUEUE: &str = "allocation.change_batch_quantity";
/// Where unprocessable inbound messages go.
pub const DEAD_LETTER_QUEUE: &str = "allocation.dead";

/// External event in: a batch's quantity changed (sent by the warehouse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchQuantityChanged {
    /// The batch.
    pub batchref: String,
    /// Its new quantity.
    pub qty: u32,
}

impl Message for BatchQuantityChanged {
    const EXCHANGE: &'static str = EXCHANGE;
    const MESSAGE_TYPE: &'static str = "warehouse.batch_quantity_changed";
    fn routing_key(&self) -> Cow<'_, str> {
        CHANGE_KEY.into()
    }
}

impl Validate for BatchQuantityChanged {
    fn validate(&self) -> Result<(), String> {
        if self.batchref.is_empty() { Err("batchref is empty".into()) } else { Ok(()) }
    }
}

/// Declares the exchange, the inbound queue (with retry and a dead-letter queue).
///
/// # Errors
/// When the broker refuses a declaration.
pub async fn declare_topology(connector: &Connector) -> postroom_client::Result<()> {
    let channel = connector.channel().await?;
    ExchangeSpec::topic(EXCHANGE).declare(&channel).await?;
    ExchangeSpec::direct("allocation.dlx").declare(&channel).await?;
    QueueSpec::new(DEAD_LETTER_QUEUE).declare(&channel).await?;
    bind(&channel, DEAD_LETTER_QUEUE, "allocation.dlx", DEAD_LETTER_QUEUE).await?;
    QueueSpec::new(QUEUE)
        .retry(Duration::from_millis(200), 2.0, Duration::from_secs(5))
        .quorum() // RabbitMQ honours x-delivery-limit only on quorum queues
        .delivery_limit(5)
        .dead_letter("allocation.dlx", Some(DEAD_LETTER_QUEUE))
        .declare(&channel)
        .await?;
    bind(&channel, QUEUE, EXCHANGE, CHANGE_KEY).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The allocation service running: its outbox relay and its worker for
/// `BatchQuantityChanged`, beside the [`AllocationService`] itself.
#[derive(Debug)]
pub struct Running {
    /// The service, for commands from inside the process.
    pub service: AllocationService,
    /// The publisher the relay sends the outbox through (on the connector given to
    /// [`start`]); usable for other messages too.
    pub publisher: Arc<Publisher>,
    /// The worker's counters.
    pub stats: Arc<WorkerStats>,
    stop: watch::Sender<bool>,
    relay: JoinHandle<()>,
    worker: JoinHandle<postroom_client::Result<()>>,
}

impl Running {
    /// Stops the worker (finishing the messages in flight) and the relay, then closes the
    /// publisher and the connector's connection.
    ///
    /// # Errors
    /// The worker's error, or [`ExampleError::Task`] when a task panicked.
    pub async fn stop(self) -> Result<(), ExampleError> {
        // Both tasks may be gone already; then there is no one left to tell.
        let _ = self.stop.send(true);
        let worker = self.worker.await;
        let relay = self.relay.await;
        self.publisher.close().await;
        worker??;
        relay?;
        Ok(())
    }
}

/// The composition root: declares the topology, opens the database at `db` and starts the
/// outbox relay and the worker, all on `connector`.
///
/// # Errors
/// [`ExampleError::Broker`] when a declaration is refused; [`ExampleError::Bus`] when the
/// database cannot be opened.
pub async fn start(connector: Arc<Connector>, db: &Path) -> Result<Running, ExampleError> {
    declare_topology(&connector).await?;
    let publisher =
        Arc::new(Publisher::new(Arc::clone(&connector), Json, PublisherConfig::default())?);
    let relay = OutboxRelay::open(db, Arc::clone(&publisher), RelayConfig::default())?;
    let service = AllocationService::open(db, Some(relay.waker()))?;
    let worker = Worker::new(connector, service.entrypoint(), WorkerConfig::new(QUEUE))?;
    let stats = worker.stats();
    let (stop, stopped) = watch::channel(false);
    let mut relay_stop = stopped.clone();
    let relay = tokio::spawn(relay.run(async move {
        let _ = relay_stop.changed().await;
    }));
    let mut worker_stop = stopped;
    let worker = tokio::spawn(worker.run(async move {
        let _ = worker_stop.changed().await;
    }));
    Ok(Running { service, publisher, stats, stop, relay, worker })
}

/// The service: the bus and its unit of work (one at a time: SQLite has one writer).
#[derive(Debug, Clone)]
pub struct AllocationService {
    bus: Arc<MessageBus<AllocationUnitOfWork>>,
    uow: Arc<Mutex<AllocationUnitOfWork>>,
}

impl AllocationService {
    /// Opens the service's database; commits that write events wake `relay`.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn open(path: &Path, relay: Option<Arc<Notify>>) -> Result<AllocationService, BusError> {
        Ok(AllocationService {
            bus: Arc::new(handlers::build_bus()?),
            uow: Arc::new(Mutex::new(AllocationUnitOfWork::open(path, relay)?)),
        })
    }

    /// Handles a command (and the events it raises).
    ///
    /// # Errors
    /// The command handler's error.
    pub async fn execute<C: Command>(&self, command: C) -> Result<C::Output, BusError> {
        let mut uow = self.uow.lock().await;
        uow.set_cause(None);
        self.bus.dispatch(command, &mut uow).await
    }

    /// Where `order_id`'s line of `sku` is allocated.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub async fn allocation_of(
        &self,
        order_id: &str,
        sku: &str,
    ) -> Result<Option<String>, BusError> {
        self.uow.lock().await.allocation_of(order_id, sku)
    }

    /// The worker handler for `BatchQuantityChanged` messages.
    pub fn entrypoint(&self) -> BatchQuantityChangedHandler {
        BatchQuantityChangedHandler { service: self.clone() }
    }
}

/// Entrypoint: `BatchQuantityChanged` → `ChangeBatchQuantity` on the bus. The outgoing
/// events name the message as their cause.
#[derive(Debug)]
pub struct BatchQuantityChangedHandler {
    service: AllocationService,
}

impl Handler for BatchQuantityChangedHandler {
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let event: BatchQuantityChanged = match message.json() {
            Ok(event) => event,
            Err(error) => return CommandResult::invalid(error),
        };
        if let Err(reason) = event.validate() {
            return CommandResult::invalid(reason);
        }
        let command = ChangeBatchQuantity { reference: event.batchref, qty: event.qty };
        let mut uow = self.service.uow.lock().await;
        uow.set_cause(Some(message.envelope.clone()));
        let result = self.service.bus.dispatch(command, &mut uow).await;
        uow.set_cause(None);
        match result {
            Ok(()) => CommandResult::Success,
            Err(BusError::Handler(error)) if error.is::<Invalid>() => {
                CommandResult::dead_letter(error.to_string())
            }
            Err(error) => {
                tracing::warn!(%error, "allocation failed; retrying");
                CommandResult::retry()
            }
        }
    }
}
