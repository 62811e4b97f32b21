//! The auth worker example against a real broker (Postroom, or RabbitMQ) (and a real Redis for its store):
//! valid, duplicate, expired, invalid, transiently and permanently failing events.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postroom_client::{Backoff, Connector, Envelope, PublishOptions, Publisher, PublisherConfig};
use postroom_examples::auth::application::{BlacklistStore, StoreError};
use postroom_examples::auth::schema::{ROUTING_KEY, TokenBlacklisted};
use postroom_examples::auth::{self, DEAD_LETTER_QUEUE, EXCHANGE};

use super::probe::get;

const WAIT: Duration = Duration::from_secs(20);

/// A store that is down for the first write of `flaky-*` tokens and refuses `bad-*` ones.
#[derive(Default)]
struct ScriptedStore {
    writes: Mutex<HashMap<String, u32>>,
}

impl BlacklistStore for ScriptedStore {
    async fn add(&self, jti: &str, _: &str, _: SystemTime) -> Result<(), StoreError> {
        let attempt = {
            let mut writes = self.writes.lock().unwrap();
            let count = writes.entry(jti.to_string()).or_default();
            *count += 1;
            *count
        };
        if jti.starts_with("flaky") && attempt == 1 {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        if jti.starts_with("bad") {
            return Err(StoreError::Refused("WRONGTYPE".into()));
        }
        Ok(())
    }
}

fn event(jti: &str, expires_at: u64) -> TokenBlacklisted {
    TokenBlacklisted { jti: jti.into(), user_id: "user-1".into(), expires_at }
}

pub async fn the_auth_worker_stores_retries_drops_and_dead_letters_as_the_seed_says(url: &str) {
    let connector = Arc::new(Connector::new(url, Backoff::default()).unwrap());
    auth::declare_topology(&connector).await.unwrap();
    let store = Arc::new(ScriptedStore::default());
    let worker = auth::build_worker(Arc::clone(&connector), Arc::clone(&store)).unwrap();
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    let publisher = Publisher::connect(url, PublisherConfig::default()).await.unwrap();
    let later = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let first = publisher.publish(&event("ok-1", later)).await.unwrap();
    let duplicate = Envelope::new().with_message_id(first.message_id.clone());
    publisher
        .publish_with(&event("ok-1", later), duplicate, &PublishOptions::default())
        .await
        .unwrap();
    publisher.publish(&event("expired-1", 1)).await.unwrap();
    publisher.publish(&event("flaky-1", later)).await.unwrap();
    publisher.publish(&event("bad-1", later)).await.unwrap();
    let options = PublishOptions::default();
    publisher
        .publish_raw(EXCHANGE, ROUTING_KEY, b"[1,2", &Envelope::new(), &options)
        .await
        .unwrap();

    let deadline = Instant::now() + WAIT;
    while stats.acked() + stats.rejected() < 6 {
        assert!(Instant::now() < deadline, "acked {} rejected {}", stats.acked(), stats.rejected());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ok-1 (and its duplicate, without a second write), expired-1, flaky-1 on its retry.
    assert_eq!((stats.acked(), stats.rejected()), (4, 2));
    // flaky-1 was requeued once. The duplicate of ok-1 may be requeued too, when it arrives
    // while ok-1 is still being handled (the claim is in progress): RabbitMQ hands both to
    // the worker's concurrent slots at once, so this happens there.
    assert!(stats.requeued() >= 1, "flaky-1 was never retried");
    let writes = store.writes.lock().unwrap().clone();
    assert_eq!(writes.get("ok-1"), Some(&1));
    assert_eq!(writes.get("flaky-1"), Some(&2));
    assert_eq!(writes.get("expired-1"), None);

    let channel = connector.channel().await.unwrap();
    let mut dead = Vec::new();
    for _ in 0..2 {
        let message = get(&channel, DEAD_LETTER_QUEUE).await;
        dead.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    dead.sort();
    assert_eq!(dead[0], "[1,2");
    assert!(dead[1].contains("bad-1"), "{dead:?}");

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap().unwrap();
    publisher.close().await;
    connector.close().await;
}
