//! [`RedisProcessedStore`]: processed ids in Redis, shared by every worker.
//!
//! One key per message id: `"claimed:<token>"` with the lease as its TTL while a worker
//! handles it, `"processed"` with the remembered TTL afterwards. A claim is one
//! `SET NX PX`; a release is a compare-and-delete script, so a worker whose lease ran out
//! cannot release the claim of the worker that took over.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Claim, ClaimToken, ProcessedStore, store_error};
use crate::error::Result;

const PROCESSED: &str = "processed";
const CLAIMED: &str = "claimed:";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Processed ids in Redis (keys `<prefix><message id>`).
///
/// Cloning is cheap and shares the connection, which reconnects by itself.
///
/// ```no_run
/// # async fn run() -> postroom_client::Result<()> {
/// use std::sync::Arc;
/// use postroom_client::{IdempotentReceiver, RedisProcessedStore};
/// let store = RedisProcessedStore::connect("redis://127.0.0.1:6379/", "auth-worker:processed:").await?;
/// let middleware = IdempotentReceiver::new(Arc::new(store));
/// # drop(middleware);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisProcessedStore {
    connection: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisProcessedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProcessedStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisProcessedStore {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix`. Commands time
    /// out after 2 s; a lost connection is re-established by the next command.
    ///
    /// ```no_run
    /// # async fn run() -> postroom_client::Result<()> {
    /// let store = postroom_client::RedisProcessedStore::connect("redis://127.0.0.1:6379/0", "payments:").await?;
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) when the URL is invalid or Redis is unreachable.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<RedisProcessedStore> {
        let client = redis::Client::open(url).map_err(store_error)?;
        // Bounded waits: an unreachable or hung Redis must turn into a retried message, not
        // a handler stuck until its timeout.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let connection =
            ConnectionManager::new_with_config(client, config).await.map_err(store_error)?;
        Ok(RedisProcessedStore { connection, prefix: prefix.into() })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

fn millis(duration: Duration) -> u64 {
    // Redis refuses PX 0.
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl ProcessedStore for RedisProcessedStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        let key = self.key(key);
        let mut connection = self.connection.clone();
        // A key can expire between the SET and the GET; then the claim is tried again.
        for _ in 0..3 {
            let token = ClaimToken::new();
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(format!("{CLAIMED}{}", token.0))
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .query_async(&mut connection)
                .await
                .map_err(store_error)?;
            if set.is_some() {
                return Ok(Claim::Acquired(token));
            }
            let value: Option<String> = connection.get(&key).await.map_err(store_error)?;
            match value.as_deref() {
                Some(PROCESSED) => return Ok(Claim::AlreadyProcessed),
                Some(_) => return Ok(Claim::InProgress),
                None => continue,
            }
        }
        Ok(Claim::InProgress)
    }

    async fn complete(&self, key: &str, _token: &ClaimToken, ttl: Duration) -> Result<()> {
        let mut connection = self.connection.clone();
        let () =
            connection.pset_ex(self.key(key), PROCESSED, millis(ttl)).await.map_err(store_error)?;
        Ok(())
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.key(key))
            .arg(format!("{CLAIMED}{}", token.0))
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
