//! Fanout exchanges: every binding matches; keys are ignored.

/// Every fanout binding matches every message.
pub fn matches() -> bool {
    true
}
