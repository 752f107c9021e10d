//! Erasure receipts: a data subject's erasure request is recorded durably in
//! Kafka as a consent tombstone; its receipt then reports when each place
//! holding the user's data was cleared. Receipts live in memory (the erasure
//! itself is durable in the consent topic; a restart forgets the receipts).
//! The receipts this instance still has to complete are exported as the
//! gauge `tactful_erasures_pending`, so an operator is told when one stalls.

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
    /// Receipts not complete yet that this instance will complete, by user id.
    pending: HashMap<String, Vec<String>>,
}

impl Registry {
    fn pending_receipts(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

/// The receipts of this process.
#[derive(Default)]
pub struct Erasures {
    registry: Mutex<Registry>,
}

impl Erasures {
    fn with<T>(&self, read: impl FnOnce(&Registry) -> T) -> T {
        read(&self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Applies `change`, then exports the count of pending receipts.
    fn change(&self, change: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut registry);
        crate::telemetry::record_erasures_pending(registry.pending_receipts());
    }

    /// Receipts this instance has yet to complete.
    pub fn pending(&self) -> usize {
        self.with(Registry::pending_receipts)
    }

    /// Opens a receipt for erasing `user_id`, before the tombstone is sent.
    pub fn open(&self, receipt: &str, user_id: &str, now_ms: i64) {
        self.change(|registry| {
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
        self.change(|registry| {
            if let Some(status) = registry.by_receipt.get_mut(receipt) {
                status.recorded_at = Some(now_ms);
            }
        });
    }

    /// Kafka did not take the consent tombstone of `receipt`: the request
    /// failed (its caller got no receipt and retries), so the receipt is
    /// dropped rather than left pending for ever.
    pub fn abandoned(&self, receipt: &str) {
        self.change(|registry| {
            registry.by_receipt.remove(receipt);
            for receipts in registry.pending.values_mut() {
                receipts.retain(|pending| pending != receipt);
            }
            registry.pending.retain(|_, receipts| !receipts.is_empty());
        });
    }

    /// The consent tombstone of `user_id` was applied by an instance that
    /// does not own the user's partition: the owner clears the state and
    /// completes its own copy of the erasure, so this instance's receipts
    /// for the user are no longer pending here (they stay readable, never
    /// complete, as the README says).
    pub fn owned_elsewhere(&self, user_id: &str) {
        self.change(|registry| {
            registry.pending.remove(user_id);
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
        self.change(|registry| {
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

    #[test]
    fn a_receipt_is_pending_until_complete_abandoned_or_owned_by_another_instance() {
        let erasures = Erasures::default();
        erasures.open("r1", "u1", 100);
        erasures.open("r2", "u1", 101);
        erasures.open("r3", "u2", 102);
        erasures.open("r4", "u3", 103);
        assert_eq!(erasures.pending(), 4);
        erasures.state_cleared("u1", 110);
        assert_eq!(erasures.pending(), 4, "the tombstones are not committed yet");
        erasures.committed("u1", 120);
        assert_eq!(erasures.pending(), 2);
        erasures.abandoned("r3");
        assert_eq!((erasures.pending(), erasures.status("r3")), (1, None));
        erasures.owned_elsewhere("u3");
        assert_eq!(erasures.pending(), 0);
        assert!(!erasures.status("r4").unwrap().complete);
    }
}
