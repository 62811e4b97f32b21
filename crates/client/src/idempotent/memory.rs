//! [`MemoryProcessedStore`]: processed ids in this process's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, ClaimToken, ProcessedStore};
use crate::error::Result;

/// Sweep expired entries once the map has grown by this many since the last sweep.
const SWEEP_EVERY: usize = 1024;

#[derive(Debug)]
enum State {
    Claimed(ClaimToken),
    Processed,
}

#[derive(Debug)]
struct Entry {
    state: State,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    size_at_last_sweep: usize,
}

/// Processed ids in memory: for a single worker process, or for tests. Expired entries are
/// swept as the map grows, so memory follows the number of ids within their TTL.
///
/// ```
/// use postroom_client::MemoryProcessedStore;
/// let store = MemoryProcessedStore::new();
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Debug, Default)]
pub struct MemoryProcessedStore {
    // A std mutex: held only for map operations, never across an `.await`.
    inner: Mutex<Inner>,
}

impl MemoryProcessedStore {
    /// An empty store.
    ///
    /// ```
    /// assert!(postroom_client::MemoryProcessedStore::new().is_empty());
    /// ```
    pub fn new() -> MemoryProcessedStore {
        MemoryProcessedStore::default()
    }

    /// Entries held (claimed or processed, expired ones not yet swept included).
    ///
    /// ```
    /// assert_eq!(postroom_client::MemoryProcessedStore::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds nothing.
    ///
    /// ```
    /// assert!(postroom_client::MemoryProcessedStore::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every operation is a
        // single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ProcessedStore for MemoryProcessedStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.entries.len() >= inner.size_at_last_sweep + SWEEP_EVERY {
            inner.entries.retain(|_, entry| entry.expires > now);
            inner.size_at_last_sweep = inner.entries.len();
        }
        if let Some(entry) = inner.entries.get(key).filter(|entry| entry.expires > now) {
            return Ok(match entry.state {
                State::Processed => Claim::AlreadyProcessed,
                State::Claimed(_) => Claim::InProgress,
            });
        }
        let token = ClaimToken::new();
        let entry = Entry { state: State::Claimed(token.clone()), expires: now + lease };
        inner.entries.insert(key.to_string(), entry);
        Ok(Claim::Acquired(token))
    }

    async fn complete(&self, key: &str, _token: &ClaimToken, ttl: Duration) -> Result<()> {
        let entry = Entry { state: State::Processed, expires: Instant::now() + ttl };
        self.lock().entries.insert(key.to_string(), entry);
        Ok(())
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<()> {
        let mut inner = self.lock();
        if matches!(inner.entries.get(key), Some(Entry { state: State::Claimed(held), .. }) if held == token)
        {
            inner.entries.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);
    const TTL: Duration = Duration::from_secs(100);

    #[tokio::test(start_paused = true)]
    async fn a_claim_runs_out_after_its_lease() {
        let store = MemoryProcessedStore::new();
        assert!(matches!(store.claim("k", LEASE).await.unwrap(), Claim::Acquired(_)));
        assert_eq!(store.claim("k", LEASE).await.unwrap(), Claim::InProgress);
        tokio::time::advance(LEASE + Duration::from_millis(1)).await;
        assert!(matches!(store.claim("k", LEASE).await.unwrap(), Claim::Acquired(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_processed_id_is_forgotten_after_its_ttl() {
        let store = MemoryProcessedStore::new();
        let Claim::Acquired(token) = store.claim("k", LEASE).await.unwrap() else { panic!() };
        store.complete("k", &token, TTL).await.unwrap();
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        assert_eq!(store.claim("k", LEASE).await.unwrap(), Claim::AlreadyProcessed);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(store.claim("k", LEASE).await.unwrap(), Claim::Acquired(_)));
    }

    #[tokio::test]
    async fn only_the_holder_can_release_a_claim() {
        let store = MemoryProcessedStore::new();
        let Claim::Acquired(token) = store.claim("k", LEASE).await.unwrap() else { panic!() };
        store.release("k", &ClaimToken::new()).await.unwrap();
        assert_eq!(store.claim("k", LEASE).await.unwrap(), Claim::InProgress);
        store.release("k", &token).await.unwrap();
        assert!(matches!(store.claim("k", LEASE).await.unwrap(), Claim::Acquired(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_as_the_store_grows() {
        let store = MemoryProcessedStore::new();
        for n in 0..SWEEP_EVERY {
            store.claim(&format!("old-{n}"), LEASE).await.unwrap();
        }
        tokio::time::advance(LEASE * 2).await;
        store.claim("new", LEASE).await.unwrap();
        assert_eq!(store.len(), 1);
    }
}
