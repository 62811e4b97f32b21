//! The publisher against a real Postroom broker: envelope, confirms, refusals, reconnects.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::scenarios::{self, OrderPlaced};
use common::{get, raw_channel, within};
use postroom_client::{
    Envelope, ExchangeSpec, PublishOptions, Publisher, PublisherConfig, QueueSpec, bind,
};
use postroom_testkit::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_confirmed_publish_carries_the_envelope() {
    let broker = TestBroker::start().await;
    scenarios::a_confirmed_publish_carries_the_envelope(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_publish_fails_and_the_next_one_goes_through() {
    let broker = TestBroker::start().await;
    scenarios::a_refused_publish_fails_and_the_next_one_goes_through(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_publish_does_not_fail_the_publishes_beside_it() {
    let broker = TestBroker::start().await;
    scenarios::a_refused_publish_does_not_fail_the_publishes_beside_it(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_mandatory_message_with_no_route_is_reported_unroutable() {
    let broker = TestBroker::start().await;
    scenarios::a_mandatory_message_with_no_route_is_reported_unroutable(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn extra_headers_and_priority_reach_the_consumer() {
    let broker = TestBroker::start().await;
    scenarios::extra_headers_and_priority_reach_the_consumer(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_publisher_reconnects_after_the_broker_restarts() {
    let port = common::external::free_port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    let url = broker.url();
    scenarios::shop_queue(&url, "orders-restart").await;
    let publisher =
        within("connect", Publisher::connect(&url, PublisherConfig::default())).await.unwrap();
    let first = OrderPlaced { order_id: "before".into(), qty: 1 };
    within("publish", publisher.publish(&first)).await.unwrap();
    broker.stop().await;

    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    scenarios::shop_queue(&url, "orders-restart").await;
    let second = OrderPlaced { order_id: "after".into(), qty: 1 };
    within("publish after restart", publisher.publish(&second)).await.unwrap();
    let (_connection, channel) = raw_channel(&url).await;
    let got = get(&channel, "orders-restart").await;
    assert_eq!(serde_json::from_slice::<OrderPlaced>(&got.delivery.data).unwrap(), second);
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_delayed_publish_is_held_by_a_delayed_exchange() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = raw_channel(&broker.url()).await;
    ExchangeSpec::delayed("later", "direct").declare(&channel).await.unwrap();
    QueueSpec::new("later-q").declare(&channel).await.unwrap();
    bind(&channel, "later-q", "later", "k").await.unwrap();
    let publisher =
        within("connect", Publisher::connect(&broker.url(), PublisherConfig::default()))
            .await
            .unwrap();
    let options = PublishOptions::default().with_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    within("publish", publisher.publish_raw("later", "k", b"x", &Envelope::new(), &options))
        .await
        .unwrap();
    common::assert_empty(&channel, "later-q", Duration::from_millis(100)).await;
    get(&channel, "later-q").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    publisher.close().await;
    broker.stop().await;
}

/// A TCP proxy in front of a broker that can swallow what the broker sends (say, a
/// confirm) and cut every connection, as a broker crash between storing a message and
/// confirming it would.
struct Proxy {
    port: u16,
    swallow: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u32>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallow = Arc::new(AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0);
        let (held, cuts) = (Arc::clone(&swallow), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { break };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let mut cut = cuts.subscribe();
                let mut cut_too = cuts.subscribe();
                let held = Arc::clone(&held);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        _ = cut.changed() => {}
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        let read = tokio::select! {
                            read = server_read.read(&mut buffer) => read,
                            _ = cut_too.changed() => break,
                        };
                        let Ok(n @ 1..) = read else { break };
                        if !held.load(Ordering::SeqCst)
                            && client_write.write_all(&buffer[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Proxy { port, swallow, cut }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

#[tokio::test]
async fn a_publish_whose_confirm_was_lost_is_sent_again_with_the_same_message_id() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = raw_channel(&broker.url()).await;
    QueueSpec::new("resent").declare(&channel).await.unwrap();
    let proxy = Proxy::start(broker.addr()).await;
    let publisher = Arc::new(
        within("connect", Publisher::connect(&proxy.url(), PublisherConfig::default()))
            .await
            .unwrap(),
    );
    let options = PublishOptions::default();
    within("first publish", publisher.publish_raw("", "resent", b"1", &Envelope::new(), &options))
        .await
        .unwrap();

    // The broker stores the second message, but its confirm never reaches the publisher.
    proxy.swallow.store(true, Ordering::SeqCst);
    let envelope = Envelope::new();
    let id = envelope.message_id.clone();
    let sending = Arc::clone(&publisher);
    let second = tokio::spawn(async move {
        sending.publish_raw("", "resent", b"2", &envelope, &PublishOptions::default()).await
    });
    common::eventually_async("the broker holds the second message", || async {
        common::ready_count(&channel, "resent").await == 2
    })
    .await;
    // The connection drops with the confirm outstanding: the publish goes out again on a
    // new connection, and only then returns.
    proxy.swallow.store(false, Ordering::SeqCst);
    proxy.cut.send_modify(|cuts| *cuts += 1);
    within("publish across the cut", second).await.unwrap().unwrap();

    let ids: Vec<String> = [
        get(&channel, "resent").await,
        get(&channel, "resent").await,
        get(&channel, "resent").await,
    ]
    .iter()
    .map(|message| Envelope::from_properties(&message.delivery.properties).message_id)
    .collect();
    assert_eq!(ids.iter().filter(|sent| **sent == id).count(), 2, "sent twice, one id: {ids:?}");
    publisher.close().await;
    broker.stop().await;
}
