//! The allocation service against a real Postroom broker: `BatchQuantityChanged` in,
//! reallocation through the bus, `Allocated` out through the outbox relay (the seed's
//! end-to-end test, with a durable queue instead of a Redis channel).

mod scenarios;

use postroom_bus::BusError;
use postroom_examples::allocation::AllocationService;
use postroom_examples::allocation::domain::{Allocate, OrderLine};
use postroom_testkit::TestBroker;

#[tokio::test]
async fn a_changed_batch_quantity_leads_to_reallocation_and_an_allocated_event() {
    let broker = TestBroker::start().await;
    scenarios::allocation::a_changed_batch_quantity_leads_to_reallocation_and_an_allocated_event(
        &broker.url(),
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn allocating_an_unknown_sku_is_an_error_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = AllocationService::open(&dir.path().join("a.db"), None).unwrap();
    let line = OrderLine { order_id: "o".into(), sku: "GHOST".into(), qty: 1 };
    let error = service.execute(Allocate { line }).await.unwrap_err();
    assert!(
        matches!(&error, BusError::Handler(e) if e.to_string() == "invalid sku GHOST"),
        "{error}"
    );
    let connection = postroom_bus::outbox::open(&dir.path().join("a.db")).unwrap();
    assert_eq!(postroom_bus::outbox::unsent_count(&connection).unwrap(), 0);
}
