//! The consent table: the consent in force for every user of every
//! partition, as the compacted consent topic says. Every instance holds all
//! of it (read ahead of the events, kept across rebalances), so the consent
//! of a user whose partition moves here is known before their first event.

use super::{Choice, ConsentInForce};
use crate::state::shards::Handle;
use crate::state::{prefetch, prefetch_whole, Partition, UserKey};
use compact_str::CompactString;
use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// User id → the consent in force. Written by the pipeline thread only;
/// read by it, the worker threads and the admin endpoint.
#[derive(Debug)]
pub struct ConsentTable {
    /// foldhash: several times faster than SipHash on short keys, and seeded
    /// per process so ids cannot be crafted to collide.
    entries: DashMap<UserKey, Entry, foldhash::fast::RandomState>,
    /// The sources the consents in force were recorded by.
    sources: Sources,
}

/// One user's entry: their consent, and where their partition state was
/// last found ([`Handle`]), so that an event finds both with one lookup by
/// id. The slot is a hint, checked against the id the slot holds: a shard
/// dropped and opened again, or a slot reused, only costs a lookup.
///
/// The source is held as its number in [`Sources`]: with its id the entry
/// takes 48 bytes, where with the source's name inline it took 72 (a cache
/// line more to load for about half of the entries, and 45 bytes more per
/// user at the table's load, for a name a few tools share).
#[derive(Debug)]
struct Entry {
    choice: Choice,
    source: SourceId,
    ts: i64,
    partition: Partition,
    slot: AtomicU32,
}

impl Entry {
    /// The entry holding `consent`, recorded by source `source`, with `slot` noted.
    fn of(consent: &ConsentInForce, source: SourceId, slot: u32) -> Self {
        let ConsentInForce { ts, partition, .. } = *consent;
        Self { choice: consent.choice(), source, ts, partition, slot: AtomicU32::new(slot) }
    }
}

// What the entry's layout is for: see [`Entry`].
const _: () = assert!(std::mem::size_of::<(UserKey, Entry)>() == 48);

/// A source's number in [`Sources::names`], or [`SourceId::OTHER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SourceId(u16);

impl SourceId {
    /// A source not among the names: held in [`Sources::others`] by user.
    const OTHER: Self = Self(u16::MAX);
}

/// The names of the sources consents were recorded by, each held once,
/// and the sources of the users whose source is not among them. The
/// contract bounds neither how many sources there are nor how long a name
/// is, so only the first [`Sources::NAMED`] names of up to 24 bytes (held
/// inline: a copy never allocates) are numbered; every other source is held
/// per user, exactly as given.
#[derive(Debug)]
struct Sources {
    /// Written once each, in order, under `numbers`' lock; read without one.
    names: Box<[OnceLock<CompactString>]>,
    /// Name → its number, for numbering a source.
    numbers: Mutex<HashMap<CompactString, SourceId, foldhash::fast::RandomState>>,
    /// User id → their source, for the users whose source has no number.
    others: DashMap<UserKey, CompactString, foldhash::fast::RandomState>,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            names: (0..Self::NAMED).map(|_| OnceLock::new()).collect(),
            numbers: Mutex::default(),
            others: DashMap::default(),
        }
    }
}

impl Sources {
    /// How many names are numbered.
    const NAMED: usize = 1024;

    /// How many of the first names are compared without taking the lock:
    /// a deployment's few consent tools.
    const SCANNED: usize = 4;

    /// The number of `name`, numbering it if there is room; otherwise
    /// [`SourceId::OTHER`].
    fn number(&self, name: &str) -> SourceId {
        if name.len() > MAX_INLINE {
            return SourceId::OTHER;
        }
        let numbered = self.names.iter().take(Self::SCANNED).map_while(OnceLock::get);
        if let Some(index) = numbered.into_iter().position(|named| named == name) {
            return SourceId(index as u16);
        }
        let mut numbers = self.numbers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = numbers.get(name) {
            return *id;
        }
        let index = numbers.len();
        let Some(slot) = self.names.get(index) else { return SourceId::OTHER };
        let name = CompactString::from(name);
        // Numbers are given in order under the lock: the slot is empty.
        match slot.set(name.clone()) {
            Ok(()) => *numbers.entry(name).or_insert(SourceId(index as u16)),
            Err(_) => SourceId::OTHER,
        }
    }

    /// The name of source `id`, recorded for `user_id`.
    fn name(&self, user_id: &str, id: SourceId) -> CompactString {
        let name = match id {
            SourceId::OTHER => self.others.get(user_id).map(|name| name.clone()),
            SourceId(index) => self.names.get(usize::from(index)).and_then(OnceLock::get).cloned(),
        };
        // Both are written before the entry that refers to them.
        name.unwrap_or_default()
    }
}

/// The longest name [`CompactString`] holds inline.
const MAX_INLINE: usize = std::mem::size_of::<CompactString>();

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
        Self { entries: DashMap::with_hasher_and_shard_amount(Default::default(), PARTS), sources: Sources::default() }
    }
}

impl ConsentTable {
    /// The entry of `user_id`, holding a read lock on its part of the table.
    fn get(&self, user_id: &str) -> Option<Ref<'_, UserKey, Entry>> {
        self.entries.get(user_id)
    }

    /// The consent `entry` of `user_id` holds.
    fn in_force(&self, user_id: &str, entry: &Entry) -> ConsentInForce {
        let Entry { choice: Choice { granted, level }, source, ts, partition, .. } = *entry;
        ConsentInForce { granted, level, source: self.sources.name(user_id, source), ts, partition }
    }

    /// A copy of the consent in force for `user_id`, if any was recorded
    /// (no lock is held once it returns).
    pub fn cloned(&self, user_id: &str) -> Option<ConsentInForce> {
        self.get(user_id).map(|entry| self.in_force(user_id, &entry))
    }

    /// The choice in force for `user_id` (what applying an event reads of
    /// their consent: not its source's name) with the slot their state was
    /// last found in (see [`Self::note_slot`]).
    pub fn with_slot(&self, user_id: &str) -> Option<(Choice, Option<Handle>)> {
        self.get(user_id).map(|entry| (entry.choice, entry.noted_slot()))
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
        // the entry) spans one or two cache lines: each is loaded.
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
        self.get(user_id).is_some_and(|entry| entry.ts > ts)
    }

    /// Puts `consent` in force for `user_id`.
    pub fn put(&self, user_id: &str, consent: ConsentInForce) {
        // A source without a number is held for the user before their entry
        // refers to it, and one no longer referred to is dropped after.
        let source = self.sources.number(&consent.source);
        if source == SourceId::OTHER {
            self.sources.others.insert(UserKey::from(user_id), consent.source.clone());
        }
        // One lookup; the slot noted for the user stays.
        let replaced = match self.entries.entry(UserKey::from(user_id)) {
            dashmap::Entry::Occupied(mut entry) => {
                let slot = entry.get().slot.load(Ordering::Relaxed);
                Some(std::mem::replace(entry.get_mut(), Entry::of(&consent, source, slot)).source)
            }
            dashmap::Entry::Vacant(entry) => {
                entry.insert(Entry::of(&consent, source, NO_SLOT));
                None
            }
        };
        if replaced == Some(SourceId::OTHER) && source != SourceId::OTHER {
            self.sources.others.remove(user_id);
        }
    }

    /// Forgets `user_id` (a consent tombstone); returns whether they were known.
    pub fn remove(&self, user_id: &str) -> bool {
        let removed = self.entries.remove(user_id);
        if removed.as_ref().is_some_and(|(_, entry)| entry.source == SourceId::OTHER) {
            self.sources.others.remove(user_id);
        }
        removed.is_some()
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
        assert_eq!(table.with_slot("u-1"), Some((ConsentInForce::chosen_at(1).choice(), Some(Handle(7)))));
        table.note_slot("u-1", Handle(3));
        assert_eq!(table.slot_of("u-1"), Some(Handle(3)));
        assert_eq!(table.slot_of("u-2"), None);
    }

    /// The consent chosen at `ts`, recorded by `source`.
    fn recorded_by(source: &str, ts: i64) -> ConsentInForce {
        ConsentInForce { source: source.into(), ..ConsentInForce::chosen_at(ts) }
    }

    #[test]
    fn every_user_keeps_the_source_their_consent_was_recorded_by() {
        let table = ConsentTable::default();
        let long = "a consent tool whose name is longer than twenty-four bytes";
        // More distinct names than are numbered: the rest are held per user.
        let named = Sources::NAMED + 100;
        for number in 0..named {
            table.put(&format!("u-{number}"), recorded_by(&format!("tool {number}"), 1));
        }
        table.put("u-long", recorded_by(long, 1));
        table.put("u-empty", recorded_by("", 1));
        for number in 0..named {
            let consent = table.cloned(&format!("u-{number}")).unwrap();
            assert_eq!(consent.source, format!("tool {number}"));
            assert_eq!(consent, recorded_by(&format!("tool {number}"), 1));
        }
        assert_eq!(table.cloned("u-long").unwrap().source, long);
        assert_eq!(table.cloned("u-empty").unwrap().source, "");
        assert_eq!(table.sources.others.len(), 102, "the names past the numbered ones, the long one and the empty one");

        // A user's new choice from a numbered source drops the one held for them;
        // forgetting a user drops theirs.
        table.put("u-long", recorded_by("tool 0", 2));
        assert_eq!(table.cloned("u-long").unwrap(), recorded_by("tool 0", 2));
        table.put("u-0", recorded_by(long, 3));
        assert_eq!(table.cloned("u-0").unwrap(), recorded_by(long, 3));
        assert!(table.remove("u-0"));
        assert_eq!(table.cloned("u-0"), None);
        table.put("u-0", recorded_by("tool 0", 4));
        assert_eq!(table.cloned("u-0").unwrap(), recorded_by("tool 0", 4));
        assert_eq!(table.sources.others.len(), 101);
        assert!(table.remove(&format!("u-{}", named - 1)));
        assert_eq!(table.sources.others.len(), 100);
    }
}
