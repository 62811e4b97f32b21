//! The scan pipeline against a real Postroom broker: routing by priority, two competing
//! workers per queue, retries with backoff, the dead-letter queue with its reasons, and the
//! results broadcast once per task.

mod scenarios;

use postroom_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_routed_shared_retried_and_dead_lettered() {
    let broker = TestBroker::start().await;
    scenarios::scan_pipeline::scans_are_routed_shared_retried_and_dead_lettered(&broker.url())
        .await;
    broker.stop().await;
}
