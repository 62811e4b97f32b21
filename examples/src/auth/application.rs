//! The application layer: the use case decides whether a failure is worth retrying; it
//! knows nothing of AMQP, JSON or Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postroom_client::{Command, CommandResult};

/// What the command needs: application words and primitive types only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// The token's id.
    pub jti: String,
    /// Whose token it is.
    pub user_id: String,
    /// When the token expires anyway.
    pub expires_at: SystemTime,
}

/// Why the store failed, classified by the adapter that knows the technology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, timeout: may work later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused this entry: will never work.
    #[error("store refused the entry: {0}")]
    Refused(String),
}

/// The port: where blacklisted tokens are kept.
pub trait BlacklistStore: Send + Sync + 'static {
    /// Keeps `jti` blacklisted until `expires_at`.
    ///
    /// # Errors
    /// [`StoreError`], classified as transient or permanent.
    fn add(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The use case: persist a blacklist entry.
#[derive(Debug)]
pub struct PersistBlacklist<S> {
    store: Arc<S>,
}

impl<S> PersistBlacklist<S> {
    /// The command over `store`.
    pub fn new(store: Arc<S>) -> PersistBlacklist<S> {
        PersistBlacklist { store }
    }
}

impl<S: BlacklistStore> Command<BlacklistEntry> for PersistBlacklist<S> {
    async fn execute(&self, entry: BlacklistEntry) -> CommandResult {
        if entry.expires_at <= SystemTime::now() {
            // An expired token is rejected anyway: nothing to keep.
            return CommandResult::dropped(format!("token {} already expired", entry.jti));
        }
        match self.store.add(&entry.jti, &entry.user_id, entry.expires_at).await {
            Ok(()) => CommandResult::Success,
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "blacklist store unavailable");
                CommandResult::retry_after(Duration::from_secs(1))
            }
            Err(StoreError::Refused(reason)) => CommandResult::dead_letter(reason),
        }
    }
}

/// Seconds since the epoch → `SystemTime`, or `None` past what the platform's clock can
/// represent (plain `+` would panic there).
pub fn from_epoch_seconds(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A store that fails as told and records what it was given.
    struct MockStore {
        fail_with: Option<StoreError>,
        added: Mutex<Vec<String>>,
    }

    impl BlacklistStore for MockStore {
        async fn add(&self, jti: &str, _: &str, _: SystemTime) -> Result<(), StoreError> {
            self.added.lock().unwrap().push(jti.to_string());
            self.fail_with.clone().map_or(Ok(()), Err)
        }
    }

    fn command(fail_with: Option<StoreError>) -> PersistBlacklist<MockStore> {
        PersistBlacklist::new(Arc::new(MockStore { fail_with, added: Mutex::new(Vec::new()) }))
    }

    fn entry(expires_in: Duration) -> BlacklistEntry {
        BlacklistEntry {
            jti: "j-1".into(),
            user_id: "u-1".into(),
            expires_at: SystemTime::now() + expires_in,
        }
    }

    #[tokio::test]
    async fn a_stored_entry_is_a_success() {
        let command = command(None);
        assert_eq!(command.execute(entry(Duration::from_secs(60))).await, CommandResult::Success);
        assert_eq!(*command.store.added.lock().unwrap(), ["j-1"]);
    }

    #[tokio::test]
    async fn an_unavailable_store_is_retried() {
        let command = command(Some(StoreError::Unavailable("connection refused".into())));
        let result = command.execute(entry(Duration::from_secs(60))).await;
        assert!(matches!(result, CommandResult::Retry { .. }), "{result}");
    }

    #[tokio::test]
    async fn a_refused_entry_is_dead_lettered() {
        let command = command(Some(StoreError::Refused("WRONGTYPE".into())));
        let result = command.execute(entry(Duration::from_secs(60))).await;
        assert_eq!(result, CommandResult::dead_letter("WRONGTYPE"));
    }

    #[tokio::test]
    async fn an_expired_token_is_dropped_without_touching_the_store() {
        let command = command(None);
        let result = command.execute(BlacklistEntry {
            expires_at: UNIX_EPOCH + Duration::from_secs(1),
            ..entry(Duration::ZERO)
        });
        assert!(matches!(result.await, CommandResult::Drop { .. }));
        assert!(command.store.added.lock().unwrap().is_empty());
    }
}
