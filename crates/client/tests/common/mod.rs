//! Helpers shared by the SDK's integration tests: bounded waits and a raw lapin side to
//! inspect what the SDK sent.
#![allow(dead_code)]

pub mod external;
pub mod probe;
pub mod scenarios;
pub mod worker_scenarios;

use std::future::Future;
use std::time::{Duration, Instant};

use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::lapin::{Channel, Connection, ConnectionProperties};

pub use probe::get;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `future` or fails the test naming `what`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

/// A plain lapin connection and channel, to look at the queues from outside the SDK.
pub async fn raw_channel(url: &str) -> (Connection, Channel) {
    let connection =
        within("connect", Connection::connect(url, ConnectionProperties::default())).await.unwrap();
    let channel = within("channel", connection.create_channel()).await.unwrap();
    (connection, channel)
}

/// Asserts that `queue` stays empty for a short while.
pub async fn assert_empty(channel: &Channel, queue: &str, for_how_long: Duration) {
    let deadline = Instant::now() + for_how_long;
    while Instant::now() < deadline {
        let got = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap();
        assert!(got.is_none(), "unexpected message in {queue}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number of ready messages in `queue` (passive declare).
pub async fn ready_count(channel: &Channel, queue: &str) -> u32 {
    let options = postroom_client::lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, Default::default())
        .await
        .expect("passive declare")
        .message_count()
}

/// Waits until `condition` holds, polling; fails the test naming `what` after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not true within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`eventually`], for a condition that must await.
pub async fn eventually_async<F: Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not true within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A worker running in the background, stopped through its shutdown signal.
pub struct RunningWorker {
    pub stats: std::sync::Arc<postroom_client::WorkerStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<postroom_client::Result<()>>,
}

impl RunningWorker {
    pub fn start<H: postroom_client::Handler>(
        url: &str,
        handler: H,
        config: postroom_client::WorkerConfig,
    ) -> RunningWorker {
        let connector = std::sync::Arc::new(
            postroom_client::Connector::new(url, postroom_client::Backoff::default()).unwrap(),
        );
        let worker = postroom_client::Worker::new(connector, handler, config).unwrap();
        let stats = worker.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        RunningWorker { stats, stop: Some(stop), task }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> postroom_client::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("worker shutdown", &mut self.task).await.expect("worker task")
    }
}
