//! The disk alarm: under `disk_free_limit` of free space, connections that publish are
//! blocked (`connection.blocked` to those that announced the capability, and their frames
//! are not read) while consumers go on; once there is room again they are unblocked and
//! what they sent meanwhile is taken, in order.

mod common;

use std::time::Duration;

use common::{RawClient, channel, connect, declare_queue, get_body, message_count, within};
use postroom_amqp::{Frame, Method};
use postroom_testkit::TestBroker;

/// Reads frames until a connection-level method arrives on channel 0.
async fn next_connection_method(client: &mut RawClient) -> Method {
    loop {
        match client.recv().await {
            Some(Frame::Method { channel: 0, method }) => return method,
            Some(_) => continue,
            None => panic!("the broker closed the connection"),
        }
    }
}

#[tokio::test]
async fn publishers_are_blocked_under_the_disk_free_limit_and_consumers_go_on() {
    // No file system has this much free space: the alarm is on from the first check.
    let broker = TestBroker::start_with(|config| config.disk_free_limit = u64::MAX).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "jobs").await;

    let mut publisher = RawClient::open_announcing(broker.addr(), &["connection.blocked"]).await;
    publisher.send_raw(&RawClient::publish_bytes(1, "", "jobs", b"first")).await;
    match within("connection.blocked", next_connection_method(&mut publisher)).await {
        Method::ConnectionBlocked(blocked) => {
            assert!(blocked.reason.contains("low on disk"), "reason: {}", blocked.reason);
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    // What it sends now is not taken while the alarm lasts.
    for n in 0..10 {
        let body = format!("held {n}");
        publisher.send_raw(&RawClient::publish_bytes(1, "", "jobs", body.as_bytes())).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_count(&ch, "jobs").await, 1);
    // A connection that only consumes is not blocked.
    assert_eq!(get_body(&ch, "jobs").await.as_deref(), Some(&b"first"[..]));

    broker.set_disk_free_limit(0);
    match within("connection.unblocked", next_connection_method(&mut publisher)).await {
        Method::ConnectionUnblocked(_) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }
    for n in 0..10 {
        let body = within("a held message", async {
            loop {
                if let Some(body) = get_body(&ch, "jobs").await {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(body, format!("held {n}").into_bytes());
    }
}
