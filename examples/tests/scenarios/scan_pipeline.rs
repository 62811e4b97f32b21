//! The scan pipeline against a real broker (Postroom, or RabbitMQ): routing by priority, two competing
//! workers per queue, retries with backoff, the dead-letter queue with its reasons, and the
//! results broadcast once per task.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom_client::lapin::options::{BasicGetOptions, QueueDeclareOptions};
use postroom_client::lapin::types::{AMQPValue, FieldTable};
use postroom_client::{
    Backoff, Connector, Json, MemoryProcessedStore, Publisher, PublisherConfig, QueueSpec, bind,
};
use postroom_examples::scan::classifier::FakeClassifier;
use postroom_examples::scan::{self, Priority, ScanCompleted, ScanRequested};

const WAIT: Duration = Duration::from_secs(30);

fn death_reason(headers: &postroom_client::lapin::types::FieldTable) -> String {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return String::new();
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        return String::new();
    };
    match death.inner().get("reason") {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        _ => String::new(),
    }
}

pub async fn scans_are_routed_shared_retried_and_dead_lettered(url: &str) {
    let connector = Arc::new(Connector::new(url, Backoff::default()).unwrap());
    scan::declare_topology(&connector).await.unwrap();
    let channel = connector.channel().await.unwrap();
    QueueSpec::new("test.results").declare(&channel).await.unwrap();
    bind(&channel, "test.results", scan::RESULTS_EXCHANGE, "").await.unwrap();

    let publisher =
        Arc::new(Publisher::new(Arc::clone(&connector), Json, PublisherConfig::default()).unwrap());
    let classifier = Arc::new(FakeClassifier::new(Duration::from_millis(30)));
    let processed = Arc::new(MemoryProcessedStore::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut normal_stats = Vec::new();
    for priority in Priority::ALL {
        for _ in 0..2 {
            let own = Arc::new(Connector::new(url, Backoff::default()).unwrap());
            let worker = scan::build_worker(
                own,
                priority,
                Arc::clone(&classifier),
                Arc::clone(&publisher),
                Arc::clone(&processed),
            )
            .unwrap();
            if priority == Priority::Normal {
                normal_stats.push(worker.stats());
            }
            let mut stopped = stopped.clone();
            workers.push(tokio::spawn(worker.run(async move {
                let _ = stopped.changed().await;
            })));
        }
    }

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

    let deadline = Instant::now() + WAIT;
    let mut results = BTreeMap::new();
    while results.len() < expected.len() {
        assert!(Instant::now() < deadline, "results so far: {results:?}");
        match channel
            .basic_get("test.results".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let completed: ScanCompleted =
                    serde_json::from_slice(&message.delivery.data).unwrap();
                assert!(
                    results.insert(completed.task_id, completed.label).is_none(),
                    "a task completed twice"
                );
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(results, expected);
    assert_eq!(classifier.attempts("s3://scans/flaky/bottle.png"), 3);

    let mut dead = BTreeMap::new();
    while dead.len() < 3 {
        assert!(Instant::now() < deadline, "dead-lettered so far: {dead:?}");
        match channel
            .basic_get(scan::DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let request: ScanRequested =
                    serde_json::from_slice(&message.delivery.data).unwrap();
                let headers = message.delivery.properties.headers().clone().unwrap_or_default();
                dead.insert(request.task_id, death_reason(&headers));
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
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

    stop.send(true).unwrap();
    for worker in workers {
        tokio::time::timeout(WAIT, worker).await.unwrap().unwrap().unwrap();
    }
    publisher.close().await;
}
