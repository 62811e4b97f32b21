//! The auth worker example against a real Postroom broker (and a real Redis for its store):
//! valid, duplicate, expired, invalid, transiently and permanently failing events.

mod scenarios;

#[path = "../../crates/client/tests/common/external.rs"]
mod external;

use std::time::{Duration, SystemTime};

use postroom_examples::auth::application::{BlacklistStore, StoreError};
use postroom_examples::auth::infrastructure::RedisBlacklistStore;
use postroom_testkit::TestBroker;

#[tokio::test]
async fn the_auth_worker_stores_retries_drops_and_dead_letters_as_the_seed_says() {
    let broker = TestBroker::start().await;
    scenarios::auth_worker::the_auth_worker_stores_retries_drops_and_dead_letters_as_the_seed_says(
        &broker.url(),
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn the_redis_store_keeps_an_entry_until_the_token_expires() {
    let Some(redis) = external::RedisServer::start() else { return };
    let store = RedisBlacklistStore::connect(&redis.url()).await.unwrap();
    let expires_at = SystemTime::now() + Duration::from_secs(600);
    store.add("jti-9", "user-9", expires_at).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let user: Option<String> =
        redis::cmd("GET").arg("blacklist:jti-9").query_async(&mut connection).await.unwrap();
    assert_eq!(user.as_deref(), Some("user-9"));
    let ttl: i64 =
        redis::cmd("TTL").arg("blacklist:jti-9").query_async(&mut connection).await.unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    drop(redis);
    // Redis gone: the command sees a transient failure, so the message would be retried.
    let result = store.add("jti-10", "user-10", expires_at).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
}
