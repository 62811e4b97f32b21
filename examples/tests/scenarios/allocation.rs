//! The allocation service against a real broker (Postroom, or RabbitMQ): `BatchQuantityChanged` in,
//! reallocation through the bus, `Allocated` out through the outbox relay (the seed's
//! end-to-end test, with a durable queue instead of a Redis channel).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use postroom_client::lapin::Channel;
use postroom_client::{Backoff, Connector, Envelope, QueueSpec, bind};
use postroom_examples::allocation::domain::{Allocate, Allocated, CreateBatch, OrderLine};
use postroom_examples::allocation::{
    self, ALLOCATED_KEY, BatchQuantityChanged, DEAD_LETTER_QUEUE, EXCHANGE,
};

use super::probe::get;

const WAIT: Duration = Duration::from_secs(20);

async fn next(channel: &Channel, queue: &str) -> (Vec<u8>, Envelope) {
    let message = get(channel, queue).await;
    (message.delivery.data.clone(), Envelope::from_properties(&message.delivery.properties))
}

pub async fn a_changed_batch_quantity_leads_to_reallocation_and_an_allocated_event(url: &str) {
    let connector = Arc::new(Connector::new(url, Backoff::default()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let running =
        allocation::start(Arc::clone(&connector), &dir.path().join("allocation.db")).await.unwrap();
    let (service, publisher) = (&running.service, &running.publisher);
    let channel = connector.channel().await.unwrap();
    QueueSpec::new("test.line_allocated").declare(&channel).await.unwrap();
    bind(&channel, "test.line_allocated", EXCHANGE, ALLOCATED_KEY).await.unwrap();

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
    assert_eq!(running.stats.requeued(), 0);

    tokio::time::timeout(WAIT, running.stop()).await.unwrap().unwrap();
}
