//! Store settings.

use std::time::Duration;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` every group commit; confirms wait for it. The default.
    #[default]
    Fsync,
    /// Write every group commit but sync at most this often; confirms wait for the write
    /// only (a power loss may lose up to this interval).
    Interval(Duration),
    /// Write, never sync (the OS decides).
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// Parses `fsync`, `none` or `interval:<ms>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
                _ => Err(format!("durability must be fsync, none or interval:<ms>, not {s:?}")),
            },
        }
    }
}

/// Injected failures, for fault tests: the Nth write or sync (1-based, counted from when
/// the store opened) fails with an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Fail this write.
    pub fail_write_at: Option<u64>,
    /// Fail this sync.
    pub fail_sync_at: Option<u64>,
}

impl std::str::FromStr for Faults {
    type Err = String;

    /// Parses a comma-separated list like `write:5,sync:3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut faults = Faults::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (what, n) =
                part.split_once(':').ok_or_else(|| format!("bad failpoint {part:?}"))?;
            let n: u64 =
                n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("bad failpoint count in {part:?} (counts start at 1)")
                })?;
            match what {
                "write" => faults.fail_write_at = Some(n),
                "sync" => faults.fail_sync_at = Some(n),
                _ => return Err(format!("unknown failpoint {what:?} (write or sync)")),
            }
        }
        Ok(faults)
    }
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// When records become durable.
    pub durability: Durability,
    /// Segment file size at which a new segment starts.
    pub segment_size: u64,
    /// Start even if a segment is damaged inside (skipping the damage, logged).
    pub recover_skip_corrupt: bool,
    /// Injected failures (tests only).
    pub faults: Faults,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: Durability::Fsync,
            segment_size: 64 * 1024 * 1024,
            recover_skip_corrupt: false,
            faults: Faults::default(),
        }
    }
}

impl StoreConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_size < 64 * 1024 {
            return Err("segment_size must be at least 64 KiB".into());
        }
        Ok(())
    }
}
