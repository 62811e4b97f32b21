//! The broker: virtual hosts and the delivery state of every connection, changed only
//! through the operations in this file, [`crate::definitions`] and [`crate::delivery`].
//!
//! `Broker` is a plain struct with no interior locking; the server keeps it behind one mutex
//! and calls it with no `.await` in between, so every operation is atomic and events for a
//! connection are emitted in the order they were decided.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use postroom_amqp::ShortStr;
use postroom_store::{QueueId, Store};

use crate::ConnectionId;
use crate::backlog::{MemoryGauge, MemoryLimits};
use crate::clock::{Clock, SystemClock};
use crate::error::{BrokerError, Result};
use crate::session::{ChannelKey, ChannelState, ConnectionState, Outlet};
use crate::settlement::Return;
use crate::vhost::VHost;

/// Default for [`Broker::set_memory_limits`]: 32 MiB of ready messages per queue.
pub const DEFAULT_QUEUE_MEMORY_LIMIT: usize = 32 * 1024 * 1024;

/// Default for [`Broker::set_memory_limits`]: 256 MiB of ready messages for all queues.
pub const DEFAULT_MESSAGE_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

/// The whole broker state.
pub struct Broker {
    pub(crate) vhosts: HashMap<ShortStr, VHost>,
    pub(crate) connections: HashMap<ConnectionId, ConnectionState>,
    next_connection: ConnectionId,
    rng: u64,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) next_queue_id: QueueId,
    next_id: u64,
    /// Bytes of ready messages queues keep in memory before new ones wait in the store
    /// only: each, and all together.
    pub(crate) memory_limits: MemoryLimits,
    /// Bytes of ready messages all queues keep in memory now.
    pub(crate) memory: MemoryGauge,
    /// Queues whose next messages were not yet written when wanted (vhost, queue).
    pub(crate) waiting: HashSet<(ShortStr, ShortStr)>,
    /// Store ids of queues that persist nothing are taken from the top of the id space
    /// down and reused once their queue is gone, so that a stream of short-lived queues
    /// (one per RPC client) never exhausts the ids durable queues count up from 1.
    pub(crate) free_transient_ids: Vec<QueueId>,
    next_transient_id: QueueId,
    /// What time it is (TTLs, retry backoff, delays).
    pub(crate) clock: Arc<dyn Clock>,
    /// Queues with timed work for [`Broker::tick`] (vhost, queue).
    pub(crate) timed: HashSet<(ShortStr, ShortStr)>,
    /// Delayed exchanges, whose held messages [`Broker::tick`] routes when due.
    pub(crate) timed_exchanges: HashSet<(ShortStr, ShortStr)>,
    /// Which delayed exchange goes first on the next tick (they take turns).
    pub(crate) delayed_turn: usize,
}

impl Broker {
    /// A broker with the default virtual host `/`, persisting through `store`. `seed`
    /// drives generated names (`amq.gen-…`, `amq.ctag-…`), so a test can make them
    /// reproducible. Call [`Broker::restore`] next to bring back what the store holds.
    pub fn new(seed: u64, store: Arc<dyn Store>) -> Broker {
        let mut vhosts = HashMap::new();
        let default = VHost::new("/");
        vhosts.insert(default.name.clone(), default);
        Broker {
            vhosts,
            connections: HashMap::new(),
            next_connection: 1,
            rng: seed | 1,
            store,
            next_queue_id: 1,
            next_id: 1,
            memory_limits: MemoryLimits {
                queue: DEFAULT_QUEUE_MEMORY_LIMIT,
                total: DEFAULT_MESSAGE_MEMORY_LIMIT,
            },
            memory: MemoryGauge::default(),
            waiting: HashSet::new(),
            free_transient_ids: Vec::new(),
            next_transient_id: QueueId::MAX,
            clock: Arc::new(SystemClock),
            timed: HashSet::new(),
            timed_exchanges: HashSet::new(),
            delayed_turn: 0,
        }
    }

    /// Replaces the clock (the system clock by default).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// Sets how many bytes of ready messages each queue, and all queues together, keep in
    /// memory; past either, new messages wait in the store only and are read back as the
    /// queue drains.
    pub fn set_memory_limits(&mut self, limits: MemoryLimits) {
        self.memory_limits = limits;
    }

    /// Bytes of ready messages all queues hold in memory now.
    pub fn messages_in_memory(&self) -> usize {
        self.memory.bytes()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The virtual host `name`, if it exists.
    pub fn vhost(&self, name: &str) -> Option<&VHost> {
        self.vhosts.get(name)
    }

    /// Adds a virtual host (no-op if it exists).
    pub fn add_vhost(&mut self, name: &str) {
        self.vhosts.entry(name.into()).or_insert_with(|| VHost::new(name));
    }

    /// Registers a connection that opened `vhost` as `user`.
    ///
    /// # Errors
    /// `NotAllowed` if the virtual host does not exist (RabbitMQ closes with 530).
    pub fn open_connection(
        &mut self,
        vhost: &str,
        user: &str,
        outlet: Arc<dyn Outlet>,
    ) -> Result<ConnectionId> {
        let Some((vhost, _)) = self.vhosts.get_key_value(vhost) else {
            return Err(BrokerError::NotAllowed(format!("vhost {vhost} not found")));
        };
        let id = self.next_connection;
        self.next_connection += 1;
        let state = ConnectionState {
            vhost: vhost.clone(),
            user: user.into(),
            outlet,
            channels: HashMap::new(),
        };
        self.connections.insert(id, state);
        Ok(id)
    }

    /// Closes a connection: its channels close (unacked messages return to their queues) and
    /// its exclusive queues are deleted. Idempotent.
    pub fn close_connection(&mut self, connection: ConnectionId) {
        let Some(state) = self.connections.get(&connection) else {
            return;
        };
        let vhost = state.vhost.clone();
        let channels: Vec<u16> = state.channels.keys().copied().collect();
        self.close_channels(connection, &channels);
        self.connections.remove(&connection);
        if let Some(v) = self.vhosts.get(&vhost) {
            let owned: Vec<ShortStr> = v
                .queues
                .values()
                .filter(|q| q.exclusive_owner == Some(connection))
                .map(|q| q.name.clone())
                .collect();
            for queue in owned {
                self.remove_queue(&vhost, &queue);
            }
        }
    }

    /// Opens channel `key.channel` on its connection.
    ///
    /// # Errors
    /// `CommandInvalid` if the channel is already open (a connection error in AMQP).
    pub fn open_channel(&mut self, key: ChannelKey) -> Result<()> {
        let connection = self.connection_mut(key.connection)?;
        if connection.channels.contains_key(&key.channel) {
            return Err(BrokerError::CommandInvalid(format!(
                "second 'channel.open' seen on channel {}",
                key.channel
            )));
        }
        connection.channels.insert(key.channel, ChannelState::default());
        Ok(())
    }

    /// Closes a channel: its consumers are cancelled (auto-delete queues may go) and its
    /// unacked messages return to their queues, redelivered. Idempotent.
    pub fn close_channel(&mut self, key: ChannelKey) {
        self.close_channels(key.connection, &[key.channel]);
    }

    /// Closes several channels of one connection at once. Every channel leaves the broker
    /// before anything is requeued, so a message cannot bounce through a sibling channel
    /// that is closing too; unacked messages are requeued before consumers detach, so an
    /// auto-delete queue that goes with its last consumer releases them with the rest.
    fn close_channels(&mut self, connection: ConnectionId, numbers: &[u16]) {
        let Some(state) = self.connections.get_mut(&connection) else {
            return;
        };
        let vhost = state.vhost.clone();
        let closing: Vec<(u16, ChannelState)> =
            numbers.iter().filter_map(|n| state.channels.remove(n).map(|c| (*n, c))).collect();
        let unacked =
            closing.iter().flat_map(|(_, c)| c.unacked.values().cloned()).collect::<Vec<_>>();
        self.requeue(&vhost, unacked.into_iter(), Return::Now);
        for (channel, state) in closing {
            let key = ChannelKey { connection, channel };
            for (tag, queue) in state.consumers {
                self.detach_consumer(&vhost, &queue, key, &tag);
            }
        }
    }

    /// Whether the connection exists and has `channel` open.
    pub fn has_channel(&self, key: ChannelKey) -> bool {
        self.connections.get(&key.connection).is_some_and(|c| c.channels.contains_key(&key.channel))
    }

    pub(crate) fn connection_mut(&mut self, id: ConnectionId) -> Result<&mut ConnectionState> {
        self.connections
            .get_mut(&id)
            .ok_or_else(|| BrokerError::CommandInvalid(format!("connection {id} is not open")))
    }

    pub(crate) fn channel_mut(&mut self, key: ChannelKey) -> Result<&mut ChannelState> {
        self.connection_mut(key.connection)?.channels.get_mut(&key.channel).ok_or_else(|| {
            BrokerError::CommandInvalid(format!("channel {} is not open", key.channel))
        })
    }

    /// The virtual host name of a connection.
    pub(crate) fn vhost_of(&self, connection: ConnectionId) -> Result<ShortStr> {
        self.connections.get(&connection).map(|c| c.vhost.clone()).ok_or_else(|| {
            BrokerError::CommandInvalid(format!("connection {connection} is not open"))
        })
    }

    pub(crate) fn vhost_mut(&mut self, name: &str) -> Result<&mut VHost> {
        self.vhosts.get_mut(name).ok_or_else(|| BrokerError::NotFound {
            kind: "vhost",
            name: name.into(),
            vhost: name.into(),
        })
    }

    /// A store id for something saved with the definitions (a durable queue, a durable
    /// exchange's delayed hold or deduplication window).
    pub(crate) fn durable_store_id(&mut self) -> QueueId {
        let id = self.next_queue_id;
        self.next_queue_id = self.next_queue_id.saturating_add(1);
        id
    }

    /// A store id for a queue that persists nothing (see `free_transient_ids`).
    pub(crate) fn transient_queue_id(&mut self) -> QueueId {
        self.free_transient_ids.pop().unwrap_or_else(|| {
            let id = self.next_transient_id;
            self.next_transient_id = self.next_transient_id.saturating_sub(1);
            id
        })
    }

    /// A number never handed out before (queue incarnations, consumer ids).
    pub(crate) fn unique_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A random name with `prefix`, in RabbitMQ's style (`amq.gen-` + 22 URL-safe characters).
    pub(crate) fn generate_name(&mut self, prefix: &str) -> ShortStr {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut name = String::with_capacity(prefix.len() + 22);
        name.push_str(prefix);
        for _ in 0..22 {
            name.push(ALPHABET[(self.next_random() % 64) as usize] as char);
        }
        name.into()
    }

    /// splitmix64: small, seedable, good enough for names (not for secrets).
    pub(crate) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
