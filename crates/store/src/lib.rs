//! Postroom's durable storage: message payloads and acknowledgements in an append-only
//! journal of CRC-checked segment files, made durable by one group-commit thread per data
//! directory, and recovered after a crash.
//!
//! The store knows nothing of AMQP: a payload is opaque bytes referenced by one or more
//! queues (by [`QueueId`]); a message routed to N durable queues is stored once. It must not
//! depend on `postroom-core` or `postroom-amqp`.
//!
//! Durability contract: [`Store::append`] returns the record's [`Lsn`]; the record is on
//! disk (fsynced, with [`Durability::Fsync`]) once [`Progress::durable`] reaches it. A
//! publisher confirm must wait for that; nothing else does.
//!
//! Layout:
//! - [`record`]: the record format (length, CRC32C, kind) and its decoder.
//! - [`file`](mod@file): [`FileStore`]: opening, appends, acks and reads.
//! - `state`: the file store's bookkeeping in memory (locations, live counts, batch).
//! - `commit`: the group-commit thread.
//! - `compaction`: copying the head segment's last live messages forward.
//! - `recovery`: the journal scan at open.
//! - `segment_reader`: sequential reads of a segment's records.
//! - `definitions`: the definitions file.
//! - [`memory`]: [`MemoryStore`], the same contract without files.
//! - [`ranges`]: [`ranges::RangeSet`], a queue's references as ranges.
//! - [`config`]: [`StoreConfig`], [`Durability`], fault injection.
//! - [`error`]: the [`StoreError`] type.

mod commit;
mod compaction;
pub mod config;
mod definitions;
pub mod error;
pub mod file;
pub mod memory;
pub mod ranges;
pub mod record;
mod recovery;
mod segment_reader;
mod state;

use bytes::Bytes;
use tokio::sync::watch;

pub use config::{Durability, Faults, StoreConfig};
pub use error::StoreError;
pub use file::FileStore;
pub use memory::MemoryStore;

/// A message's sequence number: unique and increasing within a store, never reused.
pub type Seq = u64;
/// A durable queue's identifier within a store.
pub type QueueId = u32;
/// A position in the journal's write order: every appended record gets the next one.
pub type Lsn = u64;

/// How far the journal is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Every record with an Lsn up to this one is durable.
    pub durable: Lsn,
    /// Set when a write or sync failed: records after `durable` will never be durable
    /// (their publishers must be nacked) and the store refuses new appends.
    pub failed: bool,
}

/// What a queue remembers of one of its messages between deliveries: how often it was
/// delivered and given back, and when it may be delivered again. Messages that were never
/// given back have no state (count 0, ready at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryState {
    /// How many times the message was delivered and then returned to the queue.
    pub delivery_count: u32,
    /// When it may be delivered again, in milliseconds since the Unix epoch (0: at once).
    pub ready_at: u64,
}

/// A message read back with [`read_all`], with the queues that still reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// Its sequence number.
    pub seq: Seq,
    /// The queues that still reference it, in increasing order.
    pub queues: Vec<QueueId>,
    /// The payload, as appended.
    pub payload: Bytes,
}

/// What a store held when it was opened: which messages each queue still references (as
/// ranges of sequence numbers; the payloads stay on disk, read with [`Store::read`]).
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The last definitions saved, if any.
    pub definitions: Option<Bytes>,
    /// Per queue, the sequence numbers of the messages it still references.
    pub queues: std::collections::HashMap<QueueId, ranges::RangeSet>,
    /// Per queue, the highest sequence number it had delivered: its messages up to there
    /// may have reached a consumer and come back flagged redelivered.
    pub delivered: std::collections::HashMap<QueueId, Seq>,
    /// Per queue, the delivery states recorded with [`Store::set_state`] for messages it
    /// still references.
    pub states: std::collections::HashMap<QueueId, std::collections::BTreeMap<Seq, DeliveryState>>,
}

/// Durable storage for messages and definitions. Implementations are internally
/// synchronised; every method is cheap (buffers in memory) unless documented otherwise.
pub trait Store: Send + Sync {
    /// Takes what the store held when it was opened (once; later calls return nothing).
    fn take_recovered(&self) -> Recovered;

    /// Appends a payload referenced by `queues` (not empty), returning its sequence number
    /// and the Lsn to wait for.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an earlier write or sync failed.
    fn append(&self, queues: &[QueueId], payload: &[u8]) -> Result<(Seq, Lsn), StoreError>;

    /// Writes a transient message out of memory, referenced by `queues`: readable with
    /// [`Store::read`] and released with [`Store::ack`] like any other, but dropped by
    /// recovery. Nobody waits for it to be durable.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an earlier failure.
    fn spill(&self, queues: &[QueueId], payload: &[u8]) -> Result<Seq, StoreError>;

    /// Releases every reference `queue` holds from sequence number `from` on (a purge or a
    /// delete of messages that are not in memory), returning how many there were.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an earlier failure.
    fn release_from(&self, queue: QueueId, from: Seq) -> Result<u64, StoreError>;

    /// Records that `queue` no longer references `seqs` (acked, dropped, purged). Acks are
    /// written with the next group commit but nobody waits for them: a lost ack means a
    /// redelivery, never a loss.
    ///
    /// # Errors
    /// [`StoreError::Failed`] after an earlier failure.
    fn ack(&self, queue: QueueId, seqs: &[Seq]) -> Result<(), StoreError>;

    /// Reads back messages `queue` still references, from sequence number `from` on, in
    /// order: at most `max_messages`, and stopping after the message that reaches
    /// `max_bytes`. Only records already written are returned, so a message appended but
    /// not yet written by the commit thread ends the list early; wait for
    /// [`Progress::durable`] to cover it before reading it.
    ///
    /// # Errors
    /// I/O errors reading the journal, and damage found in it.
    fn read(
        &self,
        queue: QueueId,
        from: Seq,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError>;

    /// Notes that `queue` delivered `seq` to a consumer. Marks are coalesced (the highest
    /// per queue) and written with the next group commit; nobody waits for them.
    fn delivered(&self, queue: QueueId, seq: Seq);

    /// Records `queue`'s delivery state of `seq` (a message it references), replacing any
    /// earlier one, so that a restart brings it back in [`Recovered::states`]. Written with
    /// the next group commit; nobody waits for it: a lost state means a lower delivery
    /// count after a crash, never a lost message. Dropped with the reference.
    fn set_state(&self, queue: QueueId, seq: Seq, state: DeliveryState);

    /// Replaces the saved definitions. Synchronous: durable when it returns.
    ///
    /// # Errors
    /// I/O errors.
    fn save_definitions(&self, data: &[u8]) -> Result<(), StoreError>;

    /// Watches durability progress.
    fn progress(&self) -> watch::Receiver<Progress>;

    /// Writes and syncs everything appended so far, then stops the commit thread.
    /// Appends after `close` fail.
    ///
    /// # Errors
    /// The first write or sync error, if any.
    fn close(&self) -> Result<(), StoreError>;
}

/// Reads back every message `recovered` lists, in sequence order — all in memory, so for
/// tools and tests, not for a broker with a backlog.
///
/// # Errors
/// As [`Store::read`].
pub fn read_all(
    store: &dyn Store,
    recovered: &Recovered,
) -> Result<Vec<RecoveredMessage>, StoreError> {
    let mut messages: std::collections::BTreeMap<Seq, RecoveredMessage> = Default::default();
    for &queue in recovered.queues.keys() {
        for (seq, payload) in store.read(queue, 0, usize::MAX, usize::MAX)? {
            let entry = messages.entry(seq).or_insert_with(|| RecoveredMessage {
                seq,
                queues: Vec::new(),
                payload,
            });
            entry.queues.push(queue);
        }
    }
    Ok(messages
        .into_values()
        .map(|mut m| {
            m.queues.sort_unstable();
            m
        })
        .collect())
}
