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

/// Records waiting to be written: per segment, the bytes to append, in write order.
pub(crate) type Batch = Vec<(SegmentId, BytesMut)>;

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

/// Records of at least this size are elided when every queue acknowledges their message
/// before the commit thread writes them. Smaller ones are written anyway: they cost little
/// to write, and tracking them would cost every publish a map entry.
pub(crate) const ELIDE_MIN: usize = 16 * 1024;

/// A large record waiting in the batch (see [`State::unwritten`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unwritten {
    /// Index of its entry in [`State::batch`].
    pub(crate) entry: usize,
    /// Where it starts in that entry.
    pub(crate) start: usize,
    /// Its length.
    pub(crate) len: usize,
    /// References it still has.
    pub(crate) refs: u64,
}

/// A record of the batch to write as an elided record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ElidedRecord {
    /// Index of its entry in the batch.
    pub(crate) entry: usize,
    /// Where it starts in that entry.
    pub(crate) start: usize,
    /// Its length in the entry.
    pub(crate) len: usize,
    /// Its sequence number.
    pub(crate) seq: Seq,
}

/// A batch handed to the commit thread: the records, and those to write elided.
pub(crate) struct Taken {
    pub(crate) batch: Batch,
    /// Sorted by entry, then start.
    pub(crate) elided: Vec<ElidedRecord>,
}

pub(crate) struct State {
    pub(crate) next_seq: Seq,
    pub(crate) next_lsn: Lsn,
    pub(crate) active: SegmentId,
    pub(crate) active_len: u64,
    /// Records not yet handed to the commit thread, by segment, in write order.
    pub(crate) batch: Batch,
    /// Where each `batch` entry starts in its segment.
    pub(crate) entry_starts: Vec<u64>,
    /// Records of `batch` to be written as elided records instead (see
    /// [`State::unreference_unwritten`]).
    pub(crate) elided: Vec<ElidedRecord>,
    /// Bytes the elided records take off the active segment's entry: the journal's end is
    /// `active_len` less this (taken off `active_len` when the batch is taken).
    pub(crate) active_shrink: u64,
    /// Index entries of records in `batch` — sequence number, entry, start in the entry —
    /// placed when the batch is taken, once eliding can no longer move them.
    pub(crate) pending_index: Vec<(Seq, usize, usize)>,
    /// Large publish and spill records still in `batch`, by sequence number: where they
    /// are and how many references they still have. Cleared when the batch is taken.
    pub(crate) unwritten: HashMap<Seq, Unwritten>,
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
    /// Set by [`crate::FileStore::hold_commits`]: the commit thread takes no batch.
    pub(crate) held: bool,
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
        self.active_len = SEGMENT_MAGIC.len() as u64;
        // What eliding took off the old segment stays there.
        self.active_shrink = 0;
        self.segments.insert(id, SegmentMeta::default());
        self.by_first_seq.insert(self.next_seq, id);
        self.active_indexed = false;
        let next_seq = self.next_seq;
        record::encode_base(self.batch_for(id), next_seq);
        self.active_len += record::BASE_LEN as u64;
    }

    /// The active segment's batch buffer, after making room for `size` bytes there.
    pub(crate) fn reserve(&mut self, size: u64, segment_size: u64) -> &mut BytesMut {
        self.make_room(size, segment_size);
        let active = self.active;
        self.batch_for(active);
        self.active_len += size;
        self.batch_for(active)
    }

    /// The batch entry of `segment` — the active one, whose next record starts at
    /// `active_len` — started if it is not the last entry yet.
    pub(crate) fn batch_for(&mut self, segment: SegmentId) -> &mut BytesMut {
        debug_assert_eq!(segment, self.active, "records are written to the active segment");
        if self.batch.last().is_none_or(|(id, _)| *id != segment) {
            self.batch.push((segment, BytesMut::with_capacity(64 * 1024)));
            // No record of this segment is in the batch yet, so nothing was elided from
            // it: `active_len` is where its bytes go.
            self.entry_starts.push(self.active_len);
        }
        let last = self.batch.len() - 1;
        &mut self.batch[last].1
    }

    /// Indexes the record about to be encoded at the end of the batch for `seq` (when the
    /// batch is taken: see [`State::pending_index`]).
    pub(crate) fn index_next(&mut self, seq: Seq) {
        let active = self.active;
        self.batch_for(active);
        let entry = self.batch.len() - 1;
        let start = self.batch[entry].1.len();
        self.pending_index.push((seq, entry, start));
        self.active_indexed = true;
    }

    /// Remembers the record just encoded at the end of the batch, `len` bytes, for `seq`
    /// with `refs` references, if it is large enough to be worth eliding.
    pub(crate) fn note_unwritten(&mut self, seq: Seq, len: usize, refs: u64) {
        if len < ELIDE_MIN || refs == 0 {
            return;
        }
        let entry = self.batch.len() - 1;
        let start = self.batch[entry].1.len() - len;
        self.unwritten.insert(seq, Unwritten { entry, start, len, refs });
    }

    /// Accounts for one reference to `seq` going. When it was the last and the message's
    /// record still waits in the batch, the record is elided: the commit thread writes a
    /// small elided record in its place instead of the message (see [`record`]), as
    /// nothing is left to keep — and a large message that consumers take as fast as it
    /// comes costs no disk bandwidth.
    pub(crate) fn unreference_unwritten(&mut self, seq: Seq) {
        let Some(unwritten) = self.unwritten.get_mut(&seq) else { return };
        unwritten.refs -= 1;
        if unwritten.refs > 0 {
            return;
        }
        let Unwritten { entry, start, len, .. } = *unwritten;
        self.unwritten.remove(&seq);
        if self.batch.get(entry).is_some_and(|(id, _)| *id == self.active) {
            self.active_shrink += (len - record::ELIDED_LEN) as u64;
        }
        self.elided.push(ElidedRecord { entry, start, len, seq });
    }

    /// Stops eliding the records now in the active segment's batch entry: a record about
    /// to be placed after them (a moved copy) has its offset fixed now, which eliding them
    /// would change.
    pub(crate) fn pin_unwritten(&mut self) {
        let Some(last) = self.batch.len().checked_sub(1) else { return };
        self.unwritten.retain(|_, unwritten| unwritten.entry != last);
    }

    /// Where the next record of the active segment will be in the file, elisions counted.
    pub(crate) fn next_offset(&self) -> u64 {
        self.active_len - self.active_shrink
    }

    /// Hands the batch over to be written, placing its pending index entries where their
    /// records will be once elided records are shrunk.
    pub(crate) fn take_batch(&mut self) -> Taken {
        let mut elided = std::mem::take(&mut self.elided);
        elided.sort_unstable_by_key(|e| (e.entry, e.start));
        for (seq, entry, start) in std::mem::take(&mut self.pending_index) {
            let shrunk: usize = elided
                .iter()
                .filter(|e| e.entry == entry && e.start < start)
                .map(|e| e.len - record::ELIDED_LEN)
                .sum();
            if let (Some((segment, _)), Some(base)) =
                (self.batch.get(entry), self.entry_starts.get(entry))
            {
                self.index.insert(seq, (*segment, base + (start - shrunk) as u64));
            }
        }
        self.active_len -= std::mem::take(&mut self.active_shrink);
        self.unwritten.clear();
        self.entry_starts.clear();
        Taken { batch: std::mem::take(&mut self.batch), elided }
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
