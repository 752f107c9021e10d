//! Restoring a partition's state from the changelog, and reconciling it
//! with the consent table, which may have moved on since the changelog was
//! written (a withdrawal read while the state was elsewhere).

use super::Partition;
use crate::consent::ConsentInForce;
use std::collections::HashMap;

/// The newest changelog value of each user of one partition read so far
/// (`None`: a tombstone). The changelog is read oldest first and, until the
/// broker compacts it, holds several records per user; only the newest
/// counts. A user's buffer is reused for each of their records, so reading
/// allocates per user, not per record.
#[derive(Debug, Default)]
pub struct NewestValues {
    /// User id → their newest value. foldhash: several times faster than
    /// SipHash on short keys, and seeded per process so ids cannot be
    /// crafted to collide.
    values: HashMap<Box<str>, Option<Vec<u8>>, foldhash::fast::RandomState>,
}

impl NewestValues {
    /// Notes `value` as `user_id`'s newest, replacing the one before.
    pub fn note(&mut self, user_id: &str, value: Option<&[u8]>) {
        match (self.values.get_mut(user_id), value) {
            (Some(Some(buffer)), Some(value)) => {
                buffer.clear();
                buffer.extend_from_slice(value);
            }
            (Some(newest), value) => *newest = value.map(<[u8]>::to_vec),
            (None, value) => {
                self.values.insert(user_id.into(), value.map(<[u8]>::to_vec));
            }
        }
    }

    /// Each user with their newest value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.values.iter().map(|(user_id, value)| (&**user_id, value.as_deref()))
    }

    /// Number of users noted.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no user was noted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Changelog records read and not noted yet, in the order read: each
/// user's id and value copied into two buffers shared by all of them, so
/// that a run of records goes from the thread that reads them to the one
/// that notes them (see [`NewestValues`]) as three allocations.
#[derive(Debug, Default)]
pub struct ReadRecords {
    user_ids: String,
    values: Vec<u8>,
    /// Per record: its partition, where its user id ends, and where its
    /// value ends (`None`: a tombstone).
    records: Vec<(Partition, usize, Option<usize>)>,
}

impl ReadRecords {
    /// Copies a record of `partition`: `user_id`'s `value`.
    pub fn push(&mut self, partition: Partition, user_id: &str, value: Option<&[u8]>) {
        self.user_ids.push_str(user_id);
        let value_end = value.map(|value| {
            self.values.extend_from_slice(value);
            self.values.len()
        });
        self.records.push((partition, self.user_ids.len(), value_end));
    }

    /// Number of records copied.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was copied.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record, in the order copied.
    pub fn iter(&self) -> impl Iterator<Item = (Partition, &str, Option<&[u8]>)> {
        let (mut user_id_start, mut value_start) = (0, 0);
        self.records.iter().map(move |&(partition, user_id_end, value_end)| {
            let user_id = &self.user_ids[user_id_start..user_id_end];
            user_id_start = user_id_end;
            let value = value_end.map(|end| {
                let value = &self.values[value_start..end];
                value_start = end;
                value
            });
            (partition, user_id, value)
        })
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

    #[test]
    fn a_users_newest_record_wins_and_a_tombstone_clears_it() {
        let mut newest = NewestValues::default();
        newest.note("a", Some(b"first, longer"));
        newest.note("b", Some(b"kept"));
        newest.note("a", Some(b"second"));
        newest.note("c", Some(b"erased"));
        newest.note("c", None);
        newest.note("d", None);
        newest.note("d", Some(b"after a tombstone"));
        let mut values: Vec<(&str, Option<&[u8]>)> = newest.iter().collect();
        values.sort_unstable();
        let expected: Vec<(&str, Option<&[u8]>)> =
            vec![("a", Some(b"second")), ("b", Some(b"kept")), ("c", None), ("d", Some(b"after a tombstone"))];
        assert_eq!(values, expected);
        assert_eq!(newest.len(), 4);
    }

    #[test]
    fn records_read_come_back_as_copied_in_their_order() {
        let mut read = ReadRecords::default();
        assert!(read.is_empty());
        read.push(Partition(1), "ann", Some(b"first"));
        read.push(Partition(0), "bob", None);
        read.push(Partition(1), "", Some(b""));
        read.push(Partition(2), "zoë", Some(&[0, 255, 7]));
        read.push(Partition(1), "ann", Some(b"second"));
        let expected: Vec<(Partition, &str, Option<&[u8]>)> = vec![
            (Partition(1), "ann", Some(b"first")),
            (Partition(0), "bob", None),
            (Partition(1), "", Some(b"")),
            (Partition(2), "zoë", Some(&[0, 255, 7])),
            (Partition(1), "ann", Some(b"second")),
        ];
        assert_eq!(read.iter().collect::<Vec<_>>(), expected);
        assert_eq!(read.len(), 5);
    }

    #[test]
    fn the_newer_consent_wins_and_an_unknown_user_is_forgotten() {
        assert_eq!(reconcile(None, Some(ConsentInForce::chosen_at(5))), Reconciliation::Forget);
        assert_eq!(
            reconcile(Some(ConsentInForce::chosen_at(6)), Some(ConsentInForce::chosen_at(5))),
            Reconciliation::Enforce(ConsentInForce::chosen_at(6))
        );
        assert_eq!(
            reconcile(Some(ConsentInForce::chosen_at(6)), None),
            Reconciliation::Enforce(ConsentInForce::chosen_at(6))
        );
        assert_eq!(
            reconcile(Some(ConsentInForce::chosen_at(5)), Some(ConsentInForce::chosen_at(5))),
            Reconciliation::Refresh(ConsentInForce::chosen_at(5))
        );
        assert_eq!(
            reconcile(Some(ConsentInForce::chosen_at(4)), Some(ConsentInForce::chosen_at(5))),
            Reconciliation::Adopt(ConsentInForce::chosen_at(5))
        );
    }
}
