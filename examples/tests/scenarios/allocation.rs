//! The allocation service against a real broker (Postroom, or RabbitMQ): `BatchQuantityChanged` in,
//! reallocation through the bus, `Allocated` out through the outbox relay (the seed's
//! end-to-end test, with a durable queue instead of a Redis channel).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom_bus::{OutboxRelay, RelayConfig};
use postroom_client::lapin::Channel;
use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::{
    Backoff, Connector, Envelope, Json, Publisher, PublisherConfig, QueueSpec, Worker,
    WorkerConfig, bind,
};
use postroom_examples::allocation::domain::{Allocate, Allocated, CreateBatch, OrderLine};
use postroom_examples::allocation::{
    self, ALLOCATED_KEY, AllocationService, BatchQuantityChanged, DEAD_LETTER_QUEUE, EXCHANGE,
};

const WAIT: Duration = Duration::from_secs(20);

async fn next(channel: &Channel, queue: &str) -> (Vec<u8>, Envelope) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap();
        if let Some(message) = got {
            return (
                message.delivery.data.clone(),
                Envelope::from_properties(&message.delivery.properties),
            );
        }
        assert!(Instant::now() < deadline, "nothing arrived on {queue}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn a_changed_batch_quantity_leads_to_reallocation_and_an_allocated_event(url: &str) {
    let connector = Arc::new(Connector::new(url, Backoff::default()).unwrap());
    allocation::declare_topology(&connector).await.unwrap();
    let channel = connector.channel().await.unwrap();
    QueueSpec::new("test.line_allocated").declare(&channel).await.unwrap();
    bind(&channel, "test.line_allocated", EXCHANGE, ALLOCATED_KEY).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("allocation.db");
    let publisher =
        Arc::new(Publisher::new(Arc::clone(&connector), Json, PublisherConfig::default()).unwrap());
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), RelayConfig::default()).unwrap();
    let service = AllocationService::open(&db, Some(relay.waker())).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relay_stop = stopped.clone();
    let relay_task = tokio::spawn(relay.run(async move {
        let _ = relay_stop.changed().await;
    }));
    let worker = Worker::new(
        Arc::clone(&connector),
        service.entrypoint(),
        WorkerConfig::new(allocation::QUEUE),
    )
    .unwrap();
    let stats = worker.stats();
    let mut worker_stop = stopped.clone();
    let worker_task = tokio::spawn(worker.run(async move {
        let _ = worker_stop.changed().await;
    }));

    let create = |reference: &str, eta| CreateBatch {
        reference: reference.into(),
        sku: "RUG".into(),
        qty: 10,
        eta: Some(eta),
    };
    service.execute(create("old", 1)).await.unwrap();
    service.execute(create("newer", 2)).await.unwrap();
    let line = OrderLine { order_id: "order-1".into(), sku: "RUG".into(), qty: 10 };
    assert_eq!(service.execute(Allocate { line }).await.unwrap().as_deref(), Some("old"));
    let (body, _) = next(&channel, "test.line_allocated").await;
    let first: Allocated = serde_json::from_slice(&body).unwrap();
    assert_eq!(first.batch_ref, "old");

    let changed =
        publisher.publish(&BatchQuantityChanged { batchref: "old".into(), qty: 5 }).await.unwrap();
    let (body, envelope) = next(&channel, "test.line_allocated").await;
    let moved: Allocated = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        moved,
        Allocated {
            order_id: "order-1".into(),
            sku: "RUG".into(),
            qty: 10,
            batch_ref: "newer".into()
        }
    );
    assert_eq!(envelope.causation_id.as_deref(), Some(changed.message_id.as_str()));
    assert_eq!(envelope.message_type.as_deref(), Some("allocation.allocated"));
    assert_eq!(service.allocation_of("order-1", "RUG").await.unwrap().as_deref(), Some("newer"));

    // An unknown batch is a permanent failure: dead-lettered, not retried.
    publisher.publish(&BatchQuantityChanged { batchref: "nope".into(), qty: 1 }).await.unwrap();
    let (body, _) = next(&channel, DEAD_LETTER_QUEUE).await;
    assert!(String::from_utf8_lossy(&body).contains("nope"));
    assert_eq!(stats.requeued(), 0);

    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, worker_task).await.unwrap().unwrap().unwrap();
    tokio::time::timeout(WAIT, relay_task).await.unwrap().unwrap();
    publisher.close().await;
}
