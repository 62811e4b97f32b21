//! The scan pipeline against a real broker (Postroom, or RabbitMQ): routing by priority, two competing
//! workers per queue, retries with backoff, the dead-letter queue with its reasons, and the
//! results broadcast once per task.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom_client::lapin::options::QueueDeclareOptions;
use postroom_client::lapin::types::FieldTable;
use postroom_client::{QueueSpec, bind};
use postroom_examples::scan::classifier::FakeClassifier;
use postroom_examples::scan::{self, Priority, ScanCompleted, ScanRequested};

use super::probe::{death_reason, get};

const WAIT: Duration = Duration::from_secs(30);

pub async fn scans_are_routed_shared_retried_and_dead_lettered(url: &str) {
    let classifier = Arc::new(FakeClassifier::new(Duration::from_millis(30)));
    let running = scan::start(url, Arc::clone(&classifier), 2).await.unwrap();
    let publisher = &running.publisher;
    let channel = running.connector.channel().await.unwrap();
    QueueSpec::new("test.results").declare(&channel).await.unwrap();
    bind(&channel, "test.results", scan::RESULTS_EXCHANGE, "").await.unwrap();
    let normal_stats: Vec<_> = running
        .workers
        .iter()
        .filter(|(priority, _)| *priority == Priority::Normal)
        .map(|(_, stats)| Arc::clone(stats))
        .collect();

    // Competing consumers only compete once all of them are consuming.
    let deadline = Instant::now() + WAIT;
    for priority in Priority::ALL {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        loop {
            let queue = channel
                .queue_declare(priority.queue().into(), passive, FieldTable::default())
                .await
                .unwrap();
            if queue.consumer_count() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} has {} consumers",
                priority.queue(),
                queue.consumer_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut expected = BTreeMap::new();
    for n in 0..6 {
        let request = ScanRequested {
            task_id: format!("normal-{n}"),
            image_url: format!("s3://scans/item{n}.png"),
            priority: Priority::Normal,
        };
        publisher.publish(&request).await.unwrap();
        expected.insert(request.task_id, format!("item{n}"));
    }
    let special = [
        ("high-flaky", "s3://scans/flaky/bottle.png", Priority::High),
        ("low-corrupt", "s3://scans/corrupt.png", Priority::Low),
        ("high-down", "s3://scans/down/cup.png", Priority::High),
        ("low-invalid", "ftp://scans/x.png", Priority::Low),
    ];
    for (task, url, priority) in special {
        let request = ScanRequested { task_id: task.into(), image_url: url.into(), priority };
        publisher.publish(&request).await.unwrap();
    }
    expected.insert("high-flaky".into(), "bottle".into());

    let mut results = BTreeMap::new();
    while results.len() < expected.len() {
        let message = get(&channel, "test.results").await;
        let completed: ScanCompleted = serde_json::from_slice(&message.delivery.data).unwrap();
        assert!(
            results.insert(completed.task_id, completed.label).is_none(),
            "a task completed twice"
        );
    }
    assert_eq!(results, expected);
    assert_eq!(classifier.attempts("s3://scans/flaky/bottle.png"), 3);

    let mut dead = BTreeMap::new();
    while dead.len() < 3 {
        let message = get(&channel, scan::DEAD_LETTER_QUEUE).await;
        let request: ScanRequested = serde_json::from_slice(&message.delivery.data).unwrap();
        dead.insert(request.task_id, death_reason(&message).unwrap_or_default());
    }
    let reasons: Vec<(&str, &str)> =
        dead.iter().map(|(task, reason)| (task.as_str(), reason.as_str())).collect();
    assert_eq!(
        reasons,
        [("high-down", "delivery_limit"), ("low-corrupt", "rejected"), ("low-invalid", "rejected")]
    );
    // The model that is down was tried once per delivery: the first and DELIVERY_LIMIT retries.
    assert_eq!(classifier.attempts("s3://scans/down/cup.png"), scan::DELIVERY_LIMIT + 1);
    // Competing consumers: both workers on the normal queue took a share.
    let shares: Vec<u64> = normal_stats.iter().map(|stats| stats.acked()).collect();
    assert_eq!(shares.iter().sum::<u64>(), 6);
    assert!(shares.iter().all(|&share| share > 0), "{shares:?}");

    tokio::time::timeout(WAIT, running.stop()).await.unwrap().unwrap();
}
