//! The group-commit thread: takes the batch the store's callers encoded, writes it with
//! one `write` per segment, syncs it (per [`Durability`]), publishes the durable Lsn,
//! deletes dead segments — after a sync, so that the records that made them dead (acks,
//! moved copies) are on disk first — and compacts the head segment when it is worth it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::compaction::{COMPACT_IDLE, read_stragglers};
use crate::config::Durability;
use crate::file::{Shared, segment_path};
use crate::record::SEGMENT_MAGIC;
use crate::state::SegmentId;

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

    fn write(&mut self, shared: &Shared, id: SegmentId, data: &[u8]) -> Result<(), String> {
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
        file.write_all(data).map_err(|e| format!("writing segment {id}: {e}"))?;
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
        let (batch, last_lsn, deletes, closing, active) = {
            let mut st = shared.lock();
            st.flush_marks(shared.config.segment_size);
            while st.batch.is_empty()
                && st.to_delete.is_empty()
                && !st.closing
                && st.compaction_candidate(Instant::now()).is_none()
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
                if timeout.timed_out() && !writer.unsynced.is_empty() {
                    break;
                }
            }
            (
                std::mem::take(&mut st.batch),
                st.batch_last_lsn,
                std::mem::take(&mut st.to_delete),
                st.closing,
                st.active,
            )
        };
        let result = (|| {
            for (id, data) in &batch {
                writer.write(shared, *id, data)?;
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
            st.batch.clear();
            drop(st);
            shared.progress.send_modify(|p| p.failed = true);
            return Err(reason);
        }
        if !batch.is_empty() {
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
