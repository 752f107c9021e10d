//! Partition-owned state: per user, the facts retained from applied events
//! and the profile last published, held per input partition ([`shards`]) so
//! that a partition moves between instances as a whole. The consent in force
//! is not here: it is the consent table's ([`crate::consent::table`]), which
//! every instance holds for every partition. Pure data and transitions, the
//! changelog encoding ([`changelog`]) and the restore that reads it
//! ([`restore`]).
//!
//! Facts keep no raw strings: categories, product ids and page types are kept
//! as 64-bit FNV-1a hashes. Rules compare them with hashed literals, so state
//! never holds a product id or URL in the clear, and each fact is a few bytes.

pub mod changelog;
pub mod restore;
pub mod shards;

use crate::consent::{Choice, Purposes};
use crate::model::PersonalizationLevel;
use crate::segments::tally::{List, Tallies};
use crate::segments::SegmentIndex;
use crate::time::MaybeTime;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::hash::Hasher;
use std::num::NonZeroU64;
use thin_vec::ThinVec;

/// A user id as the state holds it: inline, with no allocation, up to 24
/// bytes (a 36-character UUID goes to the heap).
pub type UserKey = compact_str::CompactString;

/// An input partition number. The input topics are co-partitioned by user
/// id, so partition `p` of every input topic holds the same users, and their
/// state moves between instances with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub i32);

/// How many records (or timers) ahead of the one being applied a user's
/// entries are prefetched: far enough for the load from memory to finish
/// first (a record takes microseconds, a load a tenth of one), near enough
/// that the lines are still cached when the record comes. Where one entry
/// leads to the next (a consent entry names the slot of the user's state),
/// the first is prefetched twice as far ahead (for a batch's records, the
/// lock its lookup takes three times as far), and what the slot of a
/// user's state points to half as far.
pub const LOOKAHEAD: usize = 4;

/// Asks the CPU to start loading the cache line at `address` without
/// waiting for it (nothing is read; any address will do, a stale one only
/// wastes the load). A batch does this some records ahead of applying them,
/// so that their users' entries arrive from memory while the records before
/// them are applied (BENCHMARKS.md, "Prefetching a batch's users").
#[inline]
pub fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program sees.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// [`prefetch`]es every cache line of `values`.
pub fn prefetch_all<T>(values: &[T]) {
    prefetch_lines(values.as_ptr().cast(), size_of_val(values));
}

/// [`prefetch`]es every cache line of the `T` at `address` (as there: any
/// address will do). A value larger than a line, or placed across two,
/// is not all there after a prefetch of its first byte.
pub fn prefetch_whole<T>(address: *const T) {
    prefetch_lines(address.cast(), size_of::<T>());
}

/// [`prefetch`]es every cache line of the `size` bytes from `start`.
fn prefetch_lines(start: *const u8, size: usize) {
    (0..size).step_by(64).chain(size.checked_sub(1)).for_each(|offset| prefetch(start.wrapping_add(offset)));
}

/// Where `list`'s allocation starts (its length, then its elements), read
/// without reading the allocation: the length a slice would need is in it.
fn thin_vec_allocation<T>(list: &ThinVec<T>) -> *const u8 {
    const { assert!(size_of::<ThinVec<T>>() == size_of::<*const u8>()) };
    // SAFETY: a `ThinVec` is one pointer to its allocation (`repr(C)`, the
    // size asserted above); any pointer-sized bits are a valid raw pointer,
    // and a prefetch of a wrong one only wastes the load.
    unsafe { std::ptr::from_ref(list).cast::<*const u8>().read() }
}

/// [`prefetch`]es the start of `list`'s allocation: its length and the
/// first elements, as many as the two lines after its start hold (the
/// length that would say how many there are is in the allocation; a
/// user's list seldom holds more).
fn prefetch_start<T>(list: &ThinVec<T>) {
    prefetch_lines(thin_vec_allocation(list), 2 * 64);
}

/// A stable 64-bit hash of a field value (FNV-1a: stable across builds and
/// versions, which a changelog needs; `std`'s hasher is not).
pub fn hash_value(value: &str) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(value.as_bytes());
    hasher.finish()
}

/// The hash of a field that may be absent, for facts that store "absent"
/// in the hash's room: a value that hashes to 0 (one in 2^64) counts as absent.
pub fn hash_present(value: Option<&str>) -> Option<NonZeroU64> {
    value.and_then(|value| NonZeroU64::new(hash_value(value)))
}

/// What is kept of a browse event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrowseFact {
    /// Event time of the page view, epoch milliseconds UTC; windows are measured on it.
    pub ts: i64,
    /// Hash of the page type, for `page_type` filters.
    pub page_type: u64,
    /// Hash of the category shown; `None` when the event had none or it is
    /// sensitive without the `sensitive` purpose. Non-zero, so that the
    /// option takes no room of its own (see [`hash_present`]).
    pub category: Option<NonZeroU64>,
    /// Hash of the product shown; `None` when the event had none or its
    /// category is sensitive without the `sensitive` purpose.
    pub product: Option<NonZeroU64>,
}

/// What is kept of one purchase line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemFact {
    /// Hash of the line's product category.
    pub category: u64,
    /// Hash of the line's product id.
    pub product: u64,
    /// Units bought; sums multiply the price by it.
    pub quantity: i32,
    /// Price of one unit, in cents.
    pub price_cents: i64,
    /// In a configured sensitive category (kept only with the `sensitive` purpose).
    pub sensitive: bool,
}

/// The lines kept of a purchase: one inline, in the fact (most orders have
/// one line), more on the heap. Rules read a purchase's lines with the
/// purchase, so they come with it into the cache.
pub type Items = SmallVec<[ItemFact; 1]>;

/// What is kept of a purchase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseFact {
    /// Event time of the order, epoch milliseconds UTC.
    pub ts: i64,
    /// Hash of the ISO 4217 currency code, for `currency` filters.
    pub currency: u64,
    /// The order's total in cents, less the lines that could not be kept
    /// (sensitive without consent).
    pub total_cents: i64,
    /// The lines that could be kept.
    pub items: Items,
}

/// What is kept of a location fix, at the precision the user consented to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocationFact {
    /// Event time of the fix, epoch milliseconds UTC.
    pub ts: i64,
    /// Latitude in degrees, coarsened without `precise_location`.
    pub lat: f64,
    /// Longitude in degrees, coarsened without `precise_location`.
    pub lon: f64,
}

/// A user's retained facts, each list sorted by event time (an event that
/// arrives late joins its place).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Page views kept, oldest first, for as long as some segment reads them.
    pub browses: ThinVec<BrowseFact>,
    /// Purchases kept, oldest first, for the longest window or last-N rule.
    pub purchases: ThinVec<PurchaseFact>,
    /// Location fixes kept, oldest first; empty without the `location` purpose.
    pub locations: ThinVec<LocationFact>,
    /// The time of the user's first applied event, kept only while a segment
    /// measures time since first seen.
    pub first_seen: MaybeTime,
    /// The window measures kept as tallies, for a user who holds many facts.
    #[serde(skip)]
    pub tallies: Tallies,
}

/// How long each kind of fact is kept: the longest window any segment reads,
/// and the last N purchases a "share of the last N" rule reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Retention {
    /// How long page views are kept, in milliseconds: the longest browse window.
    pub browse_ms: i64,
    /// How long purchases are kept, in milliseconds: the longest purchase window.
    pub purchase_ms: i64,
    /// How many of the newest purchases are kept regardless of age (up to
    /// `max_ms`), for "of the last N" rules.
    pub purchase_last: usize,
    /// How long location fixes are kept, in milliseconds: the longest location window.
    pub location_ms: i64,
    /// Whether a segment measures time since the user was first seen.
    pub first_seen: bool,
    /// Nothing is kept longer than this, whatever a rule asks (data minimisation).
    pub max_ms: i64,
}

impl Retention {
    /// What both `self` and `other` need kept.
    pub fn union(&self, other: &Retention) -> Retention {
        Retention {
            browse_ms: self.browse_ms.max(other.browse_ms),
            purchase_ms: self.purchase_ms.max(other.purchase_ms),
            purchase_last: self.purchase_last.max(other.purchase_last),
            location_ms: self.location_ms.max(other.location_ms),
            first_seen: self.first_seen || other.first_seen,
            max_ms: self.max_ms.max(other.max_ms),
        }
    }
}

/// Inserts `fact` keeping the list sorted by time; events mostly arrive in
/// order, so this is a push in the common case. The room grows from one
/// fact by doubling, not from the four a first push takes: most users
/// keep one or two facts of a kind. Returns whether it went after all the
/// others.
pub fn insert_by_time<T>(facts: &mut ThinVec<T>, fact: T, ts: impl Fn(&T) -> i64) -> bool {
    if facts.len() == facts.capacity() {
        facts.reserve_exact(facts.len().max(1));
    }
    let fact_ts = ts(&fact);
    let position = facts.iter().rposition(|existing| ts(existing) <= fact_ts).map_or(0, |index| index + 1);
    facts.insert(position, fact);
    position + 1 == facts.len()
}

/// Drops the first `count` facts of `facts`, list `list` of the tallies'.
/// Only when there are some: `ThinVec::drain` moves the facts after the
/// range even when the range is empty, a copy of the whole list onto
/// itself on every evaluation.
fn drop_first<T>(facts: &mut ThinVec<T>, tallies: &mut Tallies, list: List, count: usize) {
    if count > 0 {
        facts.drain(..count);
        tallies.shift(list, count);
    }
}

impl History {
    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.browses.is_empty()
            && self.purchases.is_empty()
            && self.locations.is_empty()
            && self.first_seen == MaybeTime::NONE
    }

    /// Notes an applied event's time (for `since_first_seen`).
    pub fn seen_at(&mut self, ts: i64) {
        self.first_seen = Some(self.first_seen.get().map_or(ts, |first| first.min(ts))).into();
    }

    /// Drops facts no segment can read any more at time `now`.
    pub fn prune(&mut self, now: i64, retention: &Retention) {
        if !retention.first_seen {
            self.first_seen = MaybeTime::NONE;
        }
        let expired = |ts: i64, window_ms: i64| ts <= now - window_ms.min(retention.max_ms);
        // Each list is sorted by time, so what leaves is a run at its start.
        let browses = self.browses.partition_point(|fact| expired(fact.ts, retention.browse_ms));
        drop_first(&mut self.browses, &mut self.tallies, List::Browses, browses);
        let locations = self.locations.partition_point(|fact| expired(fact.ts, retention.location_ms));
        drop_first(&mut self.locations, &mut self.tallies, List::Locations, locations);
        let count = self.purchases.len();
        let purchases = self.purchases.iter().enumerate().position(|(index, oldest)| {
            let within_window = !expired(oldest.ts, retention.purchase_ms);
            let among_last = count - index <= retention.purchase_last && !expired(oldest.ts, retention.max_ms);
            within_window || among_last
        });
        let purchases = purchases.unwrap_or(count);
        drop_first(&mut self.purchases, &mut self.tallies, List::Purchases, purchases);
    }

    /// Removes everything derived from sensitive categories (the `sensitive`
    /// purpose was withdrawn). Returns whether anything was removed.
    pub fn forget_sensitive(&mut self) -> bool {
        self.tallies.forget();
        let mut removed = false;
        for purchase in &mut self.purchases {
            let before = purchase.items.len();
            purchase.items.retain(|item| {
                if item.sensitive {
                    purchase.total_cents -= item.price_cents.saturating_mul(i64::from(item.quantity));
                }
                !item.sensitive
            });
            removed |= purchase.items.len() != before;
        }
        self.purchases.retain(|purchase| !purchase.items.is_empty());
        removed
    }
}

/// Everything the owner of a user's partition holds about them beside the
/// consent table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserState {
    /// A GPC signal on one of the user's events removed `ads` until a newer
    /// `ConsentChange` grants it again.
    pub gpc_opt_out: bool,
    /// The choice in the consent table when the user was last evaluated
    /// (`None` before then and after an erasure). Every change to a held
    /// user's consent evaluates or erases them under the new one, so this
    /// stays the table's, and a timer evaluates under it without a lookup in
    /// the table. Not in the changelog: a restored user is evaluated again.
    pub evaluated_under: Option<Choice>,
    /// The time of the newest applied event (idle users are deleted after a while).
    pub last_event: i64,
    /// The facts kept from the user's applied events, as consent allows.
    pub history: History,
    /// The user's evaluation time: the newest event time applied.
    pub clock: i64,
    /// The profile last published, if one was.
    pub published: Option<PublishedProfile>,
    /// The version of the last update or tombstone published for the user.
    pub version: i64,
    /// When a fact next leaves a window (a timer is set for it).
    pub next_change: MaybeTime,
    /// Entries into experiment segments still waiting for a conversion
    /// (kept only with the `measurement` purpose, and only for the window).
    pub experiment_entries: ThinVec<ExperimentEntry>,
}

/// An entry into a segment with a holdout, measured for its conversion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExperimentEntry {
    /// The experiment's segment.
    pub segment: SegmentIndex,
    /// Whether the user is in the holdout arm (else treatment): the arm a conversion counts for.
    pub holdout: bool,
    /// Event time of the entry, epoch milliseconds; the conversion window starts here.
    pub entered_at: i64,
}

/// Most figures one segment's rule may capture for its reason.
pub const MAX_CAPTURES: usize = 8;

/// The figures of one membership's reason, as many as its segment captures:
/// up to two are held inline (every bundled segment captures at most two),
/// more go to the heap. 24 bytes, where a full `[f64; MAX_CAPTURES]` took 64
/// for every membership of every user (BENCHMARKS.md, "Memory per user").
pub type Figures = SmallVec<[f64; 2]>;

/// One membership as last published, kept compact: the reason and channel
/// names are rendered from it only when an update is due.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedMember {
    /// The segment the user is a member of.
    pub segment: SegmentIndex,
    /// Event time the user entered it, epoch milliseconds; published as `Membership.since`.
    pub since: i64,
    /// The figures of the reason, one per capture of the segment.
    pub figures: Figures,
    /// Where the membership may be used: the segment's channels ∩ the user's.
    pub channels: Purposes,
}

/// The parts of the last published `ProfileUpdate` that decide whether a new one is due.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedProfile {
    /// The personalization level published.
    pub level: PersonalizationLevel,
    /// The user's channels published.
    pub channels: Purposes,
    /// Sorted by segment id, as published.
    pub members: ThinVec<PublishedMember>,
}

impl UserState {
    /// Whether the user has anything that withdrawal must erase downstream.
    pub fn holds_profile_data(&self) -> bool {
        self.published.is_some() || !self.history.is_empty()
    }

    /// Starts loading the user's lists of facts and of published memberships
    /// into the cache without waiting (see [`prefetch`]).
    pub fn prefetch_held(&self) {
        let History { browses, purchases, locations, tallies, .. } = &self.history;
        prefetch_start(browses);
        prefetch_start(purchases);
        prefetch_start(locations);
        tallies.prefetch();
        if let Some(published) = &self.published {
            prefetch(thin_vec_allocation(&published.members));
        }
    }

    /// Whether nothing is held beyond the consent table's part (then the
    /// changelog holds a tombstone for the user). The event-time clock
    /// counts: a user whose events kept no fact (a LIGHT user's purchase)
    /// still has their segments evaluated at that time.
    pub fn holds_only_consent(&self) -> bool {
        !self.holds_profile_data()
            && self.experiment_entries.is_empty()
            && self.clock == 0
            && self.last_event == 0
            && !self.gpc_opt_out
    }

    /// Forgets everything built for the user, keeping the last version
    /// (never reused) and a GPC opt-out (a signal about the person, not
    /// something built from their events).
    pub fn clear(&mut self) {
        *self = UserState { version: self.version, gpc_opt_out: self.gpc_opt_out, ..UserState::default() };
    }

    /// The next version to publish: strictly above every earlier one and at
    /// least `now_ms`, so versions keep increasing even across a restart that
    /// lost this state.
    pub fn next_version(&mut self, now_ms: i64) -> i64 {
        self.version = (self.version + 1).max(now_ms);
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(ts: i64) -> PurchaseFact {
        PurchaseFact {
            ts,
            currency: 0,
            total_cents: 100,
            items: smallvec::smallvec![ItemFact {
                category: 1,
                product: 2,
                quantity: 1,
                price_cents: 100,
                sensitive: false
            }],
        }
    }

    #[test]
    fn prune_drops_a_fact_exactly_one_window_old_and_keeps_a_younger_one() {
        let mut history = History::default();
        history.browses.push(BrowseFact { ts: 0, page_type: 0, category: None, product: None });
        history.browses.push(BrowseFact { ts: 1, page_type: 0, category: None, product: None });
        let retention = Retention { browse_ms: 10, max_ms: i64::MAX, ..Retention::default() };
        history.prune(10, &retention);
        assert_eq!(history.browses.iter().map(|fact| fact.ts).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn prune_keeps_the_last_n_purchases_beyond_the_window_but_not_beyond_max_retention() {
        let mut history = History::default();
        for ts in [0, 5, 6] {
            history.purchases.push(purchase(ts));
        }
        let retention = Retention { purchase_ms: 1, purchase_last: 2, max_ms: 100, ..Retention::default() };
        history.prune(50, &retention);
        assert_eq!(history.purchases.iter().map(|fact| fact.ts).collect::<Vec<_>>(), vec![5, 6]);
        history.prune(105, &retention);
        assert_eq!(history.purchases.iter().map(|fact| fact.ts).collect::<Vec<_>>(), vec![6]);
        history.prune(106, &retention);
        assert!(history.purchases.is_empty());
    }

    #[test]
    fn facts_inserted_in_any_order_stay_sorted_in_room_that_doubles_from_one() {
        let mut facts = ThinVec::new();
        let mut rooms = Vec::new();
        for ts in [5, 1, 9, 3, 7] {
            insert_by_time(&mut facts, ts, |ts| *ts);
            rooms.push(facts.capacity());
        }
        assert_eq!(facts, [1, 3, 5, 7, 9]);
        assert_eq!(rooms, [1, 2, 4, 4, 8]);
    }

    #[test]
    fn forgetting_sensitive_items_removes_them_and_their_amount() {
        let mut history = History::default();
        let mut mixed = purchase(1);
        mixed.items.push(ItemFact { category: 9, product: 9, quantity: 2, price_cents: 50, sensitive: true });
        mixed.total_cents = 200;
        let mut only_sensitive = purchase(2);
        only_sensitive.items[0].sensitive = true;
        history.purchases.extend([mixed, only_sensitive]);
        assert!(history.forget_sensitive());
        assert_eq!(history.purchases.len(), 1);
        assert_eq!(history.purchases[0].total_cents, 100);
        assert_eq!(history.purchases[0].items.len(), 1);
        assert!(!history.forget_sensitive());
    }

    #[test]
    fn versions_strictly_increase_and_never_fall_below_the_clock() {
        let mut state = UserState::default();
        assert_eq!(state.next_version(1_000), 1_000);
        assert_eq!(state.next_version(1_000), 1_001);
        assert_eq!(state.next_version(500), 1_002);
        assert_eq!(state.next_version(5_000), 5_000);
    }

    #[test]
    fn a_membership_list_is_prefetched_from_its_length_just_before_its_first_member() {
        let members = ThinVec::from([1u64, 2, 3]);
        let allocation = thin_vec_allocation(&members) as usize;
        // The allocation starts with the length and the capacity, then the members.
        assert_eq!(members.as_ptr() as usize - allocation, 2 * size_of::<usize>());
    }

    #[test]
    fn hashes_are_stable_across_builds() {
        // FNV-1a 64 of "running", computed independently.
        assert_eq!(hash_value(""), 0xcbf29ce484222325);
        assert_eq!(hash_value("a"), 0xaf63dc4c8601ec8c);
    }
}
