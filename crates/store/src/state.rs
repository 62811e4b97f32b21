//! [`State`]: the [`crate::file::FileStore`]'s bookkeeping in memory — where every
//! referenced message is, how many references each segment still holds, and what waits to
//! be written. Guarded by the store's one mutex; nothing here does I/O.
//!
//! A message is found through `by_first_seq` (segments hold increasing sequence numbers,
//! so the segment that starts at or below a number holds it), unless compaction moved it:
//! then `moved` says where its copy is. Every reference counts towards the `live` total of
//! the segment holding the message; a segment at the head with none left is deleted.

use std::collections::{BTreeMap, HashMap};

use bytes::BytesMut;

use crate::error::StoreError;
use crate::ranges::RangeSet;
use crate::record::{self, SEGMENT_MAGIC};
use crate::{DeliveryState, Lsn, QueueId, Seq};

pub(crate) type SegmentId = u64;

/// One publish record in this many is indexed (and the first of every segment).
pub(crate) const INDEX_EVERY: Seq = 64;

#[derive(Debug, Default)]
pub(crate) struct SegmentMeta {
    /// References (queue × message) its message records still hold.
    pub(crate) live: u64,
    /// References its message records were written with (publishes, spills, moves): with
    /// `live`, how much of the segment is still needed.
    pub(crate) held: u64,
}

/// Where compaction copied a message, and how many queues still reference it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MovedTo {
    pub(crate) segment: SegmentId,
    pub(crate) offset: u64,
    pub(crate) refs: u32,
}

pub(crate) struct State {
    pub(crate) next_seq: Seq,
    pub(crate) next_lsn: Lsn,
    pub(crate) active: SegmentId,
    pub(crate) active_len: u64,
    /// Records not yet handed to the commit thread, by segment, in write order.
    pub(crate) batch: Vec<(SegmentId, BytesMut)>,
    pub(crate) batch_last_lsn: Lsn,
    pub(crate) segments: BTreeMap<SegmentId, SegmentMeta>,
    /// First sequence number of each segment that has publishes; a later segment with the
    /// same first sequence replaces an earlier one without publishes.
    pub(crate) by_first_seq: BTreeMap<Seq, SegmentId>,
    /// Messages compaction copied out of their segment, and where the copies are.
    pub(crate) moved: BTreeMap<Seq, MovedTo>,
    pub(crate) to_delete: Vec<SegmentId>,
    /// Delivered marks not yet written, highest per queue.
    pub(crate) marks: HashMap<QueueId, Seq>,
    /// The highest delivered mark written per queue, rewritten when compaction deletes a
    /// segment (the mark may have been in it).
    pub(crate) delivered: HashMap<QueueId, Seq>,
    /// Delivery states not yet written (the latest per message).
    pub(crate) pending_states: HashMap<(QueueId, Seq), DeliveryState>,
    /// Delivery states of referenced messages, rewritten when their message moves.
    pub(crate) states: HashMap<QueueId, BTreeMap<Seq, DeliveryState>>,
    /// Where some publish records are: the first of every segment and every
    /// [`INDEX_EVERY`]th sequence number, so that a read starts at most that many records
    /// before the one it wants while the index costs a few bytes per thousand messages.
    pub(crate) index: BTreeMap<Seq, (SegmentId, u64)>,
    /// Whether the active segment's first publish is in `index`.
    pub(crate) active_indexed: bool,
    /// Damaged byte ranges recovery skipped (`--recover-skip-corrupt`): reads skip them too.
    pub(crate) damage: Vec<(SegmentId, u64, u64)>,
    /// The messages each queue still references. Acks are checked against it, so a
    /// repeated or stray ack can never release another queue's reference.
    pub(crate) refs: HashMap<QueueId, RangeSet>,
    /// The last segment compaction tried; one it could not empty is not tried again.
    pub(crate) compacted: Option<SegmentId>,
    /// The head as last seen by compaction.
    pub(crate) head_watch: Option<crate::compaction::HeadWatch>,
    pub(crate) failed: Option<String>,
    pub(crate) closing: bool,
    /// Whether the commit thread waits on [`crate::file::Shared`]'s condvar for work: only
    /// then do writers notify it.
    pub(crate) commit_waiting: bool,
}

impl State {
    /// The segment where `seq` was first written (its publish or spill record).
    pub(crate) fn home_segment(&self, seq: Seq) -> Option<SegmentId> {
        self.by_first_seq.range(..=seq).next_back().map(|(_, id)| *id)
    }

    /// The segment `seq` is read from now.
    pub(crate) fn segment_of(&self, seq: Seq) -> Option<SegmentId> {
        match self.moved.get(&seq) {
            Some(moved) => Some(moved.segment),
            None => self.home_segment(seq),
        }
    }

    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        if let Some(reason) = &self.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        if self.closing {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Starts a new segment if a record of `size` bytes does not fit in the active one.
    pub(crate) fn make_room(&mut self, size: u64, segment_size: u64) {
        let start = (SEGMENT_MAGIC.len() + record::BASE_LEN) as u64;
        if self.active_len + size > segment_size && self.active_len > start {
            self.start_segment(self.active + 1);
        }
    }

    /// Makes `id` the active segment, opening it with a base record.
    pub(crate) fn start_segment(&mut self, id: SegmentId) {
        self.active = id;
        self.active_len = (SEGMENT_MAGIC.len() + record::BASE_LEN) as u64;
        self.segments.insert(id, SegmentMeta::default());
        self.by_first_seq.insert(self.next_seq, id);
        self.active_indexed = false;
        let next_seq = self.next_seq;
        record::encode_base(self.batch_for(id), next_seq);
    }

    /// The active segment's batch buffer, after making room for `size` bytes there.
    pub(crate) fn reserve(&mut self, size: u64, segment_size: u64) -> &mut BytesMut {
        self.make_room(size, segment_size);
        self.active_len += size;
        let active = self.active;
        self.batch_for(active)
    }

    pub(crate) fn batch_for(&mut self, segment: SegmentId) -> &mut BytesMut {
        if self.batch.last().is_none_or(|(id, _)| *id != segment) {
            self.batch.push((segment, BytesMut::with_capacity(64 * 1024)));
        }
        let last = self.batch.len() - 1;
        &mut self.batch[last].1
    }

    /// Moves pending delivered marks and delivery states into the batch.
    pub(crate) fn flush_marks(&mut self, segment_size: u64) {
        for (queue, seq) in std::mem::take(&mut self.marks) {
            record::encode_delivered(
                self.reserve(record::DELIVERED_LEN as u64, segment_size),
                queue,
                seq,
            );
            let written = self.delivered.entry(queue).or_insert(seq);
            *written = (*written).max(seq);
        }
        for ((queue, seq), state) in std::mem::take(&mut self.pending_states) {
            record::encode_state(
                self.reserve(record::STATE_LEN as u64, segment_size),
                queue,
                seq,
                state,
            );
        }
    }

    /// Accounts for `queue` no longer referencing `seq` (already removed from `refs`).
    pub(crate) fn release_one(&mut self, queue: QueueId, seq: Seq) {
        let segment = match self.moved.get_mut(&seq) {
            Some(moved) => {
                let segment = moved.segment;
                moved.refs = moved.refs.saturating_sub(1);
                if moved.refs == 0 {
                    self.moved.remove(&seq);
                }
                Some(segment)
            }
            None => self.home_segment(seq),
        };
        if let Some(meta) = segment.and_then(|id| self.segments.get_mut(&id)) {
            meta.live = meta.live.saturating_sub(1);
        }
        if let Some(states) = self.states.get_mut(&queue) {
            states.remove(&seq);
        }
    }

    /// Accounts for `queue` no longer referencing any of `first..end` (every one of which
    /// it referenced, already removed from `refs`).
    pub(crate) fn release_range(&mut self, queue: QueueId, first: Seq, end: Seq) {
        for (id, count) in self.ref_spans(first, end) {
            if let Some(meta) = self.segments.get_mut(&id) {
                meta.live = meta.live.saturating_sub(count);
            }
        }
        let moved: Vec<Seq> = self.moved.range(first..end).map(|(seq, _)| *seq).collect();
        for seq in moved {
            if let Some(entry) = self.moved.get_mut(&seq) {
                entry.refs = entry.refs.saturating_sub(1);
                if entry.refs == 0 {
                    self.moved.remove(&seq);
                }
            }
        }
        if let Some(states) = self.states.get_mut(&queue) {
            let mut tail = states.split_off(&first);
            states.append(&mut tail.split_off(&end));
        }
    }

    /// Splits `first..end` (references of one queue) by the segments holding those
    /// messages now: how many each holds.
    pub(crate) fn ref_spans(&self, first: Seq, end: Seq) -> Vec<(SegmentId, u64)> {
        let mut spans = self.home_spans(first, end);
        // Moved messages are counted where their copy is, not where they were published.
        for (seq, moved) in self.moved.range(first..end) {
            if let Some(home) = self.home_segment(*seq)
                && let Some(span) = spans.iter_mut().find(|(id, _)| *id == home)
            {
                span.1 = span.1.saturating_sub(1);
            }
            match spans.iter_mut().find(|(id, _)| *id == moved.segment) {
                Some(span) => span.1 += 1,
                None => spans.push((moved.segment, 1)),
            }
        }
        spans
    }

    /// Splits `first..end` by the segments that published those sequence numbers.
    fn home_spans(&self, first: Seq, end: Seq) -> Vec<(SegmentId, u64)> {
        let mut spans = Vec::new();
        let mut at = first;
        while at < end {
            let home = self.home_segment(at);
            // The next sequence number published in another segment (numbers below the
            // oldest segment belong to deleted ones: skipped).
            let next = self
                .by_first_seq
                .range(at + 1..)
                .find(|(_, id)| Some(**id) != home)
                .map(|(first, _)| *first);
            let segment_end = next.map_or(end, |next| next.min(end));
            if let Some(id) = home {
                spans.push((id, segment_end - at));
            }
            at = segment_end;
        }
        spans
    }

    /// Queues deletion of dead segments at the head of the journal.
    pub(crate) fn collect_dead_head(&mut self) {
        while let Some((&id, meta)) = self.segments.first_key_value() {
            if id == self.active || meta.live > 0 {
                break;
            }
            self.segments.remove(&id);
            self.by_first_seq.retain(|_, s| *s != id);
            self.index.retain(|_, (s, _)| *s != id);
            self.to_delete.push(id);
        }
    }
}
