//! The scan pipeline of seed 001: Envelope Wrapper → Content-Based Router → Competing
//! Consumers → Retry → Dead Letter Channel, with an Idempotent Receiver and the results on
//! a Publish-Subscribe channel.
//!
//! ```text
//! scan API ── ScanRequested (envelope: id, trace, source) ──▶ exchange "scan" (topic)
//!      scan.high / scan.normal / scan.low   (routed by the priority in the routing key)
//!        each: retry 100 ms ×2 ≤ 1 s, delivery limit 3, DLX → scan.dlq
//!      ▼ competing workers per queue (prefetch 1)
//! ScanHandler (validate) → Classify (command) → Classifier (port)
//!      ▼ success
//! exchange "scan.results" (fanout) ── ScanCompleted ──▶ analytics, rewards, notifications
//! ```
//!
//! Layout: this file (messages, topology, command, wiring) and [`classifier`] (the port and
//! a stand-in implementation with transient and permanent failures).

pub mod classifier;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use postroom_client::{
    Backoff, Command, CommandHandler, CommandResult, Connector, Envelope, ExchangeSpec, HandlerExt,
    Idempotent, IdempotentReceiver, Json, MemoryProcessedStore, Message, PublishOptions, Publisher,
    PublisherConfig, QueueSpec, Received, Traced, Tracing, Validate, Worker, WorkerConfig,
    WorkerStats, bind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ExampleError;

use self::classifier::{Classifier, ClassifyError};

/// The router exchange.
pub const EXCHANGE: &str = "scan";
/// The results exchange (fanout).
pub const RESULTS_EXCHANGE: &str = "scan.results";
/// The dead-letter exchange.
pub const DEAD_LETTER_EXCHANGE: &str = "scan.dlx";
/// The dead-letter queue.
pub const DEAD_LETTER_QUEUE: &str = "scan.dlq";
/// Deliveries after which a message goes to the dead-letter queue (returned 3 times).
pub const DELIVERY_LIMIT: u32 = 3;

/// How urgent a scan is; decides its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Paying users.
    High,
    /// Everyone else.
    Normal,
    /// Batch re-scans.
    Low,
}

impl Priority {
    /// Every priority.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The queue (and routing key) for this priority.
    pub fn queue(self) -> &'static str {
        match self {
            Priority::High => "scan.high",
            Priority::Normal => "scan.normal",
            Priority::Low => "scan.low",
        }
    }
}

/// A request to classify an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequested {
    /// The task.
    pub task_id: String,
    /// The image.
    pub image_url: String,
    /// Its priority.
    pub priority: Priority,
}

impl Message for ScanRequested {
    const EXCHANGE: &'static str = EXCHANGE;
    const MESSAGE_TYPE: &'static str = "scan.requested";
    fn routing_key(&self) -> Cow<'_, str> {
        self.priority.queue().into()
    }
}

impl Validate for ScanRequested {
    fn validate(&self) -> Result<(), String> {
        if self.task_id.is_empty() {
            return Err("task_id is empty".into());
        }
        if !(self.image_url.starts_with("s3://") || self.image_url.starts_with("https://")) {
            return Err(format!("image_url {:?} is not s3:// or https://", self.image_url));
        }
        Ok(())
    }
}

/// The result, broadcast to every interested service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanCompleted {
    /// The task.
    pub task_id: String,
    /// What the image shows.
    pub label: String,
}

impl Message for ScanCompleted {
    const EXCHANGE: &'static str = RESULTS_EXCHANGE;
    const MESSAGE_TYPE: &'static str = "scan.completed";
    fn routing_key(&self) -> Cow<'_, str> {
        "".into()
    }
}

/// Declares the router, the three priority queues with their retry policy and dead-letter
/// queue, and the results exchange.
///
/// # Errors
/// When the broker refuses a declaration.
pub async fn declare_topology(connector: &Connector) -> postroom_client::Result<()> {
    let channel = connector.channel().await?;
    ExchangeSpec::topic(EXCHANGE).declare(&channel).await?;
    ExchangeSpec::fanout(RESULTS_EXCHANGE).declare(&channel).await?;
    ExchangeSpec::direct(DEAD_LETTER_EXCHANGE).declare(&channel).await?;
    QueueSpec::new(DEAD_LETTER_QUEUE).declare(&channel).await?;
    bind(&channel, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE).await?;
    for priority in Priority::ALL {
        QueueSpec::new(priority.queue())
            .retry(Duration::from_millis(100), 2.0, Duration::from_secs(1))
            .quorum() // RabbitMQ honours x-delivery-limit only on quorum queues
            .delivery_limit(DELIVERY_LIMIT)
            .dead_letter(DEAD_LETTER_EXCHANGE, Some(DEAD_LETTER_QUEUE))
            .declare(&channel)
            .await?;
        bind(&channel, priority.queue(), EXCHANGE, priority.queue()).await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The use case: classify, then announce the result as caused by the request.
#[derive(Debug)]
pub struct Classify<K> {
    classifier: Arc<K>,
    results: Arc<Publisher>,
}

impl<K> Classify<K> {
    /// The command over a classifier, publishing results through `results`.
    pub fn new(classifier: Arc<K>, results: Arc<Publisher>) -> Classify<K> {
        Classify { classifier, results }
    }
}

impl<K: Classifier> Command<Received<ScanRequested>> for Classify<K> {
    async fn execute(&self, input: Received<ScanRequested>) -> CommandResult {
        let request = input.message;
        match self.classifier.classify(&request.image_url).await {
            Ok(label) => {
                let completed = ScanCompleted { task_id: request.task_id, label };
                let envelope = Envelope::caused_by(&input.envelope);
                match self
                    .results
                    .publish_with(&completed, envelope, &PublishOptions::default())
                    .await
                {
                    Ok(_) => CommandResult::Success,
                    Err(error) => {
                        tracing::warn!(%error, "result not published; retrying");
                        CommandResult::retry()
                    }
                }
            }
            Err(ClassifyError::Unavailable(reason)) => {
                tracing::info!(%reason, attempt = input.delivery_count + 1, "classifier unavailable");
                CommandResult::retry()
            }
            Err(ClassifyError::Unreadable(reason)) => CommandResult::dead_letter(reason),
        }
    }
}

/// The handler stack of one scan worker.
pub type ScanHandler<K> =
    Traced<Idempotent<CommandHandler<ScanRequested, Classify<K>>, MemoryProcessedStore>>;

/// One competing consumer of `priority`'s queue. Workers of one process share `processed`,
/// so a redelivered duplicate is recognised whichever of them gets it.
///
/// # Errors
/// [`postroom_client::Error::Config`].
pub fn build_worker<K: Classifier>(
    connector: Arc<Connector>,
    priority: Priority,
    classifier: Arc<K>,
    results: Arc<Publisher>,
    processed: Arc<MemoryProcessedStore>,
) -> postroom_client::Result<Worker<ScanHandler<K>>> {
    // Prefetch 1: a slow scan does not hold back messages another worker could take.
    let config =
        WorkerConfig { prefetch: 1, concurrency: 1, ..WorkerConfig::new(priority.queue()) };
    // The claim must outlive the longest run the worker allows, or a duplicate could run
    // beside a slow scan.
    let lease = config.handler_timeout + config.max_retry_hold + Duration::from_secs(30);
    let handler = CommandHandler::new(Classify::new(classifier, results))
        .with(IdempotentReceiver::new(processed).lease(lease))
        .with(Tracing);
    Worker::new(connector, handler, config)
}

/// The scan pipeline running: the API side's publisher and the competing workers.
#[derive(Debug)]
pub struct Running {
    /// The API side's connection (the publisher's), for declaring and inspecting queues.
    pub connector: Arc<Connector>,
    /// Publishes `ScanRequested` (source `scan-api`); the workers publish results with it.
    pub publisher: Arc<Publisher>,
    /// Each worker's priority and counters, in start order.
    pub workers: Vec<(Priority, Arc<WorkerStats>)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<postroom_client::Result<()>>>,
    connectors: Vec<Arc<Connector>>,
}

impl Running {
    /// Stops every worker (finishing the scans in flight), then closes the connections.
    ///
    /// # Errors
    /// The first worker's error, or [`ExampleError::Task`] when a worker panicked.
    pub async fn stop(self) -> Result<(), ExampleError> {
        // Every worker may be gone already; then there is no one left to tell.
        let _ = self.stop.send(true);
        let mut first_error = None;
        for task in self.tasks {
            let stopped = match task.await {
                Ok(result) => result.map_err(ExampleError::from),
                Err(error) => Err(ExampleError::from(error)),
            };
            if let Err(error) = stopped {
                first_error.get_or_insert(error);
            }
        }
        for connector in self.connectors {
            connector.close().await;
        }
        self.publisher.close().await;
        first_error.map_or(Ok(()), Err)
    }
}

/// The composition root: declares the topology and starts `per_queue` competing workers on
/// each priority queue, each with a connection of its own (as separate processes would
/// have), sharing one processed-message store and `classifier`.
///
/// # Errors
/// [`ExampleError::Broker`] when the broker refuses a declaration or a setting is invalid.
pub async fn start<K: Classifier>(
    url: &str,
    classifier: Arc<K>,
    per_queue: usize,
) -> Result<Running, ExampleError> {
    let connector = Arc::new(Connector::new(url, Backoff::default())?.with_name("scan-api"));
    declare_topology(&connector).await?;
    let config = PublisherConfig { source: Some("scan-api".into()), ..PublisherConfig::default() };
    let publisher = Arc::new(Publisher::new(Arc::clone(&connector), Json, config)?);
    let processed = Arc::new(MemoryProcessedStore::new());
    let (stop, stopped) = watch::channel(false);
    let (mut workers, mut tasks, mut connectors) = (Vec::new(), Vec::new(), Vec::new());
    for priority in Priority::ALL {
        for _ in 0..per_queue {
            let own = Arc::new(Connector::new(url, Backoff::default())?);
            connectors.push(Arc::clone(&own));
            let worker = build_worker(
                own,
                priority,
                Arc::clone(&classifier),
                Arc::clone(&publisher),
                Arc::clone(&processed),
            )?;
            workers.push((priority, worker.stats()));
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(worker.run(async move {
                let _ = stopped.changed().await;
            })));
        }
    }
    Ok(Running { connector, publisher, workers, stop, tasks, connectors })
}
