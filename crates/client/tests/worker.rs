//! The worker framework against a real Postroom broker: acknowledgements, panics,
//! concurrency, graceful shutdown, the broker's retry policy, reconnects, idempotency and
//! request-reply.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::worker_scenarios::{self as scenarios, publisher, send};
use common::{RunningWorker, eventually, get, raw_channel, ready_count};
use postroom_client::{
    Backoff, CommandResult, Connector, Envelope, ExchangeSpec, Incoming, QueueSpec, Worker,
    WorkerConfig, bind, handler_fn,
};
use postroom_testkit::TestBroker;

#[tokio::test]
async fn each_result_is_acknowledged_as_the_table_says() {
    let broker = TestBroker::start().await;
    scenarios::each_result_is_acknowledged_as_the_table_says(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_panic_is_requeued_and_the_redelivery_succeeds() {
    let broker = TestBroker::start().await;
    scenarios::a_panic_is_requeued_and_the_redelivery_succeeds(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    let broker = TestBroker::start().await;
    scenarios::the_concurrency_limit_holds(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_messages_and_leaves_the_rest() {
    let broker = TestBroker::start().await;
    scenarios::shutdown_finishes_in_flight_messages_and_leaves_the_rest(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_duplicate_message_id_is_processed_once() {
    let broker = TestBroker::start().await;
    scenarios::a_duplicate_message_id_is_processed_once(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn request_reply_returns_answers_and_errors() {
    let broker = TestBroker::start().await;
    scenarios::request_reply_returns_answers_and_errors(&broker.url()).await;
    broker.stop().await;
}

#[tokio::test]
async fn retries_back_off_on_the_queue_then_dead_letter_at_the_delivery_limit() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    let (_connection, channel) = raw_channel(&url).await;
    ExchangeSpec::direct("dlx").declare(&channel).await.unwrap();
    QueueSpec::new("flaky.dead").declare(&channel).await.unwrap();
    bind(&channel, "flaky.dead", "dlx", "flaky.dead").await.unwrap();
    QueueSpec::new("flaky")
        .retry(Duration::from_millis(40), 2.0, Duration::from_millis(200))
        .retry_jitter(0.0)
        .quorum()
        .delivery_limit(2)
        .dead_letter("dlx", Some("flaky.dead"))
        .declare(&channel)
        .await
        .unwrap();
    let counts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&counts);
    let handler = handler_fn(move |message: Incoming| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push((message.delivery_count, std::time::Instant::now()));
            CommandResult::retry()
        }
    });
    let worker = RunningWorker::start(&url, handler, WorkerConfig::new("flaky"));
    let publisher = publisher(&url).await;
    send(&publisher, "flaky", b"always fails", Envelope::new()).await;
    let dead = get(&channel, "flaky.dead").await;
    assert_eq!(dead.delivery.data, b"always fails");
    let counts = counts.lock().unwrap().clone();
    let delivery_counts: Vec<u64> = counts.iter().map(|(count, _)| *count).collect();
    assert_eq!(delivery_counts, [0, 1, 2]);
    // The broker waited 40 ms, then 80 ms, before redelivering.
    assert!(counts[1].1 - counts[0].1 >= Duration::from_millis(40));
    assert!(counts[2].1 - counts[1].1 >= Duration::from_millis(80));
    assert_eq!(worker.stats.requeued(), 3);
    worker.stop().await.unwrap();
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_requeued_and_retried() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    QueueSpec::new("slow").declare(&raw_channel(&url).await.1).await.unwrap();
    let handler = handler_fn(|message: Incoming| async move {
        if !message.redelivered {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        CommandResult::Success
    });
    let config =
        WorkerConfig { handler_timeout: Duration::from_millis(100), ..WorkerConfig::new("slow") };
    let worker = RunningWorker::start(&url, handler, config);
    let publisher = publisher(&url).await;
    send(&publisher, "slow", b"x", Envelope::new()).await;
    let stats = Arc::clone(&worker.stats);
    eventually("acked on redelivery", || stats.acked() == 1).await;
    assert_eq!((stats.timed_out(), stats.requeued()), (1, 1));
    worker.stop().await.unwrap();
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_retry_hold_delays_the_nack_by_the_commands_hint() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    QueueSpec::new("held").declare(&raw_channel(&url).await.1).await.unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&times);
    let handler = handler_fn(move |message: Incoming| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(std::time::Instant::now());
            if message.redelivered {
                CommandResult::Success
            } else {
                CommandResult::retry_after(Duration::from_millis(250))
            }
        }
    });
    let config =
        WorkerConfig { max_retry_hold: Duration::from_secs(1), ..WorkerConfig::new("held") };
    let worker = RunningWorker::start(&url, handler, config);
    let publisher = publisher(&url).await;
    send(&publisher, "held", b"x", Envelope::new()).await;
    let stats = Arc::clone(&worker.stats);
    eventually("acked", || stats.acked() == 1).await;
    let times = times.lock().unwrap().clone();
    assert!(times[1] - times[0] >= Duration::from_millis(250));
    worker.stop().await.unwrap();
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn the_worker_resumes_consuming_after_the_broker_restarts() {
    let port = common::external::free_port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    let url = broker.url();
    QueueSpec::new("resilient").declare(&raw_channel(&url).await.1).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            CommandResult::Success
        }
    });
    let worker = RunningWorker::start(&url, handler, WorkerConfig::new("resilient"));
    {
        let publisher = publisher(&url).await;
        send(&publisher, "resilient", b"before", Envelope::new()).await;
        eventually("first handled", || handled.load(Ordering::SeqCst) == 1).await;
        publisher.close().await;
    }
    broker.stop().await;

    let broker = TestBroker::start_with(|config| config.amqp_listen = listen).await;
    let (_connection, channel) = raw_channel(&url).await;
    QueueSpec::new("resilient").declare(&channel).await.unwrap();
    let publisher = publisher(&url).await;
    send(&publisher, "resilient", b"after", Envelope::new()).await;
    eventually("second handled", || handled.load(Ordering::SeqCst) == 2).await;
    assert_eq!(ready_count(&channel, "resilient").await, 0);
    worker.stop().await.unwrap();
    publisher.close().await;
    broker.stop().await;
}

// Regression: the default backoff gave up after 10 attempts (about 45 s), so a worker
// started before its broker, or outliving a longer outage, stopped for good.
#[tokio::test]
async fn by_default_a_worker_keeps_reconnecting_until_the_broker_is_back() {
    let port = common::external::free_port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let start = |data_dir: std::path::PathBuf| {
        TestBroker::start_with(move |config| {
            config.amqp_listen = listen;
            config.data_dir = data_dir;
        })
    };
    let broker = start(data_dir.clone()).await;
    let url = broker.url();
    QueueSpec::new("patient").declare(&raw_channel(&url).await.1).await.unwrap();
    broker.stop().await;

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            CommandResult::Success
        }
    });
    // The default limit, with short delays: ten attempts take a few tens of milliseconds.
    let backoff = Backoff {
        initial: Duration::from_millis(2),
        max: Duration::from_millis(10),
        ..Backoff::default()
    };
    let connector = Arc::new(Connector::new(&url, backoff).unwrap());
    let worker = Worker::new(connector, handler, WorkerConfig::new("patient")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.is_finished(), "the worker gave up while the broker was down");

    let broker = start(data_dir).await;
    let publisher = publisher(&url).await;
    send(&publisher, "patient", b"x", Envelope::new()).await;
    eventually("handled once the broker is back", || handled.load(Ordering::SeqCst) == 1).await;
    stop.send(()).unwrap();
    common::within("worker shutdown", running).await.unwrap().unwrap();
    publisher.close().await;
    broker.stop().await;
}

/// Waits until `queue` has `count` consumers.
async fn consumers(channel: &postroom_client::lapin::Channel, queue: &str, count: u32) {
    let passive = postroom_client::lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let declared = channel.queue_declare(queue.into(), passive, Default::default()).await;
        if declared.is_ok_and(|queue| queue.consumer_count() == count) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{queue} never had {count} consumers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Each consuming session opens a channel; the worker must close each one once done with
// it, or a worker whose consumer the broker keeps cancelling runs into channel_max. (lapin
// already closed a channel when its last handle dropped; this guards the worker's own
// bookkeeping of session channels.)
#[tokio::test]
async fn a_worker_whose_consumer_keeps_being_cancelled_does_not_run_out_of_channels() {
    let broker = TestBroker::start_with(|config| config.channel_max = 4).await;
    let url = broker.url();
    let (_connection, channel) = raw_channel(&url).await;
    QueueSpec::new("churn").declare(&channel).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            CommandResult::Success
        }
    });
    let backoff = Backoff { initial: Duration::from_millis(5), ..Backoff::default() };
    let connector = Arc::new(Connector::new(&url, backoff).unwrap());
    let worker = Worker::new(connector, handler, WorkerConfig::new("churn")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    for _ in 0..6 {
        consumers(&channel, "churn", 1).await;
        // Deleting the queue cancels the consumer; the worker consumes again once it is back.
        channel.queue_delete("churn".into(), Default::default()).await.unwrap();
        QueueSpec::new("churn").declare(&channel).await.unwrap();
    }
    consumers(&channel, "churn", 1).await;
    let publisher = publisher(&url).await;
    send(&publisher, "churn", b"x", Envelope::new()).await;
    eventually("handled after the churn", || handled.load(Ordering::SeqCst) == 1).await;
    stop.send(()).unwrap();
    common::within("worker shutdown", running).await.unwrap().unwrap();
    publisher.close().await;
    broker.stop().await;
}

// Regression: the backoff sleeps between sessions ignored shutdown, so stopping a worker
// whose consumer had just been cancelled took up to the backoff's longest delay.
#[tokio::test]
async fn shutdown_cuts_a_reconnect_wait_short() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    let (_connection, channel) = raw_channel(&url).await;
    QueueSpec::new("waiting").declare(&channel).await.unwrap();
    let backoff = Backoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        ..Backoff::default()
    };
    let connector = Arc::new(Connector::new(&url, backoff).unwrap());
    let handler = handler_fn(|_| async { CommandResult::Success });
    let worker = Worker::new(connector, handler, WorkerConfig::new("waiting")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    consumers(&channel, "waiting", 1).await;
    channel.queue_delete("waiting".into(), Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // into the 60 s wait
    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    common::within("worker shutdown", running).await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5), "shutdown took {:?}", asked.elapsed());
    broker.stop().await;
}

// Regression: a new session dropped the previous session's channel, and lapin closed it
// while deliveries it carried were still being handled; their acknowledgements were then
// not sent (lapin answers `Ok(false)`, which the stats counted as acked) and the broker
// redelivered messages that had been processed.
#[tokio::test]
async fn a_message_in_flight_across_a_new_session_is_still_acknowledged() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    let (_connection, channel) = raw_channel(&url).await;
    QueueSpec::new("overlap").declare(&channel).await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&started);
    let handler = handler_fn(move |_| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            CommandResult::Success
        }
    });
    let backoff = Backoff { initial: Duration::from_millis(5), ..Backoff::default() };
    let connector = Arc::new(Connector::new(&url, backoff).unwrap());
    let worker = Worker::new(connector, handler, WorkerConfig::new("overlap")).unwrap();
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    consumers(&channel, "overlap", 1).await;
    let publisher = publisher(&url).await;
    send(&publisher, "overlap", b"x", Envelope::new()).await;
    eventually("handler started", || started.load(Ordering::SeqCst) == 1).await;
    // Cancel the consumer under the running handler; the worker starts a new session.
    channel.queue_delete("overlap".into(), Default::default()).await.unwrap();
    QueueSpec::new("overlap").declare(&channel).await.unwrap();
    consumers(&channel, "overlap", 1).await;
    eventually("settled", || stats.acked() + stats.ack_failed() == 1).await;
    assert_eq!((stats.acked(), stats.ack_failed()), (1, 0));
    stop.send(()).unwrap();
    common::within("worker shutdown", running).await.unwrap().unwrap();
    publisher.close().await;
    broker.stop().await;
}
