//! Queues: ready messages in FIFO order and the consumers that compete for them.
//!
//! A queue does not deliver by itself: [`crate::Broker`] runs dispatch, because choosing a
//! consumer needs its channel's prefetch state.

use postroom_amqp::{FieldTable, ShortStr};
use postroom_store::{QueueId, Store};

use crate::backlog::Backlog;
use crate::dedup::DedupWindow;
use crate::policy::QueuePolicy;

use crate::ConnectionId;
use crate::message::QueuedMessage;
use crate::session::ChannelKey;

/// Queue arguments whose values must match when a queue is redeclared (RabbitMQ's list).
pub const EQUIVALENCE_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-retry-initial-delay",
    "x-retry-multiplier",
    "x-retry-max-delay",
    "x-retry-jitter",
    crate::dedup::MESSAGE_DEDUPLICATION,
    crate::dedup::CACHE_TTL,
    crate::dedup::CACHE_SIZE,
    crate::dedup::CACHE_PERSISTENCE,
];

/// A consumer attached to a queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Unique for the life of the broker.
    pub id: u64,
    /// The channel it was created on.
    pub channel: ChannelKey,
    /// Its tag, unique within the channel.
    pub tag: ShortStr,
    /// Whether deliveries are settled on send (no acks).
    pub no_ack: bool,
    /// Whether it holds the queue exclusively.
    pub exclusive: bool,
    /// Per-consumer prefetch limit (0 = none), fixed when it was created.
    pub prefetch_count: u16,
    /// Deliveries not yet acknowledged.
    pub unacked: u32,
    /// Its `x-priority` (0 by default): a queue delivers to the consumers of the highest
    /// priority that can take a message, round-robin among them, and to lower ones only
    /// while those cannot (as RabbitMQ).
    pub priority: i32,
}

/// The consumer argument naming its priority.
pub const CONSUMER_PRIORITY: &str = "x-priority";

/// The priority `basic.consume` arguments ask for.
///
/// # Errors
/// `PreconditionFailed` naming the argument if `x-priority` is not an integer that fits
/// 32 bits.
pub fn consumer_priority(arguments: &postroom_amqp::FieldTable) -> crate::error::Result<i32> {
    match arguments.get(CONSUMER_PRIORITY) {
        None => Ok(0),
        Some(value) => value.as_int().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
            crate::BrokerError::PreconditionFailed(format!(
                "invalid arg '{CONSUMER_PRIORITY}': expected an integer, got {value:?}"
            ))
        }),
    }
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: ShortStr,
    /// Whether it survives a restart.
    pub durable: bool,
    /// The connection that owns it, for exclusive queues.
    pub exclusive_owner: Option<ConnectionId>,
    /// Whether it is deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// The behaviour its arguments ask for.
    pub policy: QueuePolicy,
    /// Messages ready for delivery, oldest first, in memory or in the store.
    pub ready: Backlog,
    /// Consumers, in the order they subscribed.
    pub consumers: Vec<Consumer>,
    /// Index of the consumer to try first on the next delivery (round-robin).
    pub next_consumer: usize,
    /// Whether it has ever had a consumer (auto-delete only applies after the first).
    pub had_consumers: bool,
    /// Its id in the store: every queue has one (messages past its memory limit are
    /// spilled under it); durable ones also persist persistent messages under it.
    pub store_id: Option<QueueId>,
    /// Unique for the life of the broker (see [`crate::session::Unacked::incarnation`]).
    pub incarnation: u64,
    /// Messages found expired while taking the head, to be dead-lettered by the broker.
    pub expired: Vec<QueuedMessage>,
    /// Whether a message with its own TTL was enqueued since the queue was last empty.
    pub expiring: bool,
    /// When it was last used (declared, consumed from, read with `basic.get`), ms: what
    /// `x-expires` counts from.
    pub last_used: u64,
    /// The keys of the messages it took lately, if it deduplicates.
    pub dedup: Option<DedupWindow>,
}

impl Queue {
    /// An empty queue.
    pub fn new(
        name: ShortStr,
        durable: bool,
        exclusive_owner: Option<ConnectionId>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Queue {
        let policy = QueuePolicy::from_arguments(&arguments, &name, "/").unwrap_or_default();
        let mut ready = Backlog::default();
        if let Some(max) = policy.max_priority {
            ready.set_max_priority(max);
        }
        Queue {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            ready,
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumers: false,
            store_id: None,
            incarnation: 0,
            expired: Vec::new(),
            expiring: false,
            last_used: 0,
            // Kept in memory only until the declare gives a persisted queue's window a
            // store id of its own.
            dedup: policy.dedup.map(|dedup| DedupWindow::new(dedup, None)),
            policy,
        }
    }

    /// Number of messages ready for delivery.
    pub fn message_count(&self) -> u32 {
        self.ready.len().try_into().unwrap_or(u32::MAX)
    }

    /// Takes the head ready message (reading it from the store if need be). Messages
    /// whose TTL passed by `now` are moved to [`Queue::expired`] on the way.
    pub fn pop(&mut self, store: &dyn Store, now: u64) -> Option<QueuedMessage> {
        loop {
            let entry = self.ready.pop(self.store_id, store)?;
            if !self.is_expired(&entry, now) {
                return Some(entry);
            }
            self.expired.push(entry);
        }
    }

    /// Moves the expired messages at the head to [`Queue::expired`] (RabbitMQ expires
    /// from the head only), so that they go even when nobody consumes.
    pub fn expire_head(&mut self, store: &dyn Store, now: u64) {
        while let Some(entry) = self.ready.pop(self.store_id, store) {
            if !self.is_expired(&entry, now) {
                self.ready.requeue_unchanged(entry);
                return;
            }
            self.expired.push(entry);
        }
    }

    /// Whether `entry` outlived its TTL (the queue's or its own, the shorter) at `now`.
    fn is_expired(&self, entry: &QueuedMessage, now: u64) -> bool {
        let ttl = match (entry.message.ttl(), self.policy.message_ttl) {
            (Some(own), Some(queue)) => Some(own.min(queue)),
            (own, queue) => own.or(queue),
        };
        let arrived = entry.message.arrived_at();
        ttl.is_some_and(|ttl| arrived != 0 && now > arrived.saturating_add(ttl))
    }

    /// Whether [`crate::Broker::tick`] has work here: retries waiting, messages that may
    /// expire, or an `x-expires` to watch.
    pub fn needs_timer(&self) -> bool {
        self.ready.needs_timer()
            || self.policy.expires.is_some()
            || ((self.policy.message_ttl.is_some() || self.expiring) && !self.ready.is_empty())
    }

    /// Whether persistent messages on this queue are written to the store and survive a
    /// restart (durable queues; exclusive ones die with their connection anyway).
    pub fn persists_messages(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> u32 {
        self.consumers.len().try_into().unwrap_or(u32::MAX)
    }

    /// Whether the queue can be used by `connection` (exclusive queues only by their owner).
    pub fn accessible_by(&self, connection: ConnectionId) -> bool {
        self.exclusive_owner.is_none_or(|owner| owner == connection)
    }

    /// Puts messages back at the head of the queue, keeping their relative order, marked
    /// redelivered — as RabbitMQ returns a requeued message to its original position ahead
    /// of newer messages.
    pub fn requeue(
        &mut self,
        messages: impl DoubleEndedIterator<Item = QueuedMessage>,
        store: &dyn Store,
    ) {
        self.ready.requeue(messages, self.store_id, store);
    }

    /// Removes a consumer by channel and tag, returning it.
    pub fn remove_consumer(&mut self, channel: ChannelKey, tag: &str) -> Option<Consumer> {
        let index = self.consumers.iter().position(|c| c.channel == channel && c.tag == tag)?;
        if index < self.next_consumer {
            self.next_consumer -= 1;
        }
        let consumer = self.consumers.remove(index);
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        Some(consumer)
    }

    /// Whether it should now be deleted because its last consumer went away.
    pub fn should_auto_delete(&self) -> bool {
        self.auto_delete && self.had_consumers && self.consumers.is_empty()
    }

    /// Removes every ready message and releases them in the store, returning how many
    /// there were. A store failure is returned after the queue is emptied (the store then
    /// accepts nothing; recovery finds the references of a failed release).
    pub fn purge(&mut self, store: &dyn Store) -> (u32, Result<(), postroom_store::StoreError>) {
        let (count, in_memory, run) = self.ready.clear();
        let count = count.try_into().unwrap_or(u32::MAX);
        let Some(id) = self.store_id else { return (count, Ok(())) };
        let released = store.ack(id, &in_memory);
        let released = released.and_then(|()| match run {
            Some(from) => store.release_from(id, from).map(|_| ()),
            None => Ok(()),
        });
        (count, released)
    }
}
