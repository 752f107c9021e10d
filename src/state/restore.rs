//! Restoring a partition's state from the changelog, and reconciling it
//! with the consent table, which may have moved on since the changelog was
//! written (a withdrawal read while the state was elsewhere).

use super::Partition;
use crate::consent::ConsentInForce;
use std::collections::HashMap;

/// The users restored so far, with the consent their changelog state was
/// built under, to reconcile once the restore is complete.
#[derive(Debug, Default)]
pub struct Restoring {
    /// User id → (partition, the consent of their changelog record).
    pub(crate) users: HashMap<String, (Partition, Option<ConsentInForce>)>,
}

impl Restoring {
    /// Users restored so far.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user was restored.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// What a restored user's state needs once the consent table is compared
/// with the consent it was built under.
#[derive(Debug, PartialEq)]
pub enum Reconciliation {
    /// Nothing is known in the consent table: nothing is granted, so
    /// nothing is kept.
    Forget,
    /// The table's consent is newer: put it in force (what it no longer
    /// allows is deleted).
    Enforce(ConsentInForce),
    /// The state was built under the consent in force (this one): re-evaluate
    /// it under the segments in force.
    Refresh(ConsentInForce),
    /// The changelog knew a newer choice than the table has read so far:
    /// the newer one goes into the table, and the state is re-evaluated.
    Adopt(ConsentInForce),
}

/// Compares the consent table's entry with the consent a restored state was
/// built under.
pub fn reconcile(table: Option<ConsentInForce>, built_under: Option<ConsentInForce>) -> Reconciliation {
    match (table, built_under) {
        (None, _) => Reconciliation::Forget,
        (Some(table), built_under) if built_under.as_ref().is_none_or(|built| built.ts < table.ts) => {
            Reconciliation::Enforce(table)
        }
        (Some(table), Some(built)) if built.ts > table.ts => Reconciliation::Adopt(built),
        (Some(table), _) => Reconciliation::Refresh(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PersonalizationLevel;

    fn at(ts: i64) -> ConsentInForce {
        ConsentInForce { granted: Default::default(), level: PersonalizationLevel::Full, source: "cmp".into(), ts }
    }

    #[test]
    fn the_newer_consent_wins_and_an_unknown_user_is_forgotten() {
        assert_eq!(reconcile(None, Some(at(5))), Reconciliation::Forget);
        assert_eq!(reconcile(Some(at(6)), Some(at(5))), Reconciliation::Enforce(at(6)));
        assert_eq!(reconcile(Some(at(6)), None), Reconciliation::Enforce(at(6)));
        assert_eq!(reconcile(Some(at(5)), Some(at(5))), Reconciliation::Refresh(at(5)));
        assert_eq!(reconcile(Some(at(4)), Some(at(5))), Reconciliation::Adopt(at(5)));
    }
}
