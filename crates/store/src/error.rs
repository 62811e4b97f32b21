//! Store errors.

use std::path::PathBuf;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A segment is damaged before its end; the broker must not start on it unless told
    /// to skip damage.
    #[error(
        "corrupt record in {path} at offset {offset}: {reason} (start with --recover-skip-corrupt to skip it)"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or sync failed; the store accepts no more writes.
    #[error("store failed earlier: {0}")]
    Failed(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}
