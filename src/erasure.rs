//! Erasure receipts: a data subject's erasure request is recorded durably in
//! Kafka as a consent tombstone; its receipt then reports when each place
//! holding the user's data was cleared. Receipts live in memory (the erasure
//! itself is durable in the consent topic; a restart forgets the receipts).

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// What a receipt reports. Times are epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErasureStatus {
    /// The random id the erase request returned; it names no user, so it can
    /// be handed to the requester.
    pub receipt: String,
    /// When the request was received.
    pub requested_at: i64,
    /// When the consent tombstone was acknowledged by Kafka (durable from then on).
    pub recorded_at: Option<i64>,
    /// When the in-memory state was deleted.
    pub state_cleared_at: Option<i64>,
    /// When the batch that deleted the state was committed: from then on
    /// `profiles.updates` holds a tombstone for the user (if a profile was
    /// ever published, else nothing new)...
    pub profile_topic_cleared_at: Option<i64>,
    /// ...and the changelog holds a tombstone for the user's state.
    pub changelog_cleared_at: Option<i64>,
    /// Every place is cleared.
    pub complete: bool,
}

#[derive(Default)]
struct Registry {
    by_receipt: HashMap<String, ErasureStatus>,
    /// Receipts not complete yet, by user id.
    pending: HashMap<String, Vec<String>>,
}

/// The receipts of this process.
#[derive(Default)]
pub struct Erasures {
    registry: Mutex<Registry>,
}

impl Erasures {
    fn with<T>(&self, change: impl FnOnce(&mut Registry) -> T) -> T {
        change(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens a receipt for erasing `user_id`, before the tombstone is sent.
    pub fn open(&self, receipt: &str, user_id: &str, now_ms: i64) {
        self.with(|registry| {
            registry.by_receipt.insert(
                receipt.to_owned(),
                ErasureStatus {
                    receipt: receipt.to_owned(),
                    requested_at: now_ms,
                    recorded_at: None,
                    state_cleared_at: None,
                    profile_topic_cleared_at: None,
                    changelog_cleared_at: None,
                    complete: false,
                },
            );
            registry.pending.entry(user_id.to_owned()).or_default().push(receipt.to_owned());
        });
    }

    /// The consent tombstone of `receipt` was acknowledged.
    pub fn recorded(&self, receipt: &str, now_ms: i64) {
        self.with(|registry| {
            if let Some(status) = registry.by_receipt.get_mut(receipt) {
                status.recorded_at = Some(now_ms);
            }
        });
    }

    /// The pipeline deleted the in-memory state of `user_id`.
    pub fn state_cleared(&self, user_id: &str, now_ms: i64) {
        self.update_pending(user_id, |status| {
            status.state_cleared_at.get_or_insert(now_ms);
        });
    }

    /// The batch with the profile and changelog tombstones of `user_id` was committed.
    pub fn committed(&self, user_id: &str, now_ms: i64) {
        self.update_pending(user_id, |status| {
            status.profile_topic_cleared_at.get_or_insert(now_ms);
            status.changelog_cleared_at.get_or_insert(now_ms);
        });
    }

    fn update_pending(&self, user_id: &str, change: impl Fn(&mut ErasureStatus)) {
        self.with(|registry| {
            let Some(receipts) = registry.pending.get(user_id).cloned() else { return };
            let mut still_pending = Vec::new();
            for receipt in receipts {
                if let Some(status) = registry.by_receipt.get_mut(&receipt) {
                    change(status);
                    status.complete = status.state_cleared_at.is_some()
                        && status.profile_topic_cleared_at.is_some()
                        && status.changelog_cleared_at.is_some();
                    if !status.complete {
                        still_pending.push(receipt);
                    }
                }
            }
            if still_pending.is_empty() {
                registry.pending.remove(user_id);
            } else {
                registry.pending.insert(user_id.to_owned(), still_pending);
            }
        });
    }

    /// The status of `receipt`.
    pub fn status(&self, receipt: &str) -> Option<ErasureStatus> {
        self.with(|registry| registry.by_receipt.get(receipt).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_completes_when_the_state_is_cleared_and_the_tombstones_are_committed() {
        let erasures = Erasures::default();
        erasures.open("r1", "u1", 100);
        erasures.recorded("r1", 110);
        erasures.state_cleared("u1", 120);
        let status = erasures.status("r1").unwrap();
        assert_eq!(
            (status.state_cleared_at, status.profile_topic_cleared_at, status.changelog_cleared_at, status.complete),
            (Some(120), None, None, false)
        );
        erasures.committed("u1", 130);
        let status = erasures.status("r1").unwrap();
        assert_eq!(status.recorded_at, Some(110));
        assert_eq!(
            (status.profile_topic_cleared_at, status.changelog_cleared_at, status.complete),
            (Some(130), Some(130), true)
        );
        // Later erasures of the same user do not touch a completed receipt.
        erasures.state_cleared("u1", 500);
        assert_eq!(erasures.status("r1").unwrap().state_cleared_at, Some(120));
        assert_eq!(erasures.status("unknown"), None);
    }
}
