//! The disk alarm: when the free space of the data directory's file system falls under
//! `disk_free_limit`, connections that publish are blocked — sent `connection.blocked` (if
//! they announced the capability) and not read any more — until it is back over the limit,
//! as RabbitMQ does. A journal that ran out of space would fail every later write (the
//! store refuses appends after a failed write), so publishers are held back before that.
//! Consumers go on: draining queues is what frees the space.
//!
//! One task ([`watch_disk`]) checks the free space every [`CHECK_EVERY`] and publishes the
//! alarm on a watch channel that every connection follows.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often the free space is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The alarm state shared by the checker and every connection: `Some(reason)` while
/// publishers must be blocked.
#[derive(Debug)]
pub struct Alarms {
    disk_free_limit: AtomicU64,
    state: watch::Sender<Option<String>>,
}

impl Alarms {
    /// No alarm, with the given limit.
    pub fn new(disk_free_limit: u64) -> Alarms {
        Alarms { disk_free_limit: AtomicU64::new(disk_free_limit), state: watch::channel(None).0 }
    }

    /// Follows the alarm state.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// Changes the limit; the next check applies it.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_free_limit.store(bytes, Ordering::Relaxed);
    }

    /// Applies a measurement of the free space.
    fn update(&self, free: u64) {
        let limit = self.disk_free_limit.load(Ordering::Relaxed);
        let alarm = (free < limit).then(|| {
            format!("low on disk: {free} bytes free, under the disk_free_limit of {limit}")
        });
        self.state.send_if_modified(|state| {
            if state.is_some() == alarm.is_some() {
                return false;
            }
            match &alarm {
                Some(reason) => tracing::warn!(%reason, "disk alarm set: publishers are blocked"),
                None => tracing::info!("disk alarm cleared: publishers may go on"),
            }
            *state = alarm;
            true
        });
    }
}

/// Bytes available to unprivileged writers on the file system holding `path`.
fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Checks the free space under `data_dir` every [`CHECK_EVERY`] until `stopped` changes.
/// A failed check leaves the alarm as it was.
pub async fn watch_disk(
    alarms: Arc<Alarms>,
    data_dir: PathBuf,
    mut stopped: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || free_space(&dir)).await {
            Ok(Ok(free)) => alarms.update(free),
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the free disk space"),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_follows_the_free_space_and_the_limit() {
        let alarms = Alarms::new(1000);
        let state = alarms.subscribe();
        alarms.update(5000);
        assert!(state.borrow().is_none());
        alarms.update(999);
        assert!(state.borrow().as_deref().is_some_and(|r| r.contains("999 bytes free")));
        alarms.set_disk_free_limit(10);
        alarms.update(999);
        assert!(state.borrow().is_none());
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let dir = std::env::temp_dir();
        assert!(free_space(&dir).is_ok_and(|free| free > 0));
    }
}
