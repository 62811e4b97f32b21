//! The group-commit thread: takes the batch the store's callers encoded, writes it with
//! one `write` per segment, syncs it (per [`Durability`]), publishes the durable Lsn,
//! deletes dead segments — after a sync, so that the records that made them dead (acks,
//! moved copies) are on disk first — and compacts the head segment when it is worth it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};

use bytes::BytesMut;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::compaction::{COMPACT_IDLE, read_stragglers};
use crate::config::Durability;
use crate::file::{Shared, segment_path};
use crate::record::{self, SEGMENT_MAGIC};
use crate::state::{ElidedRecord, SegmentId};

/// Open segment files and the counters the fault injection uses.
struct Writer {
    files: HashMap<SegmentId, File>,
    writes: u64,
    syncs: u64,
    last_sync: Instant,
    unsynced: Vec<SegmentId>,
    new_files: bool,
}

impl Writer {
    fn file(&mut self, journal: &Path, id: SegmentId) -> Result<&mut File, String> {
        if !self.files.contains_key(&id) {
            let path = segment_path(journal, id);
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let len = file.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?.len();
            if len == 0 {
                file.write_all(SEGMENT_MAGIC)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                self.new_files = true;
            }
            self.files.insert(id, file);
        }
        self.files.get_mut(&id).ok_or_else(|| "segment file vanished".to_string())
    }

    /// Appends `data` to segment `id`, with the `elided` records in it (sorted, inside
    /// `data`) written as elided records instead.
    fn write(
        &mut self,
        shared: &Shared,
        id: SegmentId,
        data: &[u8],
        elided: &[ElidedRecord],
    ) -> Result<(), String> {
        self.writes += 1;
        if shared.config.faults.fail_write_at == Some(self.writes) {
            return Err(format!("injected failure of write {}", self.writes));
        }
        // Sync older segments before the first write to a newer one, so that only the
        // newest segment can ever have a torn end (recovery relies on it).
        if shared.config.durability != Durability::None && self.unsynced.iter().any(|s| *s < id) {
            self.sync(shared)?;
        }
        let journal = shared.journal.clone();
        let file = self.file(&journal, id)?;
        if elided.is_empty() {
            file.write_all(data).map_err(|e| format!("writing segment {id}: {e}"))?;
        } else {
            write_elided(file, data, elided).map_err(|e| format!("writing segment {id}: {e}"))?;
        }
        if !self.unsynced.contains(&id) {
            self.unsynced.push(id);
        }
        Ok(())
    }

    fn sync(&mut self, shared: &Shared) -> Result<(), String> {
        for id in std::mem::take(&mut self.unsynced) {
            self.syncs += 1;
            if shared.config.faults.fail_sync_at == Some(self.syncs) {
                return Err(format!("injected failure of sync {}", self.syncs));
            }
            if let Some(file) = self.files.get(&id) {
                file.sync_data().map_err(|e| format!("syncing segment {id}: {e}"))?;
            }
        }
        if std::mem::take(&mut self.new_files) {
            File::open(&shared.journal)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("syncing the journal directory: {e}"))?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// Writes `data` with each of the `elided` records in it replaced by an elided record of
/// its sequence number: the pieces between them go out as they are, in vectored writes,
/// so nothing is copied.
fn write_elided(file: &mut File, data: &[u8], elided: &[ElidedRecord]) -> std::io::Result<()> {
    let mut markers = BytesMut::with_capacity(elided.len() * record::ELIDED_LEN);
    for record in elided {
        record::encode_elided(&mut markers, record.seq);
    }
    let mut pieces: Vec<IoSlice<'_>> = Vec::with_capacity(elided.len() * 2 + 1);
    let mut at = 0;
    for (n, record) in elided.iter().enumerate() {
        pieces.push(IoSlice::new(&data[at..record.start]));
        let marker = n * record::ELIDED_LEN;
        pieces.push(IoSlice::new(&markers[marker..marker + record::ELIDED_LEN]));
        at = record.start + record.len;
    }
    pieces.push(IoSlice::new(&data[at..]));
    pieces.retain(|piece| !piece.is_empty());
    let mut rest = pieces.as_mut_slice();
    // At most IOV_MAX (1024) pieces per call on Linux.
    while !rest.is_empty() {
        let upto = rest.len().min(1024);
        let written = file.write_vectored(&rest[..upto])?;
        if written == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing"));
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// The group-commit loop: take the batch, write it, sync it, publish progress.
pub(crate) fn commit_loop(shared: &Shared) -> Result<(), String> {
    let mut writer = Writer {
        files: HashMap::new(),
        writes: 0,
        syncs: 0,
        last_sync: Instant::now(),
        unsynced: Vec::new(),
        new_files: false,
    };
    let interval = match shared.config.durability {
        Durability::Interval(every) => Some(every),
        _ => None,
    };
    loop {
        compact_head(shared);
        let (taken, last_lsn, deletes, closing, active) = {
            let mut st = shared.lock();
            st.flush_marks(shared.config.segment_size);
            while (st.held && !st.closing)
                || (st.batch.is_empty()
                    && st.to_delete.is_empty()
                    && !st.closing
                    && st.compaction_candidate(Instant::now()).is_none())
            {
                let mut wait = match interval {
                    Some(every) if !writer.unsynced.is_empty() => every,
                    _ => Duration::from_secs(3600),
                };
                if st.head_watch.is_some() {
                    // A head being watched may become worth compacting without any write.
                    wait = wait.min(COMPACT_IDLE);
                }
                st.commit_waiting = true;
                let (guard, timeout) =
                    shared.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner());
                st = guard;
                st.commit_waiting = false;
                st.flush_marks(shared.config.segment_size);
                if timeout.timed_out() && !writer.unsynced.is_empty() && !st.held {
                    break;
                }
            }
            (
                st.take_batch(),
                st.batch_last_lsn,
                std::mem::take(&mut st.to_delete),
                st.closing,
                st.active,
            )
        };
        let result = (|| {
            for (entry, (id, data)) in taken.batch.iter().enumerate() {
                let start = taken.elided.partition_point(|e| e.entry < entry);
                let end = taken.elided.partition_point(|e| e.entry <= entry);
                writer.write(shared, *id, data, &taken.elided[start..end])?;
            }
            let sync_now = match shared.config.durability {
                Durability::Fsync => true,
                Durability::Interval(every) => closing || writer.last_sync.elapsed() >= every,
                Durability::None => closing,
            };
            // A segment is deleted only after what made it dead is on disk: its moved
            // copies, and the acks that would otherwise bring its messages back.
            let sync_now = sync_now || !deletes.is_empty();
            if sync_now {
                writer.sync(shared)?;
            }
            Ok::<(), String>(())
        })();
        if let Err(reason) = result {
            tracing::error!(%reason, "journal write failed; the store accepts no more writes");
            let mut st = shared.lock();
            st.failed = Some(reason.clone());
            st.take_batch();
            drop(st);
            shared.progress.send_modify(|p| p.failed = true);
            return Err(reason);
        }
        if !taken.batch.is_empty() {
            shared.progress.send_modify(|p| p.durable = last_lsn);
        }
        // Keep only the active segment open; older ones are complete and synced.
        writer.files.retain(|id, _| *id >= active || writer.unsynced.contains(id));
        let deleted = !deletes.is_empty();
        for id in deletes {
            writer.files.remove(&id);
            let path = segment_path(&shared.journal, id);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "could not delete a dead segment");
            }
        }
        if deleted {
            // A read planned before a compaction may have found its segment gone: wake
            // whoever waits on progress to read again.
            shared.progress.send_modify(|_| {});
        }
        if closing && shared.lock().batch.is_empty() {
            return Ok(());
        }
    }
}

/// Compacts the head segment if it is worth it (see [`crate::compaction`]). A read error
/// leaves the segment as it is (it is not tried again): compaction only saves space.
fn compact_head(shared: &Shared) {
    let (segment, wanted, skips) = {
        let mut st = shared.lock();
        let Some(segment) = st.compaction_candidate(Instant::now()) else { return };
        let skips: Vec<(u64, u64)> = st
            .damage
            .iter()
            .filter(|(s, ..)| *s == segment)
            .map(|(_, from, to)| (*from, *to))
            .collect();
        (segment, st.begin_compaction(segment), skips)
    };
    let path = segment_path(&shared.journal, segment);
    match read_stragglers(&path, skips, &wanted) {
        Ok(found) => {
            tracing::debug!(segment, messages = found.len(), "compacting the oldest segment");
            shared.lock().finish_compaction(segment, found, shared.config.segment_size);
        }
        Err(error) => tracing::warn!(segment, %error, "could not compact a segment"),
    }
}
