//! Connection-level behaviour: handshake, authentication, capabilities, virtual hosts,
//! channel_max and heartbeats. lapin where it can express the case; the raw client where the
//! test needs to see the broker's frames (lapin does not expose `server_properties`).

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, channel, connect, connect_url, reply_code, within};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use postroom_amqp::constants::reply;
use postroom_amqp::method::{ChannelOpen, ConnectionOpen, ConnectionTuneOk};
use postroom_amqp::{FieldValue, Frame, Method};
use postroom_testkit::TestBroker;

#[tokio::test]
async fn handshake_completes_and_channels_work() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    assert!(conn.status().connected());
    let ch = channel(&conn).await;
    let queue = within(
        "queue.declare",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(queue.name().as_str().starts_with("amq.gen-"));
    within("connection.close", conn.close(200, "bye".into())).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let broker = TestBroker::start().await;
    let url = format!("amqp://guest:wrong@{}/%2f", broker.addr());
    let result =
        within("lapin connect", Connection::connect(&url, ConnectionProperties::default())).await;
    let Err(error) = result else {
        panic!("login with a wrong password must fail");
    };
    assert_eq!(reply_code(&error), Some(reply::ACCESS_REFUSED), "{error}");
    broker.stop().await;
}

#[tokio::test]
async fn wrong_password_gets_connection_close_403_on_the_wire() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::start(broker.addr()).await;
    client.send_start_ok("nope").await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::ACCESS_REFUSED);
    assert!(close.reply_text.starts_with("ACCESS_REFUSED"), "{:?}", close.reply_text);
    broker.stop().await;
}

#[tokio::test]
async fn server_properties_advertise_rabbitmq_capabilities() {
    let broker = TestBroker::start().await;
    let (client, handshake) = RawClient::login(broker.addr(), 0).await;
    let start = handshake.start;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_str().unwrap().to_owned();
    assert!(mechanisms.split(' ').any(|m| m == "PLAIN"), "{mechanisms:?}");
    let capabilities = start
        .server_properties
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .expect("capabilities table");
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(capabilities.get(name), Some(&FieldValue::Bool(true)), "capability {name}");
    }
    client.disconnect();
    broker.stop().await;
}

#[tokio::test]
async fn tune_proposes_the_configured_limits() {
    let broker = TestBroker::start_with(|cfg| {
        cfg.frame_max = 65_536;
        cfg.channel_max = 42;
        cfg.heartbeat = 7;
    })
    .await;
    let (client, handshake) = RawClient::login(broker.addr(), 0).await;
    let tune = handshake.tune;
    assert_eq!((tune.channel_max, tune.frame_max, tune.heartbeat), (42, 65_536, 7));
    client.disconnect();
    broker.stop().await;
}

#[tokio::test]
async fn unknown_vhost_is_closed_with_530_not_allowed() {
    let broker = TestBroker::start().await;
    let url = format!("amqp://guest:guest@{}/no-such-vhost", broker.addr());
    let result =
        within("lapin connect", Connection::connect(&url, ConnectionProperties::default())).await;
    let Err(error) = result else {
        panic!("opening a missing vhost must fail");
    };
    assert_eq!(reply_code(&error), Some(reply::NOT_ALLOWED), "{error}");
    broker.stop().await;
}

#[tokio::test]
async fn configured_vhosts_are_separate_namespaces() {
    let broker = TestBroker::start_with(|config| config.vhosts.push("celery".into())).await;
    let url = format!("amqp://guest:guest@{}/celery", broker.addr());
    let in_celery = common::connect_url(&url).await;
    let celery = common::channel(&in_celery).await;
    common::declare_queue(&celery, "tasks").await;
    common::publish(&celery, "", "tasks", b"in celery").await;
    assert_eq!(common::message_count(&celery, "tasks").await, 1);
    // The default vhost has none of it.
    let in_root = common::connect(&broker).await;
    let root = common::channel(&in_root).await;
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let missing = root.queue_declare("tasks".into(), passive, Default::default()).await;
    common::assert_code(missing, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn a_user_may_open_only_the_vhosts_it_is_given() {
    let broker = TestBroker::start_with(|config| {
        config.vhosts.push("celery".into());
        let worker = postroom_server::config::User {
            vhosts: Some(vec!["celery".into()]),
            ..postroom_server::config::User::new("worker", "secret")
        };
        config.users.push(worker);
    })
    .await;
    let allowed = format!("amqp://worker:secret@{}/celery", broker.addr());
    let conn = common::connect_url(&allowed).await;
    common::channel(&conn).await;
    let refused = format!("amqp://worker:secret@{}/%2f", broker.addr());
    let result =
        within("lapin connect", Connection::connect(&refused, ConnectionProperties::default()))
            .await;
    let Err(error) = result else {
        panic!("the user may not open /");
    };
    assert_eq!(reply_code(&error), Some(reply::NOT_ALLOWED), "{error}");
    broker.stop().await;
}

#[tokio::test]
async fn unknown_vhost_gets_connection_close_530_on_the_wire() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::login(broker.addr(), 0).await;
    client
        .send_method(
            0,
            ConnectionOpen { virtual_host: "no-such-vhost".into(), ..Default::default() },
        )
        .await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::NOT_ALLOWED);
    assert_eq!((close.class_id, close.method_id), (10, 40));
    broker.stop().await;
}

#[tokio::test]
async fn lapin_cannot_open_more_channels_than_channel_max() {
    let broker = TestBroker::start_with(|cfg| cfg.channel_max = 3).await;
    let conn = connect(&broker).await;
    assert_eq!(conn.configuration().channel_max(), 3);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(channel(&conn).await);
    }
    let refused = within("channel.open", conn.create_channel()).await;
    let error = refused.expect_err("a fourth channel must be refused");
    assert!(matches!(error.kind(), ErrorKind::ChannelsLimitReached), "{error}");
    // The channels that did open are usable.
    for ch in &open {
        within(
            "queue.declare",
            ch.queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
    }
    broker.stop().await;
}

#[tokio::test]
async fn opening_more_channels_than_channel_max_closes_the_connection_with_530() {
    let broker = TestBroker::start_with(|cfg| cfg.channel_max = 2).await;
    let mut client = RawClient::open(broker.addr()).await;
    client.open_channel(2).await;
    client.send_method(3, ChannelOpen::default()).await;
    let close = client.expect_connection_close().await;
    // RabbitMQ: "NOT_ALLOWED - number of channels opened (2) has reached the negotiated
    // channel_max (2)".
    assert_eq!(close.reply_code, reply::NOT_ALLOWED, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn one_second_heartbeat_keeps_an_idle_connection_alive() {
    let broker = TestBroker::start().await;
    let conn = connect_url(&format!("{}?heartbeat=1", broker.url())).await;
    assert_eq!(conn.configuration().heartbeat(), 1);
    let ch = channel(&conn).await;
    let queue = common::declare_queue(&ch, "heartbeat-q").await;
    // Three seconds idle: past the broker's 2 × heartbeat read timeout, so only heartbeats
    // keep the connection open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(conn.status().connected());
    common::publish(&ch, "", queue.name().as_str(), b"still here").await;
    let got =
        within("basic.get", ch.basic_get("heartbeat-q".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("message");
    assert_eq!(got.delivery.data, b"still here");
    broker.stop().await;
}

#[tokio::test]
async fn a_silent_client_with_heartbeats_is_disconnected() {
    let broker = TestBroker::start_with(|cfg| cfg.heartbeat = 1).await;
    let (mut client, handshake) = RawClient::login_with(broker.addr(), 0, 1).await;
    assert_eq!(handshake.tune.heartbeat, 1);
    client.open_vhost("/").await;
    // From here the client sends nothing, not even heartbeats: the broker keeps sending its
    // own and drops the connection after missing the client's for two intervals.
    let started = Instant::now();
    let mut heartbeats = 0;
    while let Some(frame) = client.recv().await {
        if frame == Frame::Heartbeat {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 1, "broker sent no heartbeats");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    broker.stop().await;
}

/// Connects and answers tune with the given values, returning the client before open.
async fn tune_with(broker: &TestBroker, channel_max: u16, frame_max: u32) -> RawClient {
    let (mut client, _) = RawClient::start(broker.addr()).await;
    client.send_start_ok("guest").await;
    match client.recv_method_on(0).await {
        Method::ConnectionTune(_) => {}
        other => panic!("expected connection.tune, got {other:?}"),
    }
    client.send_method(0, ConnectionTuneOk { channel_max, frame_max, heartbeat: 0 }).await;
    client
}

#[tokio::test]
async fn negotiating_frame_max_below_the_minimum_closes_with_530() {
    let broker = TestBroker::start().await;
    let mut client = tune_with(&broker, 0, 1024).await;
    let close = client.expect_connection_close().await;
    // RabbitMQ: "NOT_ALLOWED - negotiated frame_max = 1024 is lower than the minimum allowed
    // value (4096)".
    assert_eq!(close.reply_code, reply::NOT_ALLOWED, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (10, 31));
    broker.stop().await;
}

#[tokio::test]
async fn negotiating_frame_max_above_the_servers_closes_with_530() {
    let broker = TestBroker::start().await;
    let mut client = tune_with(&broker, 0, 1 << 20).await;
    let close = client.expect_connection_close().await;
    assert_eq!(close.reply_code, reply::NOT_ALLOWED, "{close:?}");
    broker.stop().await;
}

#[tokio::test]
async fn negotiating_channel_max_above_the_servers_closes_with_530() {
    let broker = TestBroker::start_with(|cfg| cfg.channel_max = 16).await;
    let mut client = tune_with(&broker, 100, 0).await;
    client.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    // RabbitMQ fails the negotiation at tune-ok; at the latest, open must not succeed.
    match client.recv_method_on(0).await {
        Method::ConnectionClose(close) => {
            assert_eq!(close.reply_code, reply::NOT_ALLOWED, "{close:?}");
        }
        other => panic!("channel_max 100 > 16 was accepted: got {other:?}"),
    }
    client.disconnect();
    broker.stop().await;
}
