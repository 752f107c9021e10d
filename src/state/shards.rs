//! The user store: partition-owned state, one shard per input partition
//! this instance owns. A shard holds its users' state and their timers;
//! revoking a partition drops its shard whole, without scanning other users.
//!
//! A user's id is looked up once per record: it gives a [`Handle`], the
//! user's slot in their shard, and timers name users by handle. The index is
//! a table of 4-byte handles whose key is read from the slot it points to
//! (the id stored once, inline when short), so a lookup touches the slot
//! the record needs anyway.
//!
//! The state is shared, not owned by one thread: each shard is behind its
//! own lock and has one writer at a time (its partition's worker during a
//! batch's apply step or a restore, the pipeline thread between steps), so workers
//! applying different partitions never wait for each other, and the admin
//! endpoint reads one user at a time, locking only the shard it reads for
//! that moment. The map of shards changes only when partitions are assigned
//! or revoked, and is read without a lock. No lock of the consent table is
//! held while a shard's is taken (the processor copies a user's consent out).

use super::{prefetch_all, Partition, UserKey, UserState};
use crate::time::DAY_MS;
use arc_swap::ArcSwap;
use hashbrown::HashTable;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A user's slot in their shard, stable while the shard holds them (a
/// forgotten user's slot is reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Handle(pub(crate) u32);

impl Handle {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// A held user: their id and state. Two whole cache lines: a slot is the
/// first thing read of a user, from memory (see [`Shard::prefetch`]).
#[derive(Debug)]
#[repr(align(64))]
struct Slot {
    user_id: UserKey,
    state: UserState,
}

/// How many slots a chunk of a shard's [`Slots`] holds (of 128 bytes each: 128 KiB).
const SLOTS_PER_CHUNK: usize = 1024;

const _: () = assert!(size_of::<Option<Slot>>() == 128);

/// A shard's slots, by handle, in chunks of [`SLOTS_PER_CHUNK`] that never
/// move: a growing shard neither copies its users nor holds more than one
/// chunk of unused room. (One doubling `Vec` of slots held up to twice the
/// room its users needed, and copied all of them at every doubling:
/// BENCHMARKS.md, "Memory per user".)
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Vec<Option<Slot>>>,
}

impl Slots {
    /// The place of slot `handle`, if there is one (occupied or vacant).
    fn place(&self, handle: Handle) -> Option<&Option<Slot>> {
        let index = handle.index();
        self.chunks.get(index / SLOTS_PER_CHUNK)?.get(index % SLOTS_PER_CHUNK)
    }

    /// The place of slot `handle`, if there is one, to change.
    fn place_mut(&mut self, handle: Handle) -> Option<&mut Option<Slot>> {
        let index = handle.index();
        self.chunks.get_mut(index / SLOTS_PER_CHUNK)?.get_mut(index % SLOTS_PER_CHUNK)
    }

    /// The slot at `handle`, if it is occupied.
    fn get(&self, handle: Handle) -> Option<&Slot> {
        self.place(handle)?.as_ref()
    }

    /// Puts `slot` in the place of `vacant` (a forgotten user's handle),
    /// else in a new place at the end; returns its handle.
    fn insert(&mut self, vacant: Option<Handle>, slot: Slot) -> Handle {
        if let Some(handle) = vacant {
            if let Some(place) = self.place_mut(handle) {
                *place = Some(slot);
                return handle;
            }
        }
        if self.chunks.last().is_none_or(|chunk| chunk.len() == SLOTS_PER_CHUNK) {
            self.chunks.push(Vec::with_capacity(SLOTS_PER_CHUNK));
        }
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        chunk.push(Some(slot));
        Handle(u32::try_from(last * SLOTS_PER_CHUNK + chunk.len() - 1).expect("fewer than 2^32 users per partition"))
    }

    /// Every occupied slot.
    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten().flatten()
    }
}

/// The id in slot `handle` (every indexed slot is occupied).
fn key(slots: &Slots, handle: Handle) -> &str {
    slots.get(handle).map_or("", |slot| &slot.user_id)
}

/// One user of a shard, found by id or handle, with the shard's timers.
pub struct User<'a> {
    /// The user's id.
    pub user_id: &'a str,
    /// What is held about them.
    pub state: &'a mut UserState,
    /// The shard's timers.
    pub timers: &'a mut Timers,
    /// Their slot.
    pub handle: Handle,
}

/// The state of one partition's users.
#[derive(Debug, Default)]
pub struct Shard {
    /// Id → handle; the id is read from the slot. foldhash: several times
    /// faster than SipHash on short keys, and seeded per process so ids
    /// cannot be crafted to collide.
    index: HashTable<Handle>,
    hasher: foldhash::fast::RandomState,
    slots: Slots,
    /// Slots of forgotten users, reused first.
    vacant: Vec<Handle>,
    /// When time alone may change a user's profile.
    timers: Timers,
}

impl Shard {
    fn find(&self, user_id: &str) -> Option<Handle> {
        let hash = self.hasher.hash_one(user_id);
        self.index.find(hash, |handle| key(&self.slots, *handle) == user_id).copied()
    }

    /// The state of `user_id`, if held.
    pub fn get(&self, user_id: &str) -> Option<&UserState> {
        let handle = self.find(user_id)?;
        self.slots.get(handle).map(|slot| &slot.state)
    }

    /// `user_id` with their state, if held.
    pub fn user(&mut self, user_id: &str) -> Option<User<'_>> {
        let handle = self.find(user_id)?;
        self.by_handle(handle)
    }

    /// `user_id` with their state, made empty if they are new.
    pub fn user_or_new(&mut self, user_id: &str) -> User<'_> {
        let hash = self.hasher.hash_one(user_id);
        let Self { index, hasher, slots, vacant, timers } = self;
        let handle = match index.find(hash, |handle| key(slots, *handle) == user_id) {
            Some(handle) => *handle,
            None => {
                let slot = Slot { user_id: UserKey::from(user_id), state: UserState::default() };
                let handle = slots.insert(vacant.pop(), slot);
                index.insert_unique(hash, handle, |handle| hasher.hash_one(key(slots, *handle)));
                handle
            }
        };
        let slot = slots.place_mut(handle).and_then(Option::as_mut).expect("an indexed slot is occupied");
        User { user_id: &slot.user_id, state: &mut slot.state, timers, handle }
    }

    /// `user_id` with their state, made empty if they are new; looked for
    /// first in slot `hint`, where they were last found.
    pub fn user_hinted(&mut self, hint: Option<Handle>, user_id: &str) -> User<'_> {
        // A hint is not the index's: its slot may be out of range or empty.
        let holds = |handle: &Handle| self.user_id(*handle) == Some(user_id);
        match hint.filter(holds) {
            Some(handle) => self.by_handle(handle).expect("the slot was just found occupied"),
            None => self.user_or_new(user_id),
        }
    }

    /// The user in slot `handle`, if it is occupied.
    pub fn by_handle(&mut self, handle: Handle) -> Option<User<'_>> {
        let slot = self.slots.place_mut(handle)?.as_mut()?;
        Some(User { user_id: &slot.user_id, state: &mut slot.state, timers: &mut self.timers, handle })
    }

    /// The id held in slot `handle`, if it is occupied.
    pub fn user_id(&self, handle: Handle) -> Option<&str> {
        self.slots.get(handle).map(|slot| slot.user_id.as_str())
    }

    /// Starts loading slot `handle` into the cache, every line of it,
    /// without waiting (see [`prefetch_all`]).
    pub fn prefetch(&self, handle: Handle) {
        // The place, not the slot: reading whether it is occupied would wait for the load.
        if let Some(place) = self.slots.place(handle) {
            prefetch_all(std::slice::from_ref(place));
        }
    }

    /// Starts loading what slot `handle` points to, the lists of its user's
    /// facts and published memberships, without waiting: called after
    /// [`Shard::prefetch`], when the slot itself has arrived.
    pub fn prefetch_held(&self, handle: Handle) {
        if let Some(slot) = self.slots.get(handle) {
            slot.state.prefetch_held();
        }
    }

    /// Forgets `user_id`; returns their state if they were held.
    pub fn remove(&mut self, user_id: &str) -> Option<UserState> {
        let hash = self.hasher.hash_one(user_id);
        let Self { index, slots, vacant, .. } = self;
        let (handle, _) = index.find_entry(hash, |handle| key(slots, *handle) == user_id).ok()?.remove();
        vacant.push(handle);
        slots.place_mut(handle)?.take().map(|slot| slot.state)
    }

    /// The handles of every user held.
    pub fn handles(&self) -> Vec<Handle> {
        self.index.iter().copied().collect()
    }

    /// Every user's state.
    pub fn states(&self) -> impl Iterator<Item = &UserState> {
        self.slots.iter().map(|slot| &slot.state)
    }

    /// The earliest timer due at `watermark`, removed.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, Handle)> {
        self.timers.pop_due(watermark)
    }

    /// Whether a timer may be due at `watermark` (false: [`Shard::pop_due`] finds none).
    pub fn may_be_due(&self, watermark: i64) -> bool {
        self.timers.may_be_due(watermark)
    }

    /// Number of users held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no user is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// (when, user): time alone may change the user's profile then, earliest
/// first. Entries whose time no longer matches the user's `next_change` are
/// stale and skipped; so is one whose slot was reused, unless its time is
/// the new user's own (then it fires when theirs would).
///
/// Kept in buckets of a minute of event time, not one heap of every user's
/// timer: a heap of a million entries misses the cache on most levels of
/// every pop. The timers of the minutes event time has reached are moved,
/// a bucket at a time, into a small heap that orders them. Minutes are
/// bucketed only up to the end of the last day event time reached with
/// timers in it; later timers wait in buckets of a day, one per day ahead,
/// and are sorted into minutes when event time reaches their day. A timer
/// is set in the middle of applying an event, and the few hundred buckets
/// it can fall in stay in the cache; the tens of thousands of minutes a
/// held population's timers span did not (setting a timer missed on the
/// minute's entry and on the end of its bucket).
#[derive(Debug, Default)]
pub struct Timers {
    /// The timers due before `ready_until`, earliest first.
    ready: BinaryHeap<std::cmp::Reverse<(i64, Handle)>>,
    ready_until: i64,
    /// The timers from `ready_until` to `minutes_until`, by their minute.
    minutes: Buckets<TIMER_BUCKET_MS>,
    minutes_until: i64,
    /// The later ones, by their day.
    days: Buckets<DAY_MS>,
}

/// The span of one bucket of timers, in milliseconds of event time.
const TIMER_BUCKET_MS: i64 = 60_000;

/// Timers by the span of `SPAN` milliseconds they fall in.
#[derive(Debug, Default)]
struct Buckets<const SPAN: i64> {
    by_span: HashMap<i64, Vec<(i64, Handle)>, foldhash::fast::RandomState>,
    /// The keys of `by_span`, earliest first.
    spans: BinaryHeap<std::cmp::Reverse<i64>>,
}

impl<const SPAN: i64> Buckets<SPAN> {
    fn push(&mut self, due: i64, handle: Handle) {
        let span = due.div_euclid(SPAN);
        let bucket = self.by_span.entry(span).or_insert_with(|| {
            self.spans.push(std::cmp::Reverse(span));
            Vec::new()
        });
        bucket.push((due, handle));
    }

    /// When the earliest bucket's span begins.
    fn earliest(&self) -> Option<i64> {
        self.spans.peek().map(|std::cmp::Reverse(span)| span.saturating_mul(SPAN))
    }

    /// The earliest bucket, removed, and when its span ends.
    fn pop(&mut self) -> Option<(Vec<(i64, Handle)>, i64)> {
        let std::cmp::Reverse(span) = self.spans.pop()?;
        let end = span.saturating_add(1).saturating_mul(SPAN);
        Some((self.by_span.remove(&span).unwrap_or_default(), end))
    }
}

impl Timers {
    /// Sets the timer of the user in `handle` to `next_change`, unless it is set there already.
    pub fn set(&mut self, handle: Handle, next_change: Option<i64>, state: &mut UserState) {
        if next_change != state.next_change.get() {
            state.next_change = next_change.into();
            if let Some(due) = next_change {
                if due < self.ready_until {
                    self.ready.push(std::cmp::Reverse((due, handle)));
                } else if due < self.minutes_until {
                    self.minutes.push(due, handle);
                } else {
                    self.days.push(due, handle);
                }
            }
        }
    }

    /// Whether the earliest timer, or the earliest bucket of timers, is due
    /// at `watermark` (a bucket whose span has begun may hold only later ones).
    fn may_be_due(&self, watermark: i64) -> bool {
        match self.ready.peek() {
            Some(std::cmp::Reverse((due, _))) => *due <= watermark,
            None => self.minutes.earliest().or_else(|| self.days.earliest()).is_some_and(|start| start <= watermark),
        }
    }

    fn pop_due(&mut self, watermark: i64) -> Option<(i64, Handle)> {
        loop {
            // Every timer in `minutes` is due after every one in `ready`,
            // and every one in `days` after every one in `minutes`.
            if let Some(std::cmp::Reverse((due, _))) = self.ready.peek() {
                return (*due <= watermark).then(|| self.ready.pop().map(|entry| entry.0)).flatten();
            }
            match self.minutes.earliest() {
                Some(start) if start > watermark => return None,
                Some(_) => {
                    let (bucket, end) = self.minutes.pop()?;
                    self.ready_until = end;
                    self.ready = bucket.into_iter().map(std::cmp::Reverse).collect();
                }
                None if self.days.earliest()? > watermark => return None,
                None => {
                    let (bucket, end) = self.days.pop()?;
                    self.minutes_until = end;
                    for (due, handle) in bucket {
                        self.minutes.push(due, handle);
                    }
                }
            }
        }
    }
}

/// foldhash, not SipHash: looked up twice per record, by keys no one outside chooses.
type ShardMap = HashMap<Partition, Arc<Mutex<Shard>>, foldhash::fast::FixedState>;

/// Every shard this instance holds, by partition.
#[derive(Debug, Default)]
pub struct Shards {
    shards: ArcSwap<ShardMap>,
}

/// Locks a shard. A worker that panicked holding the lock left it poisoned;
/// the pipeline stops on that panic, so the state is still readable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shards {
    /// Holds a shard for `partition` (empty) if there is none.
    pub fn open(&self, partition: Partition) {
        if !self.shards.load().contains_key(&partition) {
            self.shards.rcu(|shards| {
                let mut shards = ShardMap::clone(shards);
                shards.entry(partition).or_default();
                shards
            });
        }
    }

    /// Whether a shard for `partition` is held here.
    pub fn is_open(&self, partition: Partition) -> bool {
        self.shards.load().contains_key(&partition)
    }

    /// Runs `update` on the shard of `partition`, made empty if there is none.
    pub fn with_open<T>(&self, partition: Partition, update: impl FnOnce(&mut Shard) -> T) -> T {
        if let Some(shard) = self.shards.load().get(&partition) {
            return update(&mut lock(shard));
        }
        self.open(partition);
        self.with(partition, update).expect("the shard was just opened")
    }

    /// Runs `update` on the shard of `partition`, if one is held.
    pub fn with<T>(&self, partition: Partition, update: impl FnOnce(&mut Shard) -> T) -> Option<T> {
        let shards = self.shards.load();
        let mut shard = lock(shards.get(&partition)?);
        Some(update(&mut shard))
    }

    /// Removes the shard of `partition`.
    pub fn remove(&self, partition: Partition) -> Option<Shard> {
        let mut removed = None;
        self.shards.rcu(|shards| {
            let mut shards = ShardMap::clone(shards);
            removed = shards.remove(&partition);
            shards
        });
        // An admin read may still hold the shard for a moment.
        removed.map(|shard| std::mem::take(&mut *lock(&shard)))
    }

    /// The partitions held.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self.shards.load().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Reads `user_id`'s state in whichever shard holds it (a user's records
    /// all arrive on one partition, so at most one does).
    pub fn read<T>(&self, user_id: &str, read: impl FnOnce(Partition, &UserState) -> T) -> Option<T> {
        for (partition, shard) in self.shards.load().iter() {
            if let Some(state) = lock(shard).get(user_id) {
                return Some(read(*partition, state));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::Purposes;
    use crate::model::PersonalizationLevel;
    use crate::segments::SegmentIndex;
    use crate::state::{BrowseFact, Figures, PublishedMember, PublishedProfile};
    use thin_vec::ThinVec;

    #[test]
    fn a_forgotten_users_slot_is_reused_and_every_user_stays_found() {
        let mut shard = Shard::default();
        for user in ["a", "b", "c"] {
            shard.user_or_new(user).state.clock = i64::from(user.as_bytes()[0]);
        }
        let b = shard.user("b").map(|user| user.handle);
        assert_eq!(shard.remove("b").map(|state| state.clock), Some(i64::from(b'b')));
        assert!(shard.get("b").is_none());
        let d = shard.user_or_new("d").handle;
        assert_eq!(Some(d), b);
        for user in ["a", "c", "d"] {
            assert!(shard.get(user).is_some(), "{user}");
        }
        assert_eq!(shard.len(), 3);
        assert_eq!(shard.user_or_new("a").state.clock, i64::from(b'a'));
    }

    #[test]
    fn users_over_several_chunks_each_keep_their_own_slot() {
        let mut shard = Shard::default();
        let users = 2 * SLOTS_PER_CHUNK + SLOTS_PER_CHUNK / 2;
        let handles: Vec<Handle> = (0..users)
            .map(|user| {
                let held = shard.user_or_new(&format!("user-{user}"));
                held.state.clock = user as i64;
                held.handle
            })
            .collect();
        // Dense handles, in the order the users came.
        assert!(handles.iter().enumerate().all(|(user, handle)| handle.index() == user));
        // The last of the first chunk and the first of the second, forgotten and their slots reused.
        for user in [SLOTS_PER_CHUNK - 1, SLOTS_PER_CHUNK] {
            assert_eq!(shard.remove(&format!("user-{user}")).map(|state| state.clock), Some(user as i64));
        }
        let newcomers = [shard.user_or_new("newcomer-1").handle, shard.user_or_new("newcomer-2").handle];
        assert_eq!(newcomers, [handles[SLOTS_PER_CHUNK], handles[SLOTS_PER_CHUNK - 1]]);
        for user in (0..users).filter(|user| ![SLOTS_PER_CHUNK - 1, SLOTS_PER_CHUNK].contains(user)) {
            let id = format!("user-{user}");
            assert_eq!(shard.get(&id).map(|state| state.clock), Some(user as i64), "{id}");
            assert_eq!(shard.user_id(handles[user]), Some(id.as_str()));
        }
        assert_eq!((shard.len(), shard.states().count()), (users, users));
        assert_eq!(shard.user_or_new("one-more").handle.index(), users);
    }

    #[test]
    fn a_hint_is_taken_only_when_its_slot_holds_the_user() {
        let mut shard = Shard::default();
        let a = shard.user_or_new("a").handle;
        shard.user_or_new("a").state.clock = 1;
        assert_eq!(shard.user_hinted(Some(a), "a").state.clock, 1);
        // The slot reused by another user, or out of range: found (or made) by id.
        shard.remove("a");
        assert_eq!(shard.user_or_new("b").handle, a);
        let again = shard.user_hinted(Some(a), "a");
        assert_eq!((again.user_id, again.state.clock), ("a", 0));
        assert_ne!(again.handle, a);
        assert_eq!(shard.user_hinted(Some(Handle(99)), "b").handle, a);
        assert_eq!(shard.len(), 2);
        // An empty slot is not anyone's, not even an empty id's.
        shard.remove("b");
        assert_eq!(shard.user_hinted(Some(a), "").user_id, "");
        assert!(shard.get("").is_some());
    }

    #[test]
    fn a_slot_is_read_by_handle_and_prefetching_any_handle_changes_nothing() {
        let mut shard = Shard::default();
        let a = shard.user_or_new("a").handle;
        let b = shard.user_or_new("b").handle;
        let c = shard.user_or_new("c").handle;
        shard.remove("a");
        let held = shard.by_handle(b).expect("held").state;
        held.history.browses.push(BrowseFact { ts: 1, page_type: 2, category: None, product: None });
        held.published = Some(PublishedProfile {
            level: PersonalizationLevel::Full,
            channels: Purposes::default(),
            members: ThinVec::from([PublishedMember {
                segment: SegmentIndex(0),
                since: 1,
                figures: Figures::new(),
                channels: Purposes::default(),
            }]),
        });
        let before = held.clone();
        shard.by_handle(c).expect("held").state.published = Some(PublishedProfile {
            level: PersonalizationLevel::Light,
            channels: Purposes::default(),
            members: ThinVec::new(),
        });
        for handle in [a, b, c, Handle(99)] {
            shard.prefetch(handle);
            shard.prefetch_held(handle);
        }
        assert_eq!((shard.user_id(a), shard.user_id(b), shard.user_id(Handle(99))), (None, Some("b"), None));
        assert_eq!(shard.len(), 2);
        assert_eq!(shard.get("b"), Some(&before));
    }

    #[test]
    fn timers_across_buckets_come_due_in_time_order_with_ones_set_while_firing() {
        let mut shard = Shard::default();
        let minute = TIMER_BUCKET_MS;
        let handles: Vec<Handle> = (0..6).map(|user| shard.user_or_new(&user.to_string()).handle).collect();
        let set = |shard: &mut Shard, handle: Handle, due: i64| {
            let user = shard.by_handle(handle).expect("held");
            user.timers.set(handle, Some(due), user.state);
        };
        for (handle, due) in handles.iter().zip([3 * minute + 5, minute, 5, 3 * minute, -minute, i64::MAX]) {
            set(&mut shard, *handle, due);
        }
        // Whatever `may_be_due` says no to, `pop_due` finds nothing for.
        let pop = |shard: &mut Shard, watermark: i64| {
            let may_be_due = shard.may_be_due(watermark);
            let popped = shard.pop_due(watermark);
            assert!(may_be_due || popped.is_none(), "{popped:?} popped at {watermark}");
            popped
        };
        assert!(!shard.may_be_due(-minute - 1));
        assert_eq!(pop(&mut shard, -minute), Some((-minute, handles[4])));
        assert_eq!(pop(&mut shard, 4), None);
        assert_eq!(pop(&mut shard, minute), Some((5, handles[2])));
        // Set while its bucket is being fired: it still comes in order.
        set(&mut shard, handles[2], 7);
        assert_eq!(pop(&mut shard, minute), Some((7, handles[2])));
        assert_eq!(pop(&mut shard, minute), Some((minute, handles[1])));
        assert_eq!(pop(&mut shard, 3 * minute + 4), Some((3 * minute, handles[3])));
        assert_eq!(pop(&mut shard, 3 * minute + 4), None);
        assert_eq!(pop(&mut shard, i64::MAX - 1), Some((3 * minute + 5, handles[0])));
        assert_eq!(pop(&mut shard, i64::MAX - 1), None);
        assert_eq!(pop(&mut shard, i64::MAX), Some((i64::MAX, handles[5])));
        assert!(!shard.may_be_due(i64::MAX), "nothing is left");
    }

    #[test]
    fn timers_come_due_earliest_first_and_only_once_due() {
        let mut shard = Shard::default();
        for (user, due) in [("late", 30), ("early", 10), ("middle", 20)] {
            let user = shard.user_or_new(user);
            user.timers.set(user.handle, Some(due), user.state);
        }
        assert_eq!(shard.pop_due(5), None);
        let due: Vec<i64> = std::iter::from_fn(|| shard.pop_due(25)).map(|(due, _)| due).collect();
        assert_eq!(due, vec![10, 20]);
        let (due, handle) = shard.pop_due(30).expect("due");
        assert_eq!((due, shard.by_handle(handle).map(|user| user.user_id.to_owned())), (30, Some("late".to_owned())));
    }

    #[derive(Clone, Debug)]
    enum TimerStep {
        Set { user: usize, due: Option<i64> },
        Pop { watermark: i64 },
    }

    fn timer_steps() -> impl proptest::strategy::Strategy<Value = Vec<TimerStep>> {
        use proptest::prelude::*;
        // Times over a few days either side of zero, and the extremes (`i64::MIN`
        // is no time: see `MaybeTime`).
        let time = prop_oneof![8 => -2 * DAY_MS..4 * DAY_MS, 1 => Just(i64::MAX), 1 => Just(i64::MIN + 1)];
        let step = prop_oneof![
            3 => (0..6usize, proptest::option::weighted(0.9, time.clone())).prop_map(|(user, due)| TimerStep::Set { user, due }),
            2 => time.prop_map(|watermark| TimerStep::Pop { watermark }),
        ];
        proptest::collection::vec(step, 0..60)
    }

    proptest::proptest! {
        /// Every timer set comes due once, in time order, whichever buckets
        /// it waited in: as a sorted list of every timer set would give them.
        #[test]
        fn timers_come_due_as_a_sorted_list_of_them_would(steps in timer_steps()) {
            let mut shard = Shard::default();
            let handles: Vec<Handle> = (0..6).map(|user| shard.user_or_new(&user.to_string()).handle).collect();
            let mut set = std::collections::BTreeSet::new();
            let mut sequence = 0;
            for step in steps {
                match step {
                    TimerStep::Set { user, due } => {
                        let user = shard.by_handle(handles[user]).expect("held");
                        // A timer replaced is not taken out: it comes due stale.
                        if let Some(due) = due.filter(|due| Some(*due) != user.state.next_change.get()) {
                            set.insert((due, user.handle, sequence));
                            sequence += 1;
                        }
                        user.timers.set(user.handle, due, user.state);
                    }
                    TimerStep::Pop { watermark } => loop {
                        let expected = set.first().copied().filter(|(due, _, _)| *due <= watermark);
                        let may_be_due = shard.may_be_due(watermark);
                        let popped = shard.pop_due(watermark);
                        proptest::prop_assert_eq!(popped, expected.map(|(due, handle, _)| (due, handle)));
                        proptest::prop_assert!(may_be_due || popped.is_none());
                        match expected {
                            Some(entry) => set.remove(&entry),
                            None => break,
                        };
                    },
                }
            }
            let rest: Vec<(i64, Handle)> = std::iter::from_fn(|| shard.pop_due(i64::MAX)).collect();
            proptest::prop_assert_eq!(rest, set.iter().map(|(due, handle, _)| (*due, *handle)).collect::<Vec<_>>());
        }
    }
}
