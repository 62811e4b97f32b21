//! The definitions file: one blob, replaced atomically.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use crate::error::StoreError;
use crate::file::{io, sync_dir};

const DEFINITIONS_MAGIC: &[u8; 8] = b"PRDEFS01";

pub(crate) fn load_definitions(dir: &Path) -> Result<Option<Bytes>, StoreError> {
    let path = dir.join("definitions.bin");
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { op: "reading", path, source: e }),
    };
    let corrupt =
        |reason: &str| StoreError::Corrupt { path: path.clone(), offset: 0, reason: reason.into() };
    if data.len() < 16 || &data[..8] != DEFINITIONS_MAGIC {
        return Err(corrupt("bad definitions header"));
    }
    let len = u32::from_be_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let crc = u32::from_be_bytes([data[12], data[13], data[14], data[15]]);
    let body = data.get(16..16 + len).ok_or_else(|| corrupt("definitions file is short"))?;
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("definitions CRC mismatch"));
    }
    Ok(Some(Bytes::copy_from_slice(body)))
}

/// Writes the definitions atomically: a reader sees the old or the new file, never a mix.
pub(crate) fn save_definitions(dir: &Path, data: &[u8]) -> Result<(), StoreError> {
    let path = dir.join("definitions.bin");
    let tmp = dir.join("definitions.bin.tmp");
    let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
    let mut contents = Vec::with_capacity(16 + data.len());
    contents.extend_from_slice(DEFINITIONS_MAGIC);
    contents.extend_from_slice(&(data.len() as u32).to_be_bytes());
    contents.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    contents.extend_from_slice(data);
    file.write_all(&contents).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    sync_dir(dir)
}
