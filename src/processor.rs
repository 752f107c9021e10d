//! The pure core, as a coordinator of the stages: one input record in, its
//! effect on state and the profile update (if any) out.
//! decode and validate ([`validate`]) → consent gate ([`consent::admit`]) →
//! facts as consent allows ([`Minimiser`]) → evaluate the segments in force
//! ([`segments`]) → diff against the profile last published.
//! No I/O and no clock: `now_ms` comes in as an argument. The Kafka
//! pipeline, `tactful demo`, `tactful replay` and the benchmark all drive it.
//!
//! Two owners of state: the consent table ([`ConsentTable`], every user of
//! every partition) and the partition-owned state ([`Shards`]: facts, the
//! profile last published, timers), held only for partitions this instance owns.

use crate::codec::{Codec, Decoded, EncodedUpdate, Encoding};
use crate::consent::minimise::Minimiser;
use crate::consent::table::ConsentTable;
use crate::consent::{self, Choice, ConsentInForce, DropReason, Purpose};
use crate::experiments::ExperimentCounts;
use crate::explain::{self, Explanation};
use crate::model::{ConsentChange, Event, InputKind, Membership};
use crate::profile;
use crate::segments::engine::next_window_exit;
use crate::segments::{Catalogue, ReloadReport, Segments};
use crate::state::changelog;
use crate::state::restore::{reconcile, NewestValues, Reconciliation};
use crate::state::shards::{Handle, Shard, Shards, Timers, User};
use crate::state::{Partition, UserState, LOOKAHEAD};
use crate::time::{EventTime, MaybeTime};
use crate::validate::{self, Input, Rejection};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Timers taken out at a time when event time advances: their users' slots
/// and what the slots point to are prefetched a few timers ahead of firing
/// them. A timer set while a round fires comes due in the next round.
const TIMER_ROUND: usize = 64;

/// Prefetches, for records applied one after another, what applying each
/// reads, a few records ahead of it (see [`LOOKAHEAD`]): the lock of the
/// consent table's part that holds a user's entry 3 × [`LOOKAHEAD`]
/// records before theirs, the entry 2 × [`LOOKAHEAD`] before (which takes
/// that lock), the slot of their state (which the entry names)
/// [`LOOKAHEAD`] before, and the lists the slot points to [`LOOKAHEAD`] / 2
/// before. The slot found for a record is kept for its last step, so the
/// entry is looked up once ahead of applying it.
#[derive(Debug, Default)]
pub struct Lookahead {
    /// The position of the record about to be applied, in the run.
    position: usize,
    /// The slot found for each of the next [`LOOKAHEAD`] records, at the
    /// place its position gives (modulo [`LOOKAHEAD`]).
    found: [Option<(Partition, Handle)>; LOOKAHEAD],
}

impl Lookahead {
    /// Prefetches for the records after the one about to be applied:
    /// `ahead(distance)` gives the partition and user of the record that
    /// many places after it (`None` past the end, or for a record that
    /// names no user).
    pub fn before_next<'a>(&mut self, processor: &Processor, ahead: impl Fn(usize) -> Option<(Partition, &'a str)>) {
        let place = self.position % LOOKAHEAD;
        self.position += 1;
        if let Some((_, user_id)) = ahead(3 * LOOKAHEAD) {
            processor.consent.prefetch_part(user_id);
        }
        if let Some((_, user_id)) = ahead(2 * LOOKAHEAD) {
            processor.consent.prefetch(user_id);
        }
        // The slot of the record LOOKAHEAD / 2 places ahead was found
        // LOOKAHEAD / 2 records ago, when it was LOOKAHEAD places ahead.
        let held = self.found[(place + LOOKAHEAD / 2) % LOOKAHEAD];
        let next =
            ahead(LOOKAHEAD).and_then(|(partition, user_id)| Some((partition, processor.consent.slot_of(user_id)?)));
        // Both steps under one lock of their shard when the two records
        // share a partition, as in a partition's run.
        let mut found = None;
        let partitions = [held, next].map(|step| step.map(|(partition, _)| partition));
        let second = partitions[1].filter(|partition| partitions[0] != Some(*partition));
        for partition in partitions[0].into_iter().chain(second) {
            processor.shards.with(partition, |shard| {
                if let Some((_, handle)) = held.filter(|&(of, _)| of == partition) {
                    shard.prefetch_held(handle);
                }
                if let Some((_, handle)) = next.filter(|&(of, _)| of == partition) {
                    shard.prefetch(handle);
                    found = next;
                }
            });
        }
        self.found[place] = found;
    }
}

/// What happened to a record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// An event or consent change was applied.
    Applied,
    /// An event was dropped by the consent gate; nothing derived from it is kept.
    Dropped(DropReason),
    /// A bad record: counted and dead-lettered.
    Rejected(Rejection),
}

/// A record to publish on `profiles.updates`.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A changed profile, as the datum published.
    Update(EncodedUpdate),
    /// The user was erased: a null value under their key.
    Tombstone {
        /// The record key.
        user_id: String,
    },
}

impl Output {
    /// The record key.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Update(update) => update.user_id(),
            Self::Tombstone { user_id } => user_id,
        }
    }
}

/// The result of processing one record.
#[derive(Debug, PartialEq)]
pub struct Processed {
    /// What happened to the record.
    pub outcome: Outcome,
    /// What to publish because of it.
    pub output: Option<Output>,
    /// The event time of a valid event, applied or dropped: how far event time
    /// has progressed (the shell derives its watermark from it).
    pub event_time: Option<i64>,
    /// How the value was encoded, when it could be decoded.
    pub encoding: Option<Encoding>,
}

impl Processed {
    fn without_output(outcome: Outcome) -> Self {
        Self { outcome, output: None, event_time: None, encoding: None }
    }

    fn applied(output: Option<Output>) -> Self {
        Self { output, ..Self::without_output(Outcome::Applied) }
    }

    /// A bad record's result (see [`Processor::decode`]).
    pub fn rejected(rejection: Rejection) -> Self {
        Self::without_output(Outcome::Rejected(rejection))
    }
}

/// Settings of the core that come from configuration.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// Product categories that need the `sensitive` purpose.
    pub sensitive_categories: Vec<String>,
    /// A record whose time is further than this from now is an absurd value.
    pub event_time_tolerance_ms: i64,
    /// A purchase this long after entering an experiment segment is its conversion.
    pub conversion_window_ms: i64,
    /// A user without an applied event for this long (event time) is deleted,
    /// with a tombstone if they had a profile (data minimisation).
    pub idle_user_ms: i64,
}

/// Where a record was read: its input partition, and the partition's
/// watermark (events older than it may be late; `None` before event time is known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Source {
    /// The record's input partition.
    pub partition: Partition,
    /// The partition's event time.
    pub watermark: Option<EventTime>,
}

/// The result of a reload.
#[derive(Debug)]
pub struct Reloaded {
    /// Updates to publish, with the user's partition.
    pub outputs: Vec<(Partition, Output)>,
    /// What the reload changed.
    pub report: ReloadReport,
}

/// What restoring one partition gave.
#[derive(Debug, Default)]
pub struct RestoredPartition {
    /// Updates to publish (the partition's users').
    pub outputs: Vec<Output>,
    /// Users restored.
    pub users: usize,
    /// Changelog values that could not be read: those users start afresh.
    pub unreadable: u64,
}

/// The consent-gated segment engine over sharded in-memory state.
pub struct Processor {
    codec: Codec,
    /// The segments in force; replaced as a whole by a reload.
    segments: ArcSwap<Segments>,
    minimiser: Minimiser,
    consent: ConsentTable,
    shards: Shards,
    event_time_tolerance_ms: i64,
    conversion_window_ms: i64,
    /// Users idle (no applied event) this long are deleted.
    idle_user_ms: i64,
}

impl Processor {
    /// A processor for `catalogue`, holding no state yet.
    pub fn new(codec: Codec, catalogue: Catalogue, settings: &CoreSettings) -> Self {
        Self {
            codec,
            segments: ArcSwap::from_pointee(Segments::new(catalogue)),
            minimiser: Minimiser::new(&settings.sensitive_categories),
            consent: ConsentTable::default(),
            shards: Shards::default(),
            event_time_tolerance_ms: settings.event_time_tolerance_ms,
            conversion_window_ms: settings.conversion_window_ms,
            idle_user_ms: settings.idle_user_ms,
        }
    }

    /// The codec: the demo and the benchmark encode outputs with it, and the
    /// Kafka driver adds writer schemas fetched from the registry to it.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The segments in force (and those retired by a reload, at their indices).
    pub fn catalogue(&self) -> Catalogue {
        self.segments.load().catalogue.clone()
    }

    /// Current member count per segment, in catalogue order (a segment
    /// retired by a reload stays, with no members).
    pub fn segment_sizes(&self) -> Vec<(String, i64)> {
        self.segments.load().sizes()
    }

    /// Entries and conversions per segment in force with a holdout, in catalogue order.
    pub fn experiment_counts(&self) -> Vec<ExperimentCounts> {
        self.segments.load().experiment_counts()
    }

    /// Number of users with a recorded consent.
    pub fn user_count(&self) -> usize {
        self.consent.len()
    }

    /// Number of users with partition state held here.
    pub fn held_user_count(&self) -> usize {
        self.shards
            .partitions()
            .into_iter()
            .filter_map(|partition| self.shards.with(partition, |shard| shard.len()))
            .sum()
    }

    /// The current memberships of `user_id`, if a profile is published.
    pub fn memberships(&self, user_id: &str) -> Option<Vec<Membership>> {
        let segments = self.segments.load();
        self.shards
            .read(user_id, |_, state| {
                state.published.as_ref().map(|profile| segments.render(user_id, &profile.members))
            })
            .flatten()
    }

    /// What is held about `user_id` and why, for the explain API; `None` if nothing is.
    pub fn explain(&self, user_id: &str) -> Option<Explanation> {
        let segments = self.segments.load();
        let consent = self.consent.cloned(user_id);
        let explain = |state: &UserState| explain::explain(&segments, user_id, consent.as_ref(), state);
        match self.shards.read(user_id, |_, state| explain(state)) {
            Some(explanation) => Some(explanation),
            None => consent.is_some().then(|| explain(&UserState::default())),
        }
    }

    /// Whether this process answers for `user_id`: it owns the partition
    /// their consent was read from, or no consent is known for them (then
    /// nothing is held about them anywhere).
    pub fn answers_for(&self, user_id: &str) -> bool {
        self.consent.cloned(user_id).is_none_or(|consent| self.shards.is_open(consent.partition))
    }

    /// The human description of segment `id`, from the catalogue in force.
    pub fn segment_description(&self, id: &str) -> Option<String> {
        let segments = self.segments.load();
        let index = segments.catalogue.index_of(id)?;
        Some(segments.catalogue.segment(index).description.clone())
    }

    /// The partitions whose state is held here.
    pub fn partitions(&self) -> Vec<Partition> {
        self.shards.partitions()
    }

    /// Takes on `partitions`: their users' records will be applied here.
    pub fn own(&self, partitions: &[Partition]) {
        for partition in partitions {
            self.shards.open(*partition);
        }
    }

    /// Processes one input record of `kind`, read at processing time `now_ms`,
    /// with every record on one partition and no watermark (offline use).
    pub fn process(&self, kind: InputKind, key: Option<&[u8]>, value: Option<&[u8]>, now_ms: i64) -> Processed {
        self.process_from(Source { partition: Partition(0), watermark: None }, kind, key, value, now_ms)
    }

    /// Processes one input record of `kind` read from `source`, at processing
    /// time `now_ms`, owning `source.partition` (offline use).
    pub fn process_from(
        &self,
        source: Source,
        kind: InputKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Processed {
        if kind == InputKind::Consent {
            self.own(&[source.partition]);
        }
        match self.decode(kind, key, value, now_ms) {
            Ok(input) => self.apply(source, input, now_ms),
            Err(rejection) => Processed::rejected(rejection),
        }
    }

    /// Decodes and validates one input record of `kind`, without looking at
    /// or changing any state: the pipeline decodes a batch's records on its
    /// worker threads and applies them later, in event-time order across the
    /// event topics.
    pub fn decode(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Input, Rejection> {
        validate::decode(&self.codec, kind, key, value, now_ms, self.event_time_tolerance_ms)
    }

    /// Applies a decoded input read from `source`, at processing time `now_ms`.
    pub fn apply(&self, source: Source, input: Input, now_ms: i64) -> Processed {
        let segments = self.segments.load();
        let (record, encoding) = match input {
            Input::Forget { user_id } => return self.forget(&segments, source.partition, &user_id),
            Input::Record { record, encoding } => (record, encoding),
        };
        // Set in place: a `Processed` is 96 bytes, and each rebuilt one was a copy.
        let mut processed = match record {
            Decoded::Consent(change) => self.apply_consent(&segments, source.partition, change, now_ms),
            Decoded::Event(event) => {
                let mut processed = if segments.too_late(&event, source.watermark) {
                    Processed::without_output(Outcome::Dropped(DropReason::Late))
                } else {
                    self.apply_event(&segments, source, &event, now_ms)
                };
                processed.event_time = Some(event.ts());
                processed
            }
        };
        processed.encoding = Some(encoding);
        processed
    }

    /// A consent tombstone (or no consent at all): forget the user entirely.
    fn forget(&self, segments: &Segments, partition: Partition, user_id: &str) -> Processed {
        self.consent.remove(user_id);
        let output = self.shards.with(partition, |shard| forget_state(segments, shard, user_id)).flatten();
        Processed::applied(output)
    }

    fn apply_consent(
        &self,
        segments: &Segments,
        partition: Partition,
        change: ConsentChange,
        now_ms: i64,
    ) -> Processed {
        let consent = ConsentInForce { partition, ..ConsentInForce::from_change(&change) };
        if self.consent.has_newer(&change.user_id, consent.ts) {
            return Processed::applied(None);
        }
        // Other instances' users change only the consent table, and so do
        // users of whom nothing is held yet.
        let output = self
            .shards
            .with(partition, |shard| {
                let user = shard.user(&change.user_id)?;
                self.enforce(segments, user, &consent, change.ts, now_ms)
            })
            .flatten();
        self.consent.put(&change.user_id, consent);
        Processed::applied(output)
    }

    /// Puts `consent` in force for the user: a withdrawal erases everything
    /// built for them (the consent table keeps the refusal, so later events
    /// are dropped); a narrower consent deletes exactly what it no longer allows.
    fn enforce(
        &self,
        segments: &Segments,
        user: User<'_>,
        consent: &ConsentInForce,
        change_ts: i64,
        now_ms: i64,
    ) -> Option<Output> {
        // A newer choice grants again what a GPC signal took away.
        user.state.gpc_opt_out = false;
        if !consent.allows_profile() {
            let erase = user.state.holds_profile_data();
            erase_user(segments, user.state);
            return erase.then(|| Output::Tombstone { user_id: user.user_id.to_owned() });
        }
        self.minimiser.narrow(&mut user.state.history, consent.granted);
        self.refresh(segments, user, consent.choice(), change_ts, now_ms)
    }

    /// Applies an event the consent gate admits. One that arrives after its
    /// partition's event time moved past it (`source.watermark`) joins the
    /// facts in time order, and the user is evaluated at the partition's
    /// current event time: what was already published for earlier moments
    /// stays as it was.
    fn apply_event(&self, segments: &Segments, source: Source, event: &Event, now_ms: i64) -> Processed {
        let user_id = event.user_id();
        // A copy: no lock on the consent table is held while the shard's is taken.
        let (choice, hint) = self.consent.with_slot(user_id).unzip();
        if let Err(reason) = consent::admit(event, choice) {
            return Processed::without_output(Outcome::Dropped(reason));
        }
        let Some(choice) = choice else { return Processed::without_output(Outcome::Dropped(DropReason::NoConsent)) };
        let hint = hint.flatten();
        // The slot found is noted beside the result, not returned with it (a copy).
        let mut found = None;
        let processed = self.shards.with_open(source.partition, |shard| {
            let user = shard.user_hinted(hint, user_id);
            found = Some(user.handle);
            self.apply_admitted(segments, user, source, event, choice, now_ms)
        });
        if let Some(handle) = found.filter(|handle| hint != Some(*handle)) {
            self.consent.note_slot(user_id, handle);
        }
        processed
    }

    /// Applies an admitted event to its user's state.
    fn apply_admitted(
        &self,
        segments: &Segments,
        user: User<'_>,
        source: Source,
        event: &Event,
        choice: Choice,
        now_ms: i64,
    ) -> Processed {
        let state = &mut *user.state;
        if event.consent().is_some_and(|signals| signals.gpc) {
            state.gpc_opt_out = true;
        }
        let ts = event.ts();
        self.minimiser.keep(&mut state.history, event, choice.granted);
        if matches!(event, Event::Purchase(_)) && choice.granted.contains(Purpose::Measurement) {
            segments.experiments.measure_conversion(state, ts, self.conversion_window_ms);
        }
        state.clock = state.clock.max(ts);
        if let Some(watermark) = source.watermark {
            state.clock = state.clock.max(watermark.millis());
        }
        state.last_event = state.last_event.max(ts);
        let clock = state.clock;
        Processed::applied(self.refresh(segments, user, choice, clock, now_ms))
    }

    /// Re-evaluates the user under `choice`, the consent table's, at
    /// `change_ts` (see [`profile::refresh`]) and sets their next timer.
    fn refresh(
        &self,
        segments: &Segments,
        user: User<'_>,
        choice: Choice,
        change_ts: i64,
        now_ms: i64,
    ) -> Option<Output> {
        let User { user_id, state, timers, handle } = user;
        state.evaluated_under = Some(choice);
        let update = profile::refresh(segments, user_id, state, choice, change_ts, now_ms);
        self.schedule(segments, state, timers, handle);
        update.map(Output::Update)
    }

    /// Sets a timer for the next moment time alone can change a membership:
    /// a fact leaving a window, a recency crossing its threshold, or the
    /// user becoming idle for too long.
    fn schedule(&self, segments: &Segments, state: &mut UserState, timers: &mut Timers, handle: Handle) {
        let recency_flip = segments.next_recency_flip(&state.history, state.clock);
        let idle_expiry = state.holds_profile_data().then(|| state.last_event.saturating_add(self.idle_user_ms));
        let members = state.published.as_ref().map(|profile| profile.members.as_slice()).unwrap_or_default();
        let timed = segments.timed_windows(members);
        let next_change = next_window_exit(&state.history, state.clock, &segments.catalogue.windows, timed)
            .into_iter()
            .chain(recency_flip)
            .chain(idle_expiry)
            .min();
        timers.set(handle, next_change, state);
    }

    /// Event time has progressed to `watermark` on every partition (offline use).
    pub fn advance_to(&self, watermark: EventTime, now_ms: i64) -> Vec<Output> {
        let partitions = self.shards.partitions();
        partitions.into_iter().flat_map(|partition| self.advance_partition(partition, watermark, now_ms)).collect()
    }

    /// Whether a timer of `partition` may be due at `watermark` (false:
    /// [`Processor::advance_partition`] would fire nothing).
    pub fn may_be_due(&self, partition: Partition, watermark: EventTime) -> bool {
        self.shards.with(partition, |shard| shard.may_be_due(watermark.millis())).unwrap_or(false)
    }

    /// Event time has progressed to `watermark` on `partition`: re-evaluates
    /// every user of it whose profile time alone changes by then, at that
    /// moment, and returns the updates (time-driven exits and entries, no new
    /// event needed), and the tombstones of users idle for too long.
    pub fn advance_partition(&self, partition: Partition, watermark: EventTime, now_ms: i64) -> Vec<Output> {
        let segments = self.segments.load();
        let advance = |shard: &mut Shard| {
            let mut outputs = Vec::new();
            let mut round = Vec::with_capacity(TIMER_ROUND);
            loop {
                round.extend(std::iter::from_fn(|| shard.pop_due(watermark.millis())).take(TIMER_ROUND));
                if round.is_empty() {
                    break outputs;
                }
                for (index, &(due, handle)) in round.iter().enumerate() {
                    // The slot first, then the lists it points to.
                    if let Some(&(_, ahead)) = round.get(index + LOOKAHEAD) {
                        shard.prefetch(ahead);
                    }
                    if let Some(&(_, ahead)) = round.get(index + LOOKAHEAD / 2) {
                        shard.prefetch_held(ahead);
                    }
                    outputs.extend(self.fire(&segments, shard, due, handle, now_ms));
                }
                round.clear();
            }
        };
        self.shards.with(partition, advance).unwrap_or_default()
    }

    /// Fires the timer due at `due` of the user in slot `handle`: re-evaluates
    /// them then, or erases them if they were idle for too long; returns what
    /// to publish. A stale timer (replaced by a later one) does nothing.
    fn fire(&self, segments: &Segments, shard: &mut Shard, due: i64, handle: Handle, now_ms: i64) -> Option<Output> {
        let user = shard.by_handle(handle)?;
        if user.state.next_change.get() != Some(due) {
            return None;
        }
        // The table's choice, as every change to it for a held user re-evaluates them.
        let choice = user.state.evaluated_under.filter(|choice| choice.allows_profile())?;
        if user.state.last_event.saturating_add(self.idle_user_ms) <= due {
            // Idle for too long: deleted (data minimisation).
            let erase = user.state.published.is_some();
            erase_user(segments, user.state);
            return erase.then(|| Output::Tombstone { user_id: user.user_id.to_owned() });
        }
        user.state.clock = user.state.clock.max(due);
        let clock = user.state.clock;
        self.refresh(segments, user, choice, clock, now_ms)
    }

    /// Forgets everything built for the users of `partitions` (they moved to
    /// another instance), keeping the consent table.
    pub fn drop_partitions(&self, partitions: &[Partition]) {
        let segments = self.segments.load();
        for shard in partitions.iter().filter_map(|partition| self.shards.remove(*partition)) {
            for state in shard.states() {
                segments.count_members(state.published.as_ref(), None);
            }
        }
    }

    /// The changelog value of `user_id`'s state on `partition`; `None` when
    /// nothing beyond the consent table is held (a tombstone in the changelog).
    pub fn changelog_value(&self, partition: Partition, user_id: &str) -> Option<Vec<u8>> {
        self.changelog_values(partition, &[user_id]).pop().flatten()
    }

    /// The changelog values of `user_ids`' states on `partition`, in their
    /// order (see [`Processor::changelog_value`]), the shard locked once.
    pub fn changelog_values<S: AsRef<str>>(&self, partition: Partition, user_ids: &[S]) -> Vec<Option<Vec<u8>>> {
        // Each user's consent is copied out of its table before the shard
        // is locked, as applying a record does.
        let consents: Vec<_> = user_ids.iter().map(|user_id| self.consent.cloned(user_id.as_ref())).collect();
        let catalogue = &self.segments.load().catalogue;
        self.shards
            .with(partition, |shard| {
                (user_ids.iter().zip(&consents))
                    .map(|(user_id, consent)| {
                        let state = shard.get(user_id.as_ref()).filter(|state| !state.holds_only_consent())?;
                        let mut value = Vec::new();
                        changelog::encode(state, consent.as_ref(), catalogue, &mut value);
                        Some(value)
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![None; user_ids.len()])
    }

    /// Restores `partition`'s users from their newest changelog values (a
    /// tombstone leaves only the consent table's entry), reconciles each with
    /// the consent table (see [`reconcile`]), re-evaluates them under the
    /// segments in force and sets their timers; returns what to publish. The
    /// shard is locked once for all its users: partitions are restored side
    /// by side, each user's consent entry written only by their partition's.
    pub fn restore_partition(&self, partition: Partition, newest: &NewestValues, now_ms: i64) -> RestoredPartition {
        let segments = self.segments.load();
        let mut restored_partition = RestoredPartition::default();
        self.shards.with_open(partition, |shard| {
            for (user_id, value) in newest.iter() {
                let Ok(restored) = value.map(|value| changelog::decode(value, &segments.catalogue)).transpose() else {
                    // Another writer's record, or a corrupted one: the user starts afresh.
                    restored_partition.unreadable += 1;
                    continue;
                };
                let state = shard.user_or_new(user_id).state;
                segments.count_members(state.published.as_ref(), None);
                let built_under = match restored {
                    Some(restored) => {
                        *state = restored.state;
                        // The changelog partition is the user's input partition.
                        restored.consent.map(|consent| ConsentInForce { partition, ..consent })
                    }
                    None => {
                        state.clear();
                        self.consent.cloned(user_id)
                    }
                };
                segments.count_members(None, state.published.as_ref());
                restored_partition.users += 1;
                let output = self.reconcile_restored(&segments, shard, user_id, built_under, now_ms);
                restored_partition.outputs.extend(output);
            }
        });
        restored_partition
    }

    /// Reconciles a user just restored, built under `built_under`, with the
    /// consent table; returns what to publish.
    fn reconcile_restored(
        &self,
        segments: &Segments,
        shard: &mut Shard,
        user_id: &str,
        built_under: Option<ConsentInForce>,
        now_ms: i64,
    ) -> Option<Output> {
        let mut refresh = |consent: &ConsentInForce| {
            shard.user(user_id).and_then(|user| {
                let clock = user.state.clock;
                self.refresh(segments, user, consent.choice(), clock, now_ms)
            })
        };
        match reconcile(self.consent.cloned(user_id), built_under) {
            Reconciliation::Forget => {
                self.consent.remove(user_id);
                forget_state(segments, shard, user_id)
            }
            Reconciliation::Enforce(consent) => {
                shard.user(user_id).and_then(|user| self.enforce(segments, user, &consent, consent.ts, now_ms))
            }
            // The table's own entry: nothing to write back.
            Reconciliation::Refresh(consent) => refresh(&consent),
            Reconciliation::Adopt(consent) => {
                let output = refresh(&consent);
                self.consent.put(user_id, consent);
                output
            }
        }
    }

    /// Puts a new segment catalogue in force without a restart (see
    /// [`Segments::reloaded`]): every user is re-evaluated from the state
    /// held, and the updates (entries into new segments, exits from removed
    /// ones, changed reasons) are returned with the user's partition.
    pub fn reload(&self, catalogue: Catalogue, now_ms: i64) -> Reloaded {
        let (reloaded, report) = self.segments.load().reloaded(catalogue);
        self.segments.store(Arc::new(reloaded));
        let segments = self.segments.load();
        let mut outputs = Vec::new();
        for partition in self.shards.partitions() {
            self.shards.with(partition, |shard| {
                for handle in shard.handles() {
                    let Some(user) = shard.by_handle(handle) else { continue };
                    let consent = match self.consent.cloned(user.user_id) {
                        Some(consent) if consent.allows_profile() => consent,
                        _ => continue,
                    };
                    // Windows may have changed: the timer is set anew.
                    user.state.next_change = MaybeTime::NONE;
                    let clock = user.state.clock;
                    let update = self.refresh(&segments, user, consent.choice(), clock, now_ms);
                    outputs.extend(update.map(|update| (partition, update)));
                }
            });
        }
        Reloaded { outputs, report }
    }

    /// A copy of `user_id`'s partition state, for tests.
    #[cfg(test)]
    fn user_state(&self, user_id: &str) -> Option<UserState> {
        self.shards.read(user_id, |_, state| state.clone())
    }

    /// A copy of `user_id`'s consent in force, if any is known.
    pub fn consent_in_force(&self, user_id: &str) -> Option<ConsentInForce> {
        self.consent.cloned(user_id)
    }
}

/// Removes `user_id`'s state from `shard` (their memberships leave the
/// counts); returns the tombstone to publish if anything about them was published.
fn forget_state(segments: &Segments, shard: &mut Shard, user_id: &str) -> Option<Output> {
    let removed = shard.remove(user_id)?;
    segments.count_members(removed.published.as_ref(), None);
    removed.holds_profile_data().then(|| Output::Tombstone { user_id: user_id.to_owned() })
}

/// Forgets everything built for a user (their memberships leave the counts).
fn erase_user(segments: &Segments, state: &mut UserState) {
    segments.count_members(state.published.as_ref(), None);
    state.clear();
}

#[cfg(test)]
mod tests;
