//! The basic class: get, consume, acknowledgements, prefetch, recover, cancel, returns, and
//! message content (properties, headers, empty and multi-frame bodies).

mod common;

use common::{
    RawClient, assert_code, assert_no_delivery, channel, channel_closed_with, close_watcher,
    connect, consume, declare_queue, get_body, message_count, next_delivery, publish, publish_with,
    within,
};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverAsyncOptions, BasicRecoverOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use postroom_amqp::Method;
use postroom_amqp::constants::reply;
use postroom_amqp::method::{BasicConsume, BasicRecover, QueueDeclare};
use postroom_testkit::TestBroker;

fn body_of(delivery: &Delivery) -> String {
    String::from_utf8(delivery.data.clone()).unwrap()
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

async fn qos(ch: &Channel, prefetch: u16, global: bool) {
    within("basic.qos", ch.basic_qos(prefetch, BasicQosOptions { global })).await.unwrap();
}

async fn ack(delivery: &Delivery) {
    within("basic.ack", delivery.ack(BasicAckOptions::default())).await.unwrap();
}

/// The next `n` deliveries of `consumer`.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(n);
    for _ in 0..n {
        deliveries.push(next_delivery(consumer).await);
    }
    deliveries
}

/// The next delivery of either consumer.
async fn next_of_either(a: &mut Consumer, b: &mut Consumer) -> Delivery {
    let either = futures_lite::future::or(a.next(), b.next());
    within("a delivery", either)
        .await
        .expect("consumer stream ended")
        .expect("delivery without error")
}

async fn close_channel(ch: &Channel) {
    within("channel.close", ch.close(200, "done".into())).await.unwrap();
}

#[tokio::test]
async fn basic_get_returns_messages_in_order_then_get_empty() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "gettable").await;
    publish_n(&ch, "gettable", 2).await;
    let get = || within("basic.get", ch.basic_get("gettable".into(), BasicGetOptions::default()));
    let first = get().await.unwrap().expect("first message");
    assert_eq!(first.delivery.data, b"m0");
    assert_eq!(first.message_count, 1);
    assert!(!first.delivery.redelivered);
    assert_eq!(first.delivery.routing_key.as_str(), "gettable");
    ack(&first.delivery).await;
    let second = get().await.unwrap().expect("second message");
    assert_eq!(second.delivery.data, b"m1");
    assert_eq!(second.message_count, 0);
    ack(&second.delivery).await;
    assert!(get().await.unwrap().is_none(), "expected get-empty");
    // Acked gets are gone for good, even after the channel closes.
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "gettable").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn basic_get_without_ack_is_requeued_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "get-unacked").await;
    publish_n(&ch, "get-unacked", 1).await;
    let got = within("basic.get", ch.basic_get("get-unacked".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .expect("message");
    assert_eq!(got.delivery.data, b"m0");
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    let again =
        within("basic.get", ch.basic_get("get-unacked".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("requeued message");
    assert_eq!(again.delivery.data, b"m0");
    assert!(again.delivery.redelivered);
    broker.stop().await;
}

#[tokio::test]
async fn basic_get_no_ack_removes_the_message_at_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "get-no-ack").await;
    publish_n(&ch, "get-no-ack", 1).await;
    assert_eq!(get_body(&ch, "get-no-ack").await.unwrap(), b"m0");
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "get-no-ack").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn consumed_messages_acked_manually_are_not_redelivered() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "manual-ack").await;
    publish_n(&ch, "manual-ack", 3).await;
    let mut consumer = consume(&ch, "manual-ack", BasicConsumeOptions::default()).await;
    for i in 0..3 {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(body_of(&delivery), format!("m{i}"));
        assert!(!delivery.redelivered);
        assert_eq!(delivery.delivery_tag, i + 1);
        ack(&delivery).await;
    }
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "manual-ack").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn no_ack_consumer_gets_messages_that_are_never_requeued() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "auto-ack").await;
    publish_n(&ch, "auto-ack", 3).await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer = consume(&ch, "auto-ack", no_ack).await;
    for i in 0..3 {
        assert_eq!(body_of(&next_delivery(&mut consumer).await), format!("m{i}"));
    }
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "auto-ack").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn two_consumers_on_one_queue_receive_round_robin() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "shared").await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let ch_a = channel(&conn).await;
    let ch_b = channel(&conn).await;
    let mut a = consume(&ch_a, "shared", no_ack).await;
    let mut b = consume(&ch_b, "shared", no_ack).await;
    publish_n(&ch, "shared", 10).await;
    let got_a: Vec<String> = take(&mut a, 5).await.iter().map(body_of).collect();
    let got_b: Vec<String> = take(&mut b, 5).await.iter().map(body_of).collect();
    assert_eq!(got_a, ["m0", "m2", "m4", "m6", "m8"]);
    assert_eq!(got_b, ["m1", "m3", "m5", "m7", "m9"]);
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_are_consumed_in_fifo_order() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "fifo").await;
    publish_n(&ch, "fifo", 1000).await;
    let mut consumer = consume(&ch, "fifo", BasicConsumeOptions::default()).await;
    let mut last = 0;
    for i in 0..1000 {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(body_of(&delivery), format!("m{i}"));
        last = delivery.delivery_tag;
    }
    within("basic.ack", ch.basic_ack(last, BasicAckOptions { multiple: true })).await.unwrap();
    assert_eq!(message_count(&ch, "fifo").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn per_consumer_prefetch_limits_unacked_deliveries() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "prefetched").await;
    publish_n(&ch, "prefetched", 10).await;
    qos(&ch, 3, false).await;
    let mut consumer = consume(&ch, "prefetched", BasicConsumeOptions::default()).await;
    let first = take(&mut consumer, 3).await;
    assert_no_delivery(&mut consumer).await;
    ack(&first[0]).await;
    let next = next_delivery(&mut consumer).await;
    assert_eq!(body_of(&next), "m3");
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&ch, "prefetched").await, 6);
    broker.stop().await;
}

#[tokio::test]
async fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "each-2-a").await;
    declare_queue(&ch, "each-2-b").await;
    publish_n(&ch, "each-2-a", 5).await;
    publish_n(&ch, "each-2-b", 5).await;
    qos(&ch, 2, false).await;
    let mut a = consume(&ch, "each-2-a", BasicConsumeOptions::default()).await;
    let mut b = consume(&ch, "each-2-b", BasicConsumeOptions::default()).await;
    take(&mut a, 2).await;
    take(&mut b, 2).await;
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;
    broker.stop().await;
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "global-a").await;
    declare_queue(&ch, "global-b").await;
    publish_n(&ch, "global-a", 5).await;
    publish_n(&ch, "global-b", 5).await;
    qos(&ch, 3, true).await;
    let mut a = consume(&ch, "global-a", BasicConsumeOptions::default()).await;
    let mut b = consume(&ch, "global-b", BasicConsumeOptions::default()).await;
    // A channel-wide limit of 3 across both consumers, however it is split.
    let mut unacked = Vec::new();
    for _ in 0..3 {
        unacked.push(next_of_either(&mut a, &mut b).await);
    }
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;
    // One ack frees exactly one slot on the channel.
    ack(&unacked[0]).await;
    next_of_either(&mut a, &mut b).await;
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;
    broker.stop().await;
}

#[tokio::test]
async fn ack_multiple_settles_every_tag_up_to_the_given_one() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "ack-multi").await;
    publish_n(&ch, "ack-multi", 5).await;
    let mut consumer = consume(&ch, "ack-multi", BasicConsumeOptions::default()).await;
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(next_delivery(&mut consumer).await.delivery_tag);
    }
    within("basic.ack", ch.basic_ack(tags[2], BasicAckOptions { multiple: true })).await.unwrap();
    close_channel(&ch).await;
    // m3 and m4 were not covered by the multiple ack and come back.
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "ack-multi").await, 2);
    assert_eq!(get_body(&ch, "ack-multi").await.unwrap(), b"m3");
    assert_eq!(get_body(&ch, "ack-multi").await.unwrap(), b"m4");
    broker.stop().await;
}

#[tokio::test]
async fn nack_multiple_with_requeue_redelivers_all_with_the_redelivered_flag() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "nack-multi").await;
    publish_n(&ch, "nack-multi", 3).await;
    let mut consumer = consume(&ch, "nack-multi", BasicConsumeOptions::default()).await;
    let mut last = 0;
    for _ in 0..3 {
        last = next_delivery(&mut consumer).await.delivery_tag;
    }
    within("basic.nack", ch.basic_nack(last, BasicNackOptions { multiple: true, requeue: true }))
        .await
        .unwrap();
    for i in 0..3 {
        let again = next_delivery(&mut consumer).await;
        assert_eq!(body_of(&again), format!("m{i}"), "requeued in original order");
        assert!(again.redelivered);
        ack(&again).await;
    }
    assert_no_delivery(&mut consumer).await;
    broker.stop().await;
}

#[tokio::test]
async fn reject_without_requeue_drops_the_message() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rejected").await;
    publish_n(&ch, "rejected", 1).await;
    let mut consumer = consume(&ch, "rejected", BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    within("basic.reject", delivery.reject(BasicRejectOptions { requeue: false })).await.unwrap();
    assert_no_delivery(&mut consumer).await;
    close_channel(&ch).await;
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "rejected").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn reject_with_requeue_redelivers_with_the_redelivered_flag() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "requeued").await;
    publish_n(&ch, "requeued", 1).await;
    let mut consumer = consume(&ch, "requeued", BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    assert!(!delivery.redelivered);
    within("basic.reject", delivery.reject(BasicRejectOptions { requeue: true })).await.unwrap();
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.data, b"m0");
    assert!(again.redelivered);
    assert!(again.delivery_tag > delivery.delivery_tag);
    broker.stop().await;
}

#[tokio::test]
async fn recover_redelivers_every_unacked_message() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "recovered").await;
    publish_n(&ch, "recovered", 2).await;
    let mut consumer = consume(&ch, "recovered", BasicConsumeOptions::default()).await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    // lapin discards deliveries buffered before recover-ok (they predate the recover), so
    // this works only if, as in RabbitMQ, the redeliveries follow recover-ok.
    within("basic.recover", ch.basic_recover(BasicRecoverOptions { requeue: true })).await.unwrap();
    for i in 0..2 {
        let again = next_delivery(&mut consumer).await;
        assert_eq!(body_of(&again), format!("m{i}"));
        assert!(again.redelivered);
    }
    broker.stop().await;
}

#[tokio::test]
async fn recover_ok_precedes_the_redeliveries_on_the_wire() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client
        .send_method(1, QueueDeclare { queue: "recover-order".into(), ..Default::default() })
        .await;
    client.recv_method_on(1).await;
    client.send_raw(&RawClient::publish_bytes(1, "", "recover-order", b"once")).await;
    client
        .send_method(
            1,
            BasicConsume {
                queue: "recover-order".into(),
                consumer_tag: "c".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(client.recv_method_on(1).await, Method::BasicConsumeOk(_)));
    assert!(matches!(client.recv_method_on(1).await, Method::BasicDeliver(_)));
    client.recv().await; // header
    client.recv().await; // body
    client.send_method(1, BasicRecover { requeue: true }).await;
    let (_, first) = client.recv_method().await;
    assert!(
        matches!(first, Method::BasicRecoverOk(_)),
        "RabbitMQ answers recover-ok before redelivering; got {first:?} first"
    );
    match client.recv_method_on(1).await {
        Method::BasicDeliver(deliver) => assert!(deliver.redelivered),
        other => panic!("expected the redelivery, got {other:?}"),
    }
    client.disconnect();
    broker.stop().await;
}

#[tokio::test]
async fn recover_async_redelivers_every_unacked_message() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "recovered-async").await;
    publish_n(&ch, "recovered-async", 2).await;
    let mut consumer = consume(&ch, "recovered-async", BasicConsumeOptions::default()).await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    within(
        "basic.recover-async",
        ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: true }),
    )
    .await
    .unwrap();
    for i in 0..2 {
        let again = next_delivery(&mut consumer).await;
        assert_eq!(body_of(&again), format!("m{i}"));
        assert!(again.redelivered);
    }
    broker.stop().await;
}

#[tokio::test]
async fn closing_a_channel_returns_its_unacked_messages_as_redelivered() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let first = channel(&conn).await;
    declare_queue(&first, "handed-over").await;
    publish_n(&first, "handed-over", 2).await;
    let mut consumer = consume(&first, "handed-over", BasicConsumeOptions::default()).await;
    next_delivery(&mut consumer).await;
    next_delivery(&mut consumer).await;
    close_channel(&first).await;
    let second = channel(&conn).await;
    let mut successor = consume(&second, "handed-over", BasicConsumeOptions::default()).await;
    for i in 0..2 {
        let again = next_delivery(&mut successor).await;
        assert_eq!(body_of(&again), format!("m{i}"));
        assert!(again.redelivered);
    }
    broker.stop().await;
}

#[tokio::test]
async fn cancelled_consumer_receives_nothing_more() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "cancelled").await;
    let mut consumer = consume(&ch, "cancelled", BasicConsumeOptions::default()).await;
    within("basic.cancel", ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    publish_n(&ch, "cancelled", 1).await;
    let ended = within("the consumer stream to end", consumer.next()).await;
    assert!(ended.is_none(), "expected the stream to end");
    assert_eq!(message_count(&ch, "cancelled").await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_consumed_queue_cancels_its_consumer() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "vanishing").await;
    let mut consumer = consume(&ch, "vanishing", BasicConsumeOptions::default()).await;
    let other = connect(&broker).await;
    let deleter = channel(&other).await;
    within("queue.delete", deleter.queue_delete("vanishing".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    // consumer_cancel_notify: the broker sends basic.cancel and lapin ends the stream.
    let ended = within("the consumer stream to end", consumer.next()).await;
    assert!(ended.is_none(), "expected the stream to end, got {ended:?}");
    // The channel itself stays open.
    declare_queue(&ch, "after-cancel").await;
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_consumer_refuses_a_second_consumer_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "exclusive-use").await;
    let exclusive = BasicConsumeOptions { exclusive: true, ..BasicConsumeOptions::default() };
    let _owner = consume(&ch, "exclusive-use", exclusive).await;
    let second = channel(&conn).await;
    let result = within(
        "basic.consume",
        second.basic_consume(
            "exclusive-use".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::ACCESS_REFUSED);
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_consume_on_a_queue_with_consumers_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "already-consumed").await;
    let _first = consume(&ch, "already-consumed", BasicConsumeOptions::default()).await;
    let second = channel(&conn).await;
    let exclusive = BasicConsumeOptions { exclusive: true, ..BasicConsumeOptions::default() };
    let result = within(
        "basic.consume",
        second.basic_consume(
            "already-consumed".into(),
            "".into(),
            exclusive,
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::ACCESS_REFUSED);
    broker.stop().await;
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_before_its_confirm() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.unwrap();
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nobody-home".into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            b"bounced",
            BasicProperties::default().with_message_id("r-1".into()),
        ),
    )
    .await
    .unwrap();
    let confirmation = within("the confirm", confirm).await.unwrap();
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, reply::NO_ROUTE);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), "nobody-home");
    assert_eq!(returned.delivery.data, b"bounced");
    assert_eq!(returned.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("r-1"));
    broker.stop().await;
}

#[tokio::test]
async fn non_mandatory_unroutable_message_is_dropped_silently() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.unwrap();
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nobody-home".into(),
            BasicPublishOptions::default(),
            b"dropped",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let confirmation = within("the confirm", confirm).await.unwrap();
    assert!(matches!(confirmation, Confirmation::Ack(None)), "{confirmation:?}");
    broker.stop().await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut watcher = close_watcher(&ch).await;
    within("basic.ack", ch.basic_ack(999, BasicAckOptions::default())).await.unwrap();
    assert_eq!(channel_closed_with(&mut watcher).await, reply::PRECONDITION_FAILED);
    // A channel error: the connection and its other channels carry on.
    assert!(conn.status().connected());
    declare_queue(&channel(&conn).await, "after-406").await;
    broker.stop().await;
}

#[tokio::test]
async fn acking_a_delivery_twice_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "double-ack").await;
    publish_n(&ch, "double-ack", 1).await;
    let got = within("basic.get", ch.basic_get("double-ack".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .expect("message");
    let mut watcher = close_watcher(&ch).await;
    let tag = got.delivery.delivery_tag;
    for _ in 0..2 {
        within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.unwrap();
    }
    assert_eq!(channel_closed_with(&mut watcher).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

fn rich_headers() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("depth".into(), AMQPValue::LongInt(2));
    inner.insert("name".into(), AMQPValue::LongString(LongString::from("inner")));
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::FieldTable(inner));
    nested.insert("flag".into(), AMQPValue::Boolean(false));
    let array = FieldArray::from(vec![
        AMQPValue::LongLongInt(-5),
        AMQPValue::LongString(LongString::from("two")),
        AMQPValue::Boolean(true),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortInt(-3)])),
        AMQPValue::Timestamp(1_700_000_000),
    ]);
    let mut headers = FieldTable::default();
    headers.insert("bool".into(), AMQPValue::Boolean(true));
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    headers.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    headers.insert("i16".into(), AMQPValue::ShortInt(-1600));
    headers.insert("u16".into(), AMQPValue::ShortUInt(60_000));
    headers.insert("i32".into(), AMQPValue::LongInt(-320_000));
    headers.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    headers.insert("i64".into(), AMQPValue::LongLongInt(-64_000_000_000));
    headers.insert("f32".into(), AMQPValue::Float(1.5));
    headers.insert("f64".into(), AMQPValue::Double(-2.25));
    headers
        .insert("decimal".into(), AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12345 }));
    headers.insert("string".into(), AMQPValue::LongString(LongString::from("héllo wörld")));
    headers.insert("bytes".into(), AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255])));
    headers.insert("timestamp".into(), AMQPValue::Timestamp(1_234_567_890));
    headers.insert("array".into(), AMQPValue::FieldArray(array));
    headers.insert("table".into(), AMQPValue::FieldTable(nested));
    headers.insert("void".into(), AMQPValue::Void);
    headers
}

fn rich_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("gzip"))
        .with_headers(rich_headers())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id(ShortString::from("corr-1"))
        .with_reply_to(ShortString::from("replies"))
        .with_expiration(ShortString::from("60000"))
        .with_message_id(ShortString::from("msg-1"))
        .with_timestamp(1_600_000_000)
        .with_type(ShortString::from("order.created"))
        .with_user_id(ShortString::from("guest"))
        .with_app_id(ShortString::from("tests"))
}

#[tokio::test]
async fn properties_and_nested_headers_round_trip_unchanged() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "props").await;
    publish_with(&ch, "", "props", b"[]", rich_properties()).await;
    publish_with(&ch, "", "props", b"{}", rich_properties()).await;
    // basic.get-ok and basic.deliver both carry the properties byte for byte.
    let got = within("basic.get", ch.basic_get("props".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("message");
    assert_eq!(got.delivery.properties, rich_properties());
    assert_eq!(got.delivery.data, b"[]");
    let mut consumer = consume(&ch, "props", BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.properties, rich_properties());
    assert_eq!(delivery.data, b"{}");
    broker.stop().await;
}

#[tokio::test]
async fn user_id_other_than_the_login_is_refused_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "impostor").await;
    let mut watcher = close_watcher(&ch).await;
    let properties = BasicProperties::default().with_user_id(ShortString::from("admin"));
    publish_with(&ch, "", "impostor", b"x", properties).await;
    assert_eq!(channel_closed_with(&mut watcher).await, reply::PRECONDITION_FAILED);
    assert_eq!(message_count(&channel(&conn).await, "impostor").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn empty_body_is_delivered_as_empty() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "empty-body").await;
    publish(&ch, "", "empty-body", b"").await;
    publish(&ch, "", "empty-body", b"after").await;
    let mut consumer = consume(&ch, "empty-body", BasicConsumeOptions::default()).await;
    assert!(next_delivery(&mut consumer).await.data.is_empty());
    assert_eq!(next_delivery(&mut consumer).await.data, b"after");
    publish(&ch, "", "empty-body", b"").await;
    assert!(next_delivery(&mut consumer).await.data.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn one_mebibyte_body_crosses_many_frames_intact() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    assert_eq!(conn.configuration().frame_max(), 131_072);
    let ch = channel(&conn).await;
    declare_queue(&ch, "large").await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    publish(&ch, "", "large", &body).await;
    publish(&ch, "", "large", &body).await;
    let got = get_body(&ch, "large").await.expect("first copy");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "1 MiB body differs after basic.get");
    let mut consumer = consume(&ch, "large", BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data.len(), body.len());
    assert!(delivery.data == body, "1 MiB body differs after basic.deliver");
    ack(&delivery).await;
    broker.stop().await;
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_settles_everything_outstanding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "ack-all").await;
    publish_n(&ch, "ack-all", 4).await;
    let mut consumer = consume(&ch, "ack-all", BasicConsumeOptions::default()).await;
    for _ in 0..4 {
        next_delivery(&mut consumer).await;
    }
    within("basic.ack", ch.basic_ack(0, BasicAckOptions { multiple: true })).await.unwrap();
    close_channel(&ch).await;
    assert_eq!(message_count(&channel(&conn).await, "ack-all").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn deliveries_can_be_acked_after_their_consumer_is_cancelled() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "ack-late").await;
    publish_n(&ch, "ack-late", 1).await;
    let mut consumer = consume(&ch, "ack-late", BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    within("basic.cancel", ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    let mut watcher = close_watcher(&ch).await;
    ack(&delivery).await;
    assert_no_delivery(&mut watcher).await;
    close_channel(&ch).await;
    assert_eq!(message_count(&channel(&conn).await, "ack-late").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn consuming_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let result = within(
        "basic.consume",
        ch.basic_consume(
            "no-such-queue".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::NOT_FOUND);
    let ch = channel(&conn).await;
    let result =
        within("basic.get", ch.basic_get("no-such-queue".into(), BasicGetOptions::default())).await;
    assert_code(result, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "tagged").await;
    let consume_tagged = || {
        within(
            "basic.consume",
            ch.basic_consume(
                "tagged".into(),
                "same-tag".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
    };
    let _first = consume_tagged().await.unwrap();
    assert_code(consume_tagged().await, reply::NOT_ALLOWED);
    broker.stop().await;
}

#[tokio::test]
async fn publishing_with_immediate_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "immediate").await;
    let mut watcher = close_watcher(&ch).await;
    within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            "immediate".into(),
            BasicPublishOptions { immediate: true, ..BasicPublishOptions::default() },
            b"now",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(channel_closed_with(&mut watcher).await, reply::NOT_IMPLEMENTED);
    broker.stop().await;
}

#[tokio::test]
async fn message_larger_than_max_message_size_closes_the_channel_with_406() {
    let broker = TestBroker::start_with(|cfg| cfg.max_message_size = 1000).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "size-capped").await;
    publish(&ch, "", "size-capped", &[b'a'; 1000]).await;
    let mut watcher = close_watcher(&ch).await;
    publish(&ch, "", "size-capped", &[b'b'; 200_000]).await;
    assert_eq!(channel_closed_with(&mut watcher).await, reply::PRECONDITION_FAILED);
    // Only the channel: the connection reads past the refused body and carries on.
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "size-capped").await, 1);
    assert_eq!(get_body(&ch, "size-capped").await.unwrap().len(), 1000);
    broker.stop().await;
}
