//! The example scenarios against RabbitMQ, when `rabbitmq-server` is installed (skipped with
//! a message otherwise): the same topologies (retry arguments are ignored there, the
//! delivery limit needs the quorum queues the examples declare with `QueueSpec::quorum`) and the
//! same expectations.

#[path = "../../crates/client/tests/common/external.rs"]
mod external;
mod scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_against_rabbitmq() {
    let Some(rabbit) = external::RabbitBroker::start() else { return };
    let url = rabbit.url();
    scenarios::auth_worker::the_auth_worker_stores_retries_drops_and_dead_letters_as_the_seed_says(
        &url,
    )
    .await;
    scenarios::allocation::a_changed_batch_quantity_leads_to_reallocation_and_an_allocated_event(
        &url,
    )
    .await;
    scenarios::scan_pipeline::scans_are_routed_shared_retried_and_dead_lettered(&url).await;
}
