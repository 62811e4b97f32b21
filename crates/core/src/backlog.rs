//! A queue's ready messages: held in memory up to a memory limit, past it kept only in the
//! store and read back as the queue drains.
//!
//! The messages are a head in memory followed by runs, in queue order: runs of messages in
//! memory and runs of messages only in the store (a range of the queue's
//! references there). A new message goes into memory when it fits the limits, else into the
//! store (persistent ones are there already; transient ones are spilled) at the end of the
//! last cold run. So a backlog of millions costs memory for what fits only, FIFO order
//! holds (a cold run's messages were published before every later run's, so their sequence
//! numbers are lower), and only the overflow goes through the store: once consumers catch
//! up, new messages stay in memory again even while older ones still wait in the store.
//!
//! Every queue spills this way: a non-durable queue's messages are all transient for the
//! store (spilled, and dropped by recovery).
//!
//! Two limits apply, as [`MemoryLimits`]: one per queue, and one for all queues together,
//! counted by a [`MemoryGauge`] the broker shares with every backlog — so a few busy queues
//! may keep a large head in memory while many queues cannot add up to more than the total.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use postroom_store::{DeliveryState, QueueId, Seq, Store};

use crate::message::{Message, QueuedMessage};

/// How many messages one refill reads at most.
const REFILL_MESSAGES: usize = 512;
/// How many payload bytes one refill reads at most (it stops after the message past it).
const REFILL_BYTES: usize = 1024 * 1024;
/// Bytes a message in memory is charged beyond its body and properties (structs, Arcs).
const ENTRY_OVERHEAD: usize = 128;

/// The bytes of ready messages all queues of a broker hold in memory. Shared by their
/// backlogs (every change happens under the broker's lock; atomic only to be shareable).
#[derive(Debug, Clone, Default)]
pub struct MemoryGauge(Arc<AtomicUsize>);

impl MemoryGauge {
    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        // Never below zero, whatever a bug in the accounting did.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            Some(held.saturating_sub(bytes))
        });
    }
}

/// How many bytes of ready messages may be held in memory before new ones wait in the
/// store only: per queue, and by all queues of the broker together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// One queue's share.
    pub queue: usize,
    /// All queues together.
    pub total: usize,
}

/// Ready messages in memory: one FIFO lane, or one per priority (highest first, FIFO
/// within a priority) for a queue with `x-max-priority`.
#[derive(Debug)]
struct Lanes {
    lanes: Vec<VecDeque<QueuedMessage>>,
    len: usize,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes { lanes: vec![VecDeque::new()], len: 0 }
    }
}

impl Lanes {
    fn lane(&mut self, entry: &QueuedMessage) -> &mut VecDeque<QueuedMessage> {
        let top = self.lanes.len() - 1;
        let priority = usize::from(entry.message.priority()).min(top);
        &mut self.lanes[priority]
    }

    fn push_back(&mut self, entry: QueuedMessage) {
        self.len += 1;
        self.lane(&entry).push_back(entry);
    }

    fn push_front(&mut self, entry: QueuedMessage) {
        self.len += 1;
        self.lane(&entry).push_front(entry);
    }

    fn pop_front(&mut self) -> Option<QueuedMessage> {
        let entry = self.lanes.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.len -= 1;
        Some(entry)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn drain(&mut self) -> impl Iterator<Item = QueuedMessage> + '_ {
        self.len = 0;
        self.lanes.iter_mut().rev().flat_map(|lane| lane.drain(..))
    }
}

/// Messages of a queue that are only in the store: the `count` messages the queue
/// references there from `from` to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cold {
    from: Seq,
    last: Seq,
    count: u64,
}

/// Ready messages after a queue's head, in queue order.
#[derive(Debug)]
enum Run {
    /// In memory (counted in the backlog's memory).
    Hot(VecDeque<QueuedMessage>),
    /// Only in the store.
    Cold(Cold),
}

/// A queue's ready messages.
#[derive(Debug, Default)]
pub struct Backlog {
    hot: Lanes,
    hot_bytes: usize,
    /// The broker-wide count `hot_bytes` is part of.
    gauge: MemoryGauge,
    /// Body bytes of every ready message, for `x-max-length-bytes` (those recovered after
    /// a restart are not counted: their sizes are only known once read back).
    body_bytes: u64,
    /// What follows the head, in order (never two runs of one kind in a row).
    runs: VecDeque<Run>,
    /// Messages in `runs`.
    runs_len: u64,
    /// A refill found cold messages not yet written by the store; retry when it has.
    waiting_for_store: bool,
    /// After a restart: messages up to this sequence number may have reached a consumer
    /// before it, and come back flagged redelivered.
    delivered_before: Option<Seq>,
    /// After a restart: the delivery states the store kept, applied as messages are read
    /// back (and dropped then).
    recovered_states: BTreeMap<Seq, DeliveryState>,
    /// Messages waiting to become ready again (retry backoff), by the time they do and an
    /// order number. Not counted as ready.
    scheduled: BTreeMap<(u64, u64), QueuedMessage>,
    next_order: u64,
    /// How many of `recovered_states` hold a retry time.
    recovered_retries: usize,
}

impl Drop for Backlog {
    /// A queue that goes gives its share of the broker-wide gauge back.
    fn drop(&mut self) {
        self.gauge.sub(self.hot_bytes);
    }
}

fn charge(entry: &QueuedMessage) -> usize {
    entry.message.body.len() + entry.message.raw_properties.len() + ENTRY_OVERHEAD
}

impl Backlog {
    /// Ready messages, in memory and in the store.
    pub fn len(&self) -> u64 {
        self.hot.len() as u64 + self.runs_len
    }

    /// Whether no message is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Orders ready messages by priority, 0 to `max` (`x-max-priority`): higher first,
    /// FIFO within a priority. Such a queue keeps its ready messages in memory (they are
    /// not left in the store past the memory limit, which would hide their priorities).
    /// Call on an empty backlog.
    pub fn set_max_priority(&mut self, max: u8) {
        self.hot.lanes = (0..=max).map(|_| VecDeque::new()).collect();
    }

    fn prioritised(&self) -> bool {
        self.hot.lanes.len() > 1
    }

    /// Messages waiting for their retry delay to pass.
    pub fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// Whether the queue needs the broker's timer: messages are scheduled, or recovered
    /// ones will be once read back.
    pub fn needs_timer(&self) -> bool {
        !self.scheduled.is_empty() || self.recovered_retries > 0
    }

    /// Holds `message` back until `ready_at` (ms since the epoch).
    pub fn schedule(&mut self, message: QueuedMessage, ready_at: u64) {
        self.next_order += 1;
        self.scheduled.insert((ready_at, self.next_order), message);
    }

    /// Makes the scheduled messages due at `now` ready, at the head (they are older than
    /// what is queued), earliest first. Returns whether any became ready.
    pub fn release_due(&mut self, now: u64) -> bool {
        let later = self.scheduled.split_off(&(now.saturating_add(1), 0));
        let due = std::mem::replace(&mut self.scheduled, later);
        if due.is_empty() {
            return false;
        }
        for message in due.into_values().rev() {
            self.add_hot(charge(&message));
            self.body_bytes += message.message.body.len() as u64;
            self.hot.push_front(message);
        }
        true
    }

    /// Body bytes of the ready messages (see the field's caveat after a restart).
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Messages held in memory.
    pub fn in_memory(&self) -> usize {
        let in_runs: usize = self
            .runs
            .iter()
            .map(|run| match run {
                Run::Hot(messages) => messages.len(),
                Run::Cold(_) => 0,
            })
            .sum();
        self.hot.len() + in_runs
    }

    /// Whether a refill waits for the store to write what it should read.
    pub fn waiting_for_store(&self) -> bool {
        self.waiting_for_store
    }

    /// Adds a newly routed message at the tail. It stays in memory if it fits `limits`
    /// (or the queue is prioritised, or has no store id); otherwise it goes into the store
    /// only (under `store_id`), spilled if it is not persisted there yet. If a spill fails
    /// (a failed store) the message stays in memory: kept, even if past the limit.
    pub fn push(
        &mut self,
        entry: QueuedMessage,
        store_id: Option<QueueId>,
        store: &dyn Store,
        limits: MemoryLimits,
    ) {
        self.body_bytes += entry.message.body.len() as u64;
        let Some(queue_id) = store_id else { return self.push_hot(entry) };
        let cost = charge(&entry);
        let fits =
            self.hot_bytes + cost <= limits.queue && self.gauge.bytes() + cost <= limits.total;
        if self.prioritised() || fits {
            return self.push_hot(entry);
        }
        let seq = match entry.stored {
            Some(seq) => seq,
            None => match store.spill(&[queue_id], &entry.message.encoded()) {
                Ok(seq) => seq,
                Err(_) => return self.push_hot(entry),
            },
        };
        self.push_cold(seq);
    }

    /// Counts a message that is in the store only, at the tail (recovery, or
    /// [`Backlog::push`]). Its sequence number must be above every one the backlog holds.
    pub fn push_cold(&mut self, seq: Seq) {
        self.runs_len += 1;
        match self.runs.back_mut() {
            Some(Run::Cold(cold)) => {
                cold.last = seq;
                cold.count += 1;
            }
            _ => self.runs.push_back(Run::Cold(Cold { from: seq, last: seq, count: 1 })),
        }
    }

    /// Counts `count` messages that are in the store only: the queue's references from
    /// `from` on (recovery, on an empty backlog).
    pub fn push_cold_run(&mut self, from: Seq, count: u64) {
        if count == 0 {
            return;
        }
        self.runs_len += count;
        // Every reference from `from` on: later messages get higher numbers, and a read of
        // the run never asks for more than `count`.
        self.runs.push_back(Run::Cold(Cold { from, last: Seq::MAX, count }));
    }

    /// Notes, after a restart, that messages up to `seq` may have been delivered.
    pub fn set_delivered_before(&mut self, seq: Option<Seq>) {
        self.delivered_before = seq;
    }

    /// Notes, after a restart, the delivery states the store kept for this queue.
    pub fn set_recovered_states(&mut self, states: BTreeMap<Seq, DeliveryState>) {
        self.recovered_retries = states.values().filter(|s| s.ready_at > 0).count();
        self.recovered_states = states;
    }

    fn push_hot(&mut self, entry: QueuedMessage) {
        self.add_hot(charge(&entry));
        if self.runs.is_empty() {
            return self.hot.push_back(entry);
        }
        self.runs_len += 1;
        match self.runs.back_mut() {
            Some(Run::Hot(run)) => run.push_back(entry),
            _ => self.runs.push_back(Run::Hot(VecDeque::from([entry]))),
        }
    }

    /// Counts its messages in `gauge` (shared by the broker's queues) from now on.
    pub fn share_gauge(&mut self, gauge: &MemoryGauge) {
        self.gauge.sub(self.hot_bytes);
        self.gauge = gauge.clone();
        self.gauge.add(self.hot_bytes);
    }

    fn add_hot(&mut self, bytes: usize) {
        self.hot_bytes += bytes;
        self.gauge.add(bytes);
    }

    fn sub_hot(&mut self, bytes: usize) {
        let bytes = bytes.min(self.hot_bytes);
        self.hot_bytes -= bytes;
        self.gauge.sub(bytes);
    }

    /// Takes the head message, reading the next batch from the store when memory holds
    /// none. `None` if the queue is empty, or if what it holds is not written yet
    /// ([`Backlog::waiting_for_store`]).
    pub fn pop(&mut self, store_id: Option<QueueId>, store: &dyn Store) -> Option<QueuedMessage> {
        if self.hot.is_empty() {
            self.refill(store_id, store);
        }
        let entry = self.hot.pop_front()?;
        self.sub_hot(charge(&entry));
        self.body_bytes = self.body_bytes.saturating_sub(entry.message.body.len() as u64);
        Some(entry)
    }

    /// Moves the next run into the head while the head is empty (for a prioritised queue,
    /// until nothing is left in the store: only then is the highest priority known).
    fn refill(&mut self, store_id: Option<QueueId>, store: &dyn Store) {
        while self.hot.is_empty() || (self.prioritised() && !self.runs.is_empty()) {
            match self.runs.front_mut() {
                None => return,
                Some(Run::Hot(run)) => {
                    self.runs_len -= run.len() as u64;
                    for entry in run.drain(..) {
                        self.hot.push_back(entry);
                    }
                    self.runs.pop_front();
                }
                Some(Run::Cold(cold)) => {
                    let mut cold = *cold;
                    let Some(queue_id) = store_id else { return };
                    if !self.refill_from(queue_id, &mut cold, store) {
                        return;
                    }
                    self.runs_len -= match self.runs.front() {
                        Some(Run::Cold(before)) => before.count - cold.count,
                        _ => 0,
                    };
                    if cold.count == 0 {
                        self.runs.pop_front();
                    } else if let Some(Run::Cold(front)) = self.runs.front_mut() {
                        *front = cold;
                    }
                }
            }
        }
    }

    /// Reads the next batch of `cold` into the head, advancing `cold`. Returns false when
    /// nothing could be read (not written yet, or a read error: retried when the store
    /// progresses).
    fn refill_from(&mut self, queue_id: QueueId, cold: &mut Cold, store: &dyn Store) -> bool {
        // A read never asks past the run: later references belong to later runs.
        let wanted = usize::try_from(cold.count).unwrap_or(usize::MAX).min(REFILL_MESSAGES);
        let batch = store.read(queue_id, cold.from, wanted, REFILL_BYTES).unwrap_or_default();
        self.waiting_for_store = batch.is_empty();
        if batch.is_empty() {
            return false;
        }
        if batch.first().is_some_and(|(seq, _)| *seq > cold.last) {
            // The store holds nothing of the run any more (its references were released
            // behind the backlog's back): the run is over, or it would be read for ever.
            cold.count = 0;
            return true;
        }
        let mut undecodable = Vec::new();
        for (seq, payload) in batch {
            if seq > cold.last {
                break;
            }
            cold.from = seq + 1;
            cold.count = cold.count.saturating_sub(1);
            let Ok(message) = Message::decode(&payload) else {
                undecodable.push(seq);
                continue;
            };
            let mut entry = QueuedMessage::new(Arc::new(message));
            entry.stored = Some(seq);
            entry.redelivered = self.delivered_before.is_some_and(|d| seq <= d);
            if let Some(state) = self.recovered_states.remove(&seq) {
                entry.delivery_count = state.delivery_count;
                entry.redelivered |= state.delivery_count > 0;
                if state.ready_at > 0 {
                    self.recovered_retries = self.recovered_retries.saturating_sub(1);
                    // A retry that was waiting when the broker stopped: it waits on
                    // (the next tick releases it if its time has passed).
                    self.schedule(entry, state.ready_at);
                    continue;
                }
            }
            self.add_hot(charge(&entry));
            self.hot.push_back(entry);
        }
        // A payload that does not decode can never be delivered: release it rather
        // than keep it referenced (and its segment alive) for ever.
        let _ = store.ack(queue_id, &undecodable);
        true
    }

    /// Puts a message just taken back at the head, as it was.
    pub fn requeue_unchanged(&mut self, message: QueuedMessage) {
        self.add_hot(charge(&message));
        self.body_bytes += message.message.body.len() as u64;
        self.hot.push_front(message);
    }

    /// Puts messages back at the head, keeping their relative order, marked redelivered —
    /// as RabbitMQ returns a requeued message to its original position ahead of newer ones.
    /// Each one's delivery count goes up, and is recorded in the store for the stored ones.
    pub fn requeue(
        &mut self,
        messages: impl DoubleEndedIterator<Item = QueuedMessage>,
        store_id: Option<QueueId>,
        store: &dyn Store,
    ) {
        for mut message in messages.rev() {
            message.redelivered = true;
            message.delivery_count = message.delivery_count.saturating_add(1);
            if let (Some(queue), Some(seq)) = (store_id, message.stored) {
                let state = DeliveryState { delivery_count: message.delivery_count, ready_at: 0 };
                store.set_state(queue, seq, state);
            }
            self.add_hot(charge(&message));
            self.body_bytes += message.message.body.len() as u64;
            self.hot.push_front(message);
        }
    }

    /// Empties the backlog, returning how many messages it held, the store sequence numbers
    /// of those in memory, and where the run in the store starts (everything the queue
    /// references from there on is to be released).
    pub fn clear(&mut self) -> (u64, Vec<Seq>, Option<Seq>) {
        let count = self.len() + self.scheduled.len() as u64;
        let scheduled = std::mem::take(&mut self.scheduled).into_values();
        let mut stored: Vec<Seq> =
            self.hot.drain().chain(scheduled).filter_map(|m| m.stored).collect();
        // Everything the queue references from the first cold run on goes with it (hot
        // runs after it included, released twice, which is harmless).
        let mut first_cold = None;
        for run in std::mem::take(&mut self.runs) {
            match run {
                Run::Hot(run) => stored.extend(run.into_iter().filter_map(|m| m.stored)),
                Run::Cold(cold) => {
                    first_cold.get_or_insert(cold.from);
                }
            }
        }
        self.runs_len = 0;
        self.sub_hot(self.hot_bytes);
        self.body_bytes = 0;
        self.recovered_states.clear();
        self.recovered_retries = 0;
        self.waiting_for_store = false;
        (count, stored, first_cold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use postroom_amqp::BasicProperties;
    use postroom_store::MemoryStore;

    fn message(n: u64, persistent: bool) -> Message {
        let properties = BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        };
        Message::new("".into(), "q".into(), properties, Bytes::from(n.to_string()))
    }

    fn publish(backlog: &mut Backlog, store: &MemoryStore, n: u64, persistent: bool, limit: usize) {
        let limits = MemoryLimits { queue: limit, total: usize::MAX };
        let message = message(n, persistent);
        let mut entry = QueuedMessage::new(Arc::new(message.clone()));
        if persistent {
            entry.stored = Some(store.append(&[1], &message.encode()).unwrap().0);
        }
        backlog.push(entry, Some(1), store, limits);
    }

    #[test]
    fn past_the_limit_messages_wait_in_the_store_and_come_back_in_order() {
        let store = MemoryStore::new();
        let mut backlog = Backlog::default();
        for n in 0..2000 {
            publish(&mut backlog, &store, n, n % 3 != 0, 16 * 1024);
        }
        assert_eq!(backlog.len(), 2000);
        assert!(backlog.in_memory() < 200, "{} in memory", backlog.in_memory());
        let mut seen = Vec::new();
        while let Some(entry) = backlog.pop(Some(1), &store) {
            seen.push(
                String::from_utf8(entry.message.body.to_vec()).unwrap().parse::<u64>().unwrap(),
            );
        }
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
        assert!(backlog.is_empty());
    }

    fn number(entry: &QueuedMessage) -> u64 {
        String::from_utf8(entry.message.body.to_vec()).unwrap().parse().unwrap()
    }

    #[test]
    fn once_consumers_catch_up_new_messages_stay_in_memory_behind_the_stored_ones() {
        let store = MemoryStore::new();
        let mut backlog = Backlog::default();
        let limit = 8 * 1024;
        // A burst past the limit: the overflow goes to the store.
        for n in 0..200 {
            publish(&mut backlog, &store, n, false, limit);
        }
        let held = backlog.in_memory();
        assert!(held < 200, "the burst stayed in memory");
        // The consumer takes a few, freeing memory; what comes next stays in memory even
        // though older messages still wait in the store.
        let mut seen: Vec<u64> =
            (0..10).map(|_| number(&backlog.pop(Some(1), &store).unwrap())).collect();
        let before = backlog.in_memory();
        for n in 200..205 {
            publish(&mut backlog, &store, n, false, limit);
        }
        assert_eq!(backlog.in_memory(), before + 5, "new messages went to the store");
        while let Some(entry) = backlog.pop(Some(1), &store) {
            seen.push(number(&entry));
        }
        assert_eq!(seen, (0..205).collect::<Vec<_>>());
    }

    #[test]
    fn order_holds_whatever_mix_of_publishes_takes_and_requeues() {
        // Seeded: a failure prints the seed, and the same seed replays it.
        for seed in 1..=40u64 {
            let store = MemoryStore::new();
            let mut backlog = Backlog::default();
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut published = 0;
            for _ in 0..3000 {
                match next() % 10 {
                    0..=5 => {
                        let persistent = next() % 2 == 0;
                        publish(&mut backlog, &store, published, persistent, 6 * 1024);
                        model.push_back(published);
                        published += 1;
                    }
                    6..=8 => {
                        let got = backlog.pop(Some(1), &store).map(|e| number(&e));
                        assert_eq!(got, model.pop_front(), "seed {seed}");
                    }
                    _ => {
                        // Taken, then put back at the head (a nack with requeue).
                        if let Some(entry) = backlog.pop(Some(1), &store) {
                            backlog.requeue_unchanged(entry);
                        }
                    }
                }
                assert_eq!(backlog.len(), model.len() as u64, "seed {seed}");
            }
            while let Some(entry) = backlog.pop(Some(1), &store) {
                assert_eq!(Some(number(&entry)), model.pop_front(), "seed {seed}");
            }
            assert!(model.is_empty(), "seed {seed}: {} messages lost", model.len());
        }
    }

    #[test]
    fn queues_sharing_a_gauge_stay_within_the_total_together() {
        let store = MemoryStore::new();
        let gauge = MemoryGauge::default();
        let limits = MemoryLimits { queue: 64 * 1024, total: 96 * 1024 };
        let mut queues: Vec<Backlog> = (0..3).map(|_| Backlog::default()).collect();
        for queue in &mut queues {
            queue.share_gauge(&gauge);
        }
        for n in 0..3000u64 {
            let queue = &mut queues[(n % 3) as usize];
            queue.push(QueuedMessage::new(Arc::new(message(n, false))), Some(1), &store, limits);
        }
        assert!(gauge.bytes() <= limits.total, "{} bytes held", gauge.bytes());
        assert!(gauge.bytes() > limits.queue, "the total, not one queue's share, was the limit");
        let held: usize = queues.iter().map(|q| q.in_memory()).sum();
        assert!(held < 3000, "everything stayed in memory");
        // Draining one queue makes room in the gauge; dropping another gives all of its
        // share back.
        while queues[0].pop(Some(1), &store).is_some() {}
        let after_drain = gauge.bytes();
        queues.pop();
        assert!(gauge.bytes() < after_drain);
        drop(queues);
        assert_eq!(gauge.bytes(), 0);
    }

    #[test]
    fn without_a_store_id_everything_stays_in_memory() {
        let store = MemoryStore::new();
        let mut backlog = Backlog::default();
        for n in 0..100 {
            let limits = MemoryLimits { queue: 0, total: 0 };
            backlog.push(QueuedMessage::new(Arc::new(message(n, false))), None, &store, limits);
        }
        assert_eq!(backlog.in_memory(), 100);
    }

    #[test]
    fn clearing_reports_the_run_to_release() {
        let store = MemoryStore::new();
        let mut backlog = Backlog::default();
        for n in 0..10 {
            publish(&mut backlog, &store, n, true, 0);
        }
        let (count, in_memory, run) = backlog.clear();
        assert_eq!((count, in_memory.len()), (10, 0));
        assert_eq!(run, Some(1));
        assert!(backlog.is_empty());
    }
}
