//! Worker, idempotency and request-reply scenarios that hold on any AMQP 0-9-1 broker.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postroom_client::{
    Backoff, CommandResult, Connector, Envelope, Error, ExchangeSpec, HandlerExt,
    IdempotentReceiver, Incoming, Json, MemoryProcessedStore, Message, PublishOptions, Publisher,
    PublisherConfig, QueueSpec, Responder, RpcClient, WorkerConfig, bind, handler_fn,
};
use serde::{Deserialize, Serialize};

use super::probe::death_reason;
use super::{RunningWorker, eventually, get, raw_channel, ready_count, within};

/// A work queue with a dead-letter queue behind it.
pub async fn queue_with_dlq(url: &str, queue: &str) -> String {
    let dead = format!("{queue}.dead");
    let (connection, channel) = raw_channel(url).await;
    ExchangeSpec::direct("dlx").declare(&channel).await.unwrap();
    QueueSpec::new(&dead).declare(&channel).await.unwrap();
    bind(&channel, &dead, "dlx", &dead).await.unwrap();
    QueueSpec::new(queue).dead_letter("dlx", Some(&dead)).declare(&channel).await.unwrap();
    connection.close(200, "ok".into()).await.unwrap();
    dead
}

pub async fn send(publisher: &Publisher, queue: &str, body: &[u8], envelope: Envelope) {
    within(
        "publish",
        publisher.publish_raw("", queue, body, &envelope, &PublishOptions::default()),
    )
    .await
    .unwrap();
}

pub async fn publisher(url: &str) -> Publisher {
    within("connect", Publisher::connect(url, PublisherConfig::default())).await.unwrap()
}

pub async fn each_result_is_acknowledged_as_the_table_says(url: &str) {
    let dead = queue_with_dlq(url, "results").await;
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let handler = handler_fn(move |message: Incoming| {
        let seen = Arc::clone(&seen);
        async move {
            let Ok(body) = std::str::from_utf8(&message.body) else {
                return CommandResult::invalid("not UTF-8");
            };
            let body = body.to_string();
            let count = {
                let mut seen = seen.lock().unwrap();
                let count = seen.entry(body.clone()).or_default();
                *count += 1;
                *count
            };
            match (body.as_str(), count) {
                ("ok", _) => CommandResult::Success,
                ("drop", _) => CommandResult::dropped("obsolete"),
                ("dead", _) => CommandResult::dead_letter("rule violated"),
                ("retry-once", 1) => CommandResult::retry(),
                ("retry-once", _) => CommandResult::Success,
                (other, _) => CommandResult::invalid(format!("unknown body {other:?}")),
            }
        }
    });
    let worker = RunningWorker::start(url, handler, WorkerConfig::new("results"));
    let publisher = publisher(url).await;
    for body in [&b"ok"[..], b"drop", b"dead", b"\xff\xfe", b"retry-once"] {
        send(&publisher, "results", body, Envelope::new()).await;
    }
    let stats = Arc::clone(&worker.stats);
    eventually("all settled", || stats.acked() == 3 && stats.rejected() == 2).await;
    assert_eq!(stats.requeued(), 1);
    assert_eq!(calls.lock().unwrap()["retry-once"], 2);
    worker.stop().await.unwrap();

    let (_connection, channel) = raw_channel(url).await;
    let mut dead_bodies = Vec::new();
    for _ in 0..2 {
        let message = get(&channel, &dead).await;
        assert_eq!(death_reason(&message).as_deref(), Some("rejected"));
        dead_bodies.push(message.delivery.data.clone());
    }
    dead_bodies.sort();
    assert_eq!(dead_bodies, [b"dead".to_vec(), b"\xff\xfe".to_vec()]);
    assert_eq!(ready_count(&channel, "results").await, 0);
    publisher.close().await;
}

pub async fn a_panic_is_requeued_and_the_redelivery_succeeds(url: &str) {
    QueueSpec::new("panics").declare(&raw_channel(url).await.1).await.unwrap();
    let handler = handler_fn(|message: Incoming| async move {
        assert!(message.redelivered, "first delivery panics");
        CommandResult::Success
    });
    let worker = RunningWorker::start(url, handler, WorkerConfig::new("panics"));
    let publisher = publisher(url).await;
    send(&publisher, "panics", b"x", Envelope::new()).await;
    let stats = Arc::clone(&worker.stats);
    eventually("acked after the panic", || stats.acked() == 1).await;
    assert_eq!((stats.panicked(), stats.requeued()), (1, 1));
    worker.stop().await.unwrap();
    publisher.close().await;
}

pub async fn the_concurrency_limit_holds(url: &str) {
    QueueSpec::new("limited").declare(&raw_channel(url).await.1).await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now, most) = (Arc::clone(&running), Arc::clone(&peak));
    let handler = handler_fn(move |_| {
        let (now, most) = (Arc::clone(&now), Arc::clone(&most));
        async move {
            let current = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(current, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            CommandResult::Success
        }
    });
    let config = WorkerConfig { concurrency: 2, prefetch: 10, ..WorkerConfig::new("limited") };
    let worker = RunningWorker::start(url, handler, config);
    let publisher = publisher(url).await;
    for n in 0..8 {
        send(&publisher, "limited", n.to_string().as_bytes(), Envelope::new()).await;
    }
    let stats = Arc::clone(&worker.stats);
    eventually("all acked", || stats.acked() == 8).await;
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    worker.stop().await.unwrap();
    publisher.close().await;
}

pub async fn shutdown_finishes_in_flight_messages_and_leaves_the_rest(url: &str) {
    QueueSpec::new("graceful").declare(&raw_channel(url).await.1).await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&started);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            CommandResult::Success
        }
    });
    let config = WorkerConfig { concurrency: 1, prefetch: 1, ..WorkerConfig::new("graceful") };
    let publisher = publisher(url).await;
    for n in 0..3 {
        send(&publisher, "graceful", n.to_string().as_bytes(), Envelope::new()).await;
    }
    let worker = RunningWorker::start(url, handler, config);
    eventually("one message started", || started.load(Ordering::SeqCst) == 1).await;
    let stats = Arc::clone(&worker.stats);
    worker.stop().await.unwrap();
    assert_eq!(stats.acked(), 1, "the message in flight was finished and acknowledged");
    assert_eq!(started.load(Ordering::SeqCst), 1, "nothing new started after shutdown");
    let (_connection, channel) = raw_channel(url).await;
    eventually_count(&channel, "graceful", 2).await;
    publisher.close().await;
}

async fn eventually_count(channel: &postroom_client::lapin::Channel, queue: &str, count: u32) {
    let deadline = std::time::Instant::now() + super::WAIT;
    while ready_count(channel, queue).await != count {
        assert!(std::time::Instant::now() < deadline, "{queue} never held {count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn a_duplicate_message_id_is_processed_once(url: &str) {
    QueueSpec::new("dedup-memory").declare(&raw_channel(url).await.1).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            CommandResult::Success
        }
    })
    .with(IdempotentReceiver::new(Arc::new(MemoryProcessedStore::new())));
    let worker = RunningWorker::start(url, handler, WorkerConfig::new("dedup-memory"));
    let publisher = publisher(url).await;
    let envelope = Envelope::new().with_message_id("grant-user1-20240101");
    send(&publisher, "dedup-memory", b"grant 100", envelope.clone()).await;
    send(&publisher, "dedup-memory", b"grant 100", envelope).await;
    send(&publisher, "dedup-memory", b"grant 50", Envelope::new()).await;
    let stats = Arc::clone(&worker.stats);
    eventually("three acked", || stats.acked() == 3).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    worker.stop().await.unwrap();
    publisher.close().await;
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Quote {
    pub sku: String,
}

impl Message for Quote {
    const EXCHANGE: &'static str = "";
    const MESSAGE_TYPE: &'static str = "pricing.quote";
    fn routing_key(&self) -> Cow<'_, str> {
        "pricing".into()
    }
}

pub async fn request_reply_returns_answers_and_errors(url: &str) {
    QueueSpec::new("pricing").transient().declare(&raw_channel(url).await.1).await.unwrap();
    let replies = Arc::new(publisher(url).await);
    let responder = Responder::new(Arc::clone(&replies), |quote: Quote| async move {
        if quote.sku.is_empty() {
            Err("unknown sku".to_string())
        } else {
            Ok(quote.sku.len() * 100)
        }
    });
    let worker = RunningWorker::start(url, responder, WorkerConfig::new("pricing"));
    let connector = Arc::new(Connector::new(url, Backoff::default()).unwrap());
    let client = Arc::new(RpcClient::new(connector, Json));
    let timeout = Duration::from_secs(10);
    let price: usize =
        within("call", client.call(&Quote { sku: "LAMP".into() }, timeout)).await.unwrap();
    assert_eq!(price, 400);
    // Concurrent calls on one client are told apart by their correlation ids.
    let calls: Vec<_> = (0..5usize)
        .map(|n| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                client
                    .call::<_, usize>(&Quote { sku: "x".repeat(n + 1) }, Duration::from_secs(10))
                    .await
            })
        })
        .collect();
    let mut prices = Vec::new();
    for call in calls {
        prices.push(within("call", call).await.unwrap().unwrap());
    }
    assert_eq!(prices, [100, 200, 300, 400, 500]);
    let error = within("call", client.call::<_, usize>(&Quote { sku: String::new() }, timeout))
        .await
        .unwrap_err();
    assert!(matches!(&error, Error::Remote(text) if text == "unknown sku"), "{error}");
    worker.stop().await.unwrap();
    let error =
        client.call::<_, usize>(&Quote { sku: "late".into() }, Duration::from_millis(200)).await;
    assert!(matches!(error, Err(Error::Timeout(_))), "{error:?}");
    replies.close().await;
}
