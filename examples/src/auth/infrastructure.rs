//! Implementations of the `BlacklistStore` port.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::application::{BlacklistStore, StoreError};

/// Blacklist entries in Redis: `blacklist:<jti>` = user id, expiring with the token.
#[derive(Clone)]
pub struct RedisBlacklistStore {
    connection: ConnectionManager,
}

impl std::fmt::Debug for RedisBlacklistStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBlacklistStore").finish_non_exhaustive()
    }
}

impl RedisBlacklistStore {
    /// Connects to `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<RedisBlacklistStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Refused(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RedisBlacklistStore { connection })
    }
}

impl BlacklistStore for RedisBlacklistStore {
    async fn add(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        let at = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut connection = self.connection.clone();
        let result: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("blacklist:{jti}"))
            .arg(user_id)
            .arg("EXAT")
            .arg(at)
            .query_async(&mut connection)
            .await;
        result.map_err(|error| {
            // Connection trouble may pass; a refused command never will.
            if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
                StoreError::Unavailable(error.to_string())
            } else {
                StoreError::Refused(error.to_string())
            }
        })
    }
}

/// Blacklist entries in memory (tests, and running the example without Redis).
#[derive(Debug, Default)]
pub struct MemoryBlacklistStore {
    entries: Mutex<HashMap<String, (String, SystemTime)>>,
}

impl MemoryBlacklistStore {
    /// Whether `jti` is blacklisted.
    pub fn contains(&self, jti: &str) -> bool {
        self.lock().contains_key(jti)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, SystemTime)>> {
        // One insert or lookup per lock: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl BlacklistStore for MemoryBlacklistStore {
    async fn add(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.lock().insert(jti.to_string(), (user_id.to_string(), expires_at));
        Ok(())
    }
}
