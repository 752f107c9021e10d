//! Control of a running process: readiness, the reload and shutdown
//! requests (set by signals, the segment file watcher and the admin
//! endpoint, acted on by a driver between batches), and the wall clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Flags shared between a driver's thread, the admin endpoint and the
/// signal and file watchers.
#[derive(Debug, Default)]
pub struct Control {
    /// The consent table is loaded, the state of every assigned partition is
    /// restored, and the consumer is running.
    ready: AtomicBool,
    /// The segment file changed (or SIGHUP): reload it before the next batch.
    reload_requested: AtomicBool,
    /// SIGTERM or Ctrl-C: commit the last batch and leave the group.
    shutdown_requested: AtomicBool,
}

impl Control {
    /// Whether the process serves: `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the process as serving, or not (while a rebalance restores state).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Asks for the segments to be reloaded before the next batch.
    pub fn request_reload(&self) {
        self.reload_requested.store(true, Ordering::Release);
    }

    /// Whether a reload was asked for since the last call.
    pub fn take_reload_request(&self) -> bool {
        self.reload_requested.swap(false, Ordering::AcqRel)
    }

    /// Asks the driver to stop after its current batch.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::Release);
    }

    /// Whether a shutdown was asked for.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::Acquire)
    }
}

/// Milliseconds since the epoch: the processing time a driver hands the core.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}
