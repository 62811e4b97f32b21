//! The broker-independent scenarios against RabbitMQ, when `rabbitmq-server` is installed
//! (skipped with a message otherwise). One node serves them all, one after another, because
//! starting RabbitMQ takes seconds.

mod common;

use common::external::RabbitBroker;
use common::{scenarios, worker_scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_scenarios_hold_against_rabbitmq() {
    let Some(rabbit) = RabbitBroker::start() else { return };
    let url = rabbit.url();
    eprintln!("RabbitMQ at {url}");
    scenarios::a_confirmed_publish_carries_the_envelope(&url).await;
    scenarios::a_refused_publish_fails_and_the_next_one_goes_through(&url).await;
    scenarios::a_refused_publish_does_not_fail_the_publishes_beside_it(&url).await;
    scenarios::a_mandatory_message_with_no_route_is_reported_unroutable(&url).await;
    scenarios::extra_headers_and_priority_reach_the_consumer(&url).await;
    worker_scenarios::each_result_is_acknowledged_as_the_table_says(&url).await;
    worker_scenarios::a_panic_is_requeued_and_the_redelivery_succeeds(&url).await;
    worker_scenarios::the_concurrency_limit_holds(&url).await;
    worker_scenarios::shutdown_finishes_in_flight_messages_and_leaves_the_rest(&url).await;
    worker_scenarios::a_duplicate_message_id_is_processed_once(&url).await;
    worker_scenarios::request_reply_returns_answers_and_errors(&url).await;
}
