//! Injected I/O failures ([`Faults`]) and the parsing of the settings that control
//! durability and fault injection.
//!
//! When the Nth write or sync fails, the store must report it in [`Progress::failed`], never
//! report the failed batch durable, refuse later appends and acks with
//! [`StoreError::Failed`], and still recover, after a restart without faults, every record
//! it had reported durable. Each test makes one append per group commit (waiting for it to
//! become durable before the next) so that the Nth write or sync is the Nth append's.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Model, durabilities, recovered_messages, small_segments, wait_durable, wait_failed};
use postroom_store::{Durability, Faults, FileStore, Lsn, Seq, Store, StoreConfig, StoreError};

fn faulty(durability: Durability, faults: Faults) -> StoreConfig {
    StoreConfig { faults, ..small_segments(durability) }
}

fn recover(dir: &Path) -> Vec<Seq> {
    let store = FileStore::open(dir, small_segments(Durability::Fsync)).expect("reopen");
    let seqs = recovered_messages(&store).iter().map(|m| m.seq).collect();
    store.close().expect("close");
    seqs
}

/// Makes `count` appends, one group commit each, returning their seqs and the last Lsn.
fn durable_appends(store: &FileStore, count: u64) -> (Vec<Seq>, Lsn) {
    let mut seqs = Vec::new();
    let mut last = 0;
    for n in 0..count {
        let (seq, lsn) = store.append(&[1], format!("durable {n}").as_bytes()).expect("append");
        wait_durable(store, lsn);
        seqs.push(seq);
        last = lsn;
    }
    (seqs, last)
}

/// Checks everything a store must do once its commit failed, given the Lsn it last
/// reported durable and the Lsn of the append whose commit failed.
fn assert_failed(store: &FileStore, durable_before: Lsn, failed_lsn: Lsn) {
    let progress = wait_failed(store);
    assert_eq!(progress.durable, durable_before, "the failed batch was reported durable");
    assert!(progress.durable < failed_lsn, "{progress:?}");
    // Later subscribers see the same.
    assert_eq!(*store.progress().borrow(), progress);
    let append = store.append(&[1], b"after the failure").expect_err("append after a failure");
    assert!(matches!(append, StoreError::Failed(_)), "{append:?}");
    let ack = store.ack(1, &[1]).expect_err("ack after a failure");
    assert!(matches!(ack, StoreError::Failed(_)), "{ack:?}");
    let close = store.close().expect_err("close after a failure");
    assert!(matches!(close, StoreError::Failed(_)), "{close:?}");
}

#[test]
fn a_failed_write_sets_progress_failed_and_later_appends_and_acks_fail() {
    for durability in durabilities() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let faults = Faults { fail_write_at: Some(3), fail_sync_at: None };
        let store = FileStore::open(dir.path(), faulty(durability, faults)).expect("open");
        let (_, durable) = durable_appends(&store, 2);
        let (_, failed_lsn) = store.append(&[1], b"third write").expect("append");
        assert_failed(&store, durable, failed_lsn);
    }
}

#[test]
fn a_failed_sync_sets_progress_failed_and_later_appends_and_acks_fail() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let faults = Faults { fail_write_at: None, fail_sync_at: Some(3) };
    let store = FileStore::open(dir.path(), faulty(Durability::Fsync, faults)).expect("open");
    let (_, durable) = durable_appends(&store, 2);
    let (_, failed_lsn) = store.append(&[1], b"third sync").expect("append");
    assert_failed(&store, durable, failed_lsn);
}

#[test]
fn records_reported_durable_before_a_failed_write_are_recovered() {
    for durability in durabilities() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let faults = Faults { fail_write_at: Some(4), fail_sync_at: None };
        let store = FileStore::open(dir.path(), faulty(durability, faults)).expect("open");
        let (seqs, _) = durable_appends(&store, 3);
        store.append(&[1], b"never written").expect("append");
        wait_failed(&store);
        drop(store);
        // The failed write never reached the file: exactly the durable records come back.
        assert_eq!(recover(dir.path()), seqs, "{durability:?}");
    }
}

#[test]
fn records_reported_durable_before_a_failed_sync_are_recovered() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let faults = Faults { fail_write_at: None, fail_sync_at: Some(4) };
    let store = FileStore::open(dir.path(), faulty(Durability::Fsync, faults)).expect("open");
    let (seqs, _) = durable_appends(&store, 3);
    let (unsynced, _) = store.append(&[1], b"written, never synced").expect("append");
    wait_failed(&store);
    drop(store);
    // The unsynced record was written, so it may come back: it must not be confirmed, but
    // a nacked message that survives is a redelivery, not a loss.
    let recovered = recover(dir.path());
    assert!(recovered.starts_with(&seqs), "{recovered:?} lacks some of {seqs:?}");
    assert!(recovered.len() <= seqs.len() + 1, "{recovered:?}");
    assert!(recovered[seqs.len()..].iter().all(|seq| *seq == unsynced), "{recovered:?}");
}

#[test]
fn a_burst_of_appends_loses_nothing_reported_durable_when_a_write_fails() {
    for durability in durabilities() {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let faults = Faults { fail_write_at: Some(5), fail_sync_at: None };
        let store = FileStore::open(dir.path(), faulty(durability, faults)).expect("open");
        let mut model = Model::default();
        let mut appended = Vec::new();
        let payload = [7u8; 512];
        // Group commits take whatever accumulated: the batches, and so which one fails,
        // vary from run to run, but the contract must hold for any of them.
        let mut n = 0u64;
        while !store.progress().borrow().failed {
            match store.append(&[1, 2], &payload) {
                Ok((seq, lsn)) => appended.push((seq, lsn)),
                Err(StoreError::Failed(_)) => break,
                Err(error) => panic!("{durability:?}: {error:?}"),
            }
            n += 1;
            if n.is_multiple_of(50) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(n < 1_000_000, "{durability:?}: the fifth write never failed");
        }
        let progress = wait_failed(&store);
        let last = appended.last().expect("an append").1;
        assert!(progress.durable < last, "{durability:?}: {progress:?} after Lsn {last}");
        drop(store);
        for (seq, lsn) in &appended {
            if *lsn <= progress.durable {
                model.publish(*seq, &[1, 2], &payload);
            }
        }
        let recovered = recover(dir.path());
        let durable_seqs = model.seqs();
        assert!(
            recovered.starts_with(&durable_seqs),
            "{durability:?}: recovered {} of {} durable records",
            recovered.len(),
            durable_seqs.len()
        );
    }
}

#[test]
fn faults_parse_from_a_comma_separated_list() {
    let both = Faults { fail_write_at: Some(5), fail_sync_at: Some(3) };
    assert_eq!("write:5,sync:3".parse::<Faults>(), Ok(both));
    assert_eq!("sync:3,write:5".parse::<Faults>(), Ok(both));
    assert_eq!(
        "write:1".parse::<Faults>(),
        Ok(Faults { fail_write_at: Some(1), fail_sync_at: None })
    );
    assert_eq!(
        "sync:12".parse::<Faults>(),
        Ok(Faults { fail_write_at: None, fail_sync_at: Some(12) })
    );
    assert_eq!("".parse::<Faults>(), Ok(Faults::default()));
}

#[test]
fn faults_reject_malformed_input() {
    for bad in ["write", "write:", "write:x", "write:-1", "read:1", "write:5,sync", "WRITE:5"] {
        let error = bad.parse::<Faults>().expect_err(bad);
        assert!(!error.is_empty(), "{bad:?}");
    }
}

#[test]
fn durability_parses_fsync_none_and_interval() {
    assert_eq!("fsync".parse::<Durability>(), Ok(Durability::Fsync));
    assert_eq!("none".parse::<Durability>(), Ok(Durability::None));
    assert_eq!(
        "interval:10".parse::<Durability>(),
        Ok(Durability::Interval(Duration::from_millis(10)))
    );
    assert_eq!(Durability::default(), Durability::Fsync);
}

#[test]
fn durability_rejects_a_zero_interval_and_unknown_words() {
    for bad in ["interval:0", "interval:", "interval:-5", "interval:1.5", "bogus", "", "FSYNC"] {
        let error = bad.parse::<Durability>().expect_err(bad);
        assert!(error.contains(&format!("{bad:?}")), "{bad:?}: {error}");
    }
}
