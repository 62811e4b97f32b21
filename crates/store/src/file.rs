//! [`FileStore`]: the journal on disk.
//!
//! Files under the data directory:
//! - `journal/NNNNNNNNNNNNNNNNNNNN.seg`: segments, written in id order, each starting with
//!   [`SEGMENT_MAGIC`] and holding whole records.
//! - `definitions.bin`: the last saved definitions (magic, length, CRC32C, data), replaced
//!   atomically by write-to-temp, fsync, rename, fsync of the directory.
//!
//! Writing: `append`/`ack` encode records into an in-memory batch under the state mutex
//! (no I/O); the commit thread takes the whole batch, writes it with one `write` per
//! segment, `fdatasync`s (per [`Durability`]) and then advances [`Progress::durable`] past
//! every record of the batch — one fsync for all queues and publishers (group commit).
//! Files are written with `write`, never through a memory map, so a full disk is an error
//! and not a SIGBUS.
//!
//! Space: a segment counts the references (queue × message) it still holds. Segments are
//! deleted oldest first once they hold none: an ack record can only refer to messages in
//! its own or earlier segments, so deleting from the head never resurrects an acked message.
//!
//! Locks: `State` behind one `std::sync::Mutex`, never held across I/O.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::config::{Durability, StoreConfig};
use crate::definitions::{load_definitions, save_definitions};
use crate::error::StoreError;
use crate::ranges::RangeSet;
use crate::record::{self, Record, SEGMENT_MAGIC};
use crate::recovery::recover;
use crate::segment_reader::SegmentReader;
use crate::{Lsn, Progress, QueueId, Recovered, Seq, Store};

pub(crate) type SegmentId = u64;

/// One publish record in this many is indexed (and the first of every segment).
pub(crate) const INDEX_EVERY: Seq = 64;

#[derive(Debug)]
struct SegmentMeta {
    /// References (queue × message) still held by this segment's publish records.
    live: u64,
}

struct State {
    next_seq: Seq,
    next_lsn: Lsn,
    active: SegmentId,
    active_len: u64,
    /// Records not yet handed to the commit thread, by segment, in write order.
    batch: Vec<(SegmentId, BytesMut)>,
    batch_last_lsn: Lsn,
    segments: BTreeMap<SegmentId, SegmentMeta>,
    /// First sequence number of each segment that has publishes; a later segment with the
    /// same first sequence replaces an earlier one without publishes.
    by_first_seq: BTreeMap<Seq, SegmentId>,
    to_delete: Vec<SegmentId>,
    /// Delivered marks not yet written, highest per queue.
    marks: HashMap<QueueId, Seq>,
    /// Where some publish records are: the first of every segment and every
    /// [`INDEX_EVERY`]th sequence number, so that a read starts at most that many records
    /// before the one it wants while the index costs a few bytes per thousand messages.
    index: BTreeMap<Seq, (SegmentId, u64)>,
    /// Whether the active segment's first publish is in `index`.
    active_indexed: bool,
    /// Damaged byte ranges recovery skipped (`--recover-skip-corrupt`): reads skip them too.
    damage: Vec<(SegmentId, u64, u64)>,
    /// The messages each queue still references. Acks are checked against it, so a
    /// repeated or stray ack can never release another queue's reference.
    refs: HashMap<QueueId, RangeSet>,
    failed: Option<String>,
    closing: bool,
}

impl State {
    fn segment_of(&self, seq: Seq) -> Option<SegmentId> {
        self.by_first_seq.range(..=seq).next_back().map(|(_, id)| *id)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if let Some(reason) = &self.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        if self.closing {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Starts a new segment if a record of `size` bytes does not fit in the active one.
    fn make_room(&mut self, size: u64, segment_size: u64, next_seq: Seq) {
        let start = (SEGMENT_MAGIC.len() + record::BASE_LEN) as u64;
        if self.active_len + size > segment_size && self.active_len > start {
            self.start_segment(self.active + 1, next_seq);
        }
    }

    /// Makes `id` the active segment, opening it with a base record.
    fn start_segment(&mut self, id: SegmentId, next_seq: Seq) {
        self.active = id;
        self.active_len = (SEGMENT_MAGIC.len() + record::BASE_LEN) as u64;
        self.segments.insert(id, SegmentMeta { live: 0 });
        self.by_first_seq.insert(next_seq, id);
        self.active_indexed = false;
        record::encode_base(self.batch_for(id), next_seq);
    }

    fn batch_for(&mut self, segment: SegmentId) -> &mut BytesMut {
        if self.batch.last().is_none_or(|(id, _)| *id != segment) {
            self.batch.push((segment, BytesMut::with_capacity(64 * 1024)));
        }
        let last = self.batch.len() - 1;
        &mut self.batch[last].1
    }

    /// Moves pending delivered marks into the batch.
    fn flush_marks(&mut self, segment_size: u64) {
        for (queue, seq) in std::mem::take(&mut self.marks) {
            let next_seq = self.next_seq;
            self.make_room(record::DELIVERED_LEN as u64, segment_size, next_seq);
            let active = self.active;
            record::encode_delivered(self.batch_for(active), queue, seq);
            self.active_len += record::DELIVERED_LEN as u64;
        }
    }

    /// Lowers the live counts of the segments holding `first..end` (each a reference
    /// released once).
    fn release_segment_refs(&mut self, first: Seq, end: Seq) {
        for (id, count) in self.segment_spans(first, end) {
            if let Some(meta) = self.segments.get_mut(&id) {
                meta.live = meta.live.saturating_sub(count);
            }
        }
    }

    /// Splits `first..end` by the segments holding those sequence numbers: how many of
    /// them each holds.
    fn segment_spans(&self, first: Seq, end: Seq) -> Vec<(SegmentId, u64)> {
        let mut spans = Vec::new();
        let mut at = first;
        while at < end {
            let Some((_, &id)) = self.by_first_seq.range(..=at).next_back() else { break };
            let segment_end = self
                .by_first_seq
                .range(at + 1..)
                .find(|(_, s)| **s != id)
                .map_or(end, |(first, _)| (*first).min(end));
            spans.push((id, segment_end - at));
            at = segment_end;
        }
        spans
    }

    /// Queues deletion of dead segments at the head of the journal.
    fn collect_dead_head(&mut self) {
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

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    config: StoreConfig,
    journal: PathBuf,
    root: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The file-backed store. See the module docs for the format and the commit protocol.
pub struct FileStore {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
    recovered: Mutex<Option<Recovered>>,
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

pub(crate) fn segment_path(journal: &Path, id: SegmentId) -> PathBuf {
    journal.join(format!("{id:020}.seg"))
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io("syncing directory", path))
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`, recovering what it holds.
    ///
    /// # Errors
    /// I/O errors, and [`StoreError::Corrupt`] for damage inside a segment unless
    /// `recover_skip_corrupt` is set.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<FileStore, StoreError> {
        config.validate().map_err(|reason| StoreError::Io {
            op: "checking settings for",
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
        })?;
        let journal = dir.join("journal");
        fs::create_dir_all(&journal).map_err(io("creating", &journal))?;
        let definitions = load_definitions(dir)?;
        let mut scan = recover(&journal, config.recover_skip_corrupt)?;
        let mut segments = BTreeMap::new();
        let mut by_first_seq = BTreeMap::new();
        for (id, first_seq) in &scan.segments {
            segments.insert(*id, SegmentMeta { live: 0 });
            if let Some(first) = first_seq {
                by_first_seq.insert(*first, *id);
            }
        }
        // Appends continue in the newest segment if it recovered whole (or truncated);
        // otherwise a new one goes above every file seen, skipped damaged ones included,
        // so that no damaged file is ever appended to.
        let reuse = scan.last.filter(|last| last.id == scan.highest_id);
        let active = reuse.map_or(scan.highest_id + 1, |last| last.id);
        let mut state = State {
            next_seq: scan.next_seq,
            next_lsn: 1,
            active,
            active_len: 0,
            batch: Vec::new(),
            batch_last_lsn: 0,
            segments,
            by_first_seq,
            to_delete: Vec::new(),
            marks: HashMap::new(),
            index: scan.index,
            active_indexed: false,
            damage: std::mem::take(&mut scan.damage),
            refs: HashMap::new(),
            failed: None,
            closing: false,
        };
        match reuse {
            Some(last) => {
                state.active_len = last.len as u64;
                state.active_indexed = state.index.values().any(|(s, _)| *s == active);
                state.by_first_seq.entry(scan.next_seq).or_insert(active);
                if !last.has_base {
                    record::encode_base(state.batch_for(active), scan.next_seq);
                    state.active_len += record::BASE_LEN as u64;
                }
            }
            None => state.start_segment(active, scan.next_seq),
        }
        let delivered = scan.delivered;
        for refs in scan.refs.values() {
            for (first, end) in refs.ranges() {
                for (id, count) in state.segment_spans(first, end) {
                    if let Some(meta) = state.segments.get_mut(&id) {
                        meta.live += count;
                    }
                }
            }
        }
        scan.refs.retain(|_, refs| !refs.is_empty());
        state.refs = scan.refs.clone();
        let queues = scan.refs;
        state.collect_dead_head();
        // The new active segment is written and synced before anything is deleted, so the
        // next sequence number is on disk even when every older segment goes.
        let opening = std::mem::take(&mut state.batch);
        if !opening.is_empty() {
            let path = segment_path(&journal, active);
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io("creating", &path))?;
            if reuse.is_none() {
                file.write_all(SEGMENT_MAGIC).map_err(io("writing", &path))?;
            }
            for (_, data) in &opening {
                file.write_all(data).map_err(io("writing", &path))?;
            }
            file.sync_all().map_err(io("syncing", &path))?;
            sync_dir(&journal)?;
        }
        for id in std::mem::take(&mut state.to_delete) {
            let dead = segment_path(&journal, id);
            fs::remove_file(&dead).map_err(io("deleting", &dead))?;
        }
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            progress,
            config,
            journal,
            root: dir.to_path_buf(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("postroom-commit".into())
            .spawn(move || commit_loop(&thread_shared))
            .map_err(io("starting the commit thread", dir))?;
        Ok(FileStore {
            shared,
            thread: Mutex::new(Some(thread)),
            recovered: Mutex::new(Some(Recovered { definitions, queues, delivered })),
        })
    }
}

impl Store for FileStore {
    fn take_recovered(&self) -> Recovered {
        self.recovered.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }

    fn append(&self, queues: &[QueueId], payload: &[u8]) -> Result<(Seq, Lsn), StoreError> {
        self.write_message(queues, payload, record::encode_publish)
    }

    fn spill(&self, queues: &[QueueId], payload: &[u8]) -> Result<Seq, StoreError> {
        self.write_message(queues, payload, record::encode_spill).map(|(seq, _)| seq)
    }

    fn release_from(&self, queue: QueueId, from: Seq) -> Result<u64, StoreError> {
        let mut st = self.shared.lock();
        st.check_writable()?;
        let Some(refs) = st.refs.get_mut(&queue) else { return Ok(0) };
        let released = refs.split_off_from(from);
        if refs.is_empty() {
            st.refs.remove(&queue);
        }
        if released.is_empty() {
            return Ok(0);
        }
        for (first, end) in released.ranges() {
            let next_seq = st.next_seq;
            st.make_room(record::RELEASE_LEN as u64, self.shared.config.segment_size, next_seq);
            let active = st.active;
            record::encode_release(st.batch_for(active), queue, first, end - 1);
            st.active_len += record::RELEASE_LEN as u64;
            st.release_segment_refs(first, end);
        }
        st.next_lsn += 1;
        st.batch_last_lsn = st.next_lsn - 1;
        st.collect_dead_head();
        drop(st);
        self.shared.wake.notify_one();
        Ok(released.len())
    }
    fn ack(&self, queue: QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut st = self.shared.lock();
        st.check_writable()?;
        let held: Vec<Seq> = match st.refs.get_mut(&queue) {
            Some(refs) => seqs.iter().copied().filter(|seq| refs.remove(*seq)).collect(),
            None => Vec::new(),
        };
        if st.refs.get(&queue).is_some_and(RangeSet::is_empty) {
            st.refs.remove(&queue);
        }
        // Big acks (a purge) are split so that no record outgrows a segment.
        for chunk in held.chunks(64 * 1024) {
            let size = (record::HEADER_LEN + 9 + chunk.len() * 8) as u64;
            let next_seq = st.next_seq;
            st.make_room(size, self.shared.config.segment_size, next_seq);
            let active = st.active;
            record::encode_ack(st.batch_for(active), queue, chunk);
            st.active_len += size;
            let lsn = st.next_lsn;
            st.next_lsn += 1;
            st.batch_last_lsn = lsn;
        }
        for &seq in &held {
            if let Some(id) = st.segment_of(seq)
                && let Some(meta) = st.segments.get_mut(&id)
            {
                meta.live = meta.live.saturating_sub(1);
            }
        }
        st.collect_dead_head();
        drop(st);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn read(
        &self,
        queue: QueueId,
        from: Seq,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        // Decide what to read under the lock, then read without it: publishers must not
        // wait for this disk I/O.
        let (wanted, start, segments, damage, jumps) = {
            let st = self.shared.lock();
            let Some(refs) = st.refs.get(&queue) else { return Ok(Vec::new()) };
            let wanted: Vec<Seq> = refs.iter_from(from).take(max_messages).collect();
            let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
                return Ok(Vec::new());
            };
            // Start at the nearest indexed record; failing that (never expected), at the
            // start of the segment holding `first`.
            let start = match st.index.range(..=first).next_back() {
                Some((_, at)) => *at,
                None => match st.segment_of(first) {
                    Some(id) => (id, SEGMENT_MAGIC.len() as u64),
                    None => return Ok(Vec::new()),
                },
            };
            let segments: Vec<SegmentId> =
                st.segments.range(start.0..).map(|(id, _)| *id).collect();
            // Index entries inside the span, to jump over other queues' records when this
            // queue's messages are sparse in the journal.
            let jumps: Vec<(Seq, (SegmentId, u64))> = if last > first {
                st.index.range(first + 1..=last).map(|(seq, at)| (*seq, *at)).collect()
            } else {
                Vec::new()
            };
            (wanted, start, segments, st.damage.clone(), jumps)
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut skipped = Vec::new();
        let mut next = 0;
        let mut bytes = 0;
        let mut position = Some(start);
        'read: while let Some((segment, offset)) = position.take() {
            let path = segment_path(&self.shared.journal, segment);
            let skips =
                damage.iter().filter(|(s, ..)| *s == segment).map(|(_, from, to)| (*from, *to));
            let Some(mut reader) = SegmentReader::open(&path, offset, skips.collect())? else {
                break;
            };
            loop {
                let Some(record) = reader.next()? else {
                    // End of this segment (or of what is written of it): go on with the next.
                    position = segments
                        .iter()
                        .find(|s| **s > segment)
                        .map(|s| (*s, SEGMENT_MAGIC.len() as u64));
                    continue 'read;
                };
                let (Record::Publish { seq, payload, .. } | Record::Spill { seq, payload, .. }) =
                    record
                else {
                    continue;
                };
                while next < wanted.len() && wanted[next] < seq {
                    skipped.push(wanted[next]);
                    next += 1;
                }
                if next < wanted.len() && wanted[next] == seq {
                    bytes += payload.len();
                    out.push((seq, payload));
                    next += 1;
                }
                if next >= wanted.len() || bytes >= max_bytes {
                    break 'read;
                }
                // Far from the next wanted message: jump to the index entry nearest below it.
                let want = wanted[next];
                if want > seq + INDEX_EVERY {
                    let below = jumps.partition_point(|(j, _)| *j <= want);
                    if let Some(&(jump, at)) = below.checked_sub(1).and_then(|i| jumps.get(i))
                        && jump > seq
                    {
                        position = Some(at);
                        continue 'read;
                    }
                }
            }
        }
        // A wanted message passed over is either acked since the list was made (fine) or
        // not written yet while later ones were: the answer must stop before the first of
        // those, or the caller would take the gap for acked messages.
        let st = self.shared.lock();
        let unread =
            skipped.iter().find(|seq| st.refs.get(&queue).is_some_and(|r| r.contains(**seq)));
        if let Some(&gap) = unread {
            out.retain(|(seq, _)| *seq < gap);
        }
        Ok(out)
    }

    fn delivered(&self, queue: QueueId, seq: Seq) {
        let mut st = self.shared.lock();
        if st.failed.is_some() || st.closing {
            return;
        }
        let mark = st.marks.entry(queue).or_insert(seq);
        *mark = (*mark).max(seq);
        drop(st);
        self.shared.wake.notify_one();
    }

    fn save_definitions(&self, data: &[u8]) -> Result<(), StoreError> {
        save_definitions(&self.shared.root, data)
    }

    fn progress(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    fn close(&self) -> Result<(), StoreError> {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread.map(JoinHandle::join) {
            Some(Ok(Err(reason))) => Err(StoreError::Failed(reason)),
            Some(Err(_)) => Err(StoreError::Failed("commit thread panicked".into())),
            _ => Ok(()),
        }
    }
}

impl FileStore {
    /// Appends a publish or spill record for `queues`.
    fn write_message(
        &self,
        queues: &[QueueId],
        payload: &[u8],
        encode: fn(&mut BytesMut, Seq, &[QueueId], &[u8]),
    ) -> Result<(Seq, Lsn), StoreError> {
        let mut st = self.shared.lock();
        st.check_writable()?;
        let seq = st.next_seq;
        let size = record::publish_len(queues.len(), payload.len()) as u64;
        st.make_room(size, self.shared.config.segment_size, seq);
        st.next_seq += 1;
        let active = st.active;
        if !st.active_indexed || seq.is_multiple_of(INDEX_EVERY) {
            let offset = st.active_len;
            st.index.insert(seq, (active, offset));
            st.active_indexed = true;
        }
        encode(st.batch_for(active), seq, queues, payload);
        st.active_len += size;
        let mut added = 0;
        for queue in queues {
            added += u64::from(st.refs.entry(*queue).or_default().insert(seq));
        }
        if let Some(meta) = st.segments.get_mut(&active) {
            meta.live += added;
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        st.batch_last_lsn = lsn;
        drop(st);
        self.shared.wake.notify_one();
        Ok((seq, lsn))
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

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
fn commit_loop(shared: &Shared) -> Result<(), String> {
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
        let (batch, last_lsn, deletes, closing, active) = {
            let mut st = shared.lock();
            st.flush_marks(shared.config.segment_size);
            while st.batch.is_empty() && st.to_delete.is_empty() && !st.closing {
                let wait = match interval {
                    Some(every) if !writer.unsynced.is_empty() => every,
                    _ => Duration::from_secs(3600),
                };
                let (guard, timeout) =
                    shared.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner());
                st = guard;
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
        for id in deletes {
            writer.files.remove(&id);
            let path = segment_path(&shared.journal, id);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "could not delete a dead segment");
            }
        }
        if closing && shared.lock().batch.is_empty() {
            return Ok(());
        }
    }
}
