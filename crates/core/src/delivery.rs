//! Publishing, consuming, and settling deliveries: the message path through the broker.

use std::collections::HashMap;
use std::sync::Arc;

use postroom_amqp::{BasicProperties, FieldTable, FieldValue, ShortStr};

use crate::ConnectionId;
use crate::broker::Broker;
use crate::dedup::{Admission, Admit};
use crate::error::{BrokerError, Result};
use crate::exchange::delayed::requested_delay;
use crate::message::{Message, QueuedMessage, expiration_ms};
use crate::policy::{DELIVERY_COUNT_HEADER, DeadLetterReason, Overflow};
use crate::queue::{Consumer, Queue};
use crate::session::{ChannelKey, ConnectionState, Outbound, Unacked};
use postroom_store::{Lsn, QueueId, Store};

/// The pseudo-queue and reply-to address of direct reply-to (RabbitMQ's name).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteResult {
    /// Enqueued on this many queues (or handed to a direct reply-to consumer).
    Routed(usize),
    /// No queue took it.
    Unroutable,
    /// A deduplicating exchange saw its key within the window: accepted (and confirmed)
    /// but routed nowhere, and never returned.
    Duplicate,
}

/// The answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Where it went.
    pub route: RouteResult,
    /// The store position that must be durable before the publish may be confirmed;
    /// `None` when nothing was persisted (a transient message, or no durable queue).
    pub durable_at: Option<Lsn>,
    /// A queue it reached refused it for its length limit (`x-overflow` =
    /// `reject-publish` or `reject-publish-dlx`): the publisher gets `basic.nack`.
    pub rejected: bool,
}

impl Published {
    pub(crate) fn transient(route: RouteResult) -> Published {
        Published { route, durable_at: None, rejected: false }
    }
}

/// Where a message [`Broker::enqueue`] takes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client published it (now, or with a delay that is over).
    Publish,
    /// The broker moved it (dead-lettering): deduplicating queues let it through.
    DeadLetter,
}

/// What [`Broker::enqueue`] did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Enqueued {
    /// The store position to wait for, if the message was persisted.
    pub(crate) durable_at: Option<Lsn>,
    /// Whether a queue refused it for its length limit.
    pub(crate) rejected: bool,
}

/// A message taken by `basic.get`.
#[derive(Debug, Clone)]
pub struct Got {
    /// The delivery tag (also when `no_ack`).
    pub delivery_tag: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// How many times it was delivered before and returned to the queue.
    pub delivery_count: u32,
    /// The message.
    pub message: Arc<Message>,
    /// Ready messages left in the queue.
    pub message_count: u32,
}

/// Delivers ready messages of `queue` to consumers with credit, round-robin, until either
/// runs out.
fn dispatch(
    queue: &mut Queue,
    connections: &mut HashMap<ConnectionId, ConnectionState>,
    store: &dyn Store,
    now: u64,
) {
    while !queue.ready.is_empty() && !queue.consumers.is_empty() {
        // With a single active consumer only the longest-standing one receives; the next
        // takes over when it goes (as in RabbitMQ).
        let count = if queue.policy.single_active_consumer { 1 } else { queue.consumers.len() };
        let can_take = |consumer: &Consumer| {
            let has_own_credit =
                consumer.prefetch_count == 0 || consumer.unacked < consumer.prefetch_count.into();
            has_own_credit
                && connections.get(&consumer.channel.connection).is_some_and(|c| {
                    c.channels.get(&consumer.channel.channel).is_some_and(|ch| ch.has_credit())
                        && c.outlet.has_room()
                })
        };
        // Consumer priorities: only the highest priority that can take a message is
        // offered it (one pass more, and only when priorities differ).
        let consumers = &queue.consumers[..count];
        let first = consumers[0].priority;
        let wanted = if consumers.iter().all(|c| c.priority == first) {
            first
        } else {
            match consumers.iter().filter(|c| can_take(c)).map(|c| c.priority).max() {
                Some(best) => best,
                None => break,
            }
        };
        let chosen = (0..count).map(|step| (queue.next_consumer + step) % count).find(|&i| {
            let consumer = &queue.consumers[i];
            consumer.priority == wanted && can_take(consumer)
        });
        let Some(index) = chosen else { break };
        let Some(message) = queue.pop(store, now) else {
            break;
        };
        queue.next_consumer = (index + 1) % count;
        let consumer = &mut queue.consumers[index];
        let Some(connection) = connections.get_mut(&consumer.channel.connection) else {
            break;
        };
        let Some(channel) = connection.channels.get_mut(&consumer.channel.channel) else {
            break;
        };
        let delivery_tag = channel.next_delivery_tag();
        let event = Outbound::Deliver {
            channel: consumer.channel.channel,
            consumer_tag: consumer.tag.clone(),
            delivery_tag,
            redelivered: message.redelivered,
            message: as_delivered(&message),
        };
        if let (Some(id), Some(seq)) = (queue.store_id, message.stored) {
            if consumer.no_ack {
                // Settled on send. A failed store means it may come back after a restart:
                // at-least-once, never lost.
                let _ = store.ack(id, &[seq]);
            } else if !message.redelivered {
                store.delivered(id, seq);
            }
        }
        if !consumer.no_ack {
            consumer.unacked += 1;
            channel.consumer_unacked += 1;
            let unacked = Unacked {
                queue: queue.name.clone(),
                incarnation: queue.incarnation,
                message,
                consumer: Some(consumer.id),
            };
            channel.unacked.insert(delivery_tag, unacked);
        }
        connection.outlet.send(event);
    }
}

impl Broker {
    /// Runs delivery for one queue (after anything that may have made room).
    pub fn dispatch(&mut self, vhost: &str, queue: &str) {
        let now = self.clock.now_ms();
        if let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) {
            dispatch(q, &mut self.connections, &*self.store, now);
            if q.ready.waiting_for_store() {
                self.waiting.insert((vhost.into(), q.name.clone()));
            }
        }
        self.dead_letter_expired(vhost, queue);
    }

    /// Dead-letters (reason `expired`) what taking the head of `queue` found expired.
    pub(crate) fn dead_letter_expired(&mut self, vhost: &str, queue: &str) {
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) else {
            return;
        };
        if q.expired.is_empty() {
            return;
        }
        let expired = std::mem::take(&mut q.expired);
        let name = q.name.clone();
        self.dead_letter(vhost, &name, expired, DeadLetterReason::Expired);
    }

    /// Delivers from queues whose next messages were not yet written by the store when
    /// they were wanted. Call when the store's progress advances.
    pub fn resume_waiting(&mut self) {
        for (vhost, queue) in std::mem::take(&mut self.waiting) {
            self.dispatch(&vhost, &queue);
        }
    }

    /// Delivers to every consumer of a connection that could not take deliveries before
    /// (its [`crate::Outlet::has_room`] said no) and now can.
    pub fn dispatch_connection(&mut self, connection: ConnectionId) {
        let Some(state) = self.connections.get(&connection) else { return };
        let mut channels: Vec<u16> = state.channels.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            self.dispatch_channel_queues(ChannelKey { connection, channel });
        }
    }

    pub(crate) fn dispatch_channel_queues(&mut self, key: ChannelKey) {
        let Some(connection) = self.connections.get_mut(&key.connection) else { return };
        let vhost = connection.vhost.clone();
        let Some(channel) = connection.channels.get_mut(&key.channel) else { return };
        let mut queues: Vec<ShortStr> = channel.consumers.values().cloned().collect();
        queues.sort();
        queues.dedup();
        if queues.is_empty() {
            return;
        }
        channel.dispatch_cursor = channel.dispatch_cursor.wrapping_add(1);
        let first = channel.dispatch_cursor % queues.len();
        queues.rotate_left(first);
        for queue in queues {
            self.dispatch(&vhost, &queue);
        }
    }

    /// `basic.publish`: routes the message and enqueues it on every queue it reaches (or
    /// hands it to a direct reply-to consumer), then delivers what consumers can take.
    /// `properties` are the message's decoded properties (the server has them from the
    /// content header; routing reads `headers` and `reply_to`).
    ///
    /// # Errors
    /// `NotFound` for a missing exchange, `AccessRefused` for an internal one,
    /// `PreconditionFailed` for a direct reply-to request without a reply consumer.
    pub fn publish(
        &mut self,
        key: ChannelKey,
        mut message: Message,
        properties: &BasicProperties,
    ) -> Result<Published> {
        let vhost_name = self.vhost_of(key.connection)?;
        if properties.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
            let channel = self.channel_mut(key)?;
            let Some((_, address)) = &channel.reply_to else {
                return Err(BrokerError::PreconditionFailed(
                    "fast reply consumer does not exist".into(),
                ));
            };
            let mut properties = properties.clone();
            properties.reply_to = Some(address.clone());
            message = message.with_properties(properties);
        }
        if message.exchange.is_empty() && message.routing_key.starts_with(DIRECT_REPLY_TO) {
            return Ok(Published::transient(self.deliver_reply(message)));
        }
        if let Some(expiration) = &properties.expiration
            && expiration_ms(properties).is_none()
        {
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid expiration '{expiration}': not a non-negative integer"
            )));
        }
        if message.arrived_at() == 0 {
            message.stamp_arrival(self.clock.now_ms());
        }
        let Some(vhost) = self.vhosts.get_mut(&vhost_name) else {
            return Err(BrokerError::NotAllowed(format!("vhost {vhost_name} not found")));
        };
        let exchange = vhost.exchange(&message.exchange)?;
        if exchange.internal {
            return Err(BrokerError::AccessRefused(format!(
                "cannot publish to internal exchange '{}' in vhost '{vhost_name}'",
                exchange.name
            )));
        }
        let now = self.clock.now_ms();
        let admission = match &exchange.dedup {
            Some(window) => match window.admit(properties, now) {
                Admit::Duplicate { durable_at } => {
                    let route = RouteResult::Duplicate;
                    return Ok(Published { route, durable_at, rejected: false });
                }
                admit => admit.into_admission(),
            },
            None => None,
        };
        let exchange_name = message.exchange.clone();
        let mut published = if exchange.delayed.is_some()
            && let Some(delay) = requested_delay(properties.headers.as_ref())
        {
            self.hold_delayed(&vhost_name, message, delay)?
        } else {
            let mut targets = Vec::new();
            vhost.route(
                &message.exchange,
                &message.routing_key,
                properties.headers.as_ref(),
                &mut targets,
            )?;
            if targets.is_empty() {
                Published::transient(RouteResult::Unroutable)
            } else {
                let enqueued = self.enqueue(&vhost_name, message, &targets, Origin::Publish)?;
                Published {
                    route: RouteResult::Routed(targets.len()),
                    durable_at: enqueued.durable_at,
                    rejected: enqueued.rejected,
                }
            }
        };
        // The exchange takes the key only once the message went where it should: one that
        // failed, or that a full queue refused, may be published again.
        if let Some(admission) = admission
            && !published.rejected
            && let Some(window) = self
                .vhosts
                .get_mut(&vhost_name)
                .and_then(|v| v.exchanges.get_mut(&exchange_name))
                .and_then(|x| x.dedup.as_mut())
        {
            // A failed key record means a failed store: the confirm of the message, which
            // waits for the store, becomes a nack then.
            if let Ok(durable_at) = window.take(admission, now, published.durable_at, &*self.store)
            {
                published.durable_at = durable_at;
            }
        }
        Ok(published)
    }

    /// Enqueues a routed message on `targets` (queues of `vhost`): written once to the store
    /// for the durable ones if it is persistent, subject to each queue's length limit, then
    /// delivered to consumers that can take it.
    ///
    /// # Errors
    /// `StoreFailed` if the store refuses the append (nothing is enqueued then).
    pub(crate) fn enqueue(
        &mut self,
        vhost_name: &str,
        message: Message,
        targets: &[ShortStr],
        origin: Origin,
    ) -> Result<Enqueued> {
        let now = self.clock.now_ms();
        let Some(vhost) = self.vhosts.get_mut(vhost_name) else { return Ok(Enqueued::default()) };
        let size = message.size() as u64;
        // Queues full under a reject-publish overflow refuse it before anything is stored.
        let mut accepted: Vec<&ShortStr> = Vec::with_capacity(targets.len());
        let mut refused_dlx: Vec<ShortStr> = Vec::new();
        let mut rejected = false;
        // Deduplicating queues skip a published message whose key they saw (its confirm
        // then waits for the original's), and take the key of one they accept (below, once
        // it is stored).
        let properties = (origin == Origin::Publish
            && targets
                .iter()
                .any(|name| vhost.queues.get(name).is_some_and(|q| q.dedup.is_some())))
        .then(|| message.properties());
        let mut admissions: Vec<(&ShortStr, Admission)> = Vec::new();
        let mut durable_at: Option<Lsn> = None;
        for name in targets {
            let Some(queue) = vhost.queues.get(name) else { continue };
            let mut admission = None;
            if let (Some(window), Some(properties)) = (&queue.dedup, &properties) {
                match window.admit(properties, now) {
                    Admit::Duplicate { durable_at: original } => {
                        durable_at = durable_at.max(original);
                        continue;
                    }
                    admit => admission = admit.into_admission(),
                }
            }
            let policy = &queue.policy;
            let full = policy.overflow != Overflow::DropHead
                && policy.over_limit(queue.ready.len() + 1, queue.ready.body_bytes() + size);
            if !full {
                accepted.push(name);
                admissions.extend(admission.map(|a| (name, a)));
                continue;
            }
            rejected = true;
            if policy.overflow == Overflow::RejectPublishDlx {
                refused_dlx.push(name.clone());
            }
        }
        // A persistent message is written once, referenced by every durable queue it reached.
        let mut stored_in: Vec<QueueId> = Vec::new();
        if message.is_persistent() {
            stored_in.extend(accepted.iter().filter_map(|name| {
                vhost.queues.get(*name).filter(|q| q.persists_messages()).and_then(|q| q.store_id)
            }));
        }
        let stored = if stored_in.is_empty() {
            None
        } else {
            let appended = self.store.append(&stored_in, &message.encoded());
            Some(appended.map_err(|e| BrokerError::StoreFailed(e.to_string()))?)
        };
        let message_at = stored.map(|(_, lsn)| lsn);
        durable_at = durable_at.max(message_at);
        for (name, admission) in admissions {
            if let Some(window) = vhost.queues.get_mut(name).and_then(|q| q.dedup.as_mut())
                // A failed key record means a failed store, which nacks the confirm anyway:
                // the message is enqueued all the same, as it is stored.
                && let Ok(at) = window.take(admission, now, message_at, &*self.store)
            {
                durable_at = durable_at.max(at);
            }
        }
        let message = Arc::new(message);
        let mut dropped: Vec<(ShortStr, Vec<QueuedMessage>)> = Vec::new();
        let mut expired: Vec<ShortStr> = Vec::new();
        for name in accepted {
            let Some(queue) = vhost.queues.get_mut(name) else { continue };
            let mut entry = QueuedMessage::new(message.clone());
            if queue.persists_messages() {
                entry.stored = stored.map(|(seq, _)| seq);
            }
            queue.ready.push(entry, queue.store_id, &*self.store, self.memory_limits);
            queue.expiring |= message.ttl().is_some();
            // drop-head: the oldest messages make room (dead-lettered as `maxlen`).
            let mut heads = Vec::new();
            while queue.policy.over_limit(queue.ready.len(), queue.ready.body_bytes()) {
                match queue.pop(&*self.store, now) {
                    Some(head) => heads.push(head),
                    None => break,
                }
            }
            if !heads.is_empty() {
                dropped.push((queue.name.clone(), heads));
            }
            dispatch(queue, &mut self.connections, &*self.store, now);
            if queue.ready.waiting_for_store() {
                self.waiting.insert((vhost_name.into(), queue.name.clone()));
            }
            if queue.needs_timer() {
                self.timed.insert((vhost_name.into(), queue.name.clone()));
            }
            if !queue.expired.is_empty() {
                expired.push(queue.name.clone());
            }
        }
        for queue in expired {
            self.dead_letter_expired(vhost_name, &queue);
        }
        for (queue, heads) in dropped {
            self.dead_letter(vhost_name, &queue, heads, DeadLetterReason::MaxLength);
        }
        for queue in refused_dlx {
            let entry = QueuedMessage::new(message.clone());
            self.dead_letter(vhost_name, &queue, vec![entry], DeadLetterReason::MaxLength);
        }
        Ok(Enqueued { durable_at, rejected })
    }

    /// Delivers a reply addressed `amq.rabbitmq.reply-to.<connection>.<channel>.<secret>`
    /// straight to the requester's reply consumer; unknown or stale addresses are unroutable.
    fn deliver_reply(&mut self, message: Message) -> RouteResult {
        let address = message.routing_key.clone();
        let mut parts = address[DIRECT_REPLY_TO.len()..].trim_start_matches('.').splitn(3, '.');
        let (Some(Ok(connection)), Some(Ok(channel))) =
            (parts.next().map(str::parse::<ConnectionId>), parts.next().map(str::parse::<u16>))
        else {
            return RouteResult::Unroutable;
        };
        let Some(state) = self.connections.get_mut(&connection) else {
            return RouteResult::Unroutable;
        };
        let Some(ch) = state.channels.get_mut(&channel) else {
            return RouteResult::Unroutable;
        };
        let Some((tag, expected)) = ch.reply_to.clone() else {
            return RouteResult::Unroutable;
        };
        if expected != address {
            return RouteResult::Unroutable;
        }
        let delivery_tag = ch.next_delivery_tag();
        state.outlet.send(Outbound::Deliver {
            channel,
            consumer_tag: tag,
            delivery_tag,
            redelivered: false,
            message: Arc::new(message),
        });
        RouteResult::Routed(1)
    }

    /// `basic.consume`. `on_ok` runs with the consumer's tag after the consumer is attached
    /// and before any delivery to it, so the server can send `consume-ok` first.
    ///
    /// # Errors
    /// `NotFound`, `ResourceLocked`, `AccessRefused` (exclusive consumer conflicts),
    /// `NotAllowed` (tag reused on the channel), `PreconditionFailed` (direct reply-to
    /// without `no_ack`).
    pub fn basic_consume(
        &mut self,
        key: ChannelKey,
        queue: &str,
        tag: ShortStr,
        (no_ack, exclusive): (bool, bool),
        arguments: &FieldTable,
        on_ok: impl FnOnce(&ShortStr),
    ) -> Result<()> {
        let vhost_name = self.vhost_of(key.connection)?;
        let priority = crate::queue::consumer_priority(arguments)?;
        let tag = if tag.is_empty() { self.generate_name("amq.ctag-") } else { tag };
        if self.channel_mut(key)?.consumers.contains_key(&tag) {
            return Err(BrokerError::NotAllowed(format!("attempt to reuse consumer tag '{tag}'")));
        }
        if queue == DIRECT_REPLY_TO {
            return self.consume_replies(key, tag, no_ack, on_ok);
        }
        let prefetch_count = self.channel_mut(key)?.consumer_prefetch;
        let id = self.unique_id();
        let q = self.vhost_mut(&vhost_name)?.queue_mut(queue)?;
        if !q.accessible_by(key.connection) {
            return Err(BrokerError::locked(queue, &vhost_name));
        }
        if q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty()) {
            return Err(BrokerError::AccessRefused(format!(
                "queue '{queue}' in vhost '{vhost_name}' in exclusive use"
            )));
        }
        q.consumers.push(Consumer {
            id,
            channel: key,
            tag: tag.clone(),
            no_ack,
            exclusive,
            prefetch_count,
            unacked: 0,
            priority,
        });
        q.had_consumers = true;
        let queue_name = q.name.clone();
        self.channel_mut(key)?.consumers.insert(tag.clone(), queue_name.clone());
        on_ok(&tag);
        self.dispatch(&vhost_name, &queue_name);
        Ok(())
    }

    fn consume_replies(
        &mut self,
        key: ChannelKey,
        tag: ShortStr,
        no_ack: bool,
        on_ok: impl FnOnce(&ShortStr),
    ) -> Result<()> {
        if !no_ack {
            return Err(BrokerError::PreconditionFailed(
                "reply consumer cannot acknowledge".into(),
            ));
        }
        let secret = self.next_random();
        let channel = self.channel_mut(key)?;
        if channel.reply_to.is_some() {
            return Err(BrokerError::PreconditionFailed("reply consumer already set".into()));
        }
        let address = format!("{DIRECT_REPLY_TO}.{}.{}.{secret:016x}", key.connection, key.channel);
        channel.reply_to = Some((tag.clone(), address.into()));
        channel.consumers.insert(tag.clone(), DIRECT_REPLY_TO.into());
        on_ok(&tag);
        Ok(())
    }

    /// `basic.cancel`. Returns whether the tag was a consumer of the channel (cancelling
    /// an unknown tag is not an error in AMQP).
    ///
    /// # Errors
    /// `CommandInvalid` if the channel is not open.
    pub fn basic_cancel(&mut self, key: ChannelKey, tag: &str) -> Result<bool> {
        let vhost = self.vhost_of(key.connection)?;
        let channel = self.channel_mut(key)?;
        let Some(queue) = channel.consumers.remove(tag) else {
            return Ok(false);
        };
        if queue == DIRECT_REPLY_TO {
            channel.reply_to = None;
            return Ok(true);
        }
        self.detach_consumer(&vhost, &queue, key, tag);
        Ok(true)
    }

    /// `basic.qos` with prefetch size 0 (RabbitMQ refuses others): `global` sets the limit
    /// shared by the channel's consumers, otherwise the limit of each consumer created later.
    ///
    /// # Errors
    /// `CommandInvalid` if the channel is not open.
    pub fn basic_qos(&mut self, key: ChannelKey, prefetch_count: u16, global: bool) -> Result<()> {
        let channel = self.channel_mut(key)?;
        if global {
            channel.channel_prefetch = prefetch_count;
        } else {
            channel.consumer_prefetch = prefetch_count;
        }
        self.dispatch_channel_queues(key);
        Ok(())
    }

    /// `channel.flow`: pauses or resumes deliveries to the channel's consumers.
    ///
    /// # Errors
    /// `CommandInvalid` if the channel is not open.
    pub fn channel_flow(&mut self, key: ChannelKey, active: bool) -> Result<()> {
        self.channel_mut(key)?.flow_paused = !active;
        if active {
            self.dispatch_channel_queues(key);
        }
        Ok(())
    }

    /// `basic.get`: takes the queue's head message, if any.
    ///
    /// # Errors
    /// `NotFound`, `ResourceLocked`.
    pub fn basic_get(&mut self, key: ChannelKey, queue: &str, no_ack: bool) -> Result<Option<Got>> {
        let vhost_name = self.vhost_of(key.connection)?;
        let store = self.store.clone();
        let now = self.clock.now_ms();
        let q = self.vhost_mut(&vhost_name)?.queue_mut(queue)?;
        if !q.accessible_by(key.connection) {
            return Err(BrokerError::locked(queue, &vhost_name));
        }
        q.last_used = now;
        let popped = q.pop(&*store, now);
        if !q.expired.is_empty() {
            let name = q.name.clone();
            self.dead_letter_expired(&vhost_name, &name);
        }
        let q = self.vhost_mut(&vhost_name)?.queue_mut(queue)?;
        let Some(message) = popped else {
            return Ok(None);
        };
        let message_count = q.message_count();
        let queue_name = q.name.clone();
        let incarnation = q.incarnation;
        if let (Some(id), Some(seq)) = (q.store_id, message.stored) {
            if no_ack {
                let _ = self.store.ack(id, &[seq]);
            } else if !message.redelivered {
                self.store.delivered(id, seq);
            }
        }
        let channel = self.channel_mut(key)?;
        let delivery_tag = channel.next_delivery_tag();
        let got = Got {
            delivery_tag,
            redelivered: message.redelivered,
            delivery_count: message.delivery_count,
            message: as_delivered(&message),
            message_count,
        };
        if !no_ack {
            channel.unacked.insert(
                delivery_tag,
                Unacked { queue: queue_name, incarnation, message, consumer: None },
            );
        }
        Ok(Some(got))
    }

    /// Timed work: routes the held messages of delayed exchanges that are due (a whole
    /// round: [`Broker::take_due_delayed`], [`crate::read_due`], [`Broker::release_read`],
    /// reading from the store in this call), then [`Broker::tick_timers`]. Call regularly;
    /// the server runs the same steps itself, to read without the broker lock.
    pub fn tick(&mut self) {
        if !self.timed_exchanges.is_empty() {
            let round = self.take_due_delayed();
            if !round.is_empty() {
                let store = self.store.clone();
                let read = crate::delays::read_due(&*store, round);
                self.release_read(read);
            }
        }
        self.tick_timers();
    }

    /// Timed work other than delayed exchanges: releases the store ids of exchanges that
    /// are gone, makes messages whose retry delay passed ready again, expires messages past
    /// their TTL at the head of their queues (even with nobody consuming), deletes queues
    /// unused for their `x-expires`, and delivers what became ready. Call regularly (the
    /// server does, every few milliseconds).
    pub fn tick_timers(&mut self) {
        let now = self.clock.now_ms();
        self.release_orphaned();
        if self.timed.is_empty() {
            return;
        }
        let mut due: Vec<(ShortStr, ShortStr)> = Vec::new();
        let mut unused: Vec<(ShortStr, ShortStr)> = Vec::new();
        let (vhosts, store) = (&mut self.vhosts, &*self.store);
        self.timed.retain(|(vhost, name)| {
            let Some(queue) = vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(name)) else {
                return false;
            };
            if !queue.consumers.is_empty() {
                queue.last_used = now;
            }
            if let Some(expires) = queue.policy.expires
                && now >= queue.last_used.saturating_add(expires)
            {
                unused.push((vhost.clone(), name.clone()));
                return false;
            }
            let released = queue.ready.release_due(now);
            if queue.policy.message_ttl.is_some() || queue.expiring {
                queue.expire_head(store, now);
                queue.expiring &= !queue.ready.is_empty();
            }
            if released || !queue.expired.is_empty() {
                due.push((vhost.clone(), name.clone()));
            }
            queue.needs_timer()
        });
        for (vhost, queue) in due {
            self.dead_letter_expired(&vhost, &queue);
            self.dispatch(&vhost, &queue);
        }
        for (vhost, queue) in unused {
            self.remove_queue(&vhost, &queue);
        }
    }
}

/// The message as delivered: one returned before carries `x-delivery-count`, as RabbitMQ's
/// quorum queues send it.
fn as_delivered(entry: &QueuedMessage) -> Arc<Message> {
    if entry.delivery_count == 0 {
        return entry.message.clone();
    }
    let mut properties = entry.message.properties();
    let headers = properties.headers.get_or_insert_with(FieldTable::new);
    headers.insert(DELIVERY_COUNT_HEADER, FieldValue::I64(i64::from(entry.delivery_count)));
    Arc::new(entry.message.with_properties(properties))
}
