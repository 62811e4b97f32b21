//! Reading a segment's records back sequentially, for [`crate::file::FileStore::read`].

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::StoreError;
use crate::file::io;
use crate::record::{self, Record};

/// How much of a segment a read fetches per system call.
const READ_CHUNK: usize = 256 * 1024;
/// The same, for readers of a few records.
const SMALL_READ_CHUNK: usize = 16 * 1024;

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

    fn with_chunk(
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
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { op: "opening", path: path.to_path_buf(), source: e }),
        }
    }

    /// The file offset of the next record.
    pub(crate) fn position(&self) -> u64 {
        self.pos
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
        while self.buf.len() < n {
            let have = self.buf.len();
            self.buf.resize(have + (n - have).max(self.chunk), 0);
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
        if let Some(&(_, to)) =
            self.skips.iter().find(|(from, to)| (*from..*to).contains(&self.pos))
        {
            if to == u64::MAX {
                return Ok(None);
            }
            self.pos = to;
            self.buf.clear();
            self.start = 0;
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
        let bytes = Bytes::copy_from_slice(&self.buffered()[..total]);
        let (record, used) = record::decode(&bytes).map_err(|invalid| StoreError::Corrupt {
            path: self.path.clone(),
            offset: self.pos,
            reason: format!("{invalid:?}"),
        })?;
        self.start += used;
        self.pos += used as u64;
        Ok(Some(record))
    }
}
