//! Queues: server-named queues, passive and inequivalent declares, declare-ok counts,
//! exclusive and auto-delete lifetimes, purge, conditional delete, bind and unbind.

mod common;

use common::{
    assert_code, channel, connect, consume, declare_queue, get_body, message_count, publish, within,
};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Queue};
use postroom_amqp::constants::reply;
use postroom_testkit::TestBroker;

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions) -> lapin::Result<Queue> {
    within("queue.declare", ch.queue_declare(name.into(), options, FieldTable::default())).await
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    declare(ch, name, options).await
}

async fn delete(ch: &Channel, name: &str, options: QueueDeleteOptions) -> lapin::Result<u32> {
    within("queue.delete", ch.queue_delete(name.into(), options)).await
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn empty_name_gets_a_server_generated_amq_gen_name() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let first = declare(&ch, "", QueueDeclareOptions::default()).await.unwrap();
    let second = declare(&ch, "", QueueDeclareOptions::default()).await.unwrap();
    let name = first.name().as_str();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(name.len() > "amq.gen-".len() + 8, "{name}");
    assert_ne!(first.name(), second.name());
    // The generated queue is an ordinary queue reachable through the default exchange.
    publish(&ch, "", name, b"to-generated").await;
    assert_eq!(get_body(&ch, name).await.unwrap(), b"to-generated");
    broker.stop().await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(passive(&ch, "no-such-queue").await, reply::NOT_FOUND);
    let again = channel(&conn).await;
    declare_queue(&again, "now-it-exists").await;
    assert_eq!(passive(&again, "now-it-exists").await.unwrap().message_count(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn redeclaring_with_a_different_durable_flag_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "transient-q").await;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    assert_code(declare(&ch, "transient-q", durable).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

#[tokio::test]
async fn declaring_a_queue_with_the_amq_prefix_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(
        declare(&ch, "amq.mine", QueueDeclareOptions::default()).await,
        reply::ACCESS_REFUSED,
    );
    broker.stop().await;
}

#[tokio::test]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let fresh = declare_queue(&ch, "counted").await;
    assert_eq!((fresh.message_count(), fresh.consumer_count()), (0, 0));
    publish_n(&ch, "counted", 3).await;
    let counted = declare_queue(&ch, "counted").await;
    assert_eq!((counted.message_count(), counted.consumer_count()), (3, 0));
    // A second queue with a consumer: consumer_count counts it.
    declare_queue(&ch, "consumed").await;
    let consumer_ch = channel(&conn).await;
    let _consumer = consume(&consumer_ch, "consumed", BasicConsumeOptions::default()).await;
    let consumed = passive(&ch, "consumed").await.unwrap();
    assert_eq!((consumed.message_count(), consumed.consumer_count()), (0, 1));
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_other_connections_with_405() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let owner_ch = channel(&owner).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    declare(&owner_ch, "mine-only", exclusive).await.unwrap();

    let other = connect(&broker).await;
    let ch = channel(&other).await;
    assert_code(declare(&ch, "mine-only", exclusive).await, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    assert_code(passive(&ch, "mine-only").await, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    let consumed = within(
        "basic.consume",
        ch.basic_consume(
            "mine-only".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(consumed, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    let got =
        within("basic.get", ch.basic_get("mine-only".into(), BasicGetOptions::default())).await;
    assert_code(got, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    let purged =
        within("queue.purge", ch.queue_purge("mine-only".into(), QueuePurgeOptions::default()))
            .await;
    assert_code(purged, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    let bound = within(
        "queue.bind",
        ch.queue_bind(
            "mine-only".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(bound, reply::RESOURCE_LOCKED);
    let ch = channel(&other).await;
    assert_code(
        delete(&ch, "mine-only", QueueDeleteOptions::default()).await,
        reply::RESOURCE_LOCKED,
    );
    // The owner is unaffected.
    publish(&owner_ch, "", "mine-only", b"owner").await;
    assert_eq!(get_body(&owner_ch, "mine-only").await.unwrap(), b"owner");
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let owner_ch = channel(&owner).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    declare(&owner_ch, "short-lived", exclusive).await.unwrap();
    within("connection.close", owner.close(200, "bye".into())).await.unwrap();
    let other = connect(&broker).await;
    let ch = channel(&other).await;
    assert_code(passive(&ch, "short-lived").await, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_after_its_last_consumer_cancels() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let auto_delete = QueueDeclareOptions { auto_delete: true, ..QueueDeclareOptions::default() };
    declare(&ch, "fleeting", auto_delete).await.unwrap();
    let first = consume(&ch, "fleeting", BasicConsumeOptions::default()).await;
    let second = consume(&ch, "fleeting", BasicConsumeOptions::default()).await;
    within("basic.cancel", ch.basic_cancel(first.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert_eq!(passive(&ch, "fleeting").await.unwrap().consumer_count(), 1);
    within("basic.cancel", ch.basic_cancel(second.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert_code(passive(&ch, "fleeting").await, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_yet_is_kept() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let auto_delete = QueueDeclareOptions { auto_delete: true, ..QueueDeclareOptions::default() };
    declare(&ch, "waiting", auto_delete).await.unwrap();
    publish_n(&ch, "waiting", 2).await;
    assert_eq!(message_count(&ch, "waiting").await, 2);
    broker.stop().await;
}

#[tokio::test]
async fn purge_removes_ready_messages_and_returns_their_count() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "purged").await;
    publish_n(&ch, "purged", 7).await;
    let purged =
        within("queue.purge", ch.queue_purge("purged".into(), QueuePurgeOptions::default()))
            .await
            .unwrap();
    assert_eq!(purged, 7);
    assert_eq!(message_count(&ch, "purged").await, 0);
    let again =
        within("queue.purge", ch.queue_purge("purged".into(), QueuePurgeOptions::default()))
            .await
            .unwrap();
    assert_eq!(again, 0);
    broker.stop().await;
}

#[tokio::test]
async fn delete_if_empty_of_a_queue_with_messages_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "not-empty").await;
    publish_n(&ch, "not-empty", 1).await;
    let if_empty = QueueDeleteOptions { if_empty: true, ..QueueDeleteOptions::default() };
    assert_code(delete(&ch, "not-empty", if_empty).await, reply::PRECONDITION_FAILED);
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "not-empty").await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn delete_if_unused_of_a_queue_with_a_consumer_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let consumer_ch = channel(&conn).await;
    declare_queue(&consumer_ch, "in-use").await;
    let _consumer = consume(&consumer_ch, "in-use", BasicConsumeOptions::default()).await;
    let ch = channel(&conn).await;
    let if_unused = QueueDeleteOptions { if_unused: true, ..QueueDeleteOptions::default() };
    assert_code(delete(&ch, "in-use", if_unused).await, reply::PRECONDITION_FAILED);
    let ch = channel(&conn).await;
    assert_eq!(passive(&ch, "in-use").await.unwrap().consumer_count(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn delete_returns_the_number_of_messages_deleted() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "deleted").await;
    publish_n(&ch, "deleted", 4).await;
    let count = delete(&ch, "deleted", QueueDeleteOptions::default()).await.unwrap();
    assert_eq!(count, 4);
    assert_code(passive(&ch, "deleted").await, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn bound_queue_receives_until_it_is_unbound() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "bindable").await;
    within(
        "queue.bind",
        ch.queue_bind(
            "bindable".into(),
            "amq.direct".into(),
            "route".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "route", b"while-bound").await;
    assert_eq!(get_body(&ch, "bindable").await.unwrap(), b"while-bound");
    within(
        "queue.unbind",
        ch.queue_unbind(
            "bindable".into(),
            "amq.direct".into(),
            "route".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "route", b"after-unbind").await;
    assert_eq!(get_body(&ch, "bindable").await, None);
    broker.stop().await;
}

#[tokio::test]
async fn binding_to_a_missing_exchange_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "orphan").await;
    let result = within(
        "queue.bind",
        ch.queue_bind(
            "orphan".into(),
            "no-such-exchange".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_queue_is_usable_from_all_of_its_owners_channels() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let first = channel(&conn).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    declare(&first, "owned", exclusive).await.unwrap();
    let second = channel(&conn).await;
    passive(&second, "owned").await.unwrap();
    publish(&second, "", "owned", b"sibling").await;
    assert_eq!(get_body(&second, "owned").await.unwrap(), b"sibling");
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_missing_queue_succeeds_with_zero_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let count = delete(&ch, "never-declared", QueueDeleteOptions::default()).await.unwrap();
    assert_eq!(count, 0);
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rebound").await;
    within(
        "queue.bind",
        ch.queue_bind(
            "rebound".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    delete(&ch, "rebound", QueueDeleteOptions::default()).await.unwrap();
    // A queue of the same name declared again starts unbound.
    declare_queue(&ch, "rebound").await;
    publish(&ch, "amq.fanout", "", b"old-binding").await;
    assert_eq!(message_count(&ch, "rebound").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn redeclaring_with_a_different_queue_argument_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let with_max_length = |value: AMQPValue| {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), value);
        within(
            "queue.declare",
            ch.queue_declare("limited".into(), QueueDeclareOptions::default(), arguments),
        )
    };
    with_max_length(AMQPValue::LongInt(10)).await.unwrap();
    // The same number in another integer width is equivalent, as in RabbitMQ.
    with_max_length(AMQPValue::LongLongInt(10)).await.unwrap();
    assert_code(with_max_length(AMQPValue::LongInt(20)).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}
