//! The broker side of delayed exchanges ([`crate::exchange::delayed`]): holding a message
//! on publish, routing it from [`Broker::tick`] once due, reading held messages back after
//! a restart, and releasing the store references of a delayed exchange that is gone.
//!
//! A held message is stored under the exchange's store id. Its release writes it again for
//! the queues it reaches before the hold's reference is acked: a crash in between repeats
//! the routing after the restart (at least once), it never loses the message.

use bytes::Bytes;

use postroom_store::{QueueId, Seq};

use crate::broker::Broker;
use crate::delivery::{Origin, Published, RouteResult};
use crate::error::{BrokerError, Result};
use crate::exchange::delayed::{DELAY_HEADER, Delayed, released_delay_header, requested_delay};
use crate::message::Message;

/// What one tick may spend on delayed exchanges, all of them together: store reads
/// (each scans from the nearest indexed record, so a scattered release costs a read per
/// message), bytes read, and messages routed. The tick holds the broker lock, so it must
/// stay short; what does not fit waits for the next tick (a release is late, never lost),
/// and exchanges take turns at being first.
#[derive(Debug, Clone, Copy)]
struct Budget {
    reads: usize,
    bytes: usize,
    messages: usize,
}

const TICK_BUDGET: Budget = Budget { reads: 64, bytes: 4 << 20, messages: 4096 };

impl Budget {
    fn spent(&self) -> bool {
        self.reads == 0 || self.bytes == 0 || self.messages == 0
    }

    fn read(&mut self, payloads: usize) {
        self.reads = self.reads.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(payloads);
    }
}

impl Broker {
    /// Releases the store ids of exchanges that are gone (see [`crate::vhost::VHost`]'s
    /// `orphaned`). Part of [`Broker::tick`].
    pub(crate) fn release_orphaned(&mut self) {
        for vhost in self.vhosts.values_mut() {
            for owned in vhost.orphaned.drain(..) {
                // On failure the references stay; recovery releases them (no exchange
                // names the id any more).
                let released = self.store.release_from(owned.id, 0);
                // An id still referenced must not serve again.
                if released.is_ok() && !owned.durable {
                    self.free_transient_ids.push(owned.id);
                }
            }
        }
    }

    /// Holds a message published to a delayed exchange for `delay` ms. It is stored under
    /// the exchange's id (appended if persistent on a durable exchange, so the confirm
    /// waits for it; spilled otherwise), and counts as routed.
    ///
    /// # Errors
    /// `StoreFailed` if the store refuses it.
    pub(crate) fn hold_delayed(
        &mut self,
        vhost: &str,
        message: Message,
        delay: u64,
    ) -> Result<Published> {
        let due = message.arrived_at().saturating_add(delay);
        let exchange =
            self.vhosts.get_mut(vhost).and_then(|v| v.exchanges.get_mut(&message.exchange));
        let Some(exchange) = exchange else {
            return Ok(Published::transient(RouteResult::Unroutable));
        };
        let durable = exchange.durable;
        let Some(held) = exchange.delayed.as_mut() else {
            return Ok(Published::transient(RouteResult::Unroutable));
        };
        let id = held.store_id;
        let stored = if message.is_persistent() && durable {
            self.store.append(&[id], &message.encoded()).map(|(seq, lsn)| (seq, Some(lsn)))
        } else {
            self.store.spill(&[id], &message.encoded()).map(|seq| (seq, None))
        };
        let (seq, durable_at) = stored.map_err(|e| BrokerError::StoreFailed(e.to_string()))?;
        held.hold(seq, due, self.clock.now_ms());
        Ok(Published { route: RouteResult::Routed(1), durable_at, rejected: false })
    }

    /// Routes the held messages that are due and reads back a batch of those a restart
    /// left without a due time. Part of [`Broker::tick`].
    pub(crate) fn release_delayed(&mut self, now: u64) {
        let mut watched: Vec<_> = self.timed_exchanges.iter().cloned().collect();
        watched.sort_unstable();
        if !watched.is_empty() {
            self.delayed_turn = (self.delayed_turn + 1) % watched.len();
            watched.rotate_left(self.delayed_turn);
        }
        let mut budget = TICK_BUDGET;
        for (vhost, name) in watched {
            let exchange = self.vhosts.get_mut(&vhost).and_then(|v| v.exchanges.get_mut(&name));
            let Some(held) = exchange.and_then(|x| x.delayed.as_mut()) else {
                // Gone: its store id was orphaned with it.
                self.timed_exchanges.remove(&(vhost, name));
                continue;
            };
            if budget.spent() {
                continue;
            }
            resolve_batch(held, &*self.store, now, &mut budget);
            let due = held.take_due(now, budget.messages);
            if due.is_empty() {
                continue;
            }
            budget.messages -= due.len();
            let (messages, unread) = read_due(&*self.store, held.store_id, due, &mut budget);
            // Not read (not written yet, an I/O error, or past the budget): due again on
            // the next tick.
            for seq in unread {
                held.hold(seq, now, now);
            }
            let id = held.store_id;
            let mut released = Vec::with_capacity(messages.len());
            for (seq, payload) in messages {
                released.push(seq);
                if let Ok(message) = Message::decode(&payload) {
                    self.route_held(&vhost, message, now);
                }
            }
            let _ = self.store.ack(id, &released);
        }
    }

    /// Routes a message whose delay is over from its exchange, as its type says: with
    /// `x-delay` negated (the plugin's mark of a delayed message), and arrived now, so the
    /// TTLs of the queues it reaches count from here. Nobody waits for the result: an
    /// unroutable message is dropped, as the plugin does (mandatory does not apply).
    fn route_held(&mut self, vhost: &str, message: Message, now: u64) {
        let mut properties = message.properties();
        let mut headers = properties.headers.take().unwrap_or_default();
        if let Some(delay) = requested_delay(Some(&headers)) {
            headers.insert(DELAY_HEADER, released_delay_header(delay));
        }
        properties.headers = Some(headers);
        let mut message = message.with_properties(properties);
        message.stamp_arrival(now);
        let Some(v) = self.vhosts.get(vhost) else { return };
        let mut targets = Vec::new();
        let headers = message.properties().headers;
        if v.route(&message.exchange, &message.routing_key, headers.as_ref(), &mut targets).is_ok()
            && !targets.is_empty()
        {
            let _ = self.enqueue(vhost, message, &targets, Origin::Publish);
        }
    }
}

/// Reads back a batch of held messages whose due time a restart left unknown, and gives
/// each its due time: its arrival plus its `x-delay` (at once when either is missing, and
/// dropped when it does not decode). A read that fails is tried again on the next tick; one
/// that succeeds without the first of them drops that one (it cannot be read back: damage
/// skipped by recovery), so that one bad record cannot stall the rest.
fn resolve_batch(
    held: &mut Delayed,
    store: &dyn postroom_store::Store,
    now: u64,
    budget: &mut Budget,
) {
    let Some(first) = held.first_unresolved() else { return };
    let Ok(batch) = store.read(held.store_id, first, budget.messages, budget.bytes) else {
        budget.read(0);
        return;
    };
    budget.read(batch.iter().map(|(_, payload)| payload.len()).sum());
    if batch.first().is_none_or(|(seq, _)| *seq != first) {
        let _ = store.ack(held.store_id, &[first]);
        held.resolve(first, None, now);
    }
    for (seq, payload) in batch {
        if !held.is_unresolved(seq) {
            // Held since the restart: its due time is known already.
            continue;
        }
        let due = Message::decode(&payload).ok().map(|message| {
            let delay = requested_delay(message.properties().headers.as_ref());
            match (message.arrived_at(), delay) {
                (arrived, Some(delay)) if arrived != 0 => arrived.saturating_add(delay),
                _ => now,
            }
        });
        if due.is_none() {
            let _ = store.ack(held.store_id, &[seq]);
        }
        held.resolve(seq, due, now);
    }
}

/// Reads the messages `due` names (held under `store_id`) in runs of consecutive sequence
/// numbers, within the budget, returning them in sequence order, and those it did not read.
fn read_due(
    store: &dyn postroom_store::Store,
    store_id: QueueId,
    mut due: Vec<Seq>,
    budget: &mut Budget,
) -> (Vec<(Seq, Bytes)>, Vec<Seq>) {
    due.sort_unstable();
    let (mut messages, mut unread) = (Vec::with_capacity(due.len()), Vec::new());
    let mut rest = due.as_slice();
    while let Some(&first) = rest.first() {
        let run = rest.windows(2).take_while(|w| w[1] == w[0] + 1).count() + 1;
        let (wanted, after) = rest.split_at(run);
        rest = after;
        if budget.reads == 0 || budget.bytes == 0 {
            unread.extend_from_slice(wanted);
            continue;
        }
        let read = store.read(store_id, first, run, budget.bytes).unwrap_or_default();
        budget.read(read.iter().map(|(_, payload)| payload.len()).sum());
        let end = first + run as Seq;
        let mut wanted = wanted.iter().peekable();
        for (seq, payload) in read.into_iter().filter(|(seq, _)| *seq < end) {
            while let Some(skipped) = wanted.next_if(|w| **w < seq) {
                unread.push(*skipped);
            }
            if wanted.next_if_eq(&&seq).is_some() {
                messages.push((seq, payload));
            }
        }
        unread.extend(wanted);
    }
    (messages, unread)
}
