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
    Command, CommandHandler, CommandResult, Connector, Envelope, ExchangeSpec, HandlerExt,
    Idempotent, IdempotentReceiver, MemoryProcessedStore, Message, PublishOptions, Publisher,
    QueueSpec, Received, Traced, Tracing, Validate, Worker, WorkerConfig, bind,
};
use serde::{Deserialize, Serialize};

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
