//! Compaction: copying the last few live messages of the oldest segment forward, so that
//! one old unacknowledged message does not keep every later segment on disk.
//!
//! Segments are deleted head first (see [`crate::file`]). When the head still holds
//! references but at most a [`COMPACT_RATIO`]th of those it was written with, and that
//! number has stood still while the journal moved on to a newer segment (or for
//! [`COMPACT_IDLE`]) — so a backlog being consumed from the head is left to drain — the
//! commit thread reads it (without the state lock), and then, under the lock, appends a moved
//! record for every message some queue still references — same sequence number, listing
//! the queues that reference it at that moment — followed by the delivery states of those
//! messages and every queue's delivered mark (the head may have held the latest). The head
//! then holds no references and is deleted once the batch carrying the copies is synced.
//!
//! Recovery replays moved records like publishes. An ack written before the move is already
//! reflected in the moved record's queue list, and one written after it applies to it; a
//! crash before the old segment is deleted leaves both copies, whose references are the
//! same set (inserting a reference twice is idempotent).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::record::{self, Record, SEGMENT_MAGIC};
use crate::segment_reader::SegmentReader;
use crate::state::{MovedTo, SegmentId, State};
use crate::{QueueId, Seq};

/// A segment is compacted once no more than one in this many of the references it was
/// written with is live. Messages that live for ever (a parked dead-letter queue between
/// busy ones) are copied again with each compaction until they fill that share of a
/// segment; so the journal holds at most about this many times their size, and each byte
/// written is copied a bounded number of times.
pub(crate) const COMPACT_RATIO: u64 = 2;

/// How long the head must stand still, with nothing else written, to be compacted.
pub(crate) const COMPACT_IDLE: Duration = Duration::from_secs(1);

/// The head segment as last seen, to tell stragglers from a backlog being consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadWatch {
    segment: SegmentId,
    live: u64,
    active: SegmentId,
    since: Instant,
}

/// A message found in the segment being compacted.
pub(crate) struct Straggler {
    seq: Seq,
    payload: Bytes,
    transient: bool,
}

impl State {
    /// The head segment, if it is worth compacting now.
    pub(crate) fn compaction_candidate(&mut self, now: Instant) -> Option<SegmentId> {
        let (&head, meta) = self.segments.first_key_value()?;
        let live = meta.live;
        let sparse = head != self.active
            && live > 0
            && live.saturating_mul(COMPACT_RATIO) <= meta.held
            && self.compacted.is_none_or(|tried| tried < head)
            // Its last records may still wait in the batch: read it once they are written.
            && self.batch.iter().all(|(id, _)| *id != head)
            && self.failed.is_none()
            && !self.closing;
        if !sparse {
            self.head_watch = None;
            return None;
        }
        match self.head_watch {
            Some(watch) if watch.segment == head && watch.live == live => {
                let settled = self.active > watch.active || now - watch.since >= COMPACT_IDLE;
                settled.then_some(head)
            }
            _ => {
                let active = self.active;
                self.head_watch = Some(HeadWatch { segment: head, live, active, since: now });
                None
            }
        }
    }

    /// The messages `segment` holds that some queue still references.
    fn stragglers(&self, segment: SegmentId) -> BTreeSet<Seq> {
        let mut found: BTreeSet<Seq> = self
            .moved
            .iter()
            .filter(|(_, moved)| moved.segment == segment)
            .map(|(seq, _)| *seq)
            .collect();
        let Some(first) =
            self.by_first_seq.iter().find(|(_, id)| **id == segment).map(|(first, _)| *first)
        else {
            return found;
        };
        let end = self
            .by_first_seq
            .range(first + 1..)
            .find(|(_, id)| **id != segment)
            .map_or(self.next_seq, |(next, _)| *next);
        for refs in self.refs.values() {
            found.extend(
                refs.iter_from(first)
                    .take_while(|seq| *seq < end)
                    .filter(|seq| !self.moved.contains_key(seq)),
            );
        }
        found
    }

    /// Appends moved records for `found` (copies of messages of `segment`) and accounts
    /// for them, then queues `segment` for deletion if nothing references it any more.
    fn move_forward(&mut self, segment: SegmentId, found: Vec<Straggler>, segment_size: u64) {
        for straggler in found {
            // Referenced by whom now: acks may have come in while the segment was read.
            let queues: Vec<QueueId> = self
                .refs
                .iter()
                .filter(|(_, refs)| refs.contains(straggler.seq))
                .map(|(queue, _)| *queue)
                .collect();
            if queues.is_empty() || self.segment_of(straggler.seq) != Some(segment) {
                continue;
            }
            let size = record::moved_len(queues.len(), straggler.payload.len()) as u64;
            self.make_room(size, segment_size);
            // Its offset is fixed here (reads find the copy by it), so nothing before it
            // in the batch may be elided any more.
            self.pin_unwritten();
            let offset = self.next_offset();
            let buf = self.reserve(size, segment_size);
            record::encode_moved(
                buf,
                straggler.seq,
                &queues,
                &straggler.payload,
                straggler.transient,
            );
            let count = queues.len() as u64;
            let active = self.active;
            if let Some(meta) = self.segments.get_mut(&segment) {
                meta.live = meta.live.saturating_sub(count);
            }
            if let Some(meta) = self.segments.get_mut(&active) {
                meta.live += count;
                meta.held += count;
            }
            let refs = queues.len() as u32;
            self.moved.insert(straggler.seq, MovedTo { segment: active, offset, refs });
            for queue in queues {
                if let Some(state) = self.states.get(&queue).and_then(|s| s.get(&straggler.seq)) {
                    self.pending_states.entry((queue, straggler.seq)).or_insert(*state);
                }
            }
        }
        // The segment may hold a queue's latest delivered mark: write them all again.
        for (queue, seq) in self.delivered.clone() {
            if self.refs.contains_key(&queue) {
                let mark = self.marks.entry(queue).or_insert(seq);
                *mark = (*mark).max(seq);
            } else {
                self.delivered.remove(&queue);
            }
        }
        self.flush_marks(segment_size);
        self.collect_dead_head();
    }
}

/// Reads the records of `segment` that carry the sequence numbers in `wanted`.
pub(crate) fn read_stragglers(
    path: &std::path::Path,
    skips: Vec<(u64, u64)>,
    wanted: &BTreeSet<Seq>,
) -> Result<Vec<Straggler>, crate::StoreError> {
    let mut found = Vec::with_capacity(wanted.len());
    let Some(mut reader) = SegmentReader::open(path, SEGMENT_MAGIC.len() as u64, skips)? else {
        return Ok(found);
    };
    while let Some(record) = reader.next()? {
        let (seq, payload, transient) = match record {
            Record::Publish { seq, payload, .. } => (seq, payload, false),
            Record::Spill { seq, payload, .. } => (seq, payload, true),
            Record::Moved { seq, payload, transient, .. } => (seq, payload, transient),
            _ => continue,
        };
        if wanted.contains(&seq) {
            found.push(Straggler { seq, payload, transient });
        }
    }
    Ok(found)
}

impl State {
    /// Starts compacting `segment`: what to read from it.
    pub(crate) fn begin_compaction(&mut self, segment: SegmentId) -> BTreeSet<Seq> {
        self.compacted = Some(segment);
        self.stragglers(segment)
    }

    /// Finishes compacting `segment` with what was read from it.
    pub(crate) fn finish_compaction(
        &mut self,
        segment: SegmentId,
        found: Vec<Straggler>,
        segment_size: u64,
    ) {
        if self.failed.is_none() && !self.closing {
            self.move_forward(segment, found, segment_size);
        }
    }
}
