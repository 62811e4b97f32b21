//! The [`Store`] conformance suite: the contract in `postroom_store`'s crate docs, checked
//! against every implementation and durability setting (STYLE.md item 6).
//!
//! Each case is a module with one test per store: `file_fsync`, `file_interval_5ms`,
//! `file_no_sync` ([`FileStore`] with each [`Durability`], in a temporary directory, with
//! 64 KiB segments so that cases also cross segment boundaries) and `memory`
//! ([`MemoryStore`]). A case drives the store through a [`Subject`], which keeps a model of
//! what recovery must return; "reopen" means close and `FileStore::open` on the same
//! directory, or `close`, `reopen` and `take_recovered` on the same `MemoryStore`. On
//! teardown every subject is reopened once more and must recover exactly its model.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use std::time::Duration;

use common::{Model, Rng, payload, small_segments, wait_durable, with_sorted_queues};
use postroom_store::read_all;
use postroom_store::{
    DeliveryState, Durability, FileStore, Lsn, MemoryStore, QueueId, RecoveredMessage, Seq, Store,
    StoreConfig, StoreError,
};
use tempfile::TempDir;

enum Backend {
    File { dir: TempDir, config: StoreConfig, store: FileStore },
    Memory(MemoryStore),
}

/// A store under test, with the model of what it must recover.
/// What a reopened store recovered, its messages read back.
#[derive(Debug)]
struct Reopened {
    messages: Vec<RecoveredMessage>,
    delivered: HashMap<QueueId, Seq>,
    states: HashMap<QueueId, std::collections::BTreeMap<Seq, DeliveryState>>,
    definitions: Option<Bytes>,
}

struct Subject {
    backend: Backend,
    model: Model,
}

impl Subject {
    fn file(durability: Durability) -> Subject {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let config = small_segments(durability);
        let store = FileStore::open(dir.path(), config.clone()).expect("opening a new FileStore");
        Subject { backend: Backend::File { dir, config, store }, model: Model::default() }
    }

    fn memory() -> Subject {
        Subject { backend: Backend::Memory(MemoryStore::new()), model: Model::default() }
    }

    fn store(&self) -> &dyn Store {
        match &self.backend {
            Backend::File { store, .. } => store,
            Backend::Memory(store) => store,
        }
    }

    /// Appends through the store and the model.
    fn append(&mut self, queues: &[QueueId], payload: &[u8]) -> (Seq, Lsn) {
        let (seq, lsn) = self.store().append(queues, payload).expect("append");
        self.model.publish(seq, queues, payload);
        (seq, lsn)
    }

    /// Acks through the store and the model.
    fn ack(&mut self, queue: QueueId, seqs: &[Seq]) {
        self.store().ack(queue, seqs).expect("ack");
        self.model.ack(queue, seqs);
    }

    /// What recovery must return.
    fn expected(&self) -> Vec<RecoveredMessage> {
        self.model.messages()
    }

    /// Closes and reopens the store, returning what the reopened store recovered, with
    /// every message read back.
    fn reopen(&mut self) -> Reopened {
        match &mut self.backend {
            Backend::File { dir, config, store } => {
                store.close().expect("closing the FileStore");
                *store = FileStore::open(dir.path(), config.clone()).expect("reopening");
            }
            Backend::Memory(store) => {
                store.close().expect("closing the MemoryStore");
                store.reopen();
            }
        }
        let recovered = self.store().take_recovered();
        let messages = read_all(self.store(), &recovered).expect("reading recovered messages back");
        Reopened {
            messages,
            delivered: recovered.delivered,
            states: recovered.states,
            definitions: recovered.definitions,
        }
    }
}

impl Drop for Subject {
    /// Global invariant: whatever a case did, a reopen recovers exactly the model.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let recovered = self.reopen();
        assert_eq!(
            with_sorted_queues(recovered.messages),
            with_sorted_queues(self.expected()),
            "teardown: the final reopen must recover exactly the unacked messages"
        );
    }
}

/// Generates, for each case, a module with one test per store. `ignore file:` and
/// `ignore memory:` mark a case as a known bug of that implementation.
macro_rules! conformance {
    ($(
        $(#[doc = $doc:literal])*
        $(ignore file: $file_bug:literal;)?
        $(ignore memory: $memory_bug:literal;)?
        fn $name:ident($subject:ident) $body:block
    )*) => {$(
        $(#[doc = $doc])*
        mod $name {
            use super::*;

            fn run($subject: &mut Subject) $body

            $(#[ignore = $file_bug])?
            #[test]
            fn file_fsync() {
                run(&mut Subject::file(Durability::Fsync));
            }

            $(#[ignore = $file_bug])?
            #[test]
            fn file_interval_5ms() {
                run(&mut Subject::file(Durability::Interval(Duration::from_millis(5))));
            }

            $(#[ignore = $file_bug])?
            #[test]
            fn file_no_sync() {
                run(&mut Subject::file(Durability::None));
            }

            $(#[ignore = $memory_bug])?
            #[test]
            fn memory() {
                run(&mut Subject::memory());
            }
        }
    )*};
}

/// Appends `count` small payloads to `queue`, returning their seqs.
fn append_many(s: &mut Subject, queue: QueueId, count: u64) -> Vec<Seq> {
    (0..count).map(|n| s.append(&[queue], &payload(n, 24)).0).collect()
}

/// Checks that `bogus` acks, given the seqs of two messages on queue 1 of which the first
/// is already acked, change nothing: in particular they must not let a [`FileStore`]
/// delete a segment that still holds the second message once later segments fill up.
fn assert_bogus_acks_are_harmless(s: &mut Subject, bogus: impl Fn(&dyn Store, Seq, Seq)) {
    let (acked, _) = s.append(&[1], b"acked");
    let (kept, _) = s.append(&[1], b"kept");
    s.ack(1, &[acked]);
    bogus(s.store(), acked, kept);
    // Three 40 KiB fillers start two new 64 KiB segments; acking them lets the store
    // collect every segment at the head of the journal that holds no live message.
    let fillers: Vec<Seq> = (0..3).map(|n| s.append(&[9], &payload(n, 40 * 1024)).0).collect();
    s.ack(9, &fillers);
    let (_, lsn) = s.append(&[2], b"barrier");
    wait_durable(s.store(), lsn);
    let recovered = s.reopen();
    assert_eq!(recovered.messages, s.expected());
    assert!(recovered.messages.iter().any(|m| m.seq == kept), "message {kept} was lost");
}

conformance! {
    /// Seqs and Lsns grow with every append, acks in between included.
    fn append_returns_increasing_seqs_and_lsns(s) {
        let mut last: (Seq, Lsn) = (0, 0);
        for n in 0..200u64 {
            let queue = 1 + (n % 3) as QueueId;
            let (seq, lsn) = s.append(&[queue], &payload(n, 16));
            assert!(seq > last.0, "seq {seq} after {}", last.0);
            assert!(lsn > last.1, "Lsn {lsn} after {}", last.1);
            last = (seq, lsn);
            if n % 5 == 4 {
                s.ack(queue, &[seq]);
            }
        }
    }

    /// `Progress::durable` catches up with the last append, and nothing fails.
    fn durable_progress_reaches_the_last_lsn(s) {
        let mut last = 0;
        for n in 0..50u64 {
            last = s.append(&[1, 2], &payload(n, 100)).1;
        }
        let progress = wait_durable(s.store(), last);
        assert!(progress.durable >= last && !progress.failed, "{progress:?}");
        s.ack(1, &[1, 2, 3]);
        let (_, after_ack) = s.append(&[3], b"after an ack");
        assert!(after_ack > last);
        wait_durable(s.store(), after_ack);
    }

    /// Recovery returns the unacked messages, in seq order, with their remaining queues and
    /// their payloads byte for byte (empty and binary ones included).
    fn recovery_returns_exactly_the_unacked_messages_in_seq_order(s) {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let payloads: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello".to_vec(),
            all_bytes,
            vec![0; 1000],
            payload(1, 4096),
        ];
        let mut seqs = Vec::new();
        for n in 0..30usize {
            // One or two queues per message, so that any ack leaves the queues in order.
            let queues: &[QueueId] = match n % 3 {
                0 => &[1],
                1 => &[2, 3],
                _ => &[3, 1],
            };
            seqs.push(s.append(queues, &payloads[n % payloads.len()]).0);
        }
        s.ack(1, &seqs[..10]);
        s.ack(3, &seqs[5..20]);
        s.ack(2, &[seqs[4], seqs[25]]);
        let recovered = s.reopen();
        assert_eq!(recovered.messages, s.expected());
        assert!(recovered.messages.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(!recovered.messages.is_empty());
    }

    /// A message routed to three queues is recovered until the last of them acks it.
    fn a_message_referenced_by_three_queues_stays_until_all_three_ack_it(s) {
        let (seq, _) = s.append(&[1, 2, 3], b"shared");
        let (other, _) = s.append(&[4], b"unrelated");
        let queues_of = |recovered: &Reopened| -> Option<Vec<QueueId>> {
            let message = recovered.messages.iter().find(|m| m.seq == seq)?;
            assert_eq!(&message.payload[..], b"shared");
            let mut queues = message.queues.clone();
            queues.sort_unstable();
            Some(queues)
        };
        assert_eq!(queues_of(&s.reopen()), Some(vec![1, 2, 3]));
        s.ack(2, &[seq]);
        assert_eq!(queues_of(&s.reopen()), Some(vec![1, 3]));
        s.ack(1, &[seq]);
        assert_eq!(queues_of(&s.reopen()), Some(vec![3]));
        s.ack(3, &[seq]);
        let recovered = s.reopen();
        assert_eq!(queues_of(&recovered), None);
        assert_eq!(recovered.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![other]);
    }

    /// The queues a message still has are recovered in the order they were appended
    /// (`RecoveredMessage::queues`), even after the first of them acks.
    fn recovered_queues_keep_their_append_order_after_one_of_them_acks(s) {
        let (seq, _) = s.append(&[1, 2, 3], b"shared");
        s.ack(1, &[seq]);
        let recovered = s.reopen();
        assert_eq!(recovered.messages.len(), 1);
        assert_eq!(recovered.messages[0].queues, vec![2, 3], "message {seq}");
    }

    /// Acks of seqs that were never appended (0, far ahead, `u64::MAX`) change nothing.
    fn acks_of_seqs_never_appended_are_harmless(s) {
        assert_bogus_acks_are_harmless(s, |store, _, kept| {
            store.ack(1, &[0, kept + 1000, Seq::MAX]).expect("ack of unknown seqs");
        });
    }

    /// A second ack of the same seq by the same queue changes nothing.
    fn a_repeated_ack_is_harmless(s) {
        assert_bogus_acks_are_harmless(s, |store, acked, _| {
            store.ack(1, &[acked]).expect("repeated ack");
        });
    }

    /// An ack from a queue that does not reference the message changes nothing.
    fn an_ack_from_a_queue_that_does_not_reference_the_message_is_harmless(s) {
        assert_bogus_acks_are_harmless(s, |store, _, kept| {
            store.ack(7, &[kept]).expect("ack from an unrelated queue");
        });
    }

    /// Acks of unknown seqs, from a queue that does not hold the messages, or repeated, leave
    /// every message recoverable while the store stays within one segment.
    fn bogus_acks_within_one_segment_are_harmless(s) {
        let seqs = append_many(s, 1, 10);
        s.ack(1, &[0, seqs[9] + 1, seqs[9] + 500, Seq::MAX]);
        s.ack(2, &seqs);
        s.ack(1, &seqs[..3]);
        s.ack(1, &seqs[..3]);
        let recovered = s.reopen();
        assert_eq!(recovered.messages, s.expected());
        assert_eq!(recovered.messages.len(), 7);
    }

    /// Definitions are saved, replaced by the next save, and recovered; messages are not
    /// affected by them.
    fn definitions_are_saved_replaced_and_recovered(s) {
        assert_eq!(s.store().take_recovered().definitions, None);
        assert_eq!(s.reopen().definitions, None);
        s.store().save_definitions(b"first").expect("save_definitions");
        assert_eq!(s.reopen().definitions.as_deref(), Some(&b"first"[..]));
        let (seq, _) = s.append(&[1], b"message");
        let second = payload(2, 10_000);
        s.store().save_definitions(b"replaced at once").expect("save_definitions");
        s.store().save_definitions(&second).expect("save_definitions");
        let recovered = s.reopen();
        assert_eq!(recovered.definitions.as_deref(), Some(&second[..]));
        assert_eq!(recovered.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![seq]);
        assert_eq!(s.reopen().definitions.as_deref(), Some(&second[..]));
        s.store().save_definitions(b"").expect("save_definitions");
        assert_eq!(s.reopen().definitions.as_deref(), Some(&b""[..]));
    }

    /// A store that never held anything recovers nothing, however often it is reopened.
    fn an_empty_store_recovers_nothing(s) {
        let first = s.store().take_recovered();
        assert!(first.queues.is_empty() && first.definitions.is_none(), "{first:?}");
        for _ in 0..3 {
            let recovered = s.reopen();
            assert!(recovered.messages.is_empty(), "{recovered:?}");
            assert!(recovered.definitions.is_none(), "{recovered:?}");
        }
    }

    /// Once `take_recovered` has been called, later calls return nothing.
    fn take_recovered_returns_nothing_the_second_time(s) {
        s.append(&[1], b"message");
        s.store().save_definitions(b"definitions").expect("save_definitions");
        let first = s.reopen();
        assert_eq!(first.messages.len(), 1);
        let second = s.store().take_recovered();
        assert!(second.queues.is_empty() && second.definitions.is_none(), "{second:?}");
    }

    /// Seqs handed out after a reopen are above every seq handed out before it.
    fn seqs_after_a_reopen_continue_above_the_old_ones(s) {
        let mut highest = 0;
        for round in 0..3u64 {
            let seqs = append_many(s, 1, 5);
            assert!(seqs[0] > highest, "round {round}: seq {} after {highest}", seqs[0]);
            highest = seqs[4];
            s.ack(1, &seqs[1..4]);
            s.reopen();
        }
    }

    /// Seqs are never reused, even once every message was acked and the store went
    /// through two restarts.
    fn seqs_are_not_reused_after_everything_was_acked_and_two_reopens(s) {
        let seqs = append_many(s, 1, 3);
        s.ack(1, &seqs);
        s.reopen();
        s.reopen();
        let (seq, _) = s.append(&[1], b"after two reopens");
        assert!(seq > seqs[2], "seq {seq} reuses one already handed out (up to {})", seqs[2]);
    }

    /// Ten thousand appends, then acks of all but every seventh, survive a reopen exactly.
    fn ten_thousand_appends_with_all_but_every_seventh_acked_survive_a_reopen(s) {
        let seqs = append_many(s, 1, 10_000);
        for (n, seq) in seqs.iter().enumerate() {
            if n % 7 != 0 {
                s.ack(1, &[*seq]);
            }
        }
        let recovered = s.reopen();
        assert_eq!(recovered.messages.len(), 10_000usize.div_ceil(7));
        assert_eq!(recovered.messages, s.expected());
    }

    /// A 1 MiB payload, larger than a segment, survives a reopen byte for byte, with the
    /// messages around it.
    fn a_one_mebibyte_payload_survives_a_reopen(s) {
        let large = payload(42, 1024 * 1024);
        s.append(&[1], b"before");
        let (seq, lsn) = s.append(&[1, 2], &large);
        s.append(&[2], b"after");
        wait_durable(s.store(), lsn);
        let recovered = s.reopen();
        assert_eq!(recovered.messages, s.expected());
        let found = recovered.messages.iter().find(|m| m.seq == seq).expect("the large message");
        assert!(found.payload == large, "the 1 MiB payload came back different");
    }

    /// Delivery states are recovered for referenced messages, the latest one per queue and
    /// message; an ack drops them, and a state for a message the queue does not reference
    /// is ignored.
    fn delivery_states_survive_a_reopen_until_the_message_is_acked(s) {
        let seqs = append_many(s, 1, 4);
        let shared = s.append(&[1, 2], b"shared");
        let early = DeliveryState { delivery_count: 1, ready_at: 0 };
        let late = DeliveryState { delivery_count: 2, ready_at: 1_700_000_000_000 };
        s.store().set_state(1, seqs[0], early);
        s.store().set_state(1, seqs[0], late);
        s.store().set_state(1, seqs[1], early);
        s.store().set_state(1, seqs[2], early);
        s.store().set_state(2, shared.0, late);
        s.store().set_state(2, seqs[3], early);
        s.ack(1, &[seqs[2]]);
        let recovered = s.reopen();
        let expected = HashMap::from([
            (1, [(seqs[0], late), (seqs[1], early)].into_iter().collect()),
            (2, [(shared.0, late)].into_iter().collect()),
        ]);
        assert_eq!(recovered.states, expected);
        s.ack(1, &[seqs[0]]);
        s.ack(2, &[shared.0]);
        let recovered = s.reopen();
        let expected = HashMap::from([(1, [(seqs[1], early)].into_iter().collect())]);
        assert_eq!(recovered.states, expected);
    }

    /// Delivered marks keep the highest seq per queue and are recovered after a reopen.
    fn delivered_marks_keep_the_highest_seq_per_queue_across_a_reopen(s) {
        let seqs = append_many(s, 1, 5);
        s.store().delivered(1, seqs[3]);
        s.store().delivered(1, seqs[1]);
        s.store().delivered(2, seqs[4]);
        let recovered = s.reopen();
        assert_eq!(recovered.delivered, HashMap::from([(1, seqs[3]), (2, seqs[4])]));
        assert_eq!(recovered.messages, s.expected());
    }

    /// After `close`, appends fail with `StoreError::Closed`.
    fn appends_after_close_fail(s) {
        s.append(&[1], b"before close");
        s.store().close().expect("close");
        let error = s.store().append(&[1], b"after close").expect_err("append after close");
        assert!(matches!(error, StoreError::Closed), "{error:?}");
    }

    /// `read` returns a queue's unacked messages in order, from any seq, within limits,
    /// across segments, and the same after a reopen.
    fn reads_return_a_queues_unacked_messages_in_order_from_a_seq(s) {
        let mut last = 0;
        for n in 0..300u64 {
            let queues: &[QueueId] = if n % 3 == 0 { &[1, 2] } else { &[1 + (n % 2) as QueueId] };
            let size = if n % 50 == 0 { 20 * 1024 } else { 40 };
            last = s.append(queues, &payload(n, size)).1;
        }
        let on_one: Vec<Seq> = s.expected().iter().filter(|m| m.queues.contains(&1)).map(|m| m.seq).collect();
        let acked: Vec<Seq> = on_one.iter().copied().step_by(4).collect();
        s.ack(1, &acked);
        let (_, barrier) = s.append(&[7], b"barrier");
        wait_durable(s.store(), barrier.max(last));
        for round in 0..2 {
            let want: Vec<(Seq, Bytes)> = s
                .expected()
                .into_iter()
                .filter(|m| m.queues.contains(&1))
                .map(|m| (m.seq, m.payload))
                .collect();
            let all = s.store().read(1, 0, usize::MAX, usize::MAX).expect("read");
            assert_eq!(all, want, "round {round}: everything on queue 1");
            let middle = want[want.len() / 2].0;
            let tail = s.store().read(1, middle, usize::MAX, usize::MAX).expect("read");
            assert_eq!(tail, want[want.len() / 2..].to_vec(), "round {round}: from a seq");
            let first_five = s.store().read(1, 0, 5, usize::MAX).expect("read");
            assert_eq!(first_five, want[..5].to_vec(), "round {round}: at most 5");
            let by_bytes = s.store().read(1, 0, usize::MAX, 1).expect("read");
            assert_eq!(by_bytes, want[..1].to_vec(), "round {round}: stops after max_bytes");
            assert!(s.store().read(3, 0, 10, usize::MAX).expect("read").is_empty());
            s.reopen();
        }
    }

    /// A read racing the commit thread returns a prefix of the queue, never a list with
    /// gaps: a message not yet written ends the answer instead of being passed over.
    fn reads_during_appends_return_prefixes_without_gaps(s) {
        for round in 0..20u64 {
            for n in 0..100 {
                s.append(&[1], &payload(round * 100 + n, 200));
            }
            let want: Vec<Seq> = s.expected().iter().map(|m| m.seq).collect();
            let got: Vec<Seq> =
                s.store().read(1, 0, usize::MAX, usize::MAX).expect("read").into_iter().map(|(seq, _)| seq).collect();
            assert_eq!(got, want[..got.len()].to_vec(), "round {round}: not a prefix");
        }
    }

    /// `release_from` drops every reference a queue holds from a seq on, other queues
    /// keep theirs, and recovery agrees; spilled (transient) messages are readable but
    /// not recovered.
    fn release_from_drops_a_queues_tail_and_spills_do_not_survive_a_reopen(s) {
        let seqs: Vec<Seq> = (0..50u64).map(|n| s.append(&[1, 2], &payload(n, 64)).0).collect();
        let released = s.store().release_from(1, seqs[20]).expect("release");
        assert_eq!(released, 30);
        s.model.ack(1, &seqs[20..]);
        let spilled = s.store().spill(&[3], b"transient").expect("spill");
        let (_, lsn) = s.append(&[9], b"barrier");
        wait_durable(s.store(), lsn);
        let on_one = s.store().read(1, 0, usize::MAX, usize::MAX).expect("read");
        assert_eq!(on_one.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), seqs[..20].to_vec());
        assert_eq!(s.store().read(2, 0, usize::MAX, usize::MAX).expect("read").len(), 50);
        let spill = s.store().read(3, 0, usize::MAX, usize::MAX).expect("read");
        assert_eq!(spill, vec![(spilled, Bytes::from_static(b"transient"))]);
        assert_eq!(s.store().release_from(1, seqs[20]).expect("again"), 0, "idempotent");
        let recovered = s.reopen();
        assert_eq!(recovered.messages, s.expected(), "the spill is not recovered");
    }

    /// A queue whose messages are sparse in the journal (one in 500) reads them all back,
    /// in order, across the index jumps that skip the other queue's records.
    fn reads_of_a_sparse_queue_return_every_message(s) {
        let mut mine = Vec::new();
        let mut last = 0;
        for n in 0..3000u64 {
            if n % 500 == 7 {
                mine.push(s.append(&[1], &payload(n, 32)).0);
            }
            last = s.append(&[2], &payload(n, 32)).1;
        }
        wait_durable(s.store(), last);
        let read: Vec<Seq> =
            s.store().read(1, 0, usize::MAX, usize::MAX).expect("read").into_iter().map(|(q, _)| q).collect();
        assert_eq!(read, mine);
    }
    /// Reads of one message at a time, scattered over the journal between another queue's
    /// records (as a delayed exchange's releases read), return exactly that message, in
    /// any order: small ones, one larger than a read-ahead chunk, across segments; a read
    /// from an acked message returns the next one, and a read of a few returns those.
    fn single_message_reads_anywhere_return_that_message(s) {
        let mut rng = Rng::seeded(23);
        let mut mine: Vec<(Seq, Bytes)> = Vec::new();
        let mut last = 0;
        for n in 0..2000u64 {
            let large = n == 1000;
            let size = if large { 300 * 1024 } else { rng.in_range(16..400) };
            let queue = if large || rng.in_range(0..37) == 0 { 1 } else { 2 };
            let (seq, lsn) = s.append(&[queue], &payload(n, size));
            if queue == 1 {
                mine.push((seq, Bytes::from(payload(n, size))));
            }
            last = lsn;
        }
        wait_durable(s.store(), last);
        assert!(mine.len() > 20, "only {} messages on queue 1", mine.len());
        for (seq, body) in mine.iter().rev() {
            let read = s.store().read(1, *seq, 1, usize::MAX).expect("read");
            assert_eq!(read, vec![(*seq, body.clone())], "message {seq}");
        }
        let acked = mine[3].0;
        s.ack(1, &[acked]);
        assert_eq!(s.store().read(1, acked, 1, usize::MAX).expect("read"), vec![mine[4].clone()]);
        assert_eq!(s.store().read(1, mine[10].0, 5, usize::MAX).expect("read"), mine[10..15].to_vec());
    }
}
