//! Misbehaving clients, driven over raw TCP with frames built by `postroom_amqp` (or by hand
//! where the frame must be malformed): each protocol violation gets the reply code RabbitMQ
//! uses, closes only the offending connection, and a client that vanishes mid-stream has its
//! unacknowledged messages requeued for others.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{
    RawClient, assert_code, channel, connect, consume, declare_queue, next_delivery, publish,
    within,
};
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Consumer, ExchangeKind};
use postroom_amqp::constants::{FRAME_BODY, FRAME_END, FRAME_METHOD, PROTOCOL_HEADER, reply};
use postroom_amqp::frame::{encode_body_frame, encode_header};
use postroom_amqp::method::{
    BasicConsume, BasicPublish, ChannelCloseOk, ChannelOpen, QueueDeclare,
};
use postroom_amqp::{Frame, Method};
use postroom_testkit::TestBroker;

/// A frame of `kind` on `channel` with `payload`, framed by hand.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    frame
}

fn method_bytes(channel: u16, method: impl Into<Method>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    method.into().encode_frame(channel, &mut buf);
    buf.to_vec()
}

async fn raw_declare(client: &mut RawClient, queue: &str) {
    client.send_method(1, QueueDeclare { queue: queue.into(), ..Default::default() }).await;
    match client.recv_method_on(1).await {
        Method::QueueDeclareOk(_) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// Starts a consumer (manual ack) on channel 1 and waits for consume-ok.
async fn raw_consume(client: &mut RawClient, queue: &str) {
    client
        .send_method(
            1,
            BasicConsume { queue: queue.into(), consumer_tag: "raw".into(), ..Default::default() },
        )
        .await;
    match client.recv_method_on(1).await {
        Method::BasicConsumeOk(_) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

/// Reads one whole delivery (deliver, header, body frames) and returns its body.
async fn raw_delivery(client: &mut RawClient) -> Vec<u8> {
    match client.recv_method_on(1).await {
        Method::BasicDeliver(_) => {}
        other => panic!("expected basic.deliver, got {other:?}"),
    }
    let size = match client.recv().await {
        Some(Frame::Header { header, .. }) => header.body_size,
        other => panic!("expected a content header, got {other:?}"),
    };
    let mut body = Vec::new();
    while (body.len() as u64) < size {
        match client.recv().await {
            Some(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
            other => panic!("expected a content body, got {other:?}"),
        }
    }
    body
}

/// Asserts that a lapin consumer still gets what is published to its queue.
async fn assert_still_served(broker: &TestBroker, queue: &str, consumer: &mut Consumer) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    publish(&ch, "", queue, b"still-served").await;
    let delivery = next_delivery(consumer).await;
    assert_eq!(delivery.data, b"still-served");
    within("ack", delivery.ack(Default::default())).await.unwrap();
}

#[tokio::test]
async fn bad_protocol_header_is_answered_with_the_0_9_1_header_then_closed() {
    let broker = TestBroker::start().await;
    for header in [&b"AMQP\x00\x00\x08\x00"[..], b"AMQP\x01\x01\x00\x0a", b"GET / HTTP/1.1\r\n\r\n"]
    {
        let mut client = RawClient::tcp(broker.addr()).await;
        client.send_raw(header).await;
        let answer = client.read_to_end().await;
        assert_eq!(answer, PROTOCOL_HEADER, "answer to {header:?}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_disconnected() {
    let broker =
        TestBroker::start_with(|cfg| cfg.handshake_timeout = Duration::from_millis(300)).await;
    let mut client = RawClient::tcp(broker.addr()).await;
    client.send_raw(&PROTOCOL_HEADER).await;
    // connection.start arrives, then nothing more is sent: the broker gives up.
    match client.recv_method_on(0).await {
        Method::ConnectionStart(_) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
    client.expect_eof().await;
    broker.stop().await;
}

#[tokio::test]
async fn frame_larger_than_the_negotiated_frame_max_closes_with_501() {
    let broker = TestBroker::start().await;
    let (mut client, handshake) = RawClient::login_with(broker.addr(), 4096, 0).await;
    assert!(handshake.tune.frame_max > 4096);
    client.open_vhost("/").await;
    client.open_channel(1).await;
    raw_declare(&mut client, "big-frames").await;
    // A body frame that fits the broker's own limit but not the 4096 agreed on.
    let body = vec![b'x'; 5000];
    let mut bytes =
        method_bytes(1, BasicPublish { routing_key: "big-frames".into(), ..Default::default() });
    let mut header = BytesMut::new();
    encode_header(1, 60, body.len() as u64, &[0, 0], &mut header);
    bytes.extend_from_slice(&header);
    let mut frame = BytesMut::new();
    encode_body_frame(1, &body, &mut frame);
    bytes.extend_from_slice(&frame);
    client.send_raw(&bytes).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::FRAME_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn frames_up_to_the_negotiated_frame_max_are_accepted() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "max-frames").await;
    let mut watcher = consume(&ch, "max-frames", BasicConsumeOptions::default()).await;
    let (mut client, _) = RawClient::login_with(broker.addr(), 4096, 0).await;
    client.open_vhost("/").await;
    client.open_channel(1).await;
    // 4088 payload bytes + 8 bytes of framing = exactly 4096.
    let body = vec![b'y'; 4088];
    client.send_raw(&RawClient::publish_bytes(1, "", "max-frames", &body)).await;
    let delivery = next_delivery(&mut watcher).await;
    assert_eq!(delivery.data, body);
    client.disconnect();
    broker.stop().await;
}

#[tokio::test]
async fn bad_frame_end_octet_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    let mut bytes = method_bytes(1, QueueDeclare { queue: "never".into(), ..Default::default() });
    *bytes.last_mut().unwrap() = 0x00;
    client.send_raw(&bytes).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::FRAME_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn garbage_after_the_handshake_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client.send_raw(&b"\xde\xad\xbe\xef".repeat(64)).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::FRAME_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn unknown_class_and_method_closes_the_connection_with_503() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    // Class 99 does not exist in AMQP 0-9-1.
    let payload = [0, 99, 0, 7, 1, 2, 3];
    client.send_raw(&raw_frame(FRAME_METHOD, 1, &payload)).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::COMMAND_INVALID, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (99, 7));
    broker.stop().await;
}

#[tokio::test]
async fn method_on_a_channel_that_was_never_opened_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client.send_method(9, QueueDeclare { queue: "ghost".into(), ..Default::default() }).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::CHANNEL_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn reopening_an_open_channel_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client.send_method(1, ChannelOpen::default()).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::CHANNEL_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn content_body_without_a_publish_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client.send_raw(&raw_frame(FRAME_BODY, 1, b"orphan body")).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::UNEXPECTED_FRAME, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn content_header_without_a_publish_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    let mut header = BytesMut::new();
    encode_header(1, 60, 3, &[0, 0], &mut header);
    client.send_raw(&header).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::UNEXPECTED_FRAME, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn method_where_a_content_header_is_due_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    let mut bytes = method_bytes(1, BasicPublish::default());
    bytes.extend(method_bytes(1, QueueDeclare::default()));
    client.send_raw(&bytes).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::UNEXPECTED_FRAME, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn truncated_method_fields_close_with_502() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    // queue.declare: ticket, then a shortstr claiming 200 bytes of which 3 are present.
    let mut payload = vec![0, 50, 0, 10, 0, 0, 200];
    payload.extend_from_slice(b"abc");
    client.send_raw(&raw_frame(FRAME_METHOD, 1, &payload)).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::SYNTAX_ERROR, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn client_vanishing_mid_frame_has_its_unacked_message_requeued() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "half").await;
    publish(&ch, "", "half", b"held").await;

    let mut client = RawClient::open(broker.addr()).await;
    raw_consume(&mut client, "half").await;
    assert_eq!(raw_delivery(&mut client).await, b"held");
    // Half of a publish, then the socket goes.
    let publish_bytes = RawClient::publish_bytes(1, "", "half", b"never-completed");
    client.send_raw(&publish_bytes[..publish_bytes.len() / 2]).await;
    client.disconnect();

    let mut consumer = consume(&ch, "half", BasicConsumeOptions::default()).await;
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.data, b"held");
    assert!(again.redelivered);
    within("ack", again.ack(Default::default())).await.unwrap();
    // The broker still serves, and the half-sent message was never enqueued.
    assert_still_served(&broker, "half", &mut consumer).await;
    common::assert_no_delivery(&mut consumer).await;
    broker.stop().await;
}

#[tokio::test]
async fn consumer_dropping_its_connection_has_unacked_messages_redelivered_to_another() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "dropped").await;
    for i in 0..3 {
        publish(&ch, "", "dropped", format!("m{i}").as_bytes()).await;
    }
    let mut client = RawClient::open(broker.addr()).await;
    raw_consume(&mut client, "dropped").await;
    for i in 0..3 {
        assert_eq!(raw_delivery(&mut client).await, format!("m{i}").as_bytes());
    }
    client.disconnect();

    let mut consumer = consume(&ch, "dropped", BasicConsumeOptions::default()).await;
    for i in 0..3 {
        let again = next_delivery(&mut consumer).await;
        assert_eq!(again.data, format!("m{i}").as_bytes());
        assert!(again.redelivered, "m{i} must be flagged redelivered");
    }
    broker.stop().await;
}

#[tokio::test]
async fn one_connections_errors_do_not_affect_another_connection() {
    let broker = TestBroker::start().await;
    let healthy = connect(&broker).await;
    let healthy_ch = channel(&healthy).await;
    declare_queue(&healthy_ch, "bystander").await;
    let mut consumer = consume(&healthy_ch, "bystander", BasicConsumeOptions::default()).await;

    // A channel error on another lapin connection.
    let faulty = connect(&broker).await;
    let faulty_ch = channel(&faulty).await;
    let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    let result = within(
        "exchange.declare",
        faulty_ch.exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(result, reply::NOT_FOUND);
    // And a connection error on a raw one.
    let mut raw = RawClient::open(broker.addr()).await;
    raw.send_raw(&raw_frame(FRAME_BODY, 1, b"stray")).await;
    assert_eq!(raw.expect_connection_close().await.reply_code, reply::UNEXPECTED_FRAME);

    assert!(healthy.status().connected());
    assert_still_served(&broker, "bystander", &mut consumer).await;
    broker.stop().await;
}

#[tokio::test]
async fn after_a_channel_error_frames_before_close_ok_are_ignored_and_the_number_is_reusable() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr()).await;
    client
        .send_method(
            1,
            QueueDeclare { queue: "missing".into(), passive: true, ..Default::default() },
        )
        .await;
    match client.recv_method_on(1).await {
        Method::ChannelClose(close) => assert_eq!(close.reply_code, reply::NOT_FOUND),
        other => panic!("expected channel.close, got {other:?}"),
    }
    // Until it answers close-ok the client may still have frames in flight, content
    // included: the broker drops them without complaint.
    let mut in_flight =
        method_bytes(1, QueueDeclare { queue: "in-flight".into(), ..Default::default() });
    in_flight.extend_from_slice(&RawClient::publish_bytes(1, "", "in-flight", b"dropped"));
    client.send_raw(&in_flight).await;
    client.send_method(1, ChannelCloseOk {}).await;
    client.open_channel(1).await;
    // Nothing was answered for the dropped frames: the next reply is for this declare, and
    // the in-flight declare never happened.
    client
        .send_method(
            1,
            QueueDeclare { queue: "in-flight".into(), passive: true, ..Default::default() },
        )
        .await;
    match client.recv_method_on(1).await {
        Method::ChannelClose(close) => assert_eq!(close.reply_code, reply::NOT_FOUND),
        other => panic!("expected channel.close 404 for the dropped declare, got {other:?}"),
    }
    client.disconnect();
    broker.stop().await;
}

#[tokio::test]
async fn deliveries_are_split_by_the_frame_max_the_client_negotiated() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "split").await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    publish(&ch, "", "split", &body).await;
    let (mut client, _) = RawClient::login_with(broker.addr(), 4096, 0).await;
    client.open_vhost("/").await;
    client.open_channel(1).await;
    raw_consume(&mut client, "split").await;
    match client.recv_method_on(1).await {
        Method::BasicDeliver(_) => {}
        other => panic!("expected basic.deliver, got {other:?}"),
    }
    match client.recv().await {
        Some(Frame::Header { header, .. }) => assert_eq!(header.body_size, 10_000),
        other => panic!("expected a content header, got {other:?}"),
    }
    let mut received = Vec::new();
    let mut frames = 0;
    while received.len() < body.len() {
        match client.recv().await {
            Some(Frame::Body { payload, .. }) => {
                assert!(payload.len() <= 4096 - 8, "{} byte body frame", payload.len());
                received.extend_from_slice(&payload);
                frames += 1;
            }
            other => panic!("expected a content body, got {other:?}"),
        }
    }
    assert_eq!(received, body);
    assert_eq!(frames, 3);
    client.disconnect();
    broker.stop().await;
}
