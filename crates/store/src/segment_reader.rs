//! Reading a segment's records back sequentially, for [`crate::file::FileStore::read`] and
//! compaction. A reader keeps its file open while it is moved around in it
//! ([`SegmentReader::seek`]), and can step over messages its caller does not want without
//! copying or decoding them ([`SegmentReader::next_unless`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::Seq;
use crate::error::StoreError;
use crate::file::io;
use crate::record::{self, Record};

/// How much of a segment a read fetches per system call.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// The same, for readers of a few records.
pub(crate) const SMALL_READ_CHUNK: usize = 16 * 1024;

#[cfg(test)]
thread_local! {
    /// System calls this thread's readers made and bytes they asked for: what tests of
    /// read-ahead measure.
    pub(crate) static REQUESTED: std::cell::Cell<(usize, usize)> =
        const { std::cell::Cell::new((0, 0)) };
}

/// What [`SegmentReader::next_unless`] found.
pub(crate) enum Step {
    /// A record, decoded.
    Record(Record),
    /// A publish or spill record the caller did not want: checked, not decoded.
    Skipped(Seq),
}

/// Reads a segment's records sequentially from an offset, a chunk at a time.
pub(crate) struct SegmentReader {
    file: File,
    path: PathBuf,
    /// File offset of `buf[start]`.
    pos: u64,
    buf: Vec<u8>,
    start: usize,
    /// Damaged byte ranges to jump over.
    skips: Vec<(u64, u64)>,
    /// Bytes read ahead per system call.
    chunk: usize,
    /// Bytes to read ahead on the next system call only, instead of `chunk` (set by
    /// [`SegmentReader::seek`]).
    next_chunk: Option<usize>,
}

impl SegmentReader {
    /// Opens `path` at `offset`; `None` if the file does not exist (yet, or any more).
    pub(crate) fn open(
        path: &Path,
        offset: u64,
        skips: Vec<(u64, u64)>,
    ) -> Result<Option<SegmentReader>, StoreError> {
        SegmentReader::with_chunk(path, offset, skips, READ_CHUNK)
    }

    /// Like [`SegmentReader::open`], for a few records: a small read-ahead.
    pub(crate) fn open_small(
        path: &Path,
        offset: u64,
        skips: Vec<(u64, u64)>,
    ) -> Result<Option<SegmentReader>, StoreError> {
        SegmentReader::with_chunk(path, offset, skips, SMALL_READ_CHUNK)
    }

    /// Like [`SegmentReader::open`], reading `chunk` bytes ahead per system call.
    pub(crate) fn with_chunk(
        path: &Path,
        offset: u64,
        skips: Vec<(u64, u64)>,
        chunk: usize,
    ) -> Result<Option<SegmentReader>, StoreError> {
        match File::open(path) {
            Ok(file) => Ok(Some(SegmentReader {
                file,
                path: path.to_path_buf(),
                pos: offset,
                buf: Vec::new(),
                start: 0,
                skips,
                chunk,
                next_chunk: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { op: "opening", path: path.to_path_buf(), source: e }),
        }
    }

    /// The file offset of the next record.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Moves to `offset` in the same file (a record boundary), dropping what was read
    /// ahead, and reads `first_chunk` bytes ahead on the next system call (when the caller
    /// knows how far the records it wants can be).
    pub(crate) fn seek(&mut self, offset: u64, first_chunk: Option<usize>) {
        self.pos = offset;
        self.buf.clear();
        self.start = 0;
        self.next_chunk = first_chunk;
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Makes the buffer hold at least `n` unread bytes, unless the file ends first.
    fn fill(&mut self, n: usize) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        if self.buffered().len() >= n {
            return Ok(());
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let chunk = self.next_chunk.take().unwrap_or(self.chunk);
        while self.buf.len() < n {
            let have = self.buf.len();
            self.buf.resize(have + (n - have).max(chunk), 0);
            #[cfg(test)]
            REQUESTED.with(|requested| {
                let (calls, bytes) = requested.get();
                requested.set((calls + 1, bytes + self.buf.len() - have));
            });
            let got = self
                .file
                .read_at(&mut self.buf[have..], self.pos + have as u64)
                .map_err(io("reading", &self.path))?;
            self.buf.truncate(have + got);
            if got == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The next whole record, or `None` at the end of what is written so far.
    pub(crate) fn next(&mut self) -> Result<Option<Record>, StoreError> {
        let Some(total) = self.frame()? else { return Ok(None) };
        self.decode(total).map(Some)
    }

    /// Like [`SegmentReader::next`], except that a publish or spill record whose sequence
    /// number `unwanted` accepts is only checked (length, CRC) and stepped over: neither
    /// copied nor decoded.
    pub(crate) fn next_unless(
        &mut self,
        unwanted: impl FnOnce(Seq) -> bool,
    ) -> Result<Option<Step>, StoreError> {
        let Some(total) = self.frame()? else { return Ok(None) };
        let record = &self.buffered()[..total];
        if record::message_kind(record)
            && let Some(seq) = record.get(record::HEADER_LEN + 1..record::HEADER_LEN + 9)
            && unwanted(u64::from_be_bytes(seq.try_into().unwrap_or_default()))
        {
            // The sequence number was read before the CRC was checked: damage must still
            // be reported, not stepped over.
            let (seq, used) = record::peek_message_seq(record).map_err(|e| self.damaged(e))?;
            self.start += used;
            self.pos += used as u64;
            return Ok(seq.map(Step::Skipped));
        }
        self.decode(total).map(|record| Some(Step::Record(record)))
    }

    /// Buffers the next record whole, returning its length, or `None` at the end of what is
    /// written so far.
    fn frame(&mut self) -> Result<Option<usize>, StoreError> {
        if let Some(&(_, to)) =
            self.skips.iter().find(|(from, to)| (*from..*to).contains(&self.pos))
        {
            if to == u64::MAX {
                return Ok(None);
            }
            self.seek(to, None);
        }
        self.fill(record::HEADER_LEN)?;
        let head = self.buffered();
        if head.len() < record::HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let total = record::HEADER_LEN + len.min(record::MAX_BODY_LEN);
        self.fill(total)?;
        if self.buffered().len() < total {
            // Still being written: stop before it.
            return Ok(None);
        }
        Ok(Some(total))
    }

    /// Decodes the buffered record of `total` bytes (a copy: the buffer is reused) and
    /// moves past it.
    fn decode(&mut self, total: usize) -> Result<Record, StoreError> {
        let bytes = Bytes::copy_from_slice(&self.buffered()[..total]);
        let (record, used) = record::decode(&bytes).map_err(|e| self.damaged(e))?;
        self.start += used;
        self.pos += used as u64;
        Ok(record)
    }

    fn damaged(&self, invalid: record::Invalid) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            offset: self.pos,
            reason: format!("{invalid:?}"),
        }
    }
}
