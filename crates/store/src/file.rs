//! [`FileStore`]: the journal on disk.
//!
//! Files under the data directory:
//! - `journal/NNNNNNNNNNNNNNNNNNNN.seg`: segments, written in id order, each starting with
//!   [`SEGMENT_MAGIC`] and holding whole records.
//! - `definitions.bin`: the last saved definitions (magic, length, CRC32C, data), replaced
//!   atomically by write-to-temp, fsync, rename, fsync of the directory.
//!
//! Writing: `append`/`ack` encode records into an in-memory batch under the state mutex
//! (no I/O); the commit thread (in `commit`) takes the whole batch, writes it with one `write` per
//! segment, `fdatasync`s (per [`crate::Durability`]) and then advances [`Progress::durable`] past
//! every record of the batch — one fsync for all queues and publishers (group commit).
//! Files are written with `write`, never through a memory map, so a full disk is an error
//! and not a SIGBUS.
//!
//! Space: a segment counts the references (queue × message) it still holds. Segments are
//! deleted oldest first once they hold none: an ack record can only refer to messages in
//! its own or earlier segments, so deleting from the head never resurrects an acked message.
//! A head kept alive by a few stragglers is compacted (see `compaction`): they are copied
//! forward and it is deleted.
//!
//! Locks: `State` (in `state`) behind one `std::sync::Mutex`, never held across I/O.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::commit::commit_loop;
use crate::config::StoreConfig;
use crate::definitions::{load_definitions, save_definitions};
use crate::error::StoreError;
use crate::ranges::RangeSet;
use crate::record::{self, Record, SEGMENT_MAGIC};
use crate::recovery::{Scan, recover};
use crate::segment_reader::{READ_CHUNK, SMALL_READ_CHUNK, SegmentReader, Step};
use crate::state::{INDEX_EVERY, MovedTo, SegmentId, SegmentMeta, State};
use crate::{DeliveryState, Lsn, Progress, QueueId, Recovered, Seq, Store};

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) wake: Condvar,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) config: StoreConfig,
    pub(crate) journal: PathBuf,
    pub(crate) root: PathBuf,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases `st` and wakes the commit thread if it is waiting for work. Many appends
    /// and acks come per fsync, and a condvar notification is a system call even when
    /// nobody waits, so it is made only when the thread sleeps (it raises
    /// `commit_waiting` under the lock before it waits, and lowers it once awake).
    pub(crate) fn wake_commit(&self, st: MutexGuard<'_, State>) {
        let waiting = st.commit_waiting;
        drop(st);
        if waiting {
            self.wake.notify_one();
        }
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
        for segment in &scan.segments {
            segments.insert(segment.id, SegmentMeta { live: 0, held: segment.held });
            if let Some(first) = segment.first_seq {
                by_first_seq.insert(first, segment.id);
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
            entry_starts: Vec::new(),
            elided: Vec::new(),
            active_shrink: 0,
            pending_index: Vec::new(),
            unwritten: HashMap::new(),
            batch_last_lsn: 0,
            segments,
            by_first_seq,
            moved: BTreeMap::new(),
            to_delete: Vec::new(),
            marks: HashMap::new(),
            delivered: HashMap::new(),
            pending_states: HashMap::new(),
            states: HashMap::new(),
            index: std::mem::take(&mut scan.index),
            active_indexed: false,
            damage: std::mem::take(&mut scan.damage),
            refs: HashMap::new(),
            compacted: None,
            head_watch: None,
            failed: None,
            closing: false,
            commit_waiting: false,
            held: false,
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
            None => state.start_segment(active),
        }
        scan.refs.retain(|_, refs| !refs.is_empty());
        restore_references(&mut state, &mut scan);
        let queues = scan.refs;
        let recovered = Recovered {
            definitions,
            queues: queues.clone(),
            delivered: scan.delivered,
            states: state.states.clone(),
        };
        state.refs = queues;
        state.collect_dead_head();
        // The new active segment is written and synced before anything is deleted, so the
        // next sequence number is on disk even when every older segment goes.
        let opening = state.take_batch().batch;
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
            recovered: Mutex::new(Some(recovered)),
        })
    }
}

/// Fills `state` with what recovery found still referenced: moved copies, delivery states
/// and marks of referenced messages, and each segment's live count.
fn restore_references(state: &mut State, scan: &mut Scan) {
    let referencing = |seq: Seq| scan.refs.values().filter(|refs| refs.contains(seq)).count();
    for (&seq, &(segment, offset)) in &scan.moved {
        let refs = referencing(seq) as u32;
        if refs > 0 {
            state.moved.insert(seq, MovedTo { segment, offset, refs });
        }
    }
    for (queue, mut states) in std::mem::take(&mut scan.states) {
        let Some(refs) = scan.refs.get(&queue) else { continue };
        states.retain(|seq, _| refs.contains(*seq));
        if !states.is_empty() {
            state.states.insert(queue, states);
        }
    }
    for (&queue, &seq) in &scan.delivered {
        if scan.refs.contains_key(&queue) {
            state.delivered.insert(queue, seq);
        }
    }
    for refs in scan.refs.values() {
        for (first, end) in refs.ranges() {
            for (id, count) in state.ref_spans(first, end) {
                if let Some(meta) = state.segments.get_mut(&id) {
                    meta.live += count;
                }
            }
        }
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
        let segment_size = self.shared.config.segment_size;
        for (first, end) in released.ranges() {
            let buf = st.reserve(record::RELEASE_LEN as u64, segment_size);
            record::encode_release(buf, queue, first, end - 1);
            st.release_range(queue, first, end);
        }
        st.next_lsn += 1;
        st.batch_last_lsn = st.next_lsn - 1;
        st.collect_dead_head();
        self.shared.wake_commit(st);
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
            record::encode_ack(st.reserve(size, self.shared.config.segment_size), queue, chunk);
            let lsn = st.next_lsn;
            st.next_lsn += 1;
            st.batch_last_lsn = lsn;
        }
        for &seq in &held {
            st.release_one(queue, seq);
            st.unreference_unwritten(seq);
        }
        st.collect_dead_head();
        self.shared.wake_commit(st);
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
        let plan = {
            let st = self.shared.lock();
            let Some(refs) = st.refs.get(&queue) else { return Ok(Vec::new()) };
            let wanted: Vec<Seq> = refs.iter_from(from).take(max_messages).collect();
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
            ReadPlan::new(&st, wanted)
        };
        let mut found: HashMap<Seq, Bytes> = HashMap::with_capacity(plan.wanted.len());
        self.read_moved(&plan, &mut found)?;
        self.scan(&plan, max_bytes, &mut found)?;
        // The answer is a prefix of what was wanted: a message not found is either acked
        // since the plan was made (skip it) or not written yet while later ones were (stop
        // before it, or the caller would take the gap for acked messages).
        let st = self.shared.lock();
        let refs = st.refs.get(&queue);
        let mut out = Vec::with_capacity(found.len());
        let mut bytes = 0;
        for seq in plan.wanted {
            match found.remove(&seq) {
                Some(payload) => {
                    bytes += payload.len();
                    out.push((seq, payload));
                    if bytes >= max_bytes {
                        break;
                    }
                }
                None if refs.is_some_and(|r| r.contains(seq)) => break,
                None => {}
            }
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
        self.shared.wake_commit(st);
    }

    fn set_state(&self, queue: QueueId, seq: Seq, state: DeliveryState) {
        let mut st = self.shared.lock();
        if st.failed.is_some()
            || st.closing
            || !st.refs.get(&queue).is_some_and(|r| r.contains(seq))
        {
            return;
        }
        st.states.entry(queue).or_default().insert(seq, state);
        st.pending_states.insert((queue, seq), state);
        self.shared.wake_commit(st);
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

/// How far ahead a moved copy may be for a read to go on to it rather than seek.
const MOVED_GAP: u64 = 64 * 1024;
/// A read of at most this many messages (not moved) is sparse: it reads little ahead.
const FEW: usize = 8;

/// What a [`Store::read`] reads, decided under the lock: the wanted messages, split into
/// moved ones (read one by one where their copy is) and the rest (scanned in journal
/// order from the nearest indexed record).
struct ReadPlan {
    wanted: Vec<Seq>,
    moved: Vec<(Seq, SegmentId, u64)>,
    /// Wanted messages in their own segments, in order.
    in_place: Vec<Seq>,
    /// Where the scan starts.
    start: Option<(SegmentId, u64)>,
    /// Segments from the start on.
    segments: Vec<SegmentId>,
    /// Index entries inside the scanned span and the first one after it: to jump over
    /// other queues' records when this queue's messages are sparse in the journal, and to
    /// know how far a wanted record can be from the entry the scan starts or jumps at.
    jumps: Vec<(Seq, (SegmentId, u64))>,
    /// Whether the wanted messages are few or far apart: then the scan reads little ahead
    /// (see [`ReadPlan::ahead`]) instead of a full chunk per record.
    sparse: bool,
    damage: Vec<(SegmentId, u64, u64)>,
}

impl ReadPlan {
    fn new(st: &State, wanted: Vec<Seq>) -> ReadPlan {
        let mut moved = Vec::new();
        let mut in_place = Vec::with_capacity(wanted.len());
        for &seq in &wanted {
            match st.moved.get(&seq) {
                Some(to) => moved.push((seq, to.segment, to.offset)),
                None => in_place.push(seq),
            }
        }
        let (mut start, mut segments, mut jumps) = (None, Vec::new(), Vec::new());
        if let (Some(&first), Some(&last)) = (in_place.first(), in_place.last()) {
            // Start at the nearest indexed record; failing that (never expected), at the
            // start of the segment holding `first`.
            start = match st.index.range(..=first).next_back() {
                Some((_, at)) => Some(*at),
                None => st.home_segment(first).map(|id| (id, SEGMENT_MAGIC.len() as u64)),
            };
            if let Some((segment, _)) = start {
                segments = st.segments.range(segment..).map(|(id, _)| *id).collect();
            }
            for (&seq, &at) in st.index.range(first + 1..) {
                jumps.push((seq, at));
                if seq > last {
                    break;
                }
            }
        }
        let sparse = match (in_place.first(), in_place.last()) {
            (Some(first), Some(last)) => {
                in_place.len() <= FEW || (last - first) / in_place.len() as u64 >= INDEX_EVERY
            }
            _ => true,
        };
        ReadPlan {
            wanted,
            moved,
            in_place,
            start,
            segments,
            jumps,
            sparse,
            damage: st.damage.clone(),
        }
    }

    /// How much to read at once from `at` (an index entry, or a segment's start) to reach
    /// `want`: for a sparse plan, up to the next index entry after `want` when it is in the
    /// same segment (the wanted record ends there at the latest), else a small chunk; for a
    /// dense one, a full chunk.
    fn ahead(&self, want: Seq, at: (SegmentId, u64)) -> usize {
        if !self.sparse {
            return READ_CHUNK;
        }
        let after = self.jumps.partition_point(|(seq, _)| *seq <= want);
        match self.jumps.get(after) {
            Some(&(_, (segment, offset))) if segment == at.0 && offset > at.1 => {
                (offset - at.1).min(READ_CHUNK as u64) as usize
            }
            _ => SMALL_READ_CHUNK,
        }
    }

    fn skips(&self, segment: SegmentId) -> Vec<(u64, u64)> {
        self.damage
            .iter()
            .filter(|(s, ..)| *s == segment)
            .map(|(_, from, to)| (*from, *to))
            .collect()
    }
}

impl FileStore {
    /// Reads the plan's moved messages from their copies. Copies made by one compaction
    /// sit together, so a reader goes on from one to the next when it is close ahead.
    fn read_moved(
        &self,
        plan: &ReadPlan,
        found: &mut HashMap<Seq, Bytes>,
    ) -> Result<(), StoreError> {
        let mut places = plan.moved.clone();
        places.sort_unstable_by_key(|(_, segment, offset)| (*segment, *offset));
        let mut current: Option<(SegmentId, SegmentReader)> = None;
        for (seq, segment, offset) in places {
            let reusable = current.as_ref().is_some_and(|(s, reader)| {
                *s == segment
                    && reader.position() <= offset
                    && offset - reader.position() < MOVED_GAP
            });
            if !reusable {
                let path = segment_path(&self.shared.journal, segment);
                let reader = SegmentReader::open_small(&path, offset, plan.skips(segment))?;
                current = reader.map(|reader| (segment, reader));
            }
            let Some((_, reader)) = current.as_mut() else { continue };
            while reader.position() < offset {
                if reader.next()?.is_none() {
                    break;
                }
            }
            if reader.position() != offset {
                continue;
            }
            if let Some(Record::Moved { seq: at, payload, .. }) = reader.next()?
                && at == seq
            {
                found.insert(seq, payload);
            }
        }
        Ok(())
    }

    /// Reads the plan's messages that are in their own segments, in journal order, until
    /// all are found or `max_bytes` are. Records of messages it does not want are checked
    /// and stepped over, not copied; a jump within a segment keeps the file open.
    fn scan(
        &self,
        plan: &ReadPlan,
        max_bytes: usize,
        found: &mut HashMap<Seq, Bytes>,
    ) -> Result<(), StoreError> {
        let wanted = &plan.in_place;
        let mut next = 0;
        let mut bytes = 0;
        let mut position = plan.start.filter(|_| !wanted.is_empty());
        let mut current: Option<(SegmentId, SegmentReader)> = None;
        'read: while let Some(at @ (segment, offset)) = position.take() {
            let Some(&want) = wanted.get(next) else { break };
            let ahead = plan.ahead(want, at);
            let reader = match &mut current {
                Some((open, reader)) if *open == segment => reader,
                _ => {
                    let path = segment_path(&self.shared.journal, segment);
                    let chunk = if plan.sparse { SMALL_READ_CHUNK } else { READ_CHUNK };
                    let skips = plan.skips(segment);
                    let Some(reader) = SegmentReader::with_chunk(&path, offset, skips, chunk)?
                    else {
                        break;
                    };
                    &mut current.insert((segment, reader)).1
                }
            };
            reader.seek(offset, Some(ahead));
            loop {
                let unwanted = |seq: Seq| wanted[next..].binary_search(&seq).is_err();
                let Some(step) = reader.next_unless(unwanted)? else {
                    // End of this segment (or of what is written of it): go on with the next.
                    position = plan
                        .segments
                        .iter()
                        .find(|s| **s > segment)
                        .map(|s| (*s, SEGMENT_MAGIC.len() as u64));
                    continue 'read;
                };
                let seq = match step {
                    Step::Skipped(seq) => seq,
                    // Only wanted messages are decoded.
                    Step::Record(
                        Record::Publish { seq, payload, .. } | Record::Spill { seq, payload, .. },
                    ) => {
                        bytes += payload.len();
                        found.insert(seq, payload);
                        seq
                    }
                    Step::Record(_) => continue,
                };
                while next < wanted.len() && wanted[next] <= seq {
                    next += 1;
                }
                if next >= wanted.len() || bytes >= max_bytes {
                    break 'read;
                }
                // Far from the next wanted message: jump to the index entry nearest below it.
                let want = wanted[next];
                if want > seq + INDEX_EVERY {
                    let below = plan.jumps.partition_point(|(j, _)| *j <= want);
                    if let Some(&(jump, at)) = below.checked_sub(1).and_then(|i| plan.jumps.get(i))
                        && jump > seq
                    {
                        position = Some(at);
                        continue 'read;
                    }
                }
            }
        }
        Ok(())
    }

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
        // Room first: a new segment's first sequence number is this message's.
        st.make_room(size, self.shared.config.segment_size);
        st.next_seq += 1;
        let active = st.active;
        if !st.active_indexed || seq.is_multiple_of(INDEX_EVERY) {
            st.index_next(seq);
        }
        encode(st.reserve(size, self.shared.config.segment_size), seq, queues, payload);
        let mut added = 0;
        for queue in queues {
            added += u64::from(st.refs.entry(*queue).or_default().insert(seq));
        }
        st.note_unwritten(seq, size as usize, added);
        if let Some(meta) = st.segments.get_mut(&active) {
            meta.live += added;
            meta.held += added;
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        st.batch_last_lsn = lsn;
        self.shared.wake_commit(st);
        Ok((seq, lsn))
    }
}

impl FileStore {
    /// For tests: while held, the commit thread writes nothing (appends and acks gather in
    /// the batch, and nothing becomes durable); releasing it lets the thread take all of
    /// it at once. Closing the store releases it.
    #[doc(hidden)]
    pub fn hold_commits(&self, hold: bool) {
        let mut st = self.shared.lock();
        st.held = hold;
        drop(st);
        self.shared.wake.notify_one();
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment_reader::REQUESTED;

    /// A read of one message among another queue's records fetches the span between two
    /// index entries at most, not a whole read-ahead chunk per message; a read of many
    /// consecutive ones still reads ahead in full chunks.
    #[test]
    fn a_single_message_read_fetches_no_more_than_its_index_span() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = StoreConfig { durability: crate::Durability::None, ..Default::default() };
        let store = FileStore::open(dir.path(), config).expect("open");
        let (mut mine, mut last) = (Vec::new(), 0);
        for n in 0..5000u32 {
            let queue = if n % 97 == 0 { 1 } else { 2 };
            let (seq, lsn) = store.append(&[queue], &[n as u8; 200]).expect("append");
            if queue == 1 {
                mine.push(seq);
            }
            last = lsn;
        }
        let mut progress = store.progress();
        while progress.borrow_and_update().durable < last {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let span = INDEX_EVERY as usize * record::publish_len(1, 200);
        for &seq in mine.iter().rev() {
            REQUESTED.with(|requested| requested.set((0, 0)));
            let read = store.read(1, seq, 1, usize::MAX).expect("read");
            assert_eq!(read.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![seq]);
            let (_, bytes) = REQUESTED.with(|requested| requested.get());
            assert!(bytes <= span, "reading message {seq} asked for {bytes} bytes");
        }
        REQUESTED.with(|requested| requested.set((0, 0)));
        assert_eq!(store.read(2, 0, usize::MAX, usize::MAX).expect("read").len(), 5000 - 52);
        let (calls, _) = REQUESTED.with(|requested| requested.get());
        let journal = 5000 * record::publish_len(1, 200);
        assert!(calls <= journal / READ_CHUNK + 2, "a full read took {calls} reads");
    }
}
