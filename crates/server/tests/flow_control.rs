//! Flow control towards clients that do not read: the broker bounds what it queues for a
//! connection instead of pulling a backlog into memory (a `no_ack` consumer) or reading
//! publishes whose `basic.return`s nobody collects, and resumes when the client reads
//! again. Each test fails without the bound: the queue would be emptied into the
//! connection's writer, or the publisher would never be held back.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{RawClient, channel, connect, declare_queue, message_count, within};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use postroom_amqp::Method;
use postroom_amqp::frame::{encode_body_frame, encode_header};
use postroom_amqp::method::{BasicConsume, BasicPublish};
use postroom_testkit::TestBroker;

/// A client socket's receive buffer in these tests: fixed, so the kernel cannot absorb
/// tens of megabytes on the client's behalf.
const CLIENT_RECEIVE_BUFFER: u32 = 64 * 1024;

/// Ready messages of `queue` once they stop changing (no change for half a second).
async fn settled_message_count(ch: &lapin::Channel, queue: &str) -> u32 {
    let mut last = message_count(ch, queue).await;
    let mut stable_since = tokio::time::Instant::now();
    let deadline = stable_since + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = message_count(ch, queue).await;
        if now != last {
            last = now;
            stable_since = tokio::time::Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    last
}

#[tokio::test]
async fn a_no_ack_consumer_that_does_not_read_leaves_the_backlog_in_its_queue() {
    const MESSAGES: u32 = 3000;
    const SIZE: usize = 16 * 1024;
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "flood").await;
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirms on");
    let body = vec![7u8; SIZE];
    for _ in 0..MESSAGES {
        let confirm = ch
            .basic_publish(
                "".into(),
                "flood".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        drop(confirm);
    }
    within("confirms", ch.wait_for_confirms()).await.expect("all confirmed");
    assert_eq!(message_count(&ch, "flood").await, MESSAGES);

    let mut client =
        RawClient::open_with_receive_buffer(broker.addr(), CLIENT_RECEIVE_BUFFER).await;
    let consume = BasicConsume {
        queue: "flood".into(),
        consumer_tag: "firehose".into(),
        no_ack: true,
        ..Default::default()
    };
    client.send_method(1, consume).await;
    // The client reads nothing more for now. What may leave the queue is bounded by the
    // connection's high-water mark (4 MiB) and the two kernel buffers in between.
    let left = settled_message_count(&ch, "flood").await;
    let taken = (MESSAGES - left) as usize * SIZE;
    assert!(
        taken <= 20 << 20,
        "{} of {MESSAGES} messages ({taken} bytes) left the queue for a client reading nothing",
        MESSAGES - left
    );

    // Once the client reads, it gets everything, in order of the queue.
    let mut delivered = 0;
    while delivered < MESSAGES {
        match client.recv().await {
            Some(postroom_amqp::Frame::Method { method: Method::BasicDeliver(_), .. }) => {
                delivered += 1;
            }
            Some(_) => {}
            None => panic!("the broker closed the connection after {delivered} deliveries"),
        }
    }
    assert_eq!(message_count(&ch, "flood").await, 0);
}

/// `basic.publish` with `mandatory` set, with one body frame.
fn mandatory_publish(routing_key: &str, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    Method::from(BasicPublish {
        routing_key: routing_key.into(),
        mandatory: true,
        ..Default::default()
    })
    .encode_frame(1, &mut buf);
    encode_header(1, 60, body.len() as u64, &[0, 0], &mut buf);
    encode_body_frame(1, body, &mut buf);
    buf
}

#[tokio::test]
async fn a_publisher_that_never_reads_its_returns_is_held_back_and_others_are_served() {
    let broker = TestBroker::start().await;
    let mut client =
        RawClient::open_with_receive_buffer(broker.addr(), CLIENT_RECEIVE_BUFFER).await;
    // Every message is unroutable, so each comes back whole as a basic.return.
    let chunk: Vec<u8> =
        (0..16).flat_map(|_| mandatory_publish("nowhere", &[1u8; 64 * 1024])).collect();
    let limit = 512usize << 20;
    let mut written = 0;
    while written < limit && client.write_within(&chunk, Duration::from_secs(1)).await {
        written += chunk.len();
    }
    assert!(
        written < 256 << 20,
        "the broker kept reading a client that reads nothing: {written} bytes accepted"
    );

    // Other connections are unaffected meanwhile.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "others").await;
    common::publish(&ch, "", "others", b"still served").await;
    assert_eq!(common::get_body(&ch, "others").await.as_deref(), Some(&b"still served"[..]));
}

/// Starts a message of `size` bytes on `channel` (opened) and sends `sent` bytes of it,
/// in frames of at most 64 KiB.
async fn start_message(client: &mut RawClient, channel: u16, size: u64, sent: usize) {
    let mut buf = BytesMut::new();
    Method::from(BasicPublish { routing_key: "unfinished".into(), ..Default::default() })
        .encode_frame(channel, &mut buf);
    encode_header(channel, 60, size, &[0, 0], &mut buf);
    let chunk = vec![3u8; 64 * 1024];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        encode_body_frame(channel, &chunk[..n], &mut buf);
        left -= n;
    }
    client.send_raw(&buf).await;
}

#[tokio::test]
async fn unfinished_messages_on_many_channels_are_bounded_per_connection() {
    // max_message_size 1 MiB: a connection may hold 4 MiB of messages it has not finished.
    let broker = TestBroker::start_with(|config| config.max_message_size = 1 << 20).await;
    let mut client = RawClient::open(broker.addr()).await;
    let channels: Vec<u16> = (2..=6).collect();
    for &channel in &channels {
        client.open_channel(channel).await;
    }
    // Finished messages hold nothing: many 900 KiB ones in a row are fine.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "unfinished").await;
    for _ in 0..8 {
        start_message(&mut client, 1, 900 * 1024, 900 * 1024).await;
    }
    // Five channels each 900 KiB into a 1 MiB message: past 4 MiB, the connection goes.
    for &channel in &channels {
        start_message(&mut client, channel, 1 << 20, 900 * 1024).await;
    }
    let close = within("connection.close", client.expect_connection_close()).await;
    assert_eq!(close.reply_code, postroom_amqp::constants::reply::RESOURCE_ERROR);
    // The finished ones were taken; another connection is unaffected.
    assert_eq!(message_count(&ch, "unfinished").await, 8);
    common::publish(&ch, "", "unfinished", b"still served").await;
    assert_eq!(message_count(&ch, "unfinished").await, 9);
}
