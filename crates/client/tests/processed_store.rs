//! The `ProcessedStore` conformance suite, run over the memory store and over a real
//! `redis-server` started for the test (skipped locally when Redis is not installed; a
//! failure in CI, where `POSTROOM_REQUIRE_REDIS=1`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::external::RedisServer;
use common::worker_scenarios::{publisher, send};
use common::{RunningWorker, eventually, raw_channel};
use postroom_client::{
    Claim, CommandResult, Envelope, HandlerExt, IdempotentReceiver, MemoryProcessedStore,
    ProcessedStore, QueueSpec, RedisProcessedStore, WorkerConfig, handler_fn,
};
use postroom_testkit::TestBroker;

const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_secs(60);

async fn claimed<S: ProcessedStore>(store: &S, key: &str) -> postroom_client::ClaimToken {
    match store.claim(key, LEASE).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected to acquire {key}, got {other:?}"),
    }
}

async fn conformance<S: ProcessedStore>(store: Arc<S>) {
    // Claimed, then completed: later claims see it processed.
    let token = claimed(&*store, "a").await;
    assert_eq!(store.claim("a", LEASE).await.unwrap(), Claim::InProgress);
    store.complete("a", &token, TTL).await.unwrap();
    assert_eq!(store.claim("a", LEASE).await.unwrap(), Claim::AlreadyProcessed);

    // Released by its holder: claimable again; a stranger's release changes nothing.
    let token = claimed(&*store, "b").await;
    let stranger = match store.claim("b-other", LEASE).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("{other:?}"),
    };
    store.release("b", &stranger).await.unwrap();
    assert_eq!(store.claim("b", LEASE).await.unwrap(), Claim::InProgress);
    store.release("b", &token).await.unwrap();
    claimed(&*store, "b").await;

    // A claim whose worker died runs out with its lease.
    claimed(&*store, "c").await;
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    claimed(&*store, "c").await;

    // Of many concurrent claims of one key, exactly one wins.
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim("d", TTL).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for claim in claims {
        if matches!(claim.await.unwrap(), Claim::Acquired(_)) {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
}

#[tokio::test]
async fn the_memory_store_passes_the_conformance_suite() {
    conformance(Arc::new(MemoryProcessedStore::new())).await;
}

#[tokio::test]
async fn the_redis_store_passes_the_conformance_suite() {
    let Some(redis) = RedisServer::start() else { return };
    let store = RedisProcessedStore::connect(&redis.url(), "test:").await.unwrap();
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_panic() {
    let port = common::external::free_port();
    let result = RedisProcessedStore::connect(&format!("redis://127.0.0.1:{port}/"), "x:").await;
    assert!(matches!(result, Err(postroom_client::Error::Store { .. })), "{result:?}");
    let result = RedisProcessedStore::connect("not a url", "x:").await;
    assert!(matches!(result, Err(postroom_client::Error::Store { .. })), "{result:?}");
}

#[tokio::test]
async fn competing_workers_sharing_redis_process_a_duplicate_once() {
    let Some(redis) = RedisServer::start() else { return };
    let broker = TestBroker::start().await;
    let url = broker.url();
    QueueSpec::new("points").declare(&raw_channel(&url).await.1).await.unwrap();
    let grants = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let store = RedisProcessedStore::connect(&redis.url(), "points:").await.unwrap();
        let counter = Arc::clone(&grants);
        let handler = handler_fn(move |_| {
            let counter = Arc::clone(&counter);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                counter.fetch_add(1, Ordering::SeqCst);
                CommandResult::Success
            }
        })
        .with(IdempotentReceiver::new(Arc::new(store)).lease(Duration::from_millis(200)));
        workers.push(RunningWorker::start(&url, handler, WorkerConfig::new("points")));
    }
    let publisher = publisher(&url).await;
    for n in 0..10 {
        let envelope = Envelope::new().with_message_id(format!("grant-{n}"));
        send(&publisher, "points", b"grant 100", envelope.clone()).await;
        send(&publisher, "points", b"grant 100", envelope).await;
    }
    let stats: Vec<_> = workers.iter().map(|worker| Arc::clone(&worker.stats)).collect();
    eventually("every copy acknowledged", || stats.iter().map(|s| s.acked()).sum::<u64>() == 20)
        .await;
    assert_eq!(grants.load(Ordering::SeqCst), 10);
    for worker in workers {
        worker.stop().await.unwrap();
    }
    publisher.close().await;
    broker.stop().await;
}
