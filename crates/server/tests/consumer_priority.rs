//! Consumer priorities (`x-priority` on `basic.consume`), as RabbitMQ: a queue offers each
//! message to the highest-priority consumers that can take it, round-robin among them, and
//! to lower ones only while the higher ones cannot (their prefetch is full).

mod common;

use common::{
    assert_code, assert_no_delivery, channel, connect, declare_queue, next_delivery, publish,
};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use postroom_amqp::constants::reply;
use postroom_testkit::TestBroker;

async fn consume_with_priority(
    ch: &Channel,
    queue: &str,
    priority: AMQPValue,
) -> lapin::Result<Consumer> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-priority".into(), priority);
    ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), arguments).await
}

#[tokio::test]
async fn the_highest_priority_consumer_gets_messages_while_it_has_room() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let high_ch = channel(&conn).await;
    let low_ch = channel(&conn).await;
    declare_queue(&high_ch, "jobs").await;
    high_ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut low = consume_with_priority(&low_ch, "jobs", AMQPValue::LongInt(-5)).await.unwrap();
    let mut high = consume_with_priority(&high_ch, "jobs", AMQPValue::LongInt(10)).await.unwrap();
    for n in 0..5 {
        publish(&high_ch, "", "jobs", format!("m{n}").as_bytes()).await;
    }
    // The high one takes what its prefetch allows; the low one gets the rest meanwhile.
    let first = next_delivery(&mut high).await;
    let second = next_delivery(&mut high).await;
    assert_eq!((first.data.as_slice(), second.data.as_slice()), (&b"m0"[..], &b"m1"[..]));
    for n in 2..5 {
        assert_eq!(next_delivery(&mut low).await.data, format!("m{n}").into_bytes());
    }
    // Once it has room again, new messages go to it first.
    first.ack(BasicAckOptions::default()).await.unwrap();
    publish(&high_ch, "", "jobs", b"m5").await;
    assert_eq!(next_delivery(&mut high).await.data, b"m5");
    assert_no_delivery(&mut low).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_priority_that_is_not_an_integer_is_refused_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "jobs").await;
    let refused = consume_with_priority(&ch, "jobs", AMQPValue::LongString("high".into())).await;
    assert_code(refused, reply::PRECONDITION_FAILED);
    broker.stop().await;
}
