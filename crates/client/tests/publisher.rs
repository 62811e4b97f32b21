//! The publisher against a real Postroom broker: envelope, confirms, refusals, reconnects.

mod common;

use std::time::Duration;

use common::scenarios::{self, OrderPlaced};
use common::{get, raw_channel, within};
use postroom_client::{
    Envelope, ExchangeSpec, PublishOptions, Publisher, PublisherConfig, QueueSpec, bind,
};
use postroom_testkit::TestBroker;

#[tokio::test]
async fn a_confirmed_publish_carries_the_envelope() {
    let broker = TestBroker::start().await;
    scenarios::a_confirmed_publish_carries_the_envelope(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_publish_fails_and_the_next_one_goes_through() {
    let broker = TestBroker::start().await;
    scenarios::a_refused_publish_fails_and_the_next_one_goes_through(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_publish_does_not_fail_the_publishes_beside_it() {
    let broker = TestBroker::start().await;
    scenarios::a_refused_publish_does_not_fail_the_publishes_beside_it(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_mandatory_message_with_no_route_is_reported_unroutable() {
    let broker = TestBroker::start().await;
    scenarios::a_mandatory_message_with_no_route_is_reported_unroutable(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn extra_headers_and_priority_reach_the_consumer() {
    let broker = TestBroker::start().await;
    scenarios::extra_headers_and_priority_reach_the_consumer(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_publisher_reconnects_after_the_broker_restarts() {
    let port = common::external::free_port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    let url = broker.url();
    scenarios::shop_queue(&url, "orders-restart").await;
    let publisher =
        within("connect", Publisher::connect(&url, PublisherConfig::default())).await.unwrap();
    let first = OrderPlaced { order_id: "before".into(), qty: 1 };
    within("publish", publisher.publish(&first)).await.unwrap();
    broker.stop().await;

    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    scenarios::shop_queue(&url, "orders-restart").await;
    let second = OrderPlaced { order_id: "after".into(), qty: 1 };
    within("publish after restart", publisher.publish(&second)).await.unwrap();
    let (_connection, channel) = raw_channel(&url).await;
    let got = get(&channel, "orders-restart").await;
    assert_eq!(serde_json::from_slice::<OrderPlaced>(&got.delivery.data).unwrap(), second);
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_delayed_publish_is_held_by_a_delayed_exchange() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = raw_channel(&broker.url()).await;
    ExchangeSpec::delayed("later", "direct").declare(&channel).await.unwrap();
    QueueSpec::new("later-q").declare(&channel).await.unwrap();
    bind(&channel, "later-q", "later", "k").await.unwrap();
    let publisher =
        within("connect", Publisher::connect(&broker.url(), PublisherConfig::default()))
            .await
            .unwrap();
    let options = PublishOptions::default().with_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    within("publish", publisher.publish_raw("later", "k", b"x", &Envelope::new(), &options))
        .await
        .unwrap();
    common::assert_empty(&channel, "later-q", Duration::from_millis(100)).await;
    get(&channel, "later-q").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    publisher.close().await;
    broker.stop().await;
}
