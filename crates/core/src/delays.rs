//! The broker side of delayed exchanges ([`crate::exchange::delayed`]): holding a message
//! on publish, releasing it once due, reading held messages back after a restart, and
//! releasing the store references of a delayed exchange that is gone.
//!
//! A held message is stored under the exchange's store id. Its release writes it again for
//! the queues it reaches before the hold's reference is acked: a crash in between repeats
//! the routing after the restart (at least once), it never loses the message.
//!
//! Releasing reads each due message back from the store, which is disk I/O, so a round of
//! releases comes in three steps and only the first and last need the broker:
//! [`Broker::take_due_delayed`] decides what is due (under the broker lock),
//! [`read_due`] reads it with nothing but the store (the server runs it off the lock), and
//! [`Broker::release_read`] routes what was read and holds again what was not (under the
//! lock again). [`Broker::tick`] runs all three in one call.
//!
//! Between the two lock holds the exchange may be deleted or declared again; the round
//! then routes nothing for it (see [`Broker::release_read`]). A message a round took is
//! either routed and acked, or held again, exactly once.

use bytes::Bytes;
use postroom_amqp::{FieldTable, ShortStr};
use postroom_store::{QueueId, Seq, Store};

use crate::broker::Broker;
use crate::delivery::{Origin, Published, RouteResult};
use crate::error::{BrokerError, Result};
use crate::exchange::delayed::{DELAY_HEADER, released_delay_header, requested_delay};
use crate::message::Message;

/// Messages one round takes out of holds, all delayed exchanges together: they are routed
/// under the broker lock, a few microseconds each, so this bounds how long a round holds it.
/// What is not taken waits for the next round (a release is late, never lost), and
/// exchanges take turns at being first.
const ROUND_MESSAGES: usize = 2048;
/// Store reads one round may make: a message due alone (delays scattered over time are
/// scattered in the journal) costs a read, consecutive ones share one.
const ROUND_READS: usize = 2048;
/// Bytes one round may read: bounds the memory a round holds (and copies under the lock).
const ROUND_BYTES: usize = 16 << 20;

/// What [`Broker::take_due_delayed`] took under the lock: per delayed exchange, the held
/// messages that are due (no longer in its hold) and where to read back due times a
/// restart left unknown. Read it with [`read_due`] and hand the result to
/// [`Broker::release_read`], one round at a time. Dropped instead, the messages it took
/// stay in the store but are not released until a restart reads them back.
#[derive(Debug)]
#[must_use = "the due messages it took are released only through read_due and release_read"]
pub struct DueReads {
    /// When the round was taken (ms since the epoch): what "due" meant.
    now: u64,
    exchanges: Vec<DueExchange>,
    /// Whether it took as many messages as a round may: more may be due already.
    full: bool,
}

/// One exchange's part of a round.
#[derive(Debug)]
struct DueExchange {
    vhost: ShortStr,
    name: ShortStr,
    store_id: QueueId,
    /// The hold's [`crate::exchange::delayed::Delayed::incarnation`]: what must still be
    /// there to release into.
    incarnation: u64,
    /// The first held message without a known due time, and how many to read from it.
    resolve: Option<(Seq, usize)>,
    /// Due messages, in sequence order.
    due: Vec<Seq>,
}

impl DueReads {
    /// Whether the round has nothing to read.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    /// How many due messages it took (read-back batches aside).
    pub fn due(&self) -> usize {
        self.exchanges.iter().map(|exchange| exchange.due.len()).sum()
    }

    /// Whether it took as many messages as one round may, so that more may be due
    /// already: the next round need not wait.
    pub fn is_full(&self) -> bool {
        self.full
    }
}

/// What [`read_due`] read for a [`DueReads`]; for [`Broker::release_read`].
#[derive(Debug)]
pub struct ReadBack {
    exchanges: Vec<ExchangeRead>,
}

/// What was read for one exchange.
#[derive(Debug)]
struct ExchangeRead {
    due: DueExchange,
    /// The restart read-back batch: `None` if there was none, or it failed (tried again
    /// next round).
    resolved: Option<Vec<(Seq, Resolution)>>,
    /// Due messages read, ready to route (`None`: the payload does not decode; dropped).
    released: Vec<(Seq, Option<Release>)>,
    /// Due messages not read (not written yet, an I/O error, or past the round's budget):
    /// held again, due at once.
    unread: Vec<Seq>,
}

/// A held message read back after a restart.
#[derive(Debug)]
enum Resolution {
    /// Its payload does not decode: it is dropped.
    Unreadable,
    /// Not due yet: held until then (ms since the epoch).
    DueAt(u64),
    /// Due already: released from this read (boxed: the other outcomes are small).
    Due(Box<Release>),
}

/// A message ready to route from its exchange, prepared off the lock: with `x-delay`
/// negated (the plugin's mark of a delayed message), and its headers for routing.
#[derive(Debug)]
struct Release {
    message: Message,
    headers: Option<FieldTable>,
}

/// What [`read_due`] may still spend.
struct ReadBudget {
    reads: usize,
    bytes: usize,
}

impl ReadBudget {
    fn spent(&self) -> bool {
        self.reads == 0 || self.bytes == 0
    }

    fn read(&mut self, read: &[(Seq, Bytes)]) {
        self.reads = self.reads.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(read.iter().map(|(_, p)| p.len()).sum());
    }
}

/// Reads what a round took from `store`: the due messages, in runs of consecutive sequence
/// numbers, and the read-back batches, within the round's read budget, decoding each
/// message and preparing it to be routed. Needs no broker, so the server runs it without
/// the broker lock. What it could not read is left for [`Broker::release_read`] to hold
/// again; it never fails.
pub fn read_due(store: &dyn Store, due: DueReads) -> ReadBack {
    let mut budget = ReadBudget { reads: ROUND_READS, bytes: ROUND_BYTES };
    let now = due.now;
    let exchanges = due
        .exchanges
        .into_iter()
        .map(|due| {
            let resolved = due.resolve.and_then(|(from, max)| {
                if budget.spent() {
                    return None;
                }
                let read = store.read(due.store_id, from, max, budget.bytes);
                budget.read(read.as_deref().unwrap_or_default());
                let read = read.ok()?;
                Some(read.into_iter().map(|(seq, payload)| (seq, resolve(&payload, now))).collect())
            });
            let (released, unread) = read_runs(store, due.store_id, &due.due, &mut budget);
            ExchangeRead { due, resolved, released, unread }
        })
        .collect();
    ReadBack { exchanges }
}

/// When a message read back after a restart is due: its arrival plus its `x-delay` (at
/// once when either is missing).
fn resolve(payload: &Bytes, now: u64) -> Resolution {
    let Ok(message) = Message::decode(payload) else { return Resolution::Unreadable };
    let delay = requested_delay(message.properties().headers.as_ref());
    let due = match (message.arrived_at(), delay) {
        (arrived, Some(delay)) if arrived != 0 => arrived.saturating_add(delay),
        _ => now,
    };
    if due <= now {
        Resolution::Due(Box::new(Release::of(message)))
    } else {
        Resolution::DueAt(due)
    }
}

impl Release {
    fn of(message: Message) -> Release {
        let mut properties = message.properties();
        let mut headers = properties.headers.take().unwrap_or_default();
        if let Some(delay) = requested_delay(Some(&headers)) {
            headers.insert(DELAY_HEADER, released_delay_header(delay));
        }
        properties.headers = Some(headers.clone());
        Release { message: message.with_properties(properties), headers: Some(headers) }
    }
}

/// Reads the messages `due` names (sorted, held under `store_id`) in runs of consecutive
/// sequence numbers, within the budget: those read, in sequence order, and those not.
fn read_runs(
    store: &dyn Store,
    store_id: QueueId,
    due: &[Seq],
    budget: &mut ReadBudget,
) -> (Vec<(Seq, Option<Release>)>, Vec<Seq>) {
    let (mut released, mut unread) = (Vec::with_capacity(due.len()), Vec::new());
    let mut rest = due;
    while let Some(&first) = rest.first() {
        let run = rest.windows(2).take_while(|w| w[1] == w[0] + 1).count() + 1;
        let (wanted, after) = rest.split_at(run);
        rest = after;
        if budget.spent() {
            unread.extend_from_slice(wanted);
            continue;
        }
        let read = store.read(store_id, first, run, budget.bytes).unwrap_or_default();
        budget.read(&read);
        let end = first + run as Seq;
        let mut wanted = wanted.iter().peekable();
        for (seq, payload) in read.into_iter().filter(|(seq, _)| *seq < end) {
            while let Some(skipped) = wanted.next_if(|w| **w < seq) {
                unread.push(*skipped);
            }
            if wanted.next_if_eq(&&seq).is_some() {
                released.push((seq, Message::decode(&payload).ok().map(Release::of)));
            }
        }
        unread.extend(wanted);
    }
    (released, unread)
}

impl Broker {
    /// Releases the store ids of exchanges that are gone (see [`crate::vhost::VHost`]'s
    /// `orphaned`). Part of [`Broker::tick_timers`].
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

    /// Takes a round of releases out of the delayed exchanges' holds (under the broker
    /// lock): the held messages due now and, for an exchange restored after a restart, the
    /// next batch of messages whose due times must be read back, up to 2 048 messages in
    /// all. Exchanges that are gone stop being watched. Read the round with
    /// [`read_due`] and finish it with [`Broker::release_read`] before taking the next.
    pub fn take_due_delayed(&mut self) -> DueReads {
        let now = self.clock.now_ms();
        let mut round = DueReads { now, exchanges: Vec::new(), full: false };
        let mut watched: Vec<_> = self.timed_exchanges.iter().cloned().collect();
        watched.sort_unstable();
        if !watched.is_empty() {
            self.delayed_turn = (self.delayed_turn + 1) % watched.len();
            watched.rotate_left(self.delayed_turn);
        }
        let mut messages = ROUND_MESSAGES;
        for (vhost, name) in watched {
            let exchange = self.vhosts.get_mut(&vhost).and_then(|v| v.exchanges.get_mut(&name));
            let Some(held) = exchange.and_then(|x| x.delayed.as_mut()) else {
                // Gone: its store id was orphaned with it.
                self.timed_exchanges.remove(&(vhost, name));
                continue;
            };
            if messages == 0 {
                continue;
            }
            // After a restart, held messages are read back in batches to learn their due
            // times. Those already due are released from the same read, so a batch counts
            // against the round's messages, before what is due.
            let unresolved = usize::try_from(held.unresolved()).unwrap_or(usize::MAX);
            let resolve = held.first_unresolved().map(|first| (first, messages.min(unresolved)));
            messages -= resolve.map_or(0, |(_, batch)| batch);
            let mut due = held.take_due(now, messages);
            messages -= due.len();
            if due.is_empty() && resolve.is_none() {
                continue;
            }
            due.sort_unstable();
            let (store_id, incarnation) = (held.store_id, held.incarnation);
            round.exchanges.push(DueExchange { vhost, name, store_id, incarnation, resolve, due });
        }
        round.full = messages == 0;
        round
    }

    /// Finishes a round (under the broker lock): routes the due messages [`read_due`] read,
    /// holds again, due at once, those it did not, gives the messages read back after a
    /// restart their due times (releasing those already due), then acks the released ones
    /// under the hold: after their release was written for the queues they reached, so a
    /// crash in between releases them again (at least once). A release that could not be
    /// written is not acked, so a restart tries it again. Dropped: unroutable messages (as
    /// the plugin does), and messages whose payload does not decode.
    ///
    /// An exchange deleted since the round was taken (even if declared again meanwhile)
    /// gets nothing: its held messages went with it.
    pub fn release_read(&mut self, read: ReadBack) {
        let now = self.clock.now_ms();
        for exchange in read.exchanges {
            let ExchangeRead { due, resolved, released, unread } = exchange;
            let x = self.vhosts.get_mut(&due.vhost).and_then(|v| v.exchanges.get_mut(&due.name));
            let Some(held) = x.and_then(|x| x.delayed.as_mut()).filter(|held| {
                held.incarnation == due.incarnation && held.store_id == due.store_id
            }) else {
                continue;
            };
            let mut acks = Vec::new();
            let mut routes = Vec::with_capacity(released.len());
            if let (Some((first, _)), Some(batch)) = (due.resolve, resolved) {
                // A read that succeeds without the first of them drops that one (it cannot
                // be read back: damage skipped by recovery), so one bad record cannot stall
                // the rest.
                if batch.first().is_none_or(|(seq, _)| *seq != first) && held.is_unresolved(first) {
                    held.resolve(first, None, now);
                    acks.push(first);
                }
                for (seq, resolution) in batch {
                    // Not unresolved any more: resolved by an earlier round.
                    if !held.is_unresolved(seq) {
                        continue;
                    }
                    match resolution {
                        Resolution::Unreadable => {
                            held.resolve(seq, None, now);
                            acks.push(seq);
                        }
                        Resolution::DueAt(at) => held.resolve(seq, Some(at), now),
                        Resolution::Due(release) => {
                            held.resolve(seq, None, now);
                            routes.push((seq, *release));
                        }
                    }
                }
            }
            for seq in unread {
                held.hold(seq, now, now);
            }
            for (seq, release) in released {
                match release {
                    Some(release) => routes.push((seq, release)),
                    None => acks.push(seq),
                }
            }
            for (seq, release) in routes {
                if self.route_held(&due.vhost, release, now).is_ok() {
                    acks.push(seq);
                }
            }
            let _ = self.store.ack(due.store_id, &acks);
        }
    }

    /// Routes a message whose delay is over from its exchange, as its type says, arrived
    /// now, so the TTLs of the queues it reaches count from here. Nobody waits for the
    /// result: an unroutable message is dropped, as the plugin does (mandatory does not
    /// apply).
    ///
    /// # Errors
    /// `StoreFailed` if its release could not be written.
    fn route_held(&mut self, vhost: &str, release: Release, now: u64) -> Result<()> {
        let Release { mut message, headers } = release;
        message.stamp_arrival(now);
        let Some(v) = self.vhosts.get(vhost) else { return Ok(()) };
        let mut targets = Vec::new();
        if v.route(&message.exchange, &message.routing_key, headers.as_ref(), &mut targets).is_ok()
            && !targets.is_empty()
        {
            self.enqueue(vhost, message, &targets, Origin::Publish)?;
        }
        Ok(())
    }
}
