//! Helpers shared by the store's integration tests: bounded waits on [`Progress`], a model
//! of what recovery must return, a seeded random number generator, and readers of the
//! on-disk journal (decoded with the crate's own [`record`] module).
//!
//! Every wait here is bounded by [`PATIENCE`], so a commit thread that goes silent fails a
//! test instead of hanging the suite. Each test binary compiles this module on its own and
//! uses only part of it, hence the `dead_code` allowance.

#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postroom_store::record::{self, Record, SEGMENT_MAGIC};
use postroom_store::{
    Durability, Lsn, Progress, QueueId, RecoveredMessage, Seq, Store, StoreConfig,
};

/// The longest any single wait in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The smallest segment size [`StoreConfig::validate`] accepts: small enough that a few
/// hundred KiB of appends cross several segment boundaries.
pub const SMALL_SEGMENT: u64 = 64 * 1024;

/// Every durability setting a [`postroom_store::FileStore`] runs with.
pub fn durabilities() -> [Durability; 3] {
    [Durability::Fsync, Durability::Interval(Duration::from_millis(5)), Durability::None]
}

/// A file store configuration with [`SMALL_SEGMENT`]-sized segments.
pub fn small_segments(durability: Durability) -> StoreConfig {
    StoreConfig { durability, segment_size: SMALL_SEGMENT, ..StoreConfig::default() }
}

/// Polls `done` every millisecond until it holds, failing the test after [`PATIENCE`].
pub fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `store` reports `lsn` durable; fails the test if the store fails first.
pub fn wait_durable(store: &dyn Store, lsn: Lsn) -> Progress {
    let progress = store.progress();
    let mut seen = Progress::default();
    poll_until(&format!("Lsn {lsn} to become durable"), || {
        seen = *progress.borrow();
        assert!(!seen.failed, "the store failed while waiting for Lsn {lsn}: {seen:?}");
        seen.durable >= lsn
    });
    seen
}

/// Waits until `store` reports a failed write or sync.
pub fn wait_failed(store: &dyn Store) -> Progress {
    let progress = store.progress();
    let mut seen = Progress::default();
    poll_until("the store to report a failure", || {
        seen = *progress.borrow();
        seen.failed
    });
    seen
}

/// A deterministic payload of `len` bytes that differs for every `n`.
pub fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// What recovery must return, kept by applying the same publishes and acks.
///
/// Queues keep their append order when one of them acks, as [`RecoveredMessage::queues`]
/// documents.
#[derive(Debug, Default, Clone)]
pub struct Model {
    messages: BTreeMap<Seq, (Vec<QueueId>, Bytes)>,
}

impl Model {
    /// Records a publish.
    pub fn publish(&mut self, seq: Seq, queues: &[QueueId], payload: &[u8]) {
        if !queues.is_empty() {
            self.messages.insert(seq, (queues.to_vec(), Bytes::copy_from_slice(payload)));
        }
    }

    /// Records an ack; unknown seqs and queues that do not reference a seq are ignored.
    pub fn ack(&mut self, queue: QueueId, seqs: &[Seq]) {
        for seq in seqs {
            if let Some((queues, _)) = self.messages.get_mut(seq) {
                if let Some(i) = queues.iter().position(|q| *q == queue) {
                    queues.remove(i);
                }
                if queues.is_empty() {
                    self.messages.remove(seq);
                }
            }
        }
    }

    /// Applies a decoded journal record.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Publish { seq, queues, payload } => self.publish(*seq, queues, payload),
            Record::Ack { queue, seqs } => self.ack(*queue, seqs),
            // A moved copy lists exactly the queues that referenced the message then.
            Record::Moved { seq, queues, payload, transient: false } => {
                self.messages.remove(seq);
                self.publish(*seq, queues, payload);
            }
            // Delivered marks flag redeliveries; they never change which messages exist.
            _ => {}
        }
    }

    /// The messages recovery must return, in sequence order.
    pub fn messages(&self) -> Vec<RecoveredMessage> {
        self.messages
            .iter()
            .map(|(seq, (queues, payload))| {
                // Read back per queue, a message lists its queues in increasing order.
                let mut queues = queues.clone();
                queues.sort_unstable();
                RecoveredMessage { seq: *seq, queues, payload: payload.clone() }
            })
            .collect()
    }

    /// The sequence numbers still referenced, in order.
    pub fn seqs(&self) -> Vec<Seq> {
        self.messages.keys().copied().collect()
    }
}

/// `messages` with each message's queues sorted, for comparisons that must not depend on
/// the order of a message's remaining queues (a separate test pins that order down).
pub fn with_sorted_queues(mut messages: Vec<RecoveredMessage>) -> Vec<RecoveredMessage> {
    for message in &mut messages {
        message.queues.sort_unstable();
    }
    messages
}

/// A small, seeded pseudo-random generator (SplitMix64). The seed is `default` unless the
/// `SEED` environment variable overrides it, and is printed if the test panics, so that a
/// failure can be replayed with `SEED=<seed> cargo test -p postroom-store <name>`.
pub struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    /// A generator seeded with `SEED` from the environment, or `default`.
    pub fn seeded(default: u64) -> Rng {
        let seed = match std::env::var("SEED") {
            Ok(text) => text.parse().unwrap_or_else(|_| panic!("SEED must be a u64, not {text:?}")),
            Err(_) => default,
        };
        Rng::new(seed)
    }

    fn new(seed: u64) -> Rng {
        Rng { seed, state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (which must not be empty).
    pub fn in_range(&mut self, range: std::ops::Range<usize>) -> usize {
        assert!(!range.is_empty(), "empty range {range:?}");
        range.start + (self.next_u64() % (range.end - range.start) as u64) as usize
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("random choices came from SEED={} (set SEED to replay them)", self.seed);
        }
    }
}

/// The journal directory of a store opened in `dir`.
pub fn journal(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// The segment files under `dir`'s journal, in id order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(journal(dir))
        .expect("listing the journal")
        .map(|entry| entry.expect("listing the journal").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// The numeric id in a segment file's name.
pub fn segment_id(path: &Path) -> u64 {
    let stem = path.file_stem().and_then(|s| s.to_str()).expect("a segment file name");
    stem.parse().unwrap_or_else(|_| panic!("{} is not named by a segment id", path.display()))
}

/// One record in a segment file: its byte range and what it decodes to.
#[derive(Debug, Clone)]
pub struct Span {
    /// Offset of the record's header.
    pub start: usize,
    /// Offset just past the record.
    pub end: usize,
    /// The decoded record.
    pub record: Record,
}

/// Decodes every record of a healthy segment file; panics on anything else.
pub fn read_records(path: &Path) -> Vec<Span> {
    let data = Bytes::from(std::fs::read(path).expect("reading a segment"));
    assert!(data.starts_with(SEGMENT_MAGIC), "{} has no segment magic", path.display());
    let mut spans = Vec::new();
    let mut pos = SEGMENT_MAGIC.len();
    while pos < data.len() {
        let (record, len) = record::decode(&data.slice(pos..))
            .unwrap_or_else(|e| panic!("{} at {pos}: {e:?}", path.display()));
        // Every segment opens with a base record (the next seq); the tests look past it.
        if !matches!(record, Record::Base { .. }) {
            spans.push(Span { start: pos, end: pos + len, record });
        }
        pos += len;
    }
    spans
}

/// The sequence numbers published in a segment file, in file order.
pub fn published_seqs(path: &Path) -> Vec<Seq> {
    read_records(path)
        .into_iter()
        .filter_map(|span| match span.record {
            Record::Publish { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

/// Takes what `store` recovered and reads every message back (see `postroom_store::read_all`).
pub fn recovered_messages(store: &dyn Store) -> Vec<RecoveredMessage> {
    let recovered = store.take_recovered();
    postroom_store::read_all(store, &recovered).expect("reading recovered messages back")
}
