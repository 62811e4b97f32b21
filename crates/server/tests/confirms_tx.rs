//! Publisher confirms and transactions, and the rule that a channel is in at most one of the
//! two modes.

mod common;

use common::{
    assert_code, channel, connect, declare_queue, message_count, publish, reply_code, within,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use postroom_amqp::constants::reply;
use postroom_testkit::TestBroker;

async fn confirm_select(ch: &Channel) -> lapin::Result<()> {
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await
}

async fn tx_select(ch: &Channel) -> lapin::Result<()> {
    within("tx.select", ch.tx_select()).await
}

/// Takes one message from `queue` without acknowledging it, returning its delivery tag.
async fn get_unacked(ch: &Channel, queue: &str) -> u64 {
    within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("a message")
        .delivery
        .delivery_tag
}

#[tokio::test]
async fn ten_thousand_confirmed_publishes_are_all_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "confirmed").await;
    confirm_select(&ch).await.unwrap();
    let mut confirms = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "confirmed".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        confirms.push(confirm);
    }
    let mut acked = 0;
    for confirm in confirms {
        let confirmation = within("a confirm", confirm).await.unwrap();
        assert!(matches!(confirmation, Confirmation::Ack(None)), "{confirmation:?}");
        acked += 1;
    }
    assert_eq!(acked, 10_000);
    assert!(within("wait_for_confirms", ch.wait_for_confirms()).await.unwrap().is_empty());
    assert_eq!(message_count(&ch, "confirmed").await, 10_000);
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_in_confirm_mode_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await.unwrap();
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"lost",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    // The channel close, not a confirm, answers the publish.
    let error = within("the confirm", confirm).await.expect_err("the publish must fail");
    assert_eq!(reply_code(&error), Some(reply::NOT_FOUND), "{error}");
    assert!(conn.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn tx_rollback_enqueues_nothing() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rolled-back").await;
    tx_select(&ch).await.unwrap();
    for _ in 0..3 {
        publish(&ch, "", "rolled-back", b"discarded").await;
    }
    within("tx.rollback", ch.tx_rollback()).await.unwrap();
    assert_eq!(message_count(&ch, "rolled-back").await, 0);
    // The channel stays transactional and usable after a rollback.
    publish(&ch, "", "rolled-back", b"kept").await;
    within("tx.commit", ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, "rolled-back").await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn tx_commit_enqueues_the_transactions_publishes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let observer = channel(&conn).await;
    declare_queue(&ch, "committed").await;
    tx_select(&ch).await.unwrap();
    for _ in 0..3 {
        publish(&ch, "", "committed", b"pending").await;
    }
    // Uncommitted publishes are invisible, even to the publishing channel.
    assert_eq!(message_count(&observer, "committed").await, 0);
    assert_eq!(message_count(&ch, "committed").await, 0);
    within("tx.commit", ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&observer, "committed").await, 3);
    broker.stop().await;
}

#[tokio::test]
async fn ack_inside_a_transaction_is_discarded_by_rollback() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "tx-ack-rollback").await;
    publish(&ch, "", "tx-ack-rollback", b"m").await;
    tx_select(&ch).await.unwrap();
    let tag = get_unacked(&ch, "tx-ack-rollback").await;
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.unwrap();
    within("tx.rollback", ch.tx_rollback()).await.unwrap();
    // The ack was rolled back, so the message is still unacked and comes back when the
    // channel closes.
    within("channel.close", ch.close(200, "done".into())).await.unwrap();
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "tx-ack-rollback").await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn ack_inside_a_transaction_applies_on_commit() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "tx-ack-commit").await;
    publish(&ch, "", "tx-ack-commit", b"m").await;
    tx_select(&ch).await.unwrap();
    let tag = get_unacked(&ch, "tx-ack-commit").await;
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.unwrap();
    within("tx.commit", ch.tx_commit()).await.unwrap();
    within("channel.close", ch.close(200, "done".into())).await.unwrap();
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "tx-ack-commit").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn ack_inside_a_transaction_is_not_applied_before_commit() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "tx-ack-pending").await;
    publish(&ch, "", "tx-ack-pending", b"m").await;
    tx_select(&ch).await.unwrap();
    let tag = get_unacked(&ch, "tx-ack-pending").await;
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.unwrap();
    // Closing without a commit abandons the transaction: the message returns.
    within("channel.close", ch.close(200, "done".into())).await.unwrap();
    let ch = channel(&conn).await;
    assert_eq!(message_count(&ch, "tx-ack-pending").await, 1);
    broker.stop().await;
}

#[tokio::test]
async fn confirm_select_after_tx_select_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    tx_select(&ch).await.unwrap();
    assert_code(confirm_select(&ch).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

#[tokio::test]
async fn tx_select_after_confirm_select_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await.unwrap();
    assert_code(tx_select(&ch).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

#[tokio::test]
async fn tx_commit_without_tx_select_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(within("tx.commit", ch.tx_commit()).await, reply::PRECONDITION_FAILED);
    broker.stop().await;
}

/// Regression (review): a commit with a failing step used to apply the steps before it.
#[tokio::test]
async fn a_transaction_with_an_unknown_delivery_tag_commits_nothing() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let observer = channel(&conn).await;
    declare_queue(&ch, "all-or-nothing").await;
    tx_select(&ch).await.unwrap();
    publish(&ch, "", "all-or-nothing", b"must not appear").await;
    within("basic.ack", ch.basic_ack(999, BasicAckOptions::default())).await.unwrap();
    assert_code(within("tx.commit", ch.tx_commit()).await, reply::PRECONDITION_FAILED);
    assert_eq!(message_count(&observer, "all-or-nothing").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_transaction_publishing_to_a_missing_exchange_commits_nothing() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let observer = channel(&conn).await;
    declare_queue(&ch, "all-or-nothing-2").await;
    tx_select(&ch).await.unwrap();
    publish(&ch, "", "all-or-nothing-2", b"must not appear").await;
    publish(&ch, "no-such-exchange", "x", b"fails").await;
    assert_code(within("tx.commit", ch.tx_commit()).await, reply::NOT_FOUND);
    assert_eq!(message_count(&observer, "all-or-nothing-2").await, 0);
    broker.stop().await;
}
