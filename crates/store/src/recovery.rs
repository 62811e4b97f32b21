//! Recovery: scanning the journal when a [`crate::file::FileStore`] opens — checking every
//! record, truncating a torn tail, refusing (or skipping) damage, and rebuilding each
//! queue's references as ranges without keeping payloads.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::path::Path;

use bytes::Bytes;

use crate::error::StoreError;
use crate::file::{io, segment_path};
use crate::ranges::RangeSet;
use crate::record::{self, Invalid, Record, SEGMENT_MAGIC};
use crate::state::{INDEX_EVERY, SegmentId};
use crate::{DeliveryState, QueueId, Seq};

/// A segment as recovery found it.
pub(crate) struct ScannedSegment {
    pub(crate) id: SegmentId,
    /// The first sequence number it published (or spilled), if any.
    pub(crate) first_seq: Option<Seq>,
    /// References its message records were written with.
    pub(crate) held: u64,
}

pub(crate) struct Scan {
    /// Segments in order.
    pub(crate) segments: Vec<ScannedSegment>,
    /// Per queue, the messages it still references.
    pub(crate) refs: HashMap<QueueId, RangeSet>,
    /// Damaged byte ranges recovery was told to skip: (segment, from, to).
    pub(crate) damage: Vec<(SegmentId, u64, u64)>,
    pub(crate) delivered: HashMap<QueueId, Seq>,
    /// Per queue, the latest delivery state of each message (referenced or not).
    pub(crate) states: HashMap<QueueId, BTreeMap<Seq, DeliveryState>>,
    /// Where the latest moved copy of each moved message is (referenced or not).
    pub(crate) moved: BTreeMap<Seq, (SegmentId, u64)>,
    pub(crate) next_seq: Seq,
    /// The highest segment id found, damaged or not.
    pub(crate) highest_id: SegmentId,
    /// The newest segment, if it recovered whole (after truncating a torn tail).
    pub(crate) last: Option<LastSegment>,
    /// Locations of publish records, as `State::index` keeps them.
    pub(crate) index: BTreeMap<Seq, (SegmentId, u64)>,
}

/// The newest segment as recovery left it, for appends to continue in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastSegment {
    pub(crate) id: SegmentId,
    /// Bytes of whole records (and magic) it holds.
    pub(crate) len: usize,
    /// Whether it starts with a base record.
    pub(crate) has_base: bool,
}

fn list_segments(journal: &Path) -> Result<Vec<SegmentId>, StoreError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(journal).map_err(io("listing", journal))? {
        let entry = entry.map_err(io("listing", journal))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(id) = stem.parse::<SegmentId>() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Where the next whole, CRC-valid record after `pos` starts, if any. The damaged
/// record's own length field is not trusted (it may be the damaged part).
///
/// The search checksums at most [`RESYNC_BUDGET`] bytes, so that a torn tail full of
/// plausible-looking lengths (a crafted message body) cannot make startup quadratic; past
/// the budget the rest counts as torn.
fn next_valid_record(data: &Bytes, pos: usize) -> Option<usize> {
    let mut budget = RESYNC_BUDGET;
    (pos + 1..data.len().saturating_sub(record::HEADER_LEN)).find(|&at| {
        if budget == 0 {
            return false;
        }
        let rest = &data[at..];
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        // Cheap rejections first (length, record kind); only then a CRC check.
        let plausible = len != 0
            && len <= record::MAX_BODY_LEN
            && record::HEADER_LEN + len <= rest.len()
            && record::is_known_kind(rest[record::HEADER_LEN]);
        if !plausible {
            return false;
        }
        budget = budget.saturating_sub(len);
        record::decode(&data.slice(at..)).is_ok()
    })
}

/// Bytes the resync search may checksum.
const RESYNC_BUDGET: usize = 256 * 1024 * 1024;

pub(crate) fn recover(journal: &Path, skip_corrupt: bool) -> Result<Scan, StoreError> {
    let ids = list_segments(journal)?;
    let mut scan = Scan {
        segments: Vec::new(),
        refs: HashMap::new(),
        damage: Vec::new(),
        delivered: HashMap::new(),
        states: HashMap::new(),
        moved: BTreeMap::new(),
        next_seq: 1,
        highest_id: 0,
        last: None,
        index: BTreeMap::new(),
    };
    for (index, &id) in ids.iter().enumerate() {
        let path = segment_path(journal, id);
        let mut data = Bytes::from(fs::read(&path).map_err(io("reading", &path))?);
        let is_last = index + 1 == ids.len();
        let corrupt = |offset: usize, reason: String| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if data.len() < SEGMENT_MAGIC.len() || &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
            if data.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(&data) {
                // Created but its header never fully written: nothing in it was confirmed.
                tracing::warn!(path = %path.display(), "removing an empty, torn segment");
                fs::remove_file(&path).map_err(io("removing", &path))?;
                continue;
            }
            scan.highest_id = id;
            let error = corrupt(0, "not a Postroom segment (bad magic)".into());
            if !skip_corrupt {
                return Err(error);
            }
            tracing::error!(%error, "skipping the whole segment");
            continue;
        }
        scan.highest_id = id;
        let mut segment = ScannedSegment { id, first_seq: None, held: 0 };
        let mut pos = SEGMENT_MAGIC.len();
        let mut has_base = false;
        let mut whole = true;
        let mut indexed_in_segment = false;
        while pos < data.len() {
            match record::decode(&data.slice(pos..)) {
                Ok((record, len)) => {
                    has_base |= pos == SEGMENT_MAGIC.len() && matches!(record, Record::Base { .. });
                    // The first publish of every segment is indexed (whatever came before it,
                    // spills included), and every INDEX_EVERY-th sequence number.
                    if let Record::Publish { seq, .. } = record
                        && (!indexed_in_segment || seq.is_multiple_of(INDEX_EVERY))
                    {
                        scan.index.insert(seq, (id, pos as u64));
                        indexed_in_segment = true;
                    }
                    if let Record::Moved { seq, transient: false, .. } = record {
                        scan.moved.insert(seq, (id, pos as u64));
                    }
                    apply(&mut scan, &mut segment, record);
                    pos += len;
                }
                Err(invalid) => {
                    // Only the end of the newest segment can be torn: before writing to a
                    // new segment the commit thread syncs the older ones, so damage
                    // anywhere else is damage to records that were confirmed.
                    let resume = next_valid_record(&data, pos);
                    if is_last && resume.is_none() {
                        truncate(&path, pos, data.len())?;
                        data.truncate(pos);
                        break;
                    }
                    whole = false;
                    let reason = match invalid {
                        Invalid::Truncated => "record cut short before later records".into(),
                        Invalid::Damaged(reason) => reason,
                    };
                    let error = corrupt(pos, reason);
                    if !skip_corrupt {
                        return Err(error);
                    }
                    match resume {
                        Some(at) => {
                            tracing::error!(%error, resume_at = at, "skipping damaged bytes");
                            scan.damage.push((id, pos as u64, at as u64));
                            pos = at;
                        }
                        None => {
                            tracing::error!(%error, "skipping the rest of the segment");
                            scan.damage.push((id, pos as u64, u64::MAX));
                            break;
                        }
                    }
                }
            }
        }
        if is_last && whole {
            scan.last = Some(LastSegment { id, len: data.len(), has_base });
        }
        scan.segments.push(segment);
    }
    Ok(scan)
}

fn apply(scan: &mut Scan, segment: &mut ScannedSegment, record: Record) {
    match record {
        Record::Publish { seq, queues, .. } => {
            segment.first_seq.get_or_insert(seq);
            segment.held += queues.len() as u64;
            scan.next_seq = scan.next_seq.max(seq + 1);
            for queue in queues {
                scan.refs.entry(queue).or_default().insert(seq);
            }
        }
        Record::Moved { seq, queues, transient, .. } => {
            segment.held += queues.len() as u64;
            if !transient {
                for queue in queues {
                    scan.refs.entry(queue).or_default().insert(seq);
                }
            }
        }
        Record::Ack { queue, seqs } => {
            if let Some(refs) = scan.refs.get_mut(&queue) {
                for seq in seqs {
                    refs.remove(seq);
                }
            }
        }
        Record::Spill { seq, queues, .. } => {
            segment.first_seq.get_or_insert(seq);
            segment.held += queues.len() as u64;
            scan.next_seq = scan.next_seq.max(seq + 1);
        }
        Record::Release { queue, from, to } => {
            if let Some(refs) = scan.refs.get_mut(&queue) {
                refs.remove_range(from, to);
            }
        }
        Record::Base { next_seq } => scan.next_seq = scan.next_seq.max(next_seq),
        Record::Delivered { queue, seq } => {
            let mark = scan.delivered.entry(queue).or_insert(seq);
            *mark = (*mark).max(seq);
        }
        Record::Elided { seq } => {
            segment.first_seq.get_or_insert(seq);
            scan.next_seq = scan.next_seq.max(seq + 1);
        }
        Record::State { queue, seq, state } => {
            scan.states.entry(queue).or_default().insert(seq, state);
        }
    }
}

/// Cuts a torn tail off a segment. Only unconfirmed records can be in it: a confirm waits
/// for the sync of everything before it.
fn truncate(path: &Path, at: usize, len: usize) -> Result<(), StoreError> {
    tracing::warn!(
        path = %path.display(),
        offset = at,
        dropped_bytes = len - at,
        "truncating a torn tail"
    );
    let file = OpenOptions::new().write(true).open(path).map_err(io("opening", path))?;
    file.set_len(at as u64).map_err(io("truncating", path))?;
    file.sync_all().map_err(io("syncing", path))
}
