//! A first end-to-end check with lapin: declare, publish with confirms, consume, ack.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use postroom_testkit::TestBroker;

#[tokio::test]
async fn published_message_is_consumed_and_acked() {
    let broker = TestBroker::start().await;
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch.queue_declare("smoke".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "smoke".into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let mut consumer = ch
        .basic_consume(
            "smoke".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert_eq!(delivery.data, b"hello");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}
