//! [`FileStore`] recovery from hand-made damage (STYLE.md item 10): a journal is written,
//! the store closed, and its files edited with `std::fs` before `FileStore::open`.
//!
//! A torn tail (the end of the last segment cut, zeroed, or with a damaged last record) is
//! absorbed by truncating the segment to its last whole record; damage with valid records
//! after it is refused as [`StoreError::Corrupt`], naming the file and the record's offset,
//! unless `recover_skip_corrupt` is set. Where a test picks offsets at random it uses a
//! seeded [`Rng`]: the seed is printed on failure and `SEED=<n>` replays it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{
    Model, Rng, Span, payload, published_seqs, read_records, recovered_messages, segment_files,
    wait_durable,
};
use postroom_store::record::SEGMENT_MAGIC;
use postroom_store::{
    Durability, FileStore, QueueId, RecoveredMessage, Store, StoreConfig, StoreError,
};
use tempfile::TempDir;

fn config(skip_corrupt: bool) -> StoreConfig {
    StoreConfig {
        durability: Durability::Fsync,
        recover_skip_corrupt: skip_corrupt,
        ..StoreConfig::default()
    }
}

/// Opens the store in `dir`, returning what it recovered, and closes it again.
fn recover(dir: &Path, skip_corrupt: bool) -> Result<Vec<RecoveredMessage>, StoreError> {
    let store = FileStore::open(dir, config(skip_corrupt))?;
    let messages = recovered_messages(&store);
    store.close().expect("close");
    Ok(messages)
}

/// What recovery must return from these records.
fn expected<'a>(spans: impl IntoIterator<Item = &'a Span>) -> Vec<RecoveredMessage> {
    let mut model = Model::default();
    for span in spans {
        model.apply(&span.record);
    }
    model.messages()
}

fn flip_bit(data: &[u8], offset: usize, bit: usize) -> Vec<u8> {
    let mut damaged = data.to_vec();
    damaged[offset] ^= 1 << bit;
    damaged
}

/// A closed store whose journal is one small segment of publishes and an ack.
struct Journal {
    dir: TempDir,
    segment: PathBuf,
    pristine: Vec<u8>,
    spans: Vec<Span>,
}

impl Journal {
    fn new() -> Journal {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let store = FileStore::open(dir.path(), config(false)).expect("opening a new FileStore");
        let appends: [(&[QueueId], Vec<u8>); 6] = [
            (&[1], b"one".to_vec()),
            (&[1, 2], b"two".to_vec()),
            (&[2], payload(3, 40)),
            (&[3], b"four".to_vec()),
            (&[1], Vec::new()),
            (&[2, 3], payload(6, 8)),
        ];
        let mut last = 0;
        for (n, (queues, data)) in appends.iter().enumerate() {
            last = store.append(queues, data).expect("append").1;
            if n == 2 {
                store.ack(1, &[1, 2]).expect("ack");
            }
        }
        wait_durable(&store, last);
        store.close().expect("close");
        let segments = segment_files(dir.path());
        assert_eq!(segments.len(), 1, "the journal fits in one segment");
        let segment = segments[0].clone();
        let pristine = fs::read(&segment).expect("reading the segment");
        let spans = read_records(&segment);
        assert_eq!(spans.len(), 7, "six publishes and one ack");
        Journal { dir, segment, pristine, spans }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the segment's contents.
    fn write(&self, data: &[u8]) {
        fs::write(&self.segment, data).expect("writing the segment");
    }

    fn len_on_disk(&self) -> u64 {
        fs::metadata(&self.segment).expect("the segment").len()
    }

    fn last(&self) -> &Span {
        self.spans.last().expect("a record")
    }

    /// Checks that opening fails with `Corrupt` naming the segment and `offset`, and that
    /// the refused segment is left as it was.
    fn assert_corrupt_at(&self, offset: usize, damaged: &[u8], context: &str) {
        let error = recover(self.dir(), false).expect_err(context);
        let StoreError::Corrupt { path, offset: reported, .. } = &error else {
            panic!("{context}: expected Corrupt, got {error:?}");
        };
        assert_eq!(path, &self.segment, "{context}");
        assert_eq!(*reported, offset as u64, "{context}: {error}");
        let message = error.to_string();
        assert!(message.contains(&self.segment.display().to_string()), "{context}: {message}");
        assert!(message.contains(&format!("offset {offset}")), "{context}: {message}");
        let now = fs::read(&self.segment).expect("the segment");
        assert!(now == damaged, "{context}: a refused segment was modified");
    }
}

/// Cuts the journal at `cut` and checks that a reopen recovers exactly the records wholly
/// before the cut and leaves the segment truncated to the last of them.
fn assert_cut_is_absorbed(j: &Journal, cut: usize) {
    j.write(&j.pristine[..cut]);
    let messages = recover(j.dir(), false).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
    let whole: Vec<&Span> = j.spans.iter().filter(|span| span.end <= cut).collect();
    let want = expected(whole.iter().copied());
    assert_eq!(messages, want, "cut at {cut}");
    let boundary = whole.last().map_or(SEGMENT_MAGIC.len(), |span| span.end);
    if want.is_empty() {
        // Nothing live: a torn magic is removed and the store starts the segment afresh; it
        // holds no publish.
        if j.segment.exists() {
            assert!(published_seqs(&j.segment).is_empty(), "cut at {cut}: a publish survived");
        }
    } else {
        assert_eq!(j.len_on_disk(), boundary as u64, "cut at {cut}");
    }
    assert!(segment_files(j.dir()).len() <= 1, "cut at {cut}: no new segment was written");
}

#[test]
fn a_torn_tail_is_truncated_to_the_last_whole_record_at_every_cut_of_the_last_record() {
    let j = Journal::new();
    let last = j.last();
    for cut in last.start..=last.end {
        assert_cut_is_absorbed(&j, cut);
    }
}

#[test]
fn a_journal_cut_anywhere_recovers_the_whole_records_before_the_cut() {
    let j = Journal::new();
    // Every cut costs a truncation and an fsync: the magic and every record boundary, then
    // a seeded sample of the offsets inside records.
    let mut cuts: Vec<usize> = (0..=SEGMENT_MAGIC.len()).collect();
    for span in &j.spans {
        cuts.extend([span.start + 1, span.end - 1, span.end]);
    }
    let mut rng = Rng::seeded(0x5eed_0003);
    cuts.extend((0..24).map(|_| rng.in_range(SEGMENT_MAGIC.len()..j.pristine.len())));
    for cut in cuts {
        assert_cut_is_absorbed(&j, cut);
    }
}

#[test]
fn a_torn_tail_is_absorbed_and_appends_after_it_survive_the_next_reopen() {
    let j = Journal::new();
    let last = j.last();
    j.write(&j.pristine[..(last.start + last.end) / 2]);
    let store = FileStore::open(j.dir(), config(false)).expect("open");
    let mut want = expected(&j.spans[..j.spans.len() - 1]);
    assert_eq!(recovered_messages(&store), want);
    let mut lsn = 0;
    for n in 0..3u64 {
        let data = payload(100 + n, 50);
        let (seq, at) = store.append(&[4], &data).expect("append");
        want.push(RecoveredMessage { seq, queues: vec![4], payload: data.into() });
        lsn = at;
    }
    wait_durable(&store, lsn);
    store.close().expect("close");
    assert_eq!(recover(j.dir(), false).expect("reopen"), want);
}

#[test]
fn a_tail_of_zero_bytes_is_truncated() {
    let j = Journal::new();
    for zeros in [1, 7, 8, 9, 100, 4096] {
        let mut data = j.pristine.clone();
        data.resize(data.len() + zeros, 0);
        j.write(&data);
        let messages = recover(j.dir(), false).unwrap_or_else(|e| panic!("{zeros} zeros: {e}"));
        assert_eq!(messages, expected(&j.spans), "{zeros} zeros");
        assert_eq!(j.len_on_disk(), j.pristine.len() as u64, "{zeros} zeros");
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_is_treated_as_a_torn_tail() {
    let j = Journal::new();
    let last = j.last();
    let want = expected(&j.spans[..j.spans.len() - 1]);
    // Every bit of the length and the CRC, then a seeded sample of the body's bits.
    let mut rng = Rng::seeded(0x5eed_0004);
    let header =
        (last.start..last.start + 8).flat_map(|offset| (0..8).map(move |bit| (offset, bit)));
    let body: Vec<(usize, usize)> =
        (0..32).map(|_| (rng.in_range(last.start + 8..last.end), rng.in_range(0..8))).collect();
    for (offset, bit) in header.chain(body) {
        let context = format!("bit {bit} of byte {offset} (last record at {})", last.start);
        j.write(&flip_bit(&j.pristine, offset, bit));
        let messages = recover(j.dir(), false).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(messages, want, "{context}");
        assert_eq!(j.len_on_disk(), last.start as u64, "{context}");
    }
}

#[test]
fn a_flipped_bit_in_an_interior_record_is_corrupt_with_the_file_and_offset() {
    let j = Journal::new();
    let mut rng = Rng::seeded(0x5eed_0001);
    for _ in 0..32 {
        let span = &j.spans[rng.in_range(0..j.spans.len() - 1)];
        // The CRC or the body: damage to the length field is covered separately.
        let offset = rng.in_range(span.start + 4..span.end);
        let bit = rng.in_range(0..8);
        let damaged = flip_bit(&j.pristine, offset, bit);
        j.write(&damaged);
        let context = format!("bit {bit} of byte {offset} (record at {})", span.start);
        j.assert_corrupt_at(span.start, &damaged, &context);
    }
}

#[test]
fn a_flipped_bit_in_the_length_of_an_interior_record_is_corrupt() {
    let j = Journal::new();
    let span = &j.spans[1];
    for offset in span.start..span.start + 4 {
        for bit in 0..8 {
            let damaged = flip_bit(&j.pristine, offset, bit);
            j.write(&damaged);
            let context = format!("bit {bit} of length byte {offset} (record at {})", span.start);
            j.assert_corrupt_at(span.start, &damaged, &context);
        }
    }
}

#[test]
fn skip_corrupt_skips_a_damaged_interior_record_and_recovers_the_others() {
    let j = Journal::new();
    let mut rng = Rng::seeded(0x5eed_0002);
    for _ in 0..16 {
        let index = rng.in_range(0..j.spans.len() - 1);
        let span = &j.spans[index];
        let offset = rng.in_range(span.start + 4..span.end);
        let bit = rng.in_range(0..8);
        let damaged = flip_bit(&j.pristine, offset, bit);
        j.write(&damaged);
        let context = format!("bit {bit} of byte {offset} (record {index} at {})", span.start);
        let want = expected(j.spans.iter().filter(|s| s.start != span.start));
        let messages = recover(j.dir(), true).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(messages, want, "{context}");
        // Skipping damage reads around it; it does not rewrite the evidence.
        assert!(fs::read(&j.segment).expect("the segment") == damaged, "{context}");
        for extra in segment_files(j.dir()).into_iter().filter(|path| *path != j.segment) {
            fs::remove_file(extra).expect("removing a segment from an earlier round");
        }
    }
}

#[test]
fn a_segment_with_a_bad_magic_is_corrupt() {
    let j = Journal::new();
    let mut damaged = j.pristine.clone();
    damaged[..SEGMENT_MAGIC.len()].copy_from_slice(b"NOTASEG!");
    j.write(&damaged);
    j.assert_corrupt_at(0, &damaged, "bad magic");
    // A short file that is not a prefix of the magic is no torn header either.
    j.write(b"PRX");
    j.assert_corrupt_at(0, b"PRX", "three bytes that are not the magic's");
}

#[test]
fn a_segment_holding_only_a_partial_magic_is_removed() {
    let j = Journal::new();
    let torn = j.dir().join("journal").join(format!("{:020}.seg", 2));
    for partial in [&SEGMENT_MAGIC[..0], &SEGMENT_MAGIC[..3], &SEGMENT_MAGIC[..7]] {
        fs::write(&torn, partial).expect("writing a torn segment");
        let messages = recover(j.dir(), false).unwrap_or_else(|e| panic!("{partial:?}: {e}"));
        assert_eq!(messages, expected(&j.spans), "{partial:?}");
        // The torn file is removed; the store may start a fresh segment under that id.
        if torn.exists() {
            let fresh = fs::read(&torn).expect("the fresh segment");
            assert!(fresh.starts_with(SEGMENT_MAGIC), "a segment holding {partial:?} was kept");
        }
        assert_eq!(fs::read(&j.segment).expect("the segment"), j.pristine);
    }
}

#[test]
fn a_damaged_last_record_of_an_older_segment_is_corrupt_not_a_torn_tail() {
    let j = Journal::new();
    // A second segment follows the damaged one: a record too big for what is left of the
    // first makes the store start a new segment.
    let small = StoreConfig { segment_size: 64 * 1024, ..config(false) };
    let store = FileStore::open(j.dir(), small).expect("open");
    let (_, lsn) = store.append(&[5], &vec![7u8; 70 * 1024]).expect("append");
    wait_durable(&store, lsn);
    store.close().expect("close");
    assert_eq!(segment_files(j.dir()).len(), 2);
    let last = j.last();
    let damaged = flip_bit(&j.pristine, last.start + 4, 0);
    j.write(&damaged);
    j.assert_corrupt_at(last.start, &damaged, "CRC of the last record of segment 1 of 2");
}

#[test]
fn appends_after_skipping_a_segment_with_a_bad_magic_survive_the_next_reopen() {
    let j = Journal::new();
    let bad = j.dir().join("journal").join(format!("{:020}.seg", 2));
    fs::write(&bad, b"NOTASEG! and some bytes").expect("writing a bad segment");
    let store = FileStore::open(j.dir(), config(true)).expect("open skipping damage");
    let mut want = recovered_messages(&store);
    assert_eq!(want, expected(&j.spans));
    let (seq, lsn) = store.append(&[5], b"confirmed").expect("append");
    want.push(RecoveredMessage { seq, queues: vec![5], payload: b"confirmed"[..].into() });
    wait_durable(&store, lsn);
    store.close().expect("close");
    assert_eq!(recover(j.dir(), true).expect("reopen skipping damage"), want);
}

#[test]
fn a_damaged_definitions_file_is_an_error() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let store = FileStore::open(dir.path(), config(false)).expect("open");
    store.save_definitions(b"exchanges, queues and bindings").expect("save_definitions");
    store.close().expect("close");
    drop(store);
    let path = dir.path().join("definitions.bin");
    let pristine = fs::read(&path).expect("reading definitions.bin");
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped bit in the magic", flip_bit(&pristine, 0, 0)),
        ("a flipped bit in the length", flip_bit(&pristine, 11, 3)),
        ("a flipped bit in the CRC", flip_bit(&pristine, 13, 5)),
        ("a flipped bit in the data", flip_bit(&pristine, pristine.len() - 1, 7)),
        ("a cut in the header", pristine[..10].to_vec()),
        ("a cut in the data", pristine[..pristine.len() - 1].to_vec()),
        ("an empty file", Vec::new()),
    ];
    for (what, damaged) in damages {
        fs::write(&path, &damaged).expect("writing definitions.bin");
        let error = match FileStore::open(dir.path(), config(false)) {
            Ok(_) => panic!("{what}: the store opened"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, StoreError::Corrupt { path: reported, .. } if *reported == path),
            "{what}: {error:?}"
        );
    }
    fs::write(&path, &pristine).expect("restoring definitions.bin");
    let store = FileStore::open(dir.path(), config(false)).expect("open");
    assert_eq!(
        store.take_recovered().definitions.as_deref(),
        Some(&b"exchanges, queues and bindings"[..])
    );
}

#[test]
fn a_leftover_temporary_definitions_file_is_ignored() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let store = FileStore::open(dir.path(), config(false)).expect("open");
    store.save_definitions(b"saved").expect("save_definitions");
    store.close().expect("close");
    drop(store);
    // A crash between writing the temporary file and renaming it leaves this behind.
    fs::write(dir.path().join("definitions.bin.tmp"), b"half-written").expect("writing");
    let store = FileStore::open(dir.path(), config(false)).expect("open");
    assert_eq!(store.take_recovered().definitions.as_deref(), Some(&b"saved"[..]));
}
