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
use postroom_client::{QueueSpec, bind};
use postroom_examples::scan::classifier::FakeClassifier;
use postroom_examples::scan::{self, Priority, ScanCompleted, ScanRequested};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    postroom_examples::init_tracing();
    let url = postroom_examples::broker_url();
    let classifier = Arc::new(FakeClassifier::new(Duration::from_millis(20)));
    let running = scan::start(&url, classifier, 2).await?;
    let channel = running.connector.channel().await?;
    QueueSpec::new("analytics.scan_results").declare(&channel).await?;
    bind(&channel, "analytics.scan_results", scan::RESULTS_EXCHANGE, "").await?;

    let images =
        ["bottle.png", "can.png", "flaky/box.png", "corrupt.png", "down/cup.png", "paper.png"];
    for (n, image) in images.iter().enumerate() {
        let priority = Priority::ALL[n % 3];
        let request = ScanRequested {
            task_id: format!("task-{n}"),
            image_url: format!("s3://scans/{image}"),
            priority,
        };
        let envelope = running.publisher.publish(&request).await?;
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
    running.stop().await?;
    Ok(())
}
