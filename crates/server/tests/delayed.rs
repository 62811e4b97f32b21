//! Delayed exchanges end to end through the server's tick task, which releases held
//! messages in rounds that read them back from the store off the broker lock (take, read on
//! the blocking pool, release): every held message reaches its queue once, marked as
//! delayed, even when the due messages are scattered in the journal between other queues'
//! messages.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{channel, connect, message_count, within};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use postroom_testkit::TestBroker;

const MESSAGES: u32 = 2000;

async fn declare(ch: &Channel) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-delayed-type".into(), AMQPValue::LongString(LongString::from("direct")));
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let kind = ExchangeKind::Custom("x-delayed-message".into());
    within("exchange.declare", ch.exchange_declare("dx".into(), kind, durable, arguments))
        .await
        .expect("delayed exchange declared");
    for queue in ["held", "noise"] {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        within("queue.declare", ch.queue_declare(queue.into(), durable, FieldTable::default()))
            .await
            .expect("queue declared");
    }
    let (options, arguments) = (QueueBindOptions::default(), FieldTable::default());
    within("queue.bind", ch.queue_bind("held".into(), "dx".into(), "k".into(), options, arguments))
        .await
        .expect("queue bound");
}

async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8], delay: i32) {
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongInt(delay));
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let options = BasicPublishOptions::default();
    let confirm = within(
        "basic.publish",
        ch.basic_publish(exchange.into(), key.into(), options, body, properties),
    )
    .await
    .expect("publish sent");
    within("publisher confirm", confirm).await.expect("confirmed");
}

#[tokio::test]
async fn delayed_messages_scattered_in_the_journal_are_each_released_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch).await;
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.unwrap();
    for n in 0..MESSAGES {
        // Delays spread over 0.3–1.3 s out of publish order, and another queue's message
        // between any two held ones: each due message is a read of its own.
        let delay = 300 + (n * 7919 % 1000) as i32;
        publish_confirmed(&ch, "dx", "k", format!("m{n}").as_bytes(), delay).await;
        publish_confirmed(&ch, "", "noise", b"noise", 0).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while message_count(&ch, "held").await < MESSAGES {
        assert!(Instant::now() < deadline, "not all released in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = HashSet::new();
    while let Some(got) =
        within("basic.get", ch.basic_get("held".into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("basic.get answered")
    {
        let headers = got.delivery.properties.headers().clone().unwrap_or_default();
        let delay = headers.inner().get("x-delay");
        assert!(
            matches!(delay, Some(AMQPValue::LongInt(d)) if *d < 0),
            "released without its delay negated: {delay:?}"
        );
        let body = String::from_utf8(got.delivery.data).unwrap();
        assert!(seen.insert(body.clone()), "{body} released twice");
    }
    assert_eq!(seen.len(), MESSAGES as usize);
    assert_eq!(message_count(&ch, "noise").await, MESSAGES);
    broker.stop().await;
}
