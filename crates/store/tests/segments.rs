//! [`FileStore`] segments: a small `segment_size` splits the journal into several
//! `<dir>/journal/*.seg` files, and segments whose messages are all acked are deleted.
//!
//! Deletion is head-first: a segment is deleted once it and every older segment hold no
//! unacked message (an ack record can only refer to messages in its own or older segments).
//! A head kept alive by a few stragglers is compacted: they are copied forward into the
//! active segment, and the head is deleted.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Model, payload, poll_until, published_seqs, recovered_messages, segment_files, segment_id,
    small_segments, wait_durable,
};
use postroom_store::record::SEGMENT_MAGIC;
use postroom_store::{DeliveryState, Durability, FileStore, QueueId, Seq, Store, StoreConfig};
use tempfile::TempDir;

/// A queue used only by [`Fixture::settle`]'s barrier messages.
const BARRIER: QueueId = 999;

/// A [`FileStore`] with 64 KiB segments in a temporary directory, and its model.
struct Fixture {
    dir: TempDir,
    config: StoreConfig,
    store: FileStore,
    model: Model,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let config = small_segments(Durability::Fsync);
        let store = FileStore::open(dir.path(), config.clone()).expect("opening a FileStore");
        Fixture { dir, config, store, model: Model::default() }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Appends `count` 1 KiB payloads (about 62 to a segment) to `queues`, waits until
    /// they are durable and returns their seqs.
    fn fill(&mut self, queues: &[QueueId], count: u64) -> Vec<Seq> {
        let mut seqs = Vec::new();
        let mut last = 0;
        for n in 0..count {
            let data = payload(n, 1024);
            let (seq, lsn) = self.store.append(queues, &data).expect("append");
            self.model.publish(seq, queues, &data);
            seqs.push(seq);
            last = lsn;
        }
        wait_durable(&self.store, last);
        seqs
    }

    fn ack(&mut self, queue: QueueId, seqs: &[Seq]) {
        self.store.ack(queue, seqs).expect("ack");
        self.model.ack(queue, seqs);
    }

    /// Each segment file with the seqs it publishes.
    fn layout(&self) -> Vec<(PathBuf, Vec<Seq>)> {
        segment_files(self.dir())
            .into_iter()
            .map(|path| (path.clone(), published_seqs(&path)))
            .collect()
    }

    /// Returns once the commit thread has carried out every deletion queued so far: it
    /// publishes a batch's progress before deleting, so the second of two barriers made
    /// durable one after the other proves the deletions queued before the first are done.
    fn settle(&mut self) {
        for _ in 0..2 {
            let (seq, lsn) = self.store.append(&[BARRIER], b"barrier").expect("append");
            wait_durable(&self.store, lsn);
            self.store.ack(BARRIER, &[seq]).expect("ack");
        }
    }

    /// Closes and reopens the store, checking that it recovers exactly the model.
    fn reopen(&mut self) {
        self.store.close().expect("close");
        self.store = FileStore::open(self.dir.path(), self.config.clone()).expect("reopen");
        assert_eq!(recovered_messages(&self.store), self.model.messages());
    }
}

fn exists(paths: &[PathBuf]) -> Vec<bool> {
    paths.iter().map(|path| path.exists()).collect()
}

#[test]
fn many_appends_with_a_small_segment_size_fill_several_segment_files() {
    let mut f = Fixture::new();
    let seqs = f.fill(&[1], 300);
    let layout = f.layout();
    assert!(layout.len() >= 4, "300 KiB in 64 KiB segments made only {} files", layout.len());
    let ids: Vec<u64> = layout.iter().map(|(path, _)| segment_id(path)).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "segment ids are consecutive");
    for (path, in_segment) in &layout {
        let data = std::fs::read(path).expect("reading a segment");
        assert!(data.starts_with(SEGMENT_MAGIC), "{}", path.display());
        assert!(data.len() as u64 <= f.config.segment_size, "{} outgrew its size", path.display());
        assert!(!in_segment.is_empty(), "{} holds no message", path.display());
    }
    let on_disk: Vec<Seq> = layout.into_iter().flat_map(|(_, seqs)| seqs).collect();
    assert_eq!(on_disk, seqs, "every message is in exactly one segment, in seq order");
    f.reopen();
}

#[test]
fn segments_whose_messages_are_all_acked_are_deleted_oldest_first() {
    let mut f = Fixture::new();
    f.fill(&[1], 300);
    let layout = f.layout();
    let paths: Vec<PathBuf> = layout.iter().map(|(path, _)| path.clone()).collect();

    // The second segment dies first, but the live head keeps it.
    f.ack(1, &layout[1].1);
    f.settle();
    assert!(paths.iter().all(|path| path.exists()), "{:?}", exists(&paths));

    // Once the head dies too, both go, and nothing after them.
    f.ack(1, &layout[0].1);
    poll_until("the two oldest segments to be deleted", || {
        !paths[0].exists() && !paths[1].exists()
    });
    f.settle();
    assert!(paths[2..].iter().all(|path| path.exists()), "{:?}", exists(&paths));
    f.reopen();
}

#[test]
fn a_straggler_in_the_head_segment_is_moved_forward_and_the_dead_segments_deleted() {
    let mut f = Fixture::new();
    let seqs = f.fill(&[1], 300);
    let layout = f.layout();
    let paths: Vec<PathBuf> = layout.iter().map(|(path, _)| path.clone()).collect();
    let (&straggler, head_rest) = layout[0].1.split_last().expect("a message in the head");
    f.ack(1, head_rest);
    f.ack(1, &layout[1].1);
    f.ack(1, &layout[2].1);
    poll_until("the three oldest segments to be deleted", || {
        paths[..3].iter().all(|path| !path.exists())
    });
    f.settle();
    assert!(paths[3..].iter().all(|path| path.exists()), "{:?}", exists(&paths));

    // The straggler is read from its copy, in order with the rest of its queue.
    let read = f.store.read(1, 0, 5, usize::MAX).expect("read");
    let expected: Vec<Seq> = std::iter::once(straggler)
        .chain(seqs.iter().copied().filter(|seq| *seq > layout[2].1[layout[2].1.len() - 1]))
        .take(5)
        .collect();
    assert_eq!(read.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), expected);
    let index = seqs.iter().position(|seq| *seq == straggler).expect("straggler");
    assert_eq!(read[0].1, payload(index as u64, 1024));

    f.reopen();
    f.ack(1, &[straggler]);
    f.settle();
    f.reopen();
}

#[test]
fn a_repeated_ack_does_not_release_a_straggler_that_compaction_moved() {
    let mut f = Fixture::new();
    f.fill(&[1], 300);
    let layout = f.layout();
    let head = layout[0].0.clone();
    let (_, head_rest) = layout[0].1.split_last().expect("a message in the head");
    f.ack(1, head_rest);
    // A consumer's duplicate ack (e.g. after a redelivery) of the one message acked last.
    f.ack(1, &[head_rest[head_rest.len() - 1]]);
    poll_until("the head segment to be compacted", || !head.exists());
    f.settle();
    f.reopen();
}

/// What a compaction rewrites besides the message: the delivered mark and delivery state
/// that were written in the deleted segment.
#[test]
fn compaction_keeps_delivered_marks_and_delivery_states_of_moved_messages() {
    let mut f = Fixture::new();
    let first = f.fill(&[1, 2], 40);
    let straggler = first[0];
    let state = DeliveryState { delivery_count: 3, ready_at: 12_345 };
    f.store.delivered(1, first[39]);
    f.store.set_state(1, straggler, state);
    f.store.set_state(2, straggler, DeliveryState { delivery_count: 1, ready_at: 0 });
    f.fill(&[1, 2], 260);
    let layout = f.layout();
    let head = layout[0].0.clone();
    assert!(layout[0].1.contains(&straggler));
    f.ack(2, &[straggler]);
    for (_, in_segment) in &layout[..2] {
        let rest: Vec<Seq> = in_segment.iter().copied().filter(|s| *s != straggler).collect();
        f.ack(1, &rest);
        f.ack(2, &rest);
    }
    poll_until("the head segment to be compacted", || !head.exists());
    f.settle();
    f.store.close().expect("close");
    f.store = FileStore::open(f.dir(), f.config.clone()).expect("reopen");
    let recovered = f.store.take_recovered();
    assert_eq!(recovered.delivered.get(&1), Some(&first[39]));
    assert_eq!(recovered.states.get(&1).and_then(|s| s.get(&straggler)), Some(&state));
    assert!(recovered.states.get(&2).is_none_or(|s| s.is_empty()), "queue 2 acked it");
    assert_eq!(postroom_store::read_all(&f.store, &recovered).expect("read"), f.model.messages());
}

/// A crash after the moved copies are synced but before the old segment is deleted leaves
/// both on disk: recovery must come to the same messages.
#[test]
fn a_compacted_segment_left_on_disk_by_a_crash_changes_nothing() {
    let mut f = Fixture::new();
    f.fill(&[1, 2], 300);
    let layout = f.layout();
    let head = layout[0].0.clone();
    let saved = std::fs::read(&head).expect("reading the head");
    let stragglers = [layout[0].1[3], layout[0].1[7]];
    let rest: Vec<Seq> = layout[0].1.iter().copied().filter(|s| !stragglers.contains(s)).collect();
    f.ack(1, &rest);
    f.ack(2, &rest);
    f.ack(2, &stragglers[..1]);
    poll_until("the head segment to be compacted", || !head.exists());
    // After the move: queue 1 acks one straggler, queue 2 the other.
    f.ack(1, &stragglers[..1]);
    f.ack(2, &stragglers[1..]);
    f.settle();
    f.store.close().expect("close");
    std::fs::write(&head, &saved).expect("restoring the head");
    f.store = FileStore::open(f.dir(), f.config.clone()).expect("reopen");
    assert_eq!(recovered_messages(&f.store), f.model.messages());
    f.settle();
    assert!(!head.exists(), "the restored head holds nothing live and is deleted again");
    f.reopen();
}

/// Regression: releasing a range that starts with a moved message (in a deleted segment)
/// must still release the references in the segments after it.
#[test]
fn a_purge_over_moved_messages_frees_the_later_segments() {
    let mut f = Fixture::new();
    let seqs = f.fill(&[1], 300);
    let layout = f.layout();
    let head = layout[0].0.clone();
    let (_, head_rest) = layout[0].1.split_last().expect("a message in the head");
    f.ack(1, head_rest);
    poll_until("the head segment to be compacted", || !head.exists());
    assert_eq!(f.store.release_from(1, 0).expect("purge"), 300 - head_rest.len() as u64);
    f.model.ack(1, &seqs);
    let paths: Vec<PathBuf> = layout[..layout.len() - 1].iter().map(|(p, _)| p.clone()).collect();
    poll_until("every segment before the active one to be deleted", || {
        paths.iter().all(|path| !path.exists())
    });
    f.settle();
    f.reopen();
}

/// A message that stays unacked through several compactions moves each time and is still
/// read back and recovered.
#[test]
fn a_long_lived_message_survives_repeated_compactions() {
    let mut f = Fixture::new();
    let old = f.fill(&[1], 1)[0];
    for round in 0..5 {
        let seqs = f.fill(&[2], 150);
        f.ack(2, &seqs);
        f.settle();
        if round % 2 == 1 {
            f.reopen();
        }
    }
    poll_until("the dead segments to be compacted away", || segment_files(f.dir()).len() <= 3);
    let read = f.store.read(1, 0, 10, usize::MAX).expect("read");
    assert_eq!(read, vec![(old, bytes::Bytes::from(payload(0, 1024)))]);
    f.reopen();
}

/// A spilled (transient) straggler moves too: readable until acked, dropped by recovery.
#[test]
fn a_spilled_straggler_is_moved_and_still_dropped_by_recovery() {
    let mut f = Fixture::new();
    let spilled = f.store.spill(&[7], b"transient").expect("spill");
    let seqs = f.fill(&[1], 300);
    let layout = f.layout();
    let head = layout[0].0.clone();
    f.ack(1, &seqs);
    poll_until("the head segment to be compacted", || !head.exists());
    let read = f.store.read(7, 0, 10, usize::MAX).expect("read");
    assert_eq!(read, vec![(spilled, bytes::Bytes::from_static(b"transient"))]);
    f.reopen();
}

#[test]
fn everything_recovers_after_segments_were_deleted() {
    let mut f = Fixture::new();
    let mut seqs = f.fill(&[1], 200);
    seqs.extend(f.fill(&[1, 2], 200));
    let only_queue_1: Vec<PathBuf> = f
        .layout()
        .into_iter()
        .filter(|(_, in_segment)| in_segment.iter().all(|seq| *seq <= seqs[199]))
        .map(|(path, _)| path)
        .collect();
    assert!(only_queue_1.len() >= 2, "{only_queue_1:?}");

    // Queue 1 acks in order, with restarts in between; queue 2 keeps the second half.
    for chunk in seqs.chunks(100) {
        f.ack(1, chunk);
        f.settle();
        f.reopen();
    }
    assert!(only_queue_1.iter().all(|path| !path.exists()), "{:?}", exists(&only_queue_1));
    assert_eq!(f.model.messages().len(), 200);

    // New messages continue above the old ones and recover alongside them.
    let more = f.fill(&[3], 50);
    assert!(more[0] > seqs[seqs.len() - 1]);
    f.reopen();
    f.ack(2, &seqs[200..]);
    f.ack(3, &more);
    f.settle();
    f.reopen();
    assert!(f.model.messages().is_empty());
}

#[test]
fn a_dead_active_segment_stays_active_after_a_reopen_and_seqs_continue() {
    let mut f = Fixture::new();
    let seqs = f.fill(&[1], 10);
    f.ack(1, &seqs);
    f.settle();
    let paths = segment_files(f.dir());
    assert_eq!(paths.len(), 1, "the active segment is never deleted while active");
    f.reopen();
    // Appends continue in the newest segment after a reopen, so it is still there and no
    // new file was started.
    assert_eq!(segment_files(f.dir()), paths);
    let next = f.fill(&[1], 1);
    assert!(next[0] > *seqs.last().expect("seqs"), "sequence numbers are never reused");
}

/// Regression (review): recovery indexed only a segment's first record if it was a
/// publish, so a segment opening with a spill lost its index entry for the publishes after
/// it, and once older segments were gone, reads of that queue found nothing.
#[test]
fn a_segment_that_opens_with_a_spill_still_serves_reads_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = small_segments(Durability::Fsync);
    let store = FileStore::open(dir.path(), config.clone()).expect("open");
    // Spills fill the first segment until one opens the next.
    let mut spills = Vec::new();
    let first_files = segment_files(dir.path()).len();
    while segment_files(dir.path()).len() == first_files || spills.len() < 2 {
        spills.push(store.spill(&[2], &payload(spills.len() as u64, 4096)).expect("spill"));
        let (barrier, lsn) = store.append(&[9], b"barrier").expect("append");
        store.ack(9, &[barrier]).expect("ack the barrier");
        wait_durable(&store, lsn);
        assert!(spills.len() < 1000, "no new segment was started");
    }
    // The new segment opened with the last spill; publishes follow it.
    let wanted: Vec<Seq> =
        (0..5u64).map(|n| store.append(&[1], &payload(n, 16)).expect("append").0).collect();
    let (_, lsn) = store.append(&[3], b"last").expect("append");
    wait_durable(&store, lsn);
    store.ack(2, &spills).expect("ack the spills");
    store.close().expect("close");
    drop(store);
    let store = FileStore::open(dir.path(), config).expect("reopen");
    let read: Vec<Seq> =
        store.read(1, 0, 100, usize::MAX).expect("read").into_iter().map(|(s, _)| s).collect();
    assert_eq!(read, wanted);
}
