//! Delayed delivery: an exchange declared with type `x-delayed-message` (and the routing
//! type in `x-delayed-type`, the RabbitMQ plugin's convention) or with the argument
//! `x-delayed-exchange = true` (LavinMQ's) holds a message published with a positive
//! `x-delay: <ms>` header for that long, then routes it as its type says.
//!
//! This file owns the exchange's in-memory hold, [`Delayed`]; the broker side (storing,
//! releasing, reading back after a restart) is in `crate::delays`.
//!
//! Held messages wait in the store (persistent ones appended, transient ones spilled) under
//! the exchange's own store id. Their due time is not recorded separately: it is the
//! message's stored arrival time plus its `x-delay`, so a restart finds it by reading the
//! message back. In memory the hold is a hierarchical timing wheel:
//!
//! - messages due in a later slot are packed into that slot as varint pairs
//!   (sequence-number delta, due offset in the slot): a few bytes each, no timer or struct;
//!   slots are a second wide for the next hour, a minute for the next day, an hour beyond,
//!   and move down a level as their time approaches (see `LEVELS`);
//! - when a one-second slot's time comes it is unpacked into a small heap ordered by due
//!   time, from which the broker's tick takes what is due.
//!
//! So a million held messages cost a few megabytes whatever their delays.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use postroom_amqp::{FieldTable, FieldValue};
use postroom_store::ranges::RangeSet;
use postroom_store::{QueueId, Seq};

use crate::error::{BrokerError, Result};
use crate::exchange::ExchangeKind;

/// The plugin's exchange type.
pub const DELAYED_TYPE: &str = "x-delayed-message";
/// The plugin's argument naming the routing type.
pub const DELAYED_TYPE_ARGUMENT: &str = "x-delayed-type";
/// LavinMQ's argument making any exchange a delayed one.
pub const DELAYED_EXCHANGE_ARGUMENT: &str = "x-delayed-exchange";
/// The header holding a message's delay in ms.
pub const DELAY_HEADER: &str = "x-delay";

/// The timing wheel's levels: slot width and how far ahead (from now) a message goes on
/// that level, in ms. Fine slots for the next hour, minutes for the next day, hours beyond:
/// a slot holds many messages however far their delays spread (a month of random delays
/// is ~720 hour slots, not 2.6 million second slots). A slot moves down a level, unpacked
/// into finer slots, when it comes within the finer level's reach.
const LEVELS: [(u64, u64); 3] = [(1_000, 3_600_000), (60_000, 86_400_000), (3_600_000, u64::MAX)];

/// The longest delay honoured, in ms (2^32 - 1, about 49.7 days, as the plugin); a longer
/// `x-delay` routes the message at once, as the plugin does.
pub const MAX_DELAY: u64 = u32::MAX as u64;

/// A delayed exchange's held messages.
#[derive(Debug, Clone)]
pub struct Delayed {
    /// Whether it was declared with type `x-delayed-message` (so that is its type name).
    pub plugin_type: bool,
    /// Its identity in the store.
    pub store_id: QueueId,
    /// A number no other hold had (from the broker's unique ids): a release read off the
    /// broker lock routes only into the hold it was taken from, never into one declared
    /// under the same name (and maybe the same reused store id) meanwhile.
    pub incarnation: u64,
    /// Messages due in slots not yet opened, per level, by slot start (ms since the epoch).
    levels: [BTreeMap<u64, Slot>; 3],
    /// End of the last finest slot opened: a message due before it goes to `near`.
    opened_until: u64,
    /// Messages of opened slots, earliest due first (then lowest sequence number).
    near: BinaryHeap<Reverse<(u64, Seq)>>,
    /// Held messages whose due time is not known yet: after a restart, until the broker
    /// reads them back ([`Delayed::resolve`]).
    unresolved: RangeSet,
    /// How many messages are held, in all three places.
    held: u64,
}

/// One slot of the wheel: `(seq delta, due - slot start)` pairs as LEB128 varints, the
/// delta zigzag-encoded (from the previous entry's seq) so that any order packs.
#[derive(Debug, Clone, Default)]
struct Slot {
    packed: Vec<u8>,
    last_seq: Seq,
}

/// How an exchange declaration asks for delays: the routing kind, and whether (and how)
/// messages are delayed: `Some(true)` for the plugin's type, `Some(false)` for LavinMQ's
/// argument, `None` for an ordinary exchange.
///
/// # Errors
/// `CommandInvalid` for an unknown type; `PreconditionFailed` naming the argument for a
/// delayed type without a valid `x-delayed-type`, or a non-boolean `x-delayed-exchange`.
pub fn parse_declaration(
    kind: &str,
    arguments: &FieldTable,
) -> Result<(ExchangeKind, Option<bool>)> {
    if kind == DELAYED_TYPE {
        let routing = arguments.get(DELAYED_TYPE_ARGUMENT).and_then(FieldValue::as_str);
        let Some(routing) = routing.and_then(ExchangeKind::parse) else {
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid arg '{DELAYED_TYPE_ARGUMENT}': must name an exchange type \
                 (direct, fanout, topic, headers)"
            )));
        };
        return Ok((routing, Some(true)));
    }
    let Some(routing) = ExchangeKind::parse(kind) else {
        return Err(BrokerError::CommandInvalid(format!("invalid exchange type '{kind}'")));
    };
    let delayed = match arguments.get(DELAYED_EXCHANGE_ARGUMENT) {
        None => false,
        Some(value) => value.as_bool().ok_or_else(|| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{DELAYED_EXCHANGE_ARGUMENT}': expected a boolean, got {value:?}"
            ))
        })?,
    };
    Ok((routing, delayed.then_some(false)))
}

/// The delay a message asks for: an integer `x-delay` header in 1..=[`MAX_DELAY`]
/// (anything else means no delay, as in the plugin).
pub fn requested_delay(headers: Option<&FieldTable>) -> Option<u64> {
    let delay = headers?.get(DELAY_HEADER)?.as_int()?;
    u64::try_from(delay).ok().filter(|d| (1..=MAX_DELAY).contains(d))
}

/// The `x-delay` header a released message carries: its delay negated, which is how the
/// plugin tells a consumer that a message was delayed. A 32-bit integer when it fits,
/// since some clients read the 64-bit type as unsigned.
pub fn released_delay_header(delay: u64) -> FieldValue {
    let negated = -i64::try_from(delay).unwrap_or(i64::MAX);
    i32::try_from(negated).map_or(FieldValue::I64(negated), FieldValue::I32)
}

impl Delayed {
    /// An exchange's empty hold.
    pub fn new(plugin_type: bool, store_id: QueueId, incarnation: u64) -> Delayed {
        Delayed {
            plugin_type,
            store_id,
            incarnation,
            levels: Default::default(),
            opened_until: 0,
            near: BinaryHeap::new(),
            unresolved: RangeSet::new(),
            held: 0,
        }
    }

    /// A hold restored after a restart: the store still references `refs`, whose due
    /// times the broker reads back with [`Delayed::first_unresolved`] and
    /// [`Delayed::resolve`].
    pub fn recovered(
        plugin_type: bool,
        store_id: QueueId,
        incarnation: u64,
        refs: RangeSet,
    ) -> Delayed {
        let mut delayed = Delayed::new(plugin_type, store_id, incarnation);
        delayed.held = refs.len();
        delayed.unresolved = refs;
        delayed
    }

    /// Holds `seq` until `due` (ms since the epoch); `now` is the time now.
    pub fn hold(&mut self, seq: Seq, due: u64, now: u64) {
        self.held += 1;
        self.place(seq, due, now);
    }

    fn place(&mut self, seq: Seq, due: u64, now: u64) {
        let distance = due.saturating_sub(now);
        let level = LEVELS.iter().position(|(_, reach)| distance < *reach).unwrap_or(2);
        self.place_on(level, seq, due);
    }

    fn place_on(&mut self, level: usize, seq: Seq, due: u64) {
        if level == 0 && due < self.opened_until {
            self.near.push(Reverse((due, seq)));
            return;
        }
        let width = LEVELS[level].0;
        let start = due - due % width;
        let slot = self.levels[level].entry(start).or_default();
        let delta = seq.wrapping_sub(slot.last_seq) as i64;
        put_varint(&mut slot.packed, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(&mut slot.packed, due - start);
        slot.last_seq = seq;
    }

    /// Takes up to `limit` messages due at `now`, earliest due first.
    pub fn take_due(&mut self, now: u64, limit: usize) -> Vec<Seq> {
        // Coarse slots that came within a finer level's reach move down, coarsest first so
        // that what moves down may move on in the same call.
        for level in [2, 1] {
            let reach = now.saturating_add(LEVELS[level - 1].1);
            while let Some(entry) = self.levels[level].first_entry()
                && *entry.key() < reach
            {
                let (start, slot) = entry.remove_entry();
                unpack(start, &slot, |seq, due| self.place_on(level - 1, seq, due));
            }
        }
        let width = LEVELS[0].0;
        let open_before = (now - now % width).saturating_add(width);
        if open_before > self.opened_until {
            self.opened_until = open_before;
            while let Some(entry) = self.levels[0].first_entry()
                && *entry.key() < open_before
            {
                let (start, slot) = entry.remove_entry();
                unpack(start, &slot, |seq, due| self.near.push(Reverse((due, seq))));
            }
        }
        let mut due = Vec::new();
        while due.len() < limit {
            match self.near.peek() {
                Some(Reverse((at, seq))) if *at <= now => {
                    due.push(*seq);
                    self.near.pop();
                }
                _ => break,
            }
        }
        self.held -= due.len() as u64;
        // A burst's heap is given back once it has drained.
        if self.near.capacity() > 4096 && self.near.len() < self.near.capacity() / 4 {
            self.near.shrink_to(self.near.len() * 2);
        }
        due
    }

    /// The lowest held message whose due time is not known yet.
    pub fn first_unresolved(&self) -> Option<Seq> {
        self.unresolved.iter().next()
    }

    /// How many held messages have no known due time yet.
    pub fn unresolved(&self) -> u64 {
        self.unresolved.len()
    }

    /// Whether `seq` is held without a known due time.
    pub fn is_unresolved(&self, seq: Seq) -> bool {
        self.unresolved.contains(seq)
    }

    /// Gives an unresolved message its due time, or takes it out of the hold (`None`: it
    /// could not be read back, or it was due already and the broker released it). Does
    /// nothing for a message that is not unresolved.
    pub fn resolve(&mut self, seq: Seq, due: Option<u64>, now: u64) {
        if !self.unresolved.remove(seq) {
            return;
        }
        match due {
            Some(due) => self.place(seq, due, now),
            None => self.held -= 1,
        }
    }

    /// How many messages are held.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Bytes the hold occupies on the heap, roughly: packed slots, their map entries, the
    /// near heap and the unresolved ranges (for tests, metrics and the benchmark).
    pub fn footprint(&self) -> usize {
        const MAP_ENTRY: usize = 64;
        let slots: usize = self
            .levels
            .iter()
            .flat_map(BTreeMap::values)
            .map(|s| s.packed.capacity() + MAP_ENTRY)
            .sum();
        slots
            + self.near.capacity() * std::mem::size_of::<(u64, Seq)>()
            + self.unresolved.range_count() * MAP_ENTRY
    }
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    while shift < 64
        && let Some(&byte) = buf.get(*at)
    {
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte < 0x80 {
            break;
        }
        shift += 7;
    }
    value
}

/// Calls `each(seq, due)` for every entry of a slot, in the order they were packed. The
/// first entry's delta is from 0 (a new slot's `last_seq`).
fn unpack(start: u64, slot: &Slot, mut each: impl FnMut(Seq, u64)) {
    let (mut at, mut seq) = (0usize, 0 as Seq);
    while at < slot.packed.len() {
        let zigzag = get_varint(&slot.packed, &mut at);
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        seq = seq.wrapping_add(delta as u64);
        each(seq, start + get_varint(&slot.packed, &mut at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postroom_amqp::ShortStr;

    #[test]
    fn messages_come_out_in_due_order_whatever_order_they_went_in() {
        let mut delayed = Delayed::new(true, 7, 1);
        let dues = [5_300u64, 1_200, 9_999, 1_200, 0, 70_000, 2_001];
        for (seq, due) in dues.iter().enumerate() {
            delayed.hold(seq as Seq + 100, *due, 0);
        }
        assert_eq!(delayed.held(), 7);
        assert_eq!(delayed.take_due(1_199, 100), vec![104]);
        assert_eq!(delayed.take_due(2_001, 100), vec![101, 103, 106]);
        // Held after its slot was opened: straight to the heap.
        delayed.hold(1, 2_500, 2_001);
        assert_eq!(delayed.take_due(10_000, 2), vec![1, 100]);
        assert_eq!(delayed.take_due(10_000, 100), vec![102]);
        assert_eq!(delayed.held(), 1);
        assert_eq!(delayed.take_due(70_000, 100), vec![105]);
        assert!(delayed.is_empty());
    }

    /// Holds a million messages with delays spread uniformly over `spread` ms, checks the
    /// footprint, then steps through time in `step` ms and checks every message comes out
    /// once, not before its due time, and the heap stays small.
    fn million_spread_over(spread: u64, step: u64) {
        let mut delayed = Delayed::new(true, 7, 1);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let now = 1_700_000_000_000u64;
        let mut dues = Vec::with_capacity(1_000_000);
        for seq in 0..1_000_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let due = now + rng % spread;
            dues.push(due);
            delayed.hold(seq, due, now);
        }
        assert_eq!(delayed.held(), 1_000_000);
        let footprint = delayed.footprint();
        assert!(footprint < 16 << 20, "1M held messages take {footprint} bytes");
        let (mut taken, mut largest_heap) = (0, 0);
        let mut at = now;
        while at <= now + spread {
            for seq in delayed.take_due(at, usize::MAX) {
                assert!(dues[seq as usize] <= at, "released early");
                assert!(dues[seq as usize] + step > at, "released late");
                dues[seq as usize] = u64::MAX;
                taken += 1;
            }
            largest_heap = largest_heap.max(delayed.near.len());
            at += step;
        }
        assert_eq!(taken, 1_000_000);
        assert!(delayed.is_empty());
        let per_step = 1_000_000 * step.max(1_000) / spread;
        assert!(largest_heap < 2 * per_step as usize + 1_000, "the heap held {largest_heap}");
    }

    #[test]
    fn a_million_messages_delayed_up_to_an_hour_cost_a_few_bytes_each() {
        million_spread_over(3_600_000, 1_000);
    }

    #[test]
    fn a_million_messages_delayed_up_to_a_month_cost_a_few_bytes_each() {
        million_spread_over(30 * 86_400_000, 600_000);
    }

    #[test]
    fn restored_messages_wait_until_resolved() {
        let mut refs = RangeSet::new();
        for seq in [3, 4, 5, 9] {
            refs.insert(seq);
        }
        let mut delayed = Delayed::recovered(false, 7, 1, refs);
        assert_eq!((delayed.held(), delayed.unresolved()), (4, 4));
        assert_eq!(delayed.first_unresolved(), Some(3));
        assert!(delayed.take_due(1 << 50, 10).is_empty());
        delayed.resolve(3, Some(500), 0);
        delayed.resolve(4, None, 0);
        delayed.resolve(4, Some(1), 0); // no longer unresolved: ignored
        assert_eq!(delayed.first_unresolved(), Some(5));
        assert_eq!((delayed.held(), delayed.unresolved()), (3, 2));
        assert_eq!(delayed.take_due(600, 10), vec![3]);
        assert!(delayed.is_unresolved(9));
    }

    #[test]
    fn declarations_name_the_routing_type() {
        let args = |k: &str, v: FieldValue| -> FieldTable {
            [(ShortStr::from(k), v)].into_iter().collect()
        };
        let plugin = args(DELAYED_TYPE_ARGUMENT, FieldValue::string("topic"));
        assert_eq!(
            parse_declaration(DELAYED_TYPE, &plugin).unwrap(),
            (ExchangeKind::Topic, Some(true))
        );
        assert!(parse_declaration(DELAYED_TYPE, &FieldTable::new()).is_err());
        let lavin = args(DELAYED_EXCHANGE_ARGUMENT, FieldValue::Bool(true));
        assert_eq!(
            parse_declaration("direct", &lavin).unwrap(),
            (ExchangeKind::Direct, Some(false))
        );
        assert!(
            parse_declaration("direct", &args(DELAYED_EXCHANGE_ARGUMENT, FieldValue::I32(1)))
                .is_err()
        );
        assert_eq!(
            parse_declaration("fanout", &FieldTable::new()).unwrap(),
            (ExchangeKind::Fanout, None)
        );
        let headers = |v: FieldValue| -> FieldTable { args(DELAY_HEADER, v) };
        assert_eq!(requested_delay(Some(&headers(FieldValue::I32(1500)))), Some(1500));
        assert_eq!(requested_delay(Some(&headers(FieldValue::I32(-5)))), None);
        assert_eq!(requested_delay(Some(&headers(FieldValue::string("5")))), None);
        assert_eq!(requested_delay(Some(&headers(FieldValue::I64(1 << 32)))), None);
        assert_eq!(requested_delay(Some(&headers(FieldValue::I64(i64::MIN)))), None);
        assert_eq!(released_delay_header(1500), FieldValue::I32(-1500));
        assert_eq!(released_delay_header(MAX_DELAY), FieldValue::I64(-(MAX_DELAY as i64)));
    }
}
