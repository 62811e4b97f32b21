//! Deduplication at the broker (the Idempotent Receiver pattern): a queue or exchange
//! declared with `x-message-deduplication = true` remembers the keys of the messages it took
//! for a window (`x-cache-ttl` ms, at most `x-cache-size` keys); a message whose key is in
//! the window is accepted (and confirmed) but not enqueued or routed.
//!
//! A message's key is its `x-deduplication-header` header (the RabbitMQ plugin's
//! convention), else its `message_id` property; a message with neither always passes. Its
//! own `x-cache-ttl` header may shorten or lengthen its stay in the window.
//!
//! The window of a durable queue or exchange survives a restart: every key taken is
//! appended to the store under the window's own store id (expiry time and key) right after
//! the message it came with, and the confirm waits for both; keys that leave the window are
//! acked. (Key first would be wrong: a crash between the two would keep the key of a
//! message that was never confirmed, and drop its retry.) Restoring reads them back
//! ([`DedupWindow::restore`]). A duplicate's confirm waits for what its original's did, so
//! a duplicate is never confirmed before the message it duplicates is safe.
//!
//! Messages that the broker itself moves (dead-lettering) are not checked: a message that
//! comes back to its queue through a dead-letter cycle is the same message, not a repeat.
//!
//! Memory is one map entry and one queue entry per key in the window, bounded by
//! `x-cache-size`; keys longer than [`LONG_KEY`] bytes are kept as a 128-bit hash (the
//! store keeps them whole). Expired keys are dropped from the front as new ones arrive.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use postroom_amqp::{BasicProperties, FieldTable, FieldValue};
use postroom_store::{Lsn, QueueId, Seq, Store};

use crate::error::{BrokerError, Result};

/// Turns deduplication on (a boolean).
pub const MESSAGE_DEDUPLICATION: &str = "x-message-deduplication";
/// How long a key stays in the window, in ms (argument, and per-message header).
pub const CACHE_TTL: &str = "x-cache-ttl";
/// The most keys the window holds; the oldest leave first.
pub const CACHE_SIZE: &str = "x-cache-size";
/// The header holding a message's key.
pub const DEDUPLICATION_HEADER: &str = "x-deduplication-header";

/// The window's size when `x-cache-size` is not given.
pub const DEFAULT_CACHE_SIZE: u64 = 100_000;
/// The largest `x-cache-size` accepted: every key costs memory.
pub const MAX_CACHE_SIZE: u64 = 10_000_000;

/// The deduplication plugin's exchange type: a fanout exchange that deduplicates (its
/// `x-cache-*` arguments apply without `x-message-deduplication`).
pub const DEDUP_EXCHANGE_TYPE: &str = "x-message-deduplication";
/// The plugin's `x-cache-persistence` (`memory` or `disk`): accepted; a durable window is
/// always persisted, a transient one never.
pub const CACHE_PERSISTENCE: &str = "x-cache-persistence";

/// Keys longer than this are remembered in memory as a 128-bit hash of themselves.
pub const LONG_KEY: usize = 64;

/// The arguments of a queue or exchange that its deduplication settings are read from.
pub const ARGUMENTS: [&str; 4] = [MESSAGE_DEDUPLICATION, CACHE_TTL, CACHE_SIZE, CACHE_PERSISTENCE];

/// What a deduplication window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupPolicy {
    /// How long a key stays, ms (`None`: until the size pushes it out).
    pub ttl: Option<u64>,
    /// The most keys.
    pub size: u64,
}

impl DedupPolicy {
    /// Reads the settings from declare arguments: `None` unless `x-message-deduplication`
    /// is true. `what` names the entity in errors (`queue 'q' in vhost '/'`).
    ///
    /// # Errors
    /// `PreconditionFailed` naming the argument, for a value of the wrong type or range, or
    /// `x-cache-*` without `x-message-deduplication`.
    pub fn from_arguments(arguments: &FieldTable, what: &str) -> Result<Option<DedupPolicy>> {
        Self::parse(arguments, what, false)
    }

    /// What an exchange declaration asks for: the routing type to use (`fanout` for the
    /// plugin's [`DEDUP_EXCHANGE_TYPE`], else `kind` itself) and its deduplication.
    ///
    /// # Errors
    /// As [`DedupPolicy::from_arguments`].
    pub fn for_exchange<'a>(
        kind: &'a str,
        arguments: &FieldTable,
        what: &str,
    ) -> Result<(&'a str, Option<DedupPolicy>)> {
        if kind == DEDUP_EXCHANGE_TYPE {
            return Ok(("fanout", Self::parse(arguments, what, true)?));
        }
        Ok((kind, Self::parse(arguments, what, false)?))
    }

    fn parse(arguments: &FieldTable, what: &str, by_type: bool) -> Result<Option<DedupPolicy>> {
        let invalid = |key: &str, why: &str, value: &FieldValue| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{key}' for {what}: {why}, got {value:?}"
            ))
        };
        if let Some(value) = arguments.get(CACHE_PERSISTENCE)
            && !matches!(value.as_str(), Some("memory" | "disk"))
        {
            return Err(invalid(CACHE_PERSISTENCE, "expected memory or disk", value));
        }
        let enabled = match arguments.get(MESSAGE_DEDUPLICATION) {
            None => by_type,
            Some(value) => value
                .as_bool()
                .ok_or_else(|| invalid(MESSAGE_DEDUPLICATION, "expected a boolean", value))?,
        };
        let integer = |key: &str, max: u64| -> Result<Option<u64>> {
            match arguments.get(key) {
                None => Ok(None),
                // The plugin's documented examples pass numbers as strings: accept those.
                Some(value) => match value
                    .as_int()
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|n| u64::try_from(n).ok())
                {
                    Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(invalid(key, &format!("expected an integer in 1..={max}"), value)),
                },
            }
        };
        let ttl = integer(CACHE_TTL, u64::from(u32::MAX))?;
        let size = integer(CACHE_SIZE, MAX_CACHE_SIZE)?;
        if !enabled {
            if ttl.is_some() || size.is_some() {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{}' for {what}: needs {MESSAGE_DEDUPLICATION} = true",
                    if ttl.is_some() { CACHE_TTL } else { CACHE_SIZE }
                )));
            }
            return Ok(None);
        }
        Ok(Some(DedupPolicy { ttl, size: size.unwrap_or(DEFAULT_CACHE_SIZE) }))
    }
}

/// A message's deduplication key: its `x-deduplication-header` header (a string, bytes, an
/// integer or a boolean), else its `message_id`.
pub fn key_of(properties: &BasicProperties) -> Option<Bytes> {
    let header = properties.headers.as_ref().and_then(|h| h.get(DEDUPLICATION_HEADER));
    let from_header = header.and_then(|value| match value {
        FieldValue::LongStr(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        FieldValue::Bytes(b) => Some(b.clone()),
        FieldValue::Bool(b) => Some(Bytes::from(b.to_string())),
        other => other.as_int().map(|n| Bytes::from(n.to_string())),
    });
    from_header.or_else(|| properties.message_id.as_ref().map(|id| Bytes::from(id.to_string())))
}

/// A message's own `x-cache-ttl` header, if it is a non-negative integer.
fn ttl_of(properties: &BasicProperties) -> Option<u64> {
    let value = properties.headers.as_ref()?.get(CACHE_TTL)?.as_int()?;
    u64::try_from(value).ok()
}

/// The keys a queue or exchange saw lately.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// What it keeps.
    pub policy: DedupPolicy,
    /// Where its keys are persisted (durable queues and exchanges only).
    pub store_id: Option<QueueId>,
    entries: HashMap<Bytes, Entry>,
    /// Keys in the order they were taken, with the stamp of the entry they were taken as
    /// (an older stamp is a key that left and came back: skipped).
    order: VecDeque<(Bytes, u64)>,
    next_stamp: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// ms since the epoch; `u64::MAX` for never.
    expires_at: u64,
    /// Its record in the store, if persisted.
    seq: Option<Seq>,
    /// What the confirm of the message that brought the key waited for (its message and
    /// its key record): a duplicate's confirm waits for it too.
    durable_at: Option<Lsn>,
    stamp: u64,
}

/// What a window says of a message ([`DedupWindow::admit`]).
#[derive(Debug, Clone)]
pub enum Admit {
    /// Its key is in the window: accept it, but do not enqueue or route it; confirm it
    /// once `durable_at` (its original's position) is durable.
    Duplicate {
        /// The store position the original's confirm waited for.
        durable_at: Option<Lsn>,
    },
    /// A new key, to [`DedupWindow::take`] once the message is accepted.
    New(Admission),
    /// It has no key: it always passes.
    Unkeyed,
}

/// A key to take into a window once the message is accepted ([`DedupWindow::take`]).
#[derive(Debug, Clone)]
pub struct Admission {
    key: Key,
    ttl: Option<u64>,
}

/// A key as the store keeps it (`whole`) and as memory does (`remembered`: the same, or a
/// hash of a long one).
#[derive(Debug, Clone)]
struct Key {
    whole: Bytes,
    remembered: Bytes,
}

/// A key as the window remembers it: itself if short, else a 128-bit hash of it (two
/// SipHash passes with different prefixes), marked so it cannot equal a short key.
fn remembered(whole: Bytes) -> Key {
    use std::hash::{Hash, Hasher};
    if whole.len() <= LONG_KEY {
        return Key { remembered: whole.clone(), whole };
    }
    let mut hashed = BytesMut::with_capacity(LONG_KEY + 1 + 16);
    // Longer than any short key, so the two kinds never meet.
    hashed.put_bytes(0, LONG_KEY + 1);
    for prefix in [0u8, 1] {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        prefix.hash(&mut hasher);
        whole.hash(&mut hasher);
        hashed.put_u64(hasher.finish());
    }
    Key { whole, remembered: hashed.freeze() }
}

impl Admit {
    /// The key to take, if there is one.
    pub fn into_admission(self) -> Option<Admission> {
        match self {
            Admit::New(admission) => Some(admission),
            Admit::Duplicate { .. } | Admit::Unkeyed => None,
        }
    }
}

impl DedupWindow {
    /// An empty window.
    pub fn new(policy: DedupPolicy, store_id: Option<QueueId>) -> DedupWindow {
        DedupWindow {
            policy,
            store_id,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
        }
    }

    /// Whether a message with `properties` is a duplicate at `now`.
    pub fn admit(&self, properties: &BasicProperties, now: u64) -> Admit {
        let Some(key) = key_of(properties) else { return Admit::Unkeyed };
        let key = remembered(key);
        if let Some(entry) = self.entries.get(&key.remembered).filter(|e| e.expires_at > now) {
            return Admit::Duplicate { durable_at: entry.durable_at };
        }
        Admit::New(Admission { key, ttl: ttl_of(properties).or(self.policy.ttl) })
    }

    /// Takes an admitted key into the window once its message is stored (`message_at`:
    /// the position its confirm waits for), persisting the key if the window is durable,
    /// and returns the position the confirm must now wait for.
    ///
    /// # Errors
    /// `StoreFailed` if the store refuses the record (the key is not taken then).
    pub fn take(
        &mut self,
        admission: Admission,
        now: u64,
        message_at: Option<Lsn>,
        store: &dyn Store,
    ) -> Result<Option<Lsn>> {
        let Admission { key, ttl } = admission;
        let expires_at = ttl.map_or(u64::MAX, |ttl| now.saturating_add(ttl));
        let mut durable_at = message_at;
        let mut seq = None;
        if let Some(id) = self.store_id {
            let (s, lsn) = store
                .append(&[id], &encode_record(expires_at, &key.whole))
                .map_err(|e| BrokerError::StoreFailed(e.to_string()))?;
            seq = Some(s);
            durable_at = durable_at.max(Some(lsn));
        }
        if let Some(old) = self.entries.remove(&key.remembered) {
            release(self.store_id, old, store);
        }
        self.insert(key.remembered, Entry { expires_at, seq, durable_at, stamp: 0 });
        self.trim(now, store);
        Ok(durable_at)
    }

    fn insert(&mut self, key: Bytes, mut entry: Entry) {
        entry.stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.push_back((key.clone(), entry.stamp));
        self.entries.insert(key, entry);
        // Keys that left and came back leave stale places in `order` behind a long-lived
        // key at its front: compact it before they outgrow the window.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.stamp == *stamp));
        }
    }

    /// Drops keys past the size limit (oldest first) and expired keys at the front.
    fn trim(&mut self, now: u64, store: &dyn Store) {
        while let Some((key, stamp)) = self.order.front() {
            let current = self.entries.get(key).filter(|e| e.stamp == *stamp).copied();
            let over = self.entries.len() as u64 > self.policy.size;
            match current {
                Some(entry) if over || entry.expires_at <= now => {
                    self.entries.remove(key);
                    release(self.store_id, entry, store);
                }
                // Left and came back later: this queue entry is stale.
                None => {}
                Some(_) => break,
            }
            self.order.pop_front();
        }
    }

    /// How many keys it holds (some may have expired but not been dropped yet).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rebuilds a durable window from its store records (in sequence order, as
    /// [`Store::read`] returns them), dropping those that expired or no longer fit.
    pub fn restore(
        policy: DedupPolicy,
        store_id: QueueId,
        records: Vec<(Seq, Bytes)>,
        now: u64,
        store: &dyn Store,
    ) -> DedupWindow {
        let mut window = DedupWindow::new(policy, Some(store_id));
        let mut unreadable = Vec::new();
        for (seq, record) in records {
            match decode_record(&record) {
                Some((expires_at, key)) => {
                    let key = remembered(key).remembered;
                    if let Some(old) = window.entries.remove(&key) {
                        release(window.store_id, old, store);
                    }
                    let entry = Entry { expires_at, seq: Some(seq), durable_at: None, stamp: 0 };
                    window.insert(key, entry);
                }
                None => unreadable.push(seq),
            }
        }
        let _ = store.ack(store_id, &unreadable);
        window.trim(now, store);
        window
    }
}

/// Acks a key's record when it leaves the window. A lost ack only keeps a key a little
/// longer after a restart (until it expires or is pushed out again).
fn release(store_id: Option<QueueId>, entry: Entry, store: &dyn Store) {
    if let (Some(id), Some(seq)) = (store_id, entry.seq) {
        let _ = store.ack(id, &[seq]);
    }
}

fn encode_record(expires_at: u64, key: &[u8]) -> BytesMut {
    let mut record = BytesMut::with_capacity(8 + key.len());
    record.put_u64(expires_at);
    record.put_slice(key);
    record
}

fn decode_record(record: &Bytes) -> Option<(u64, Bytes)> {
    let expires_at = u64::from_be_bytes(record.get(..8)?.try_into().ok()?);
    Some((expires_at, record.slice(8..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postroom_amqp::ShortStr;
    use postroom_store::memory::MemoryStore;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries.iter().map(|(k, v)| (ShortStr::from(*k), v.clone())).collect()
    }

    fn with_id(id: &str) -> BasicProperties {
        BasicProperties { message_id: Some(id.into()), ..Default::default() }
    }

    fn take(
        window: &mut DedupWindow,
        props: &BasicProperties,
        now: u64,
        store: &dyn Store,
    ) -> bool {
        match window.admit(props, now) {
            Admit::Duplicate { .. } => false,
            Admit::New(admission) => {
                window.take(admission, now, None, store).unwrap();
                true
            }
            Admit::Unkeyed => true,
        }
    }

    #[test]
    fn arguments_are_validated_naming_the_argument() {
        let what = "queue 'q' in vhost '/'";
        assert_eq!(DedupPolicy::from_arguments(&FieldTable::new(), what).unwrap(), None);
        let on = table(&[
            (MESSAGE_DEDUPLICATION, FieldValue::Bool(true)),
            (CACHE_TTL, FieldValue::I32(500)),
        ]);
        assert_eq!(
            DedupPolicy::from_arguments(&on, what).unwrap(),
            Some(DedupPolicy { ttl: Some(500), size: DEFAULT_CACHE_SIZE })
        );
        for (key, args) in [
            (MESSAGE_DEDUPLICATION, table(&[(MESSAGE_DEDUPLICATION, FieldValue::I32(1))])),
            (
                CACHE_SIZE,
                table(&[
                    (MESSAGE_DEDUPLICATION, FieldValue::Bool(true)),
                    (CACHE_SIZE, FieldValue::I32(0)),
                ]),
            ),
            (
                CACHE_TTL,
                table(&[
                    (MESSAGE_DEDUPLICATION, FieldValue::Bool(true)),
                    (CACHE_TTL, FieldValue::string("1s")),
                ]),
            ),
            (CACHE_TTL, table(&[(CACHE_TTL, FieldValue::I32(5))])),
        ] {
            let error = DedupPolicy::from_arguments(&args, what).unwrap_err();
            let BrokerError::PreconditionFailed(text) = error else { panic!("{error:?}") };
            assert!(text.contains(key), "{text}");
        }
    }

    #[test]
    fn the_header_is_the_key_before_the_message_id() {
        let mut props = with_id("m-1");
        assert_eq!(key_of(&props).as_deref(), Some(&b"m-1"[..]));
        props.headers = Some(table(&[(DEDUPLICATION_HEADER, FieldValue::I64(42))]));
        assert_eq!(key_of(&props).as_deref(), Some(&b"42"[..]));
        assert_eq!(key_of(&BasicProperties::default()), None);
    }

    #[test]
    fn a_key_is_refused_within_its_ttl_and_taken_again_after() {
        let store = MemoryStore::new();
        let policy = DedupPolicy { ttl: Some(100), size: 10 };
        let mut window = DedupWindow::new(policy, Some(9));
        assert!(take(&mut window, &with_id("a"), 1_000, &store));
        assert!(!take(&mut window, &with_id("a"), 1_099, &store));
        assert!(take(&mut window, &with_id("b"), 1_050, &store));
        assert!(take(&mut window, &with_id("a"), 1_100, &store), "expired");
        // No key: always passes.
        assert!(take(&mut window, &BasicProperties::default(), 1_100, &store));
        assert!(take(&mut window, &BasicProperties::default(), 1_100, &store));
        // A message's own x-cache-ttl.
        let mut long = with_id("c");
        long.headers = Some(table(&[(CACHE_TTL, FieldValue::I32(10_000))]));
        assert!(take(&mut window, &long, 2_000, &store));
        assert!(!take(&mut window, &with_id("c"), 5_000, &store));
        assert_eq!(window.len(), 1, "a and b expired and were dropped from the front");
    }

    #[test]
    fn the_oldest_keys_leave_when_the_window_is_full_and_their_records_are_released() {
        let store = MemoryStore::new();
        let mut window = DedupWindow::new(DedupPolicy { ttl: None, size: 3 }, Some(9));
        for id in ["a", "b", "c", "d"] {
            assert!(take(&mut window, &with_id(id), 0, &store));
        }
        assert_eq!(window.len(), 3);
        assert!(take(&mut window, &with_id("a"), 0, &store), "a was pushed out");
        assert!(!take(&mut window, &with_id("d"), 0, &store));
        let records = store.read(9, 0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(records.len(), 3, "one record per key in the window");
        let restored = DedupWindow::restore(window.policy, 9, records, 0, &store as &dyn Store);
        assert!(matches!(restored.admit(&with_id("d"), 0), Admit::Duplicate { .. }));
        assert!(matches!(restored.admit(&with_id("a"), 0), Admit::Duplicate { .. }));
        assert!(matches!(restored.admit(&with_id("b"), 0), Admit::New(_)));
    }

    #[test]
    fn keys_that_come_back_behind_a_long_lived_one_do_not_grow_the_window() {
        let store = MemoryStore::new();
        let mut window = DedupWindow::new(DedupPolicy { ttl: None, size: 100 }, None);
        assert!(take(&mut window, &with_id("pinned"), 0, &store));
        let mut short = with_id("k");
        short.headers = Some(table(&[(CACHE_TTL, FieldValue::I32(1))]));
        for i in 0..10_000u64 {
            assert!(take(&mut window, &short, i * 2, &store));
        }
        assert_eq!(window.len(), 2);
        assert!(window.order.len() < 200, "order holds {} places", window.order.len());
    }

    #[test]
    fn long_keys_are_remembered_by_their_hash_and_restored_whole() {
        let store = MemoryStore::new();
        let mut window = DedupWindow::new(DedupPolicy { ttl: None, size: 10 }, Some(9));
        let long = "x".repeat(10_000);
        let mut other = long.clone();
        other.push('y');
        assert!(take(&mut window, &with_id(&long[..200]), 0, &store));
        assert!(!take(&mut window, &with_id(&long[..200]), 0, &store));
        assert!(take(&mut window, &with_id(&other[..201]), 0, &store));
        assert!(window.entries.keys().all(|k| k.len() <= LONG_KEY + 1 + 16));
        let records = store.read(9, 0, usize::MAX, usize::MAX).unwrap();
        let restored = DedupWindow::restore(window.policy, 9, records, 0, &store as &dyn Store);
        assert!(matches!(restored.admit(&with_id(&long[..200]), 0), Admit::Duplicate { .. }));
        assert!(matches!(restored.admit(&with_id(&long[..199]), 0), Admit::New(_)));
    }
}
