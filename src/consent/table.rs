//! The consent table: the consent in force for every user of every
//! partition, as the compacted consent topic says. Every instance holds all
//! of it (read ahead of the events, kept across rebalances), so the consent
//! of a user whose partition moves here is known before their first event.

use super::ConsentInForce;
use crate::state::shards::Handle;
use crate::state::{prefetch, prefetch_whole, UserKey};
use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// User id → the consent in force. Written by the pipeline thread only;
/// read by it, the worker threads and the admin endpoint.
#[derive(Debug)]
pub struct ConsentTable {
    /// foldhash: several times faster than SipHash on short keys, and seeded
    /// per process so ids cannot be crafted to collide.
    entries: DashMap<UserKey, Entry, foldhash::fast::RandomState>,
}

/// One user's entry: their consent, and where their partition state was
/// last found ([`Handle`]), so that an event finds both with one lookup by
/// id. The slot is a hint, checked against the id the slot holds: a shard
/// dropped and opened again, or a slot reused, only costs a lookup.
#[derive(Debug)]
struct Entry {
    consent: ConsentInForce,
    slot: AtomicU32,
}

/// No slot noted.
const NO_SLOT: u32 = u32::MAX;

impl Entry {
    /// The slot noted, if any.
    fn noted_slot(&self) -> Option<Handle> {
        let slot = self.slot.load(Ordering::Relaxed);
        (slot != NO_SLOT).then_some(Handle(slot))
    }
}

/// Parts of the table, each with its own lock. A read takes its part's
/// lock, which writes the lock's cache line: with DashMap's default (4 per
/// core) the worker threads' reads kept taking those few lines from each
/// other; with this many they seldom meet. A part costs a few dozen bytes.
const PARTS: usize = 1024;

impl Default for ConsentTable {
    fn default() -> Self {
        Self { entries: DashMap::with_hasher_and_shard_amount(Default::default(), PARTS) }
    }
}

impl ConsentTable {
    /// The entry of `user_id`, holding a read lock on its part of the table.
    fn get(&self, user_id: &str) -> Option<Ref<'_, UserKey, Entry>> {
        self.entries.get(user_id)
    }

    /// A copy of the consent in force for `user_id`, if any was recorded
    /// (no lock is held once it returns).
    pub fn cloned(&self, user_id: &str) -> Option<ConsentInForce> {
        self.get(user_id).map(|entry| entry.consent.clone())
    }

    /// A copy of the consent in force for `user_id` with the slot their
    /// state was last found in (see [`Self::note_slot`]).
    pub fn with_slot(&self, user_id: &str) -> Option<(ConsentInForce, Option<Handle>)> {
        self.get(user_id).map(|entry| (entry.consent.clone(), entry.noted_slot()))
    }

    /// Starts loading the lock of the part of the table where `user_id`'s
    /// entry would be, and the part's header beside it, into the cache,
    /// without waiting and without taking the lock: a step ahead of
    /// [`Self::prefetch`], which takes that lock and would wait for the line.
    pub fn prefetch_part(&self, user_id: &str) {
        let part = self.entries.determine_shard(self.entries.hash_usize(&user_id));
        // The lock and the header share the first line of the (padded) part.
        prefetch(&self.entries.shards()[part]);
    }

    /// Starts loading the part of the table where `user_id`'s entry would
    /// be (its control bytes and first bucket) into the cache, without
    /// waiting (see [`crate::state::prefetch`]). Takes the part's read lock
    /// for a moment, as a lookup does; finds nothing.
    pub fn prefetch(&self, user_id: &str) {
        // Hashed and placed exactly as DashMap's own lookup does.
        let hash = self.entries.hash_usize(&user_id);
        let part = self.entries.shards()[self.entries.determine_shard(hash)].read();
        let buckets = part.buckets();
        if buckets < 2 {
            return; // nothing allocated yet
        }
        // hashbrown probes from bucket `hash & (buckets - 1)`; its control
        // bytes start at `data_end`, one per bucket. A bucket (the id, then
        // the entry) spans two or three cache lines: every one is loaded.
        let index = hash & (buckets - 1);
        // SAFETY: `index` is below `buckets()`; the bucket is not read, only its address taken.
        let bucket = unsafe { part.bucket(index) };
        prefetch_whole(bucket.as_ptr());
        prefetch(part.data_end().as_ptr().cast::<u8>().wrapping_add(index));
    }

    /// The slot `user_id`'s state was last found in, if noted.
    pub fn slot_of(&self, user_id: &str) -> Option<Handle> {
        self.get(user_id)?.noted_slot()
    }

    /// Notes that `user_id`'s state is in slot `handle` of their shard.
    pub fn note_slot(&self, user_id: &str, handle: Handle) {
        if let Some(entry) = self.get(user_id) {
            entry.slot.store(handle.0, Ordering::Relaxed);
        }
    }

    /// Whether a choice newer than one made at `ts` is in force for
    /// `user_id` (then an older record, read again while catching up,
    /// changes nothing).
    pub fn has_newer(&self, user_id: &str, ts: i64) -> bool {
        self.get(user_id).is_some_and(|in_force| in_force.consent.ts > ts)
    }

    /// Puts `consent` in force for `user_id`.
    pub fn put(&self, user_id: &str, consent: ConsentInForce) {
        // One lookup; the slot noted for the user stays.
        match self.entries.entry(UserKey::from(user_id)) {
            dashmap::Entry::Occupied(mut entry) => entry.get_mut().consent = consent,
            dashmap::Entry::Vacant(entry) => {
                entry.insert(Entry { consent, slot: AtomicU32::new(NO_SLOT) });
            }
        }
    }

    /// Forgets `user_id` (a consent tombstone); returns whether they were known.
    pub fn remove(&self, user_id: &str) -> bool {
        self.entries.remove(user_id).is_some()
    }

    /// Users with a recorded consent.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no consent is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_finds_nothing_and_changes_nothing() {
        let table = ConsentTable::default();
        // Nothing allocated yet: no bucket to point at.
        table.prefetch_part("u-1");
        table.prefetch("u-1");
        // Through several growths of every part, prefetching present and
        // absent ids before each write.
        for number in 0..5_000_i64 {
            table.prefetch_part(&format!("u-{number}"));
            table.prefetch(&format!("u-{number}"));
            table.prefetch_part("nobody");
            table.prefetch("nobody");
            table.put(&format!("u-{number}"), ConsentInForce::chosen_at(number));
        }
        for number in 0..5_000_i64 {
            table.prefetch(&format!("u-{number}"));
            assert_eq!(table.cloned(&format!("u-{number}")).map(|consent| consent.ts), Some(number));
        }
        assert_eq!(table.cloned("nobody"), None);
        assert_eq!(table.len(), 5_000);
    }

    #[test]
    fn the_slot_noted_for_a_user_is_theirs_until_noted_again() {
        let table = ConsentTable::default();
        table.note_slot("u-1", Handle(7)); // no consent: nothing to note it on
        assert_eq!(table.slot_of("u-1"), None);
        table.put("u-1", ConsentInForce::chosen_at(1));
        assert_eq!(table.slot_of("u-1"), None, "none noted yet");
        table.note_slot("u-1", Handle(7));
        assert_eq!(table.slot_of("u-1"), Some(Handle(7)));
        assert_eq!(table.with_slot("u-1").map(|(consent, slot)| (consent.ts, slot)), Some((1, Some(Handle(7)))));
        table.note_slot("u-1", Handle(3));
        assert_eq!(table.slot_of("u-1"), Some(Handle(3)));
        assert_eq!(table.slot_of("u-2"), None);
    }
}
