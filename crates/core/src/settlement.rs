//! Settling deliveries: `basic.ack`, `basic.nack` and `basic.reject`, transactions' checks,
//! `basic.recover`, and returning messages to their queues — at once, after a retry
//! backoff, or for good (dead-lettered or dropped).

use postroom_amqp::ShortStr;
use postroom_store::{DeliveryState, QueueId, Seq};

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::message::QueuedMessage;
use crate::policy::DeadLetterReason;
use crate::session::{ChannelKey, Unacked};

/// How deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// `basic.ack`: done with it.
    Ack,
    /// `basic.nack`/`basic.reject` with `requeue = true`: deliver it again.
    Requeue,
    /// `basic.nack`/`basic.reject` with `requeue = false`: drop it.
    Discard,
}

/// One step of a transaction, as [`Broker::check_transaction`] checks it.
#[derive(Debug, Clone, Copy)]
pub enum TxStep<'a> {
    /// A publish to this exchange.
    Publish {
        /// The exchange.
        exchange: &'a str,
    },
    /// An ack, nack or reject.
    Settle {
        /// The delivery tag.
        tag: u64,
        /// Whether earlier tags are settled too.
        multiple: bool,
    },
}

impl Broker {
    /// `basic.ack`, `basic.nack` and `basic.reject`: settles `tag` (and, with `multiple`,
    /// every earlier outstanding tag; tag 0 with `multiple` means all).
    ///
    /// # Errors
    /// `PreconditionFailed` "unknown delivery tag" if `tag` is not outstanding.
    pub fn settle(
        &mut self,
        key: ChannelKey,
        tag: u64,
        multiple: bool,
        how: Settlement,
    ) -> Result<()> {
        self.settle_returning(key, tag, multiple, how, Return::Retry)
    }

    /// [`Broker::settle`], returning requeued messages as `returning` says.
    fn settle_returning(
        &mut self,
        key: ChannelKey,
        tag: u64,
        multiple: bool,
        how: Settlement,
        returning: Return,
    ) -> Result<()> {
        let vhost = self.vhost_of(key.connection)?;
        let channel = self.channel_mut(key)?;
        let Some(settled) = channel.take_unacked(tag, multiple) else {
            return Err(BrokerError::PreconditionFailed(format!("unknown delivery tag {tag}")));
        };
        let consumer_settled = settled.iter().filter(|(_, u)| u.consumer.is_some()).count();
        channel.consumer_unacked = channel.consumer_unacked.saturating_sub(consumer_settled as u32);
        let global_credit = channel.channel_prefetch != 0;
        let v = self.vhost_mut(&vhost)?;
        let mut touched: Vec<ShortStr> = Vec::new();
        for (_, unacked) in &settled {
            if let (Some(id), Some(queue)) = (unacked.consumer, v.queues.get_mut(&unacked.queue))
                && let Some(c) = queue.consumers.iter_mut().find(|c| c.id == id)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
            if !touched.contains(&unacked.queue) {
                touched.push(unacked.queue.clone());
            }
        }
        match how {
            Settlement::Ack => self.release(&vhost, &settled),
            Settlement::Discard => {
                let unacked = settled.into_iter().map(|(_, u)| u);
                self.give_up(&vhost, unacked, DeadLetterReason::Rejected);
            }
            Settlement::Requeue => {
                self.requeue(&vhost, settled.into_iter().map(|(_, u)| u), returning);
            }
        }
        // Channel-wide credit goes round the channel's queues first, so the queue that was
        // just acked does not win every freed slot.
        if global_credit {
            self.dispatch_channel_queues(key);
        }
        for queue in &touched {
            self.dispatch(&vhost, queue);
        }
        Ok(())
    }

    /// Tells the store that settled messages are no longer referenced by their queues,
    /// one ack record per queue.
    fn release(&mut self, vhost: &str, settled: &[(u64, Unacked)]) {
        let mut by_queue: Vec<(QueueId, Vec<Seq>)> = Vec::new();
        let Some(v) = self.vhosts.get(vhost) else { return };
        for (_, unacked) in settled {
            let Some(seq) = unacked.message.stored else { continue };
            let Some(id) = v
                .queues
                .get(&unacked.queue)
                .filter(|q| q.incarnation == unacked.incarnation)
                .and_then(|q| q.store_id)
            else {
                continue;
            };
            match by_queue.iter_mut().find(|(q, _)| *q == id) {
                Some((_, seqs)) => seqs.push(seq),
                None => by_queue.push((id, vec![seq])),
            }
        }
        for (id, seqs) in by_queue {
            // A failed store cannot record the ack: the message may return after a restart
            // (at-least-once), which is the safe side.
            let _ = self.store.ack(id, &seqs);
        }
    }

    /// Checks a whole transaction before any of it is applied, so that a commit either
    /// applies everything or nothing: every exchange published to exists and is not
    /// internal, and every delivery tag settled is outstanding when its turn comes.
    ///
    /// # Errors
    /// The error the first failing step would raise.
    pub fn check_transaction<'a>(
        &self,
        key: ChannelKey,
        steps: impl IntoIterator<Item = TxStep<'a>>,
    ) -> Result<()> {
        let vhost_name = self.vhost_of(key.connection)?;
        let Some(vhost) = self.vhosts.get(&vhost_name) else {
            return Err(BrokerError::NotAllowed(format!("vhost {vhost_name} not found")));
        };
        let channel = self
            .connections
            .get(&key.connection)
            .and_then(|c| c.channels.get(&key.channel))
            .ok_or_else(|| {
                BrokerError::CommandInvalid(format!("channel {} is not open", key.channel))
            })?;
        let mut outstanding: std::collections::BTreeSet<u64> =
            channel.unacked.keys().copied().collect();
        for step in steps {
            match step {
                TxStep::Publish { exchange } => {
                    if vhost.exchange(exchange)?.internal {
                        return Err(BrokerError::AccessRefused(format!(
                            "cannot publish to internal exchange '{exchange}' in vhost '{vhost_name}'"
                        )));
                    }
                }
                TxStep::Settle { tag: 0, multiple: true } => outstanding.clear(),
                TxStep::Settle { tag, multiple } => {
                    if !outstanding.contains(&tag) {
                        return Err(BrokerError::PreconditionFailed(format!(
                            "unknown delivery tag {tag}"
                        )));
                    }
                    if multiple {
                        outstanding = outstanding.split_off(&(tag + 1));
                    } else {
                        outstanding.remove(&tag);
                    }
                }
            }
        }
        Ok(())
    }

    /// `basic.recover`: every unacked delivery of the channel goes back to its queue.
    ///
    /// # Errors
    /// `NotImplemented` for `requeue = false` (as RabbitMQ).
    pub fn basic_recover(&mut self, key: ChannelKey, requeue: bool) -> Result<()> {
        if !requeue {
            return Err(BrokerError::NotImplemented("requeue=false".into()));
        }
        self.settle_returning(key, 0, true, Settlement::Requeue, Return::Now)
    }

    /// Returns unacked messages to their queues (at the head, in their original order,
    /// flagged redelivered) and delivers what consumers can take. A message returned more
    /// often than its queue's `x-delivery-limit` allows is dead-lettered instead; with
    /// [`Return::Retry`] on a queue with a retry policy, the others wait for their backoff.
    pub(crate) fn requeue(
        &mut self,
        vhost: &str,
        unacked: impl Iterator<Item = Unacked>,
        how: Return,
    ) {
        let now = self.clock.now_ms();
        for (queue, incarnation, messages) in by_queue(unacked) {
            // A queue deleted meanwhile took its messages with it (as in RabbitMQ), even
            // if a new queue has the same name.
            let alive = self.vhosts.get(vhost).and_then(|v| v.queues.get(&queue));
            let Some(q) = alive.filter(|q| q.incarnation == incarnation) else { continue };
            let limit = q.policy.delivery_limit;
            let retry = q.policy.retry.filter(|_| how == Return::Retry);
            let (over, back): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|m| limit.is_some_and(|limit| m.delivery_count >= limit));
            let randoms: Vec<u64> = match retry {
                Some(_) => back.iter().map(|_| self.next_random()).collect(),
                None => Vec::new(),
            };
            let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(&queue)) else {
                continue;
            };
            match retry {
                Some(retry) => {
                    for (mut message, random) in back.into_iter().zip(randoms) {
                        message.redelivered = true;
                        message.delivery_count = message.delivery_count.saturating_add(1);
                        let ready_at = now + retry.delay(message.delivery_count, random);
                        if let (Some(id), Some(seq)) = (q.store_id, message.stored) {
                            let state =
                                DeliveryState { delivery_count: message.delivery_count, ready_at };
                            self.store.set_state(id, seq, state);
                        }
                        q.ready.schedule(message, ready_at);
                    }
                    self.timed.insert((vhost.into(), queue.clone()));
                }
                None => q.requeue(back.into_iter(), &*self.store),
            }
            if !over.is_empty() {
                self.dead_letter(vhost, &queue, over, DeadLetterReason::DeliveryLimit);
            }
            self.dispatch(vhost, &queue);
        }
    }

    /// Takes settled messages out of their queues for good: dead-lettered for `reason` if
    /// the queue has a dead-letter exchange, released otherwise.
    fn give_up(
        &mut self,
        vhost: &str,
        unacked: impl Iterator<Item = Unacked>,
        reason: DeadLetterReason,
    ) {
        for (queue, incarnation, messages) in by_queue(unacked) {
            let alive = self
                .vhosts
                .get(vhost)
                .and_then(|v| v.queues.get(&queue))
                .is_some_and(|q| q.incarnation == incarnation);
            if alive {
                self.dead_letter(vhost, &queue, messages, reason);
            }
        }
    }
}

/// How unacked messages go back to their queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Return {
    /// At once (a channel closed, `basic.recover`).
    Now,
    /// Nacked or rejected with `requeue = true`: after the queue's retry backoff, if any.
    Retry,
}

/// Groups unacked messages by the queue (and queue incarnation) they came from, keeping
/// their order.
fn by_queue(unacked: impl Iterator<Item = Unacked>) -> Vec<(ShortStr, u64, Vec<QueuedMessage>)> {
    let mut groups: Vec<(ShortStr, u64, Vec<QueuedMessage>)> = Vec::new();
    for u in unacked {
        match groups.iter_mut().find(|(q, i, _)| *q == u.queue && *i == u.incarnation) {
            Some((_, _, messages)) => messages.push(u.message),
            None => groups.push((u.queue, u.incarnation, vec![u.message])),
        }
    }
    groups
}
