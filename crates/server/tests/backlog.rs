//! A backlog larger than a queue's memory limit waits in the journal and comes back in
//! order: consumed, fetched with basic.get, purged, counted.

mod common;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use postroom_testkit::TestBroker;

async fn broker_with_small_queue_memory() -> (TestBroker, Connection, Channel) {
    let broker = TestBroker::start_with(|config| config.queue_memory_limit = 4096).await;
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    (broker, conn, channel)
}

/// Publishes `count` numbered messages, every third one transient, with confirms, to a
/// durable queue.
async fn publish_numbered(channel: &Channel, queue: &str, count: u32) {
    publish_numbered_to(channel, queue, count, true).await
}

async fn publish_numbered_to(channel: &Channel, queue: &str, count: u32, durable: bool) {
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let options = QueueDeclareOptions { durable, ..Default::default() };
    channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap();
    let mut confirms = Vec::new();
    for n in 0..count {
        let mode = if n % 3 == 0 { 1 } else { 2 };
        let properties = BasicProperties::default().with_delivery_mode(mode);
        let body = format!("{n:06}-{}", "x".repeat(200));
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
}

fn number(data: &[u8]) -> u32 {
    std::str::from_utf8(&data[..6]).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_backlog_past_the_memory_limit_is_consumed_in_order() {
    let (broker, conn, channel) = broker_with_small_queue_memory().await;
    publish_numbered(&channel, "big", 3000).await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared =
        channel.queue_declare("big".into(), passive, FieldTable::default()).await.unwrap();
    assert_eq!(declared.message_count(), 3000, "the count includes what waits in the journal");
    channel.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            "big".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for expected in 0..3000 {
        let delivery = common::within("a delivery", consumer.next()).await.unwrap().unwrap();
        assert_eq!(number(&delivery.data), expected);
        assert!(!delivery.redelivered);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn basic_get_reads_a_backlog_past_the_memory_limit_in_order() {
    let (broker, conn, channel) = broker_with_small_queue_memory().await;
    publish_numbered(&channel, "got", 500).await;
    for expected in 0..500 {
        // A read racing the journal writer may briefly find nothing: retry, boundedly.
        let mut message = None;
        for _ in 0..1000 {
            message =
                channel.basic_get("got".into(), BasicGetOptions { no_ack: true }).await.unwrap();
            if message.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let message = message.expect("the next message within 5 s");
        assert_eq!(number(&message.delivery.data), expected);
    }
    assert!(
        channel.basic_get("got".into(), BasicGetOptions { no_ack: true }).await.unwrap().is_none()
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn purging_a_backlog_past_the_memory_limit_empties_it() {
    let (broker, conn, channel) = broker_with_small_queue_memory().await;
    publish_numbered(&channel, "purged", 1000).await;
    let purged = channel.queue_purge("purged".into(), QueuePurgeOptions::default()).await.unwrap();
    assert_eq!(purged, 1000);
    publish_numbered(&channel, "purged", 10).await;
    for expected in 0..10 {
        let message = channel
            .basic_get("purged".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message published after the purge");
        assert_eq!(number(&message.delivery.data), expected);
    }
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_non_durable_queue_spills_past_the_memory_limit_and_keeps_order() {
    let (broker, conn, channel) = broker_with_small_queue_memory().await;
    publish_numbered_to(&channel, "fleeting", 2000, false).await;
    channel.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            "fleeting".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for expected in 0..2000 {
        let delivery = common::within("a delivery", consumer.next()).await.unwrap().unwrap();
        assert_eq!(number(&delivery.data), expected);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn queues_past_the_brokers_total_memory_limit_wait_in_the_journal_in_order() {
    // Each queue may hold 32 MiB, but all of them only 64 KiB together.
    let broker = TestBroker::start_with(|config| config.message_memory_limit = 64 * 1024).await;
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    publish_numbered(&channel, "first", 1500).await;
    publish_numbered(&channel, "second", 1500).await;
    channel.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    for queue in ["second", "first"] {
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                queue.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for expected in 0..1500 {
            let delivery = common::within("a delivery", consumer.next()).await.unwrap().unwrap();
            assert_eq!(number(&delivery.data), expected, "in {queue}");
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}
