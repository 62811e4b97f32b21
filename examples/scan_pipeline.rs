//! The scan pipeline (seed 001), runnable against a local broker:
//!
//! ```text
//! postroom serve &
//! cargo run --example scan_pipeline
//! ```
//!
//! Starts two competing workers per priority queue, publishes a batch of scan requests
//! (some flaky, one corrupt image, one for a model that is down), and reports the results
//! broadcast on `scan.results` and what reached the dead-letter queue.

use std::sync::Arc;
use std::time::Duration;

use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::{
    Backoff, Connector, Json, MemoryProcessedStore, Publisher, PublisherConfig, QueueSpec, bind,
};
use postroom_examples::scan::classifier::FakeClassifier;
use postroom_examples::scan::{self, Priority, ScanCompleted, ScanRequested};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    postroom_examples::init_tracing();
    let url = postroom_examples::broker_url();
    let connector = Arc::new(Connector::new(&url, Backoff::default())?.with_name("scan-api"));
    scan::declare_topology(&connector).await?;
    let channel = connector.channel().await?;
    QueueSpec::new("analytics.scan_results").declare(&channel).await?;
    bind(&channel, "analytics.scan_results", scan::RESULTS_EXCHANGE, "").await?;

    let publisher = Arc::new(Publisher::new(
        Arc::clone(&connector),
        Json,
        PublisherConfig { source: Some("scan-api".into()), ..PublisherConfig::default() },
    )?);
    let classifier = Arc::new(FakeClassifier::new(Duration::from_millis(20)));
    let processed = Arc::new(MemoryProcessedStore::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut connectors = Vec::new();
    for priority in Priority::ALL {
        for _ in 0..2 {
            // One connection per competing consumer, as separate processes would have.
            let worker_connector = Arc::new(Connector::new(&url, Backoff::default())?);
            connectors.push(Arc::clone(&worker_connector));
            let worker = scan::build_worker(
                worker_connector,
                priority,
                Arc::clone(&classifier),
                Arc::clone(&publisher),
                Arc::clone(&processed),
            )?;
            let mut stopped = stopped.clone();
            workers.push(tokio::spawn(worker.run(async move {
                let _ = stopped.changed().await;
            })));
        }
    }

    let images =
        ["bottle.png", "can.png", "flaky/box.png", "corrupt.png", "down/cup.png", "paper.png"];
    for (n, image) in images.iter().enumerate() {
        let priority = Priority::ALL[n % 3];
        let request = ScanRequested {
            task_id: format!("task-{n}"),
            image_url: format!("s3://scans/{image}"),
            priority,
        };
        let envelope = publisher.publish(&request).await?;
        println!("requested {} ({priority:?}) as message {}", request.task_id, envelope.message_id);
    }

    let expected_results = images.len() - 2;
    let mut results = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while results < expected_results && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get("analytics.scan_results".into(), BasicGetOptions { no_ack: true })
            .await?
        {
            Some(message) => {
                let completed: ScanCompleted = serde_json::from_slice(&message.delivery.data)?;
                println!("completed {}: {}", completed.task_id, completed.label);
                results += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut dead = 0;
    while dead < 2 && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(scan::DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            Some(message) => {
                let request: ScanRequested = serde_json::from_slice(&message.delivery.data)?;
                println!("dead-lettered {} ({})", request.task_id, request.image_url);
                dead += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    stop.send(true)?;
    for worker in workers {
        worker.await??;
    }
    for connector in connectors {
        connector.close().await;
    }
    publisher.close().await;
    Ok(())
}
