//! Elided records: a large message that every queue acknowledged before the commit thread
//! wrote it is not written (a small elided record takes its place), and nothing else
//! changes — what is still referenced is written, read back and recovered whole, sequence
//! numbers are never reused, and a journal cut inside an elided record is a torn tail like
//! any other.

mod common;

use std::fs;
use std::path::Path;

use common::{payload, segment_files, small_segments, wait_durable};
use postroom_store::record::{ELIDED_LEN, Record};
use postroom_store::{Durability, FileStore, Lsn, Seq, Store, StoreConfig, read_all};
use tempfile::TempDir;

/// Large enough to be elided.
const LARGE: usize = 64 * 1024;

fn config() -> StoreConfig {
    StoreConfig { durability: Durability::Fsync, ..StoreConfig::default() }
}

/// Every byte of every segment file, concatenated.
fn journal_bytes(dir: &Path) -> Vec<u8> {
    segment_files(dir).iter().flat_map(|path| fs::read(path).expect("reading a segment")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The 64 bytes in the middle of a payload: enough to tell it from any other here.
fn middle(payload: &[u8]) -> &[u8] {
    &payload[payload.len() / 2..payload.len() / 2 + 64]
}

/// The offset of the elided record in a segment file.
fn elided_record_at(path: &Path) -> usize {
    common::read_records(path)
        .into_iter()
        .find(|span| matches!(span.record, Record::Elided { .. }))
        .map(|span| span.start)
        .expect("an elided record")
}

#[test]
fn a_large_message_acknowledged_by_every_queue_before_its_write_is_not_written() {
    let dir = TempDir::new().expect("temp dir");
    let store = FileStore::open(dir.path(), config()).expect("open");
    // One byte value each, so that no payload's bytes can turn up inside another's.
    let gone = vec![0xA1; LARGE];
    let kept = vec![0xB2; LARGE];
    let shared = vec![0xC3; LARGE];
    let small = vec![0xD4; 1024];
    store.hold_commits(true);
    let (gone_seq, _) = store.append(&[1], &gone).expect("append");
    let (kept_seq, _) = store.append(&[1], &kept).expect("append");
    let (shared_seq, _) = store.append(&[1, 2], &shared).expect("append");
    let (small_seq, lsn) = store.append(&[1], &small).expect("append");
    store.ack(1, &[gone_seq, shared_seq, small_seq]).expect("ack");
    store.hold_commits(false);
    wait_durable(&store, lsn);
    store.close().expect("close");

    let written = journal_bytes(dir.path());
    assert!(!contains(&written, middle(&gone)), "the acknowledged message was written");
    assert!(contains(&written, middle(&kept)), "the unacknowledged message is missing");
    assert!(contains(&written, middle(&shared)), "a message queue 2 still holds is missing");
    assert!(contains(&written, middle(&small)), "small messages are always written");

    let store = FileStore::open(dir.path(), config()).expect("reopen");
    let recovered = store.take_recovered();
    let messages = read_all(&store, &recovered).expect("read back");
    let seqs: Vec<(Seq, Vec<u32>)> = messages.iter().map(|m| (m.seq, m.queues.clone())).collect();
    assert_eq!(seqs, vec![(kept_seq, vec![1]), (shared_seq, vec![2])]);
    assert_eq!(messages[0].payload, kept);
    assert_eq!(messages[1].payload, shared);
    let (next, _) = store.append(&[1], b"after").expect("append");
    assert!(next > small_seq, "sequence number {next} reused after a restart");
}

#[test]
fn the_last_message_of_a_journal_elided_does_not_bring_its_sequence_number_back() {
    let dir = TempDir::new().expect("temp dir");
    let store = FileStore::open(dir.path(), config()).expect("open");
    store.hold_commits(true);
    let (seq, _) = store.append(&[1], &payload(9, LARGE)).expect("append");
    store.ack(1, &[seq]).expect("ack");
    store.hold_commits(false);
    let (_, lsn) = store.append(&[2], b"marker").expect("append");
    wait_durable(&store, lsn);
    store.ack(2, &[seq + 1]).expect("ack");
    store.close().expect("close");
    let store = FileStore::open(dir.path(), config()).expect("reopen");
    let (next, _) = store.append(&[1], b"next").expect("append");
    assert!(next > seq + 1, "sequence number {next} reused");
}

#[test]
fn a_segment_ending_with_an_elided_record_recovers() {
    // 40 KiB messages in 64 KiB segments: every message ends a segment, and its ack goes
    // to the next one, so each segment's data ends with the elided record's hole.
    let dir = TempDir::new().expect("temp dir");
    let config = small_segments(Durability::Fsync);
    let store = FileStore::open(dir.path(), config.clone()).expect("open");
    store.hold_commits(true);
    let mut last: Lsn = 0;
    let mut kept = Vec::new();
    for n in 0..6u64 {
        let data = payload(100 + n, 40 * 1024);
        let (seq, lsn) = store.append(&[1], &data).expect("append");
        last = lsn;
        if n % 2 == 0 {
            store.ack(1, &[seq]).expect("ack");
        } else {
            kept.push((seq, data));
        }
    }
    store.hold_commits(false);
    wait_durable(&store, last);
    store.close().expect("close");
    let store = FileStore::open(dir.path(), config).expect("reopen: no damage reported");
    let recovered = store.take_recovered();
    let messages = read_all(&store, &recovered).expect("read back");
    let got: Vec<(Seq, Vec<u8>)> =
        messages.into_iter().map(|m| (m.seq, m.payload.to_vec())).collect();
    assert_eq!(got, kept);
}

#[test]
fn a_journal_cut_inside_an_elided_record_is_a_torn_tail() {
    let dir = TempDir::new().expect("temp dir");
    let store = FileStore::open(dir.path(), config()).expect("open");
    let (before, lsn) = store.append(&[1], b"confirmed before").expect("append");
    wait_durable(&store, lsn);
    store.hold_commits(true);
    let (elided, _) = store.append(&[1], &payload(7, LARGE)).expect("append");
    store.ack(1, &[elided]).expect("ack");
    let (_, lsn) = store.append(&[1], b"after the hole").expect("append");
    store.hold_commits(false);
    wait_durable(&store, lsn);
    store.close().expect("close");
    // A crash in the middle of the write that carried the elided record.
    let segment = segment_files(dir.path()).pop().expect("a segment");
    let bytes = fs::read(&segment).expect("read");
    let header_at = elided_record_at(&segment);
    fs::write(&segment, &bytes[..header_at + ELIDED_LEN - 3]).expect("cut");
    let store = FileStore::open(dir.path(), config()).expect("a torn tail is absorbed");
    let recovered = store.take_recovered();
    let messages = read_all(&store, &recovered).expect("read back");
    let seqs: Vec<Seq> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![before]);
    assert_eq!(fs::metadata(&segment).expect("stat").len() as usize, header_at);
}

#[test]
fn messages_after_elided_ones_are_read_back_from_where_they_are() {
    // Index entries (every 64th sequence number) land after elided records, whose
    // shrinking moves them: reads that start from them must find their records.
    let dir = TempDir::new().expect("temp dir");
    let store = FileStore::open(dir.path(), config()).expect("open");
    store.hold_commits(true);
    let mut kept = Vec::new();
    let mut last: Lsn = 0;
    for n in 0..200u64 {
        let data = payload(1000 + n, 20 * 1024);
        let (seq, lsn) = store.append(&[1], &data).expect("append");
        last = lsn;
        if n % 3 == 0 {
            kept.push((seq, data));
        } else {
            store.ack(1, &[seq]).expect("ack");
        }
    }
    store.hold_commits(false);
    wait_durable(&store, last);
    for from in [kept[0].0, kept[25].0, kept[40].0, kept[66].0] {
        let read = store.read(1, from, 5, usize::MAX).expect("read");
        let want: Vec<&(Seq, Vec<u8>)> =
            kept.iter().filter(|(seq, _)| *seq >= from).take(5).collect();
        assert_eq!(read.len(), want.len(), "reading from {from}");
        for ((seq, payload), (want_seq, want_payload)) in read.iter().zip(want) {
            assert_eq!(seq, want_seq);
            assert_eq!(payload.as_ref(), want_payload.as_slice(), "message {seq}");
        }
    }
    store.close().expect("close");
    let store = FileStore::open(dir.path(), config()).expect("reopen");
    let recovered = store.take_recovered();
    let messages = read_all(&store, &recovered).expect("read back");
    let got: Vec<(Seq, Vec<u8>)> =
        messages.into_iter().map(|m| (m.seq, m.payload.to_vec())).collect();
    assert_eq!(got, kept);
}
