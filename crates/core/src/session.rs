//! The delivery state of connections and channels: delivery tags, unacknowledged messages,
//! prefetch limits and consumers. Framing, content assembly, confirms and transactions are
//! the server's; this is only what delivery decisions need.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use postroom_amqp::ShortStr;

use crate::ConnectionId;
use crate::message::{Message, QueuedMessage};

/// Identifies a channel across the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The connection.
    pub connection: ConnectionId,
    /// The channel number within it.
    pub channel: u16,
}

/// What the broker asks a connection to send. Sent while the broker is locked, so events
/// for one connection arrive in the order they were decided.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// `basic.deliver` with content.
    Deliver {
        /// Channel number.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortStr,
        /// The delivery tag.
        delivery_tag: u64,
        /// Whether it was delivered before.
        redelivered: bool,
        /// The message.
        message: Arc<Message>,
    },
    /// A broker-initiated `basic.cancel` (the queue went away).
    Cancel {
        /// Channel number.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortStr,
    },
}

/// Where a connection's outbound events go. Implemented by the server's connection writer;
/// `send` must not block (it is called with the broker locked).
pub trait Outlet: Send + Sync {
    /// Queues an event for the connection. Events for a connection that is gone are dropped.
    fn send(&self, event: Outbound);

    /// Whether the connection can take more deliveries now. When it says no, the broker
    /// skips the connection's consumers until told to try again
    /// ([`crate::Broker::dispatch_connection`]); the outlet must make sure it is told, once
    /// it has room again. Must not block.
    fn has_room(&self) -> bool {
        true
    }
}

/// A delivered message awaiting acknowledgement.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// The queue it came from.
    pub queue: ShortStr,
    /// That queue's incarnation: a queue deleted and declared again under the same name is
    /// another queue, and its predecessor's messages must not land in it.
    pub incarnation: u64,
    /// The message and its history.
    pub message: QueuedMessage,
    /// The id of the consumer it went to; `None` for `basic.get`. Ids are never reused, so
    /// a tag reused after a cancel cannot be credited for its predecessor's deliveries.
    pub consumer: Option<u64>,
}

/// A channel's delivery state.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// The last delivery tag handed out (tags start at 1).
    pub last_delivery_tag: u64,
    /// Unacknowledged deliveries by tag, in delivery order.
    pub unacked: BTreeMap<u64, Unacked>,
    /// Prefetch given to consumers created from now on (`basic.qos`, global = false).
    pub consumer_prefetch: u16,
    /// Prefetch shared by all consumers of the channel (`basic.qos`, global = true).
    pub channel_prefetch: u16,
    /// Unacked deliveries made to consumers (basic.get does not count against prefetch).
    pub consumer_unacked: u32,
    /// Consumer tag → queue name.
    pub consumers: HashMap<ShortStr, ShortStr>,
    /// `channel.flow` state: false stops deliveries.
    pub flow_paused: bool,
    /// The direct reply-to consumer's tag and the routing key replies use, if any.
    pub reply_to: Option<(ShortStr, ShortStr)>,
    /// Which of the channel's queues is offered freed channel-wide credit first; it moves
    /// on every time so that no queue starves the others (RabbitMQ shuffles them).
    pub dispatch_cursor: usize,
}

impl ChannelState {
    /// The next delivery tag.
    pub fn next_delivery_tag(&mut self) -> u64 {
        self.last_delivery_tag += 1;
        self.last_delivery_tag
    }

    /// Whether the channel-wide prefetch and flow allow one more delivery to a consumer.
    pub fn has_credit(&self) -> bool {
        !self.flow_paused
            && (self.channel_prefetch == 0 || self.consumer_unacked < self.channel_prefetch.into())
    }

    /// Removes the deliveries an ack/nack/reject of `tag` settles, in tag order.
    ///
    /// Matches RabbitMQ: the exact tag must be outstanding (else `None`), except that
    /// `multiple` with tag 0 settles everything.
    pub fn take_unacked(&mut self, tag: u64, multiple: bool) -> Option<Vec<(u64, Unacked)>> {
        if multiple && tag == 0 {
            return Some(std::mem::take(&mut self.unacked).into_iter().collect());
        }
        if !self.unacked.contains_key(&tag) {
            return None;
        }
        if !multiple {
            return self.unacked.remove(&tag).map(|u| vec![(tag, u)]);
        }
        let rest = self.unacked.split_off(&(tag + 1));
        let settled = std::mem::replace(&mut self.unacked, rest);
        Some(settled.into_iter().collect())
    }
}

/// A connection's state in the broker.
pub struct ConnectionState {
    /// The virtual host it opened.
    pub vhost: ShortStr,
    /// The authenticated user.
    pub user: ShortStr,
    /// Where its events go.
    pub outlet: Arc<dyn Outlet>,
    /// Open channels.
    pub channels: HashMap<u16, ChannelState>,
}
