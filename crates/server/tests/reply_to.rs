//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC without a reply queue, and its misuse.

mod common;

use common::{
    assert_code, channel, channel_closed_with, close_watcher, connect, consume, declare_queue,
    next_delivery, publish_with, within,
};
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use postroom_amqp::constants::reply;
use postroom_testkit::TestBroker;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() }
}

#[tokio::test]
async fn direct_reply_to_round_trips_an_rpc_between_connections() {
    let broker = TestBroker::start().await;
    let server_conn = connect(&broker).await;
    let server_ch = channel(&server_conn).await;
    declare_queue(&server_ch, "rpc").await;
    let mut requests = consume(&server_ch, "rpc", BasicConsumeOptions::default()).await;

    let client_conn = connect(&broker).await;
    let client_ch = channel(&client_conn).await;
    let mut replies = consume(&client_ch, REPLY_TO, no_ack()).await;
    let request = BasicProperties::default()
        .with_reply_to(ShortString::from(REPLY_TO))
        .with_correlation_id(ShortString::from("call-1"));
    publish_with(&client_ch, "", "rpc", b"ping", request).await;

    let call = next_delivery(&mut requests).await;
    assert_eq!(call.data, b"ping");
    let address = call.properties.reply_to().clone().expect("reply_to is set").to_string();
    // The broker rewrites the pseudo-queue name into a per-channel address.
    assert!(address.starts_with(REPLY_TO) && address != REPLY_TO, "{address:?}");
    let response = BasicProperties::default().with_correlation_id(ShortString::from("call-1"));
    publish_with(&server_ch, "", &address, b"pong", response).await;
    within("ack", call.ack(Default::default())).await.unwrap();

    let answer = next_delivery(&mut replies).await;
    assert_eq!(answer.data, b"pong");
    assert_eq!(answer.properties.correlation_id().as_ref().map(|s| s.as_str()), Some("call-1"));
    assert_eq!(answer.routing_key.as_str(), address);
    broker.stop().await;
}

#[tokio::test]
async fn several_replies_reach_the_requester_in_order() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let requester = channel(&conn).await;
    let responder = channel(&conn).await;
    declare_queue(&responder, "rpc-many").await;
    let mut requests = consume(&responder, "rpc-many", no_ack()).await;
    let mut replies = consume(&requester, REPLY_TO, no_ack()).await;
    let request = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    publish_with(&requester, "", "rpc-many", b"q", request).await;
    let call = next_delivery(&mut requests).await;
    let address = call.properties.reply_to().clone().unwrap().to_string();
    for i in 0..5 {
        let body = format!("r{i}");
        publish_with(&responder, "", &address, body.as_bytes(), BasicProperties::default()).await;
    }
    for i in 0..5 {
        assert_eq!(next_delivery(&mut replies).await.data, format!("r{i}").as_bytes());
    }
    broker.stop().await;
}

#[tokio::test]
async fn requesting_a_direct_reply_without_the_reply_consumer_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rpc-lonely").await;
    let mut watcher = close_watcher(&ch).await;
    let request = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    publish_with(&ch, "", "rpc-lonely", b"q", request).await;
    assert_eq!(channel_closed_with(&mut watcher).await, reply::PRECONDITION_FAILED);
    let other = channel(&conn).await;
    assert_eq!(common::message_count(&other, "rpc-lonely").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn consuming_direct_reply_to_with_acks_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let result = within(
        "basic.consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

#[tokio::test]
async fn reply_to_a_forged_address_is_unroutable() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let requester = channel(&conn).await;
    let _replies = consume(&requester, REPLY_TO, no_ack()).await;
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default())).await.unwrap();
    let forged = format!("{REPLY_TO}.1.1.0000000000000000");
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            forged.as_str().into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            b"nope",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let confirmation = within("the confirm", confirm).await.unwrap();
    let returned =
        confirmation.take_message().expect("a mandatory reply to a forged address is returned");
    assert_eq!(returned.reply_code, reply::NO_ROUTE);
    broker.stop().await;
}
