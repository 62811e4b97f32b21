//! Scenarios that hold on any AMQP 0-9-1 broker: each test file runs them against Postroom,
//! and `tests/rabbitmq.rs` runs them all against RabbitMQ when it is installed. Queue names
//! carry a suffix so that scenarios never share state.
#![allow(dead_code)]

use std::borrow::Cow;

use postroom_client::lapin::types::AMQPValue;
use postroom_client::{
    Envelope, Error, ExchangeSpec, Message, PublishOptions, Publisher, PublisherConfig, QueueSpec,
    TraceContext, TraceContextLayer, bind,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

use super::{get, raw_channel, within};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub qty: u32,
}

impl Message for OrderPlaced {
    const EXCHANGE: &'static str = "shop";
    const MESSAGE_TYPE: &'static str = "shop.order_placed";
    fn routing_key(&self) -> Cow<'_, str> {
        "order.placed".into()
    }
}

/// Declares the `shop` topic exchange and a queue bound to `order.*`.
pub async fn shop_queue(url: &str, queue: &str) {
    let (connection, channel) = raw_channel(url).await;
    ExchangeSpec::topic("shop").declare(&channel).await.unwrap();
    QueueSpec::new(queue).declare(&channel).await.unwrap();
    bind(&channel, queue, "shop", "order.*").await.unwrap();
    connection.close(200, "ok".into()).await.unwrap();
}

pub async fn a_confirmed_publish_carries_the_envelope(url: &str) {
    shop_queue(url, "orders-envelope").await;
    let config = PublisherConfig { source: Some("shop-api".into()), ..PublisherConfig::default() };
    let publisher = within("connect", Publisher::connect(url, config)).await.unwrap();

    let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
    let _guard = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("checkout");
    let span_context = span.in_scope(TraceContext::current).unwrap();
    let cause = Envelope::new().with_correlation_id("checkout-1");
    let message = OrderPlaced { order_id: "o-1".into(), qty: 2 };
    let sent = {
        let _entered = span.enter();
        within(
            "publish",
            publisher.publish_with(
                &message,
                Envelope::caused_by(&cause),
                &PublishOptions::default(),
            ),
        )
        .await
        .unwrap()
    };

    let (_connection, channel) = raw_channel(url).await;
    let got = get(&channel, "orders-envelope").await;
    let received: OrderPlaced = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(received, message);
    let properties = &got.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2));
    let envelope = Envelope::from_properties(properties);
    assert_eq!(envelope, sent);
    assert_eq!(envelope.source.as_deref(), Some("shop-api"));
    assert_eq!(envelope.message_type.as_deref(), Some("shop.order_placed"));
    assert_eq!(envelope.content_type.as_deref(), Some("application/json"));
    assert_eq!(envelope.correlation_id.as_deref(), Some("checkout-1"));
    assert_eq!(envelope.causation_id.as_deref(), Some(cause.message_id.as_str()));
    let trace = TraceContext::parse(envelope.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(trace, span_context);
    publisher.close().await;
}

pub async fn a_refused_publish_fails_and_the_next_one_goes_through(url: &str) {
    QueueSpec::new("orders-after-404").declare(&raw_channel(url).await.1).await.unwrap();
    let publisher =
        within("connect", Publisher::connect(url, PublisherConfig::default())).await.unwrap();
    let envelope = Envelope::new();
    let refused = publisher
        .publish_raw("no-such-exchange", "x", b"{}", &envelope, &PublishOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Amqp { .. }), "{refused}");
    within(
        "publish",
        publisher.publish_raw(
            "",
            "orders-after-404",
            b"{}",
            &Envelope::new(),
            &PublishOptions::default(),
        ),
    )
    .await
    .unwrap();
    let (_connection, channel) = raw_channel(url).await;
    assert_eq!(get(&channel, "orders-after-404").await.delivery.data, b"{}");
    publisher.close().await;
}

pub async fn a_mandatory_message_with_no_route_is_reported_unroutable(url: &str) {
    let (_connection, channel) = raw_channel(url).await;
    ExchangeSpec::direct("nowhere").declare(&channel).await.unwrap();
    let publisher =
        within("connect", Publisher::connect(url, PublisherConfig::default())).await.unwrap();
    let envelope = Envelope::new();
    let options = PublishOptions::default().with_mandatory(true);
    let error = within("publish", publisher.publish_raw("nowhere", "k", b"1", &envelope, &options))
        .await
        .unwrap_err();
    match error {
        Error::Unroutable { message_id, reply_code, .. } => {
            assert_eq!(message_id, envelope.message_id);
            assert_eq!(reply_code, 312);
        }
        other => panic!("expected Unroutable, got {other}"),
    }
    publisher.close().await;
}

pub async fn extra_headers_and_priority_reach_the_consumer(url: &str) {
    let (_connection, channel) = raw_channel(url).await;
    QueueSpec::new("orders-priority").max_priority(5).declare(&channel).await.unwrap();
    let publisher =
        within("connect", Publisher::connect(url, PublisherConfig::default())).await.unwrap();
    let envelope = Envelope::new().with_header("tenant", "eu-1");
    let options = PublishOptions::default().with_priority(4);
    within("publish", publisher.publish_raw("", "orders-priority", b"x", &envelope, &options))
        .await
        .unwrap();
    let got = get(&channel, "orders-priority").await;
    assert_eq!(*got.delivery.properties.priority(), Some(4));
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(
        matches!(headers.inner().get("tenant"), Some(AMQPValue::LongString(v)) if v.to_string() == "eu-1")
    );
    publisher.close().await;
}

// Regression: a publish that made the broker close the shared channel (a missing exchange)
// failed every other publish in flight on it, none of them retried.
pub async fn a_refused_publish_does_not_fail_the_publishes_beside_it(url: &str) {
    let (_connection, channel) = raw_channel(url).await;
    QueueSpec::new("orders-beside").declare(&channel).await.unwrap();
    let publisher = std::sync::Arc::new(
        within("connect", Publisher::connect(url, PublisherConfig::default())).await.unwrap(),
    );
    let publish = |exchange: &'static str, body: Vec<u8>| {
        let publisher = std::sync::Arc::clone(&publisher);
        tokio::spawn(async move {
            let envelope = Envelope::new();
            let options = PublishOptions::default();
            let queue = if exchange.is_empty() { "orders-beside" } else { "x" };
            publisher.publish_raw(exchange, queue, &body, &envelope, &options).await
        })
    };
    let refused = publish("no-such-exchange", b"lost".to_vec());
    let beside: Vec<_> = (0..50).map(|n: u32| publish("", n.to_string().into_bytes())).collect();
    let refused = within("refused publish", refused).await.unwrap().unwrap_err();
    assert!(matches!(refused, Error::Amqp { .. }), "{refused}");
    for (n, publish) in beside.into_iter().enumerate() {
        within("publish", publish)
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("publish {n}, beside the refused one, failed: {error}"));
    }
    for _ in 0..50 {
        get(&channel, "orders-beside").await;
    }
    publisher.close().await;
}
