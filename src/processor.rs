//! The pure core: one input record in, its effect on state and the profile
//! update (if any) out. decode → validate → consent gate → facts → segments →
//! profile diff. No I/O and no clock: `now_ms` comes in as an argument.
//! The Kafka pipeline, `tactful demo` and the benchmark all drive this type.

use crate::changelog::{self, ChangelogError};
use crate::codec::{Codec, DecodeError, Decoded, Encoding};
use crate::consent::{self, ConsentInForce, DropReason, Purpose, Purposes};
use crate::explain::{data_held, ConsentView, Explanation, ProfileView};
use crate::model::{ConsentChange, Event, InputKind, Membership, PersonalizationLevel, ProfileUpdate};
use crate::segments::engine::{arm, evaluate, in_holdout, next_recency_flip, next_window_exit, render_reason};
use crate::segments::{Catalogue, Segment, Tier};
use crate::state::{
    hash_value, BrowseFact, ExperimentEntry, History, ItemFact, LocationFact, PublishedMember, PublishedProfile,
    PurchaseFact, Retention, UserState, MAX_CAPTURES,
};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Without `precise_location`, coordinates are snapped to the centre of a grid
/// cell this many degrees wide: 0.05° is about 5.6 km of latitude.
pub const COARSE_GRID_DEGREES: f64 = 0.05;

/// Why a record is bad input (CONTRACT §6). The producer's to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("the key is missing or not UTF-8")]
    BadKey,
    #[error("the key differs from the record's user_id")]
    KeyMismatch,
    #[error("the event has no value")]
    NoValue,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("absurd value: {0}")]
    AbsurdValue(&'static str),
}

impl Rejection {
    /// Bounded label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadKey => "bad_key",
            Self::KeyMismatch => "key_mismatch",
            Self::NoValue => "no_value",
            Self::Decode(error) => error.reason(),
            Self::AbsurdValue(_) => "absurd_value",
        }
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
    Update(ProfileUpdate),
    /// The user was erased: a null value under their key.
    Tombstone {
        user_id: String,
    },
}

impl Output {
    /// The record key.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Update(update) => &update.user_id,
            Self::Tombstone { user_id } => user_id,
        }
    }
}

/// The result of processing one record.
#[derive(Debug, PartialEq)]
pub struct Processed {
    pub outcome: Outcome,
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

    /// A bad record's result (see [`Processor::decode`]).
    pub fn rejected(rejection: Rejection) -> Self {
        Self::without_output(Outcome::Rejected(rejection))
    }
}

/// A decoded, validated input record, not applied yet.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Record {
        record: Decoded,
        encoding: Encoding,
    },
    /// A consent tombstone: forget the user.
    Forget {
        user_id: String,
    },
}

impl Input {
    /// The event time of an event (consent changes and tombstones have none
    /// that orders them among events).
    pub fn event_time(&self) -> Option<i64> {
        match self {
            Self::Record { record: Decoded::Event(event), .. } => Some(event.ts()),
            _ => None,
        }
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

/// The consent-gated segment engine over sharded in-memory state.
pub struct Processor {
    codec: Codec,
    /// The segments in force; replaced as a whole by a reload.
    segments: ArcSwap<Segments>,
    /// Hashes of the sensitive categories: a handful, so a scan beats a hash set.
    sensitive_categories: Vec<u64>,
    event_time_tolerance_ms: i64,
    /// Per-user state, sharded by user id (DashMap shards by key hash).
    /// foldhash: several times faster than SipHash on short keys, and seeded
    /// per process so ids cannot be crafted to collide.
    users: DashMap<String, UserState, foldhash::fast::RandomState>,
    conversion_window_ms: i64,
    /// Per input partition, (when, user): time alone may change the user's
    /// profile then. Entries whose time no longer matches the user's
    /// `next_change` are stale and skipped.
    timers: Mutex<BTreeMap<i32, BTreeSet<(i64, String)>>>,
    /// Users idle (no applied event) this long are deleted.
    idle_user_ms: i64,
}

impl Processor {
    /// A processor for `catalogue`.
    pub fn new(codec: Codec, catalogue: Catalogue, settings: &CoreSettings) -> Self {
        Self {
            codec,
            segments: ArcSwap::from_pointee(Segments::new(catalogue)),
            sensitive_categories: settings.sensitive_categories.iter().map(|name| hash_value(name)).collect(),
            event_time_tolerance_ms: settings.event_time_tolerance_ms,
            users: DashMap::default(),
            conversion_window_ms: settings.conversion_window_ms,
            timers: Mutex::new(BTreeMap::new()),
            idle_user_ms: settings.idle_user_ms,
        }
    }

    /// The codec, for encoding outputs.
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
        let segments = self.segments.load();
        segments
            .catalogue
            .segments
            .iter()
            .zip(&segments.members)
            .map(|(segment, members)| (segment.id.clone(), members.load(Ordering::Relaxed)))
            .collect()
    }

    /// Entries and conversions per segment in force with a holdout, in catalogue order.
    pub fn experiment_counts(&self) -> Vec<ExperimentCounts> {
        let read = |arm: &ArmCounts| (arm.entered.load(Ordering::Relaxed), arm.converted.load(Ordering::Relaxed));
        let segments = self.segments.load();
        segments
            .in_force()
            .map(|index| (&segments.catalogue.segments[index], &segments.experiments[index]))
            .filter(|(segment, _)| segment.holdout.is_some())
            .map(|(segment, [treatment, holdout])| ExperimentCounts {
                segment: segment.id.clone(),
                treatment: read(treatment),
                holdout: read(holdout),
            })
            .collect()
    }

    /// Number of users with any state (consent or facts).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The current memberships of `user_id`, if a profile is published.
    pub fn memberships(&self, user_id: &str) -> Option<Vec<Membership>> {
        let segments = self.segments.load();
        let state = self.users.get(user_id)?;
        state.published.as_ref().map(|profile| self.render(&segments, user_id, profile))
    }

    /// What is held about `user_id` and why, for the explain API; `None` if nothing is.
    pub fn explain(&self, user_id: &str) -> Option<Explanation> {
        let segments = self.segments.load();
        let state = self.users.get(user_id)?;
        let precise = state.consent.as_ref().is_some_and(|consent| consent.granted.contains(Purpose::PreciseLocation));
        let retention = match &state.consent {
            Some(consent) => self.retention_for(&segments, consent.level, consent.effective()),
            None => segments.catalogue.retention,
        };
        Some(Explanation {
            user_id: user_id.to_owned(),
            consent: state.consent.as_ref().map(ConsentView::of),
            profile: state.published.as_ref().map(|profile| ProfileView {
                level: profile.level,
                channels: profile.channels.channel_names(),
                segments: self.render(&segments, user_id, profile),
            }),
            data_held: data_held(&state.history, &retention, precise),
        })
    }

    /// Processes one input record of `kind`, read at processing time `now_ms`,
    /// with every record on one partition and no watermark (offline use).
    pub fn process(&self, kind: InputKind, key: Option<&[u8]>, value: Option<&[u8]>, now_ms: i64) -> Processed {
        self.process_from(Source { partition: 0, watermark: i64::MIN }, kind, key, value, now_ms)
    }

    /// Processes one input record of `kind` read from `source`, at processing time `now_ms`.
    pub fn process_from(
        &self,
        source: Source,
        kind: InputKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Processed {
        match self.decode(kind, key, value, now_ms) {
            Ok(input) => self.apply(source, input, now_ms),
            Err(rejection) => Processed::rejected(rejection),
        }
    }

    /// Decodes and validates one input record of `kind`, without looking at
    /// or changing any state: the pipeline decodes records as they arrive and
    /// applies them later, in event-time order across the event topics.
    pub fn decode(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Input, Rejection> {
        let Some(key) = key.and_then(|key| std::str::from_utf8(key).ok()).filter(|key| !key.is_empty()) else {
            return Err(Rejection::BadKey);
        };
        let Some(value) = value else {
            return match kind {
                InputKind::Consent => Ok(Input::Forget { user_id: key.to_owned() }),
                _ => Err(Rejection::NoValue),
            };
        };
        let (decoded, encoding) = self.codec.decode(kind, value)?;
        Ok(Input::Record { record: self.validate(key, decoded, now_ms)?, encoding })
    }

    /// Applies a decoded input read from `source`, at processing time `now_ms`.
    pub fn apply(&self, source: Source, input: Input, now_ms: i64) -> Processed {
        let segments = self.segments.load();
        let segments = segments.as_ref();
        let (record, encoding) = match input {
            Input::Forget { user_id } => return self.forget(segments, &user_id),
            Input::Record { record, encoding } => (record, encoding),
        };
        let processed = match record {
            Decoded::Consent(change) => self.apply_consent(segments, source.partition, change, now_ms),
            Decoded::Event(event) if segments.too_late(&event, source.watermark) => Processed {
                event_time: Some(event.ts()),
                ..Processed::without_output(Outcome::Dropped(DropReason::Late))
            },
            Decoded::Event(event) => {
                let event_time = event.ts();
                Processed {
                    event_time: Some(event_time),
                    ..self.apply_event(segments, event, source.watermark, now_ms)
                }
            }
        };
        Processed { encoding: Some(encoding), ..processed }
    }

    fn validate(&self, key: &str, decoded: Decoded, now_ms: i64) -> Result<Decoded, Rejection> {
        let (user_id, ts) = match &decoded {
            Decoded::Event(event) => (event.user_id(), event.ts()),
            Decoded::Consent(change) => (change.user_id.as_str(), change.ts),
        };
        if user_id != key {
            return Err(Rejection::KeyMismatch);
        }
        // The consent topic is compacted: a choice made long ago is still in force.
        let too_old = matches!(decoded, Decoded::Event(_)) && now_ms.saturating_sub(ts) > self.event_time_tolerance_ms;
        if too_old || ts.saturating_sub(now_ms) > self.event_time_tolerance_ms {
            return Err(Rejection::AbsurdValue("timestamp too far from now"));
        }
        match &decoded {
            Decoded::Event(Event::Location(location)) => {
                if !(location.lat.is_finite() && (-90.0..=90.0).contains(&location.lat)) {
                    return Err(Rejection::AbsurdValue("latitude outside -90..90"));
                }
                if !(location.lon.is_finite() && (-180.0..=180.0).contains(&location.lon)) {
                    return Err(Rejection::AbsurdValue("longitude outside -180..180"));
                }
            }
            Decoded::Event(Event::Purchase(purchase)) => {
                if purchase.total_cents < 0 {
                    return Err(Rejection::AbsurdValue("negative total_cents"));
                }
                if purchase.items.iter().any(|item| item.quantity < 0 || item.price_cents < 0) {
                    return Err(Rejection::AbsurdValue("negative quantity or price_cents"));
                }
            }
            _ => {}
        }
        Ok(decoded)
    }

    /// A consent tombstone (or no consent at all): forget the user entirely.
    fn forget(&self, segments: &Segments, user_id: &str) -> Processed {
        let output = match self.users.remove(user_id) {
            Some((user_id, state)) => {
                segments.count_members(state.published.as_ref(), None);
                state.holds_profile_data().then_some(Output::Tombstone { user_id })
            }
            None => None,
        };
        Processed { output, ..Processed::without_output(Outcome::Applied) }
    }

    fn apply_consent(&self, segments: &Segments, partition: i32, change: ConsentChange, now_ms: i64) -> Processed {
        let consent = ConsentInForce::from_change(&change);
        let mut state =
            self.users.entry(change.user_id.clone()).or_insert_with(|| UserState { partition, ..UserState::default() });
        // A choice older than the one in force (read again while catching
        // up, after a restored state already had the newer one) changes nothing.
        if state.consent.as_ref().is_some_and(|in_force| in_force.ts > consent.ts) {
            return Processed::without_output(Outcome::Applied);
        }
        let output = self.enforce(segments, &change.user_id, &mut state, consent, change.ts, now_ms);
        Processed { output, ..Processed::without_output(Outcome::Applied) }
    }

    /// Puts `consent` in force for the user: a withdrawal erases everything
    /// built for them (keeping only the refusal, so later events are
    /// dropped); a narrower consent deletes exactly what it no longer allows.
    fn enforce(
        &self,
        segments: &Segments,
        user_id: &str,
        state: &mut UserState,
        consent: ConsentInForce,
        change_ts: i64,
        now_ms: i64,
    ) -> Option<Output> {
        if !consent.allows_profile() {
            let erase = state.holds_profile_data();
            state.consent = Some(consent);
            segments.clear(state);
            return erase.then(|| Output::Tombstone { user_id: user_id.to_owned() });
        }
        if !consent.granted.contains(Purpose::Location) {
            state.history.locations.clear();
        } else if !consent.granted.contains(Purpose::PreciseLocation) {
            for location in &mut state.history.locations {
                (location.lat, location.lon) = coarsen(location.lat, location.lon);
            }
        }
        if !consent.granted.contains(Purpose::Sensitive) {
            state.history.forget_sensitive();
            for browse in &mut state.history.browses {
                if browse.category.is_some_and(|category| self.sensitive_categories.contains(&category)) {
                    (browse.category, browse.product) = (None, None);
                }
            }
        }
        state.consent = Some(consent);
        let update = self.refresh(segments, user_id, state, change_ts, now_ms);
        self.schedule(segments, user_id, state);
        update.map(Output::Update)
    }

    /// Applies an admitted event. One that arrives after its partition's
    /// event time moved past it (`watermark`) joins the facts in time order,
    /// and the user is evaluated at the partition's current event time: what
    /// was already published for earlier moments stays as it was.
    fn apply_event(&self, segments: &Segments, event: Event, watermark: i64, now_ms: i64) -> Processed {
        let Some(mut state) = self.users.get_mut(event.user_id()) else {
            return Processed::without_output(Outcome::Dropped(DropReason::NoConsent));
        };
        if let Err(reason) = consent::admit(&event, state.consent.as_ref()) {
            return Processed::without_output(Outcome::Dropped(reason));
        }
        let Some(consent) = state.consent.as_mut() else {
            return Processed::without_output(Outcome::Dropped(DropReason::NoConsent));
        };
        if event.consent().is_some_and(|signals| signals.gpc) {
            consent.gpc_opt_out = true;
        }
        let granted = consent.granted;
        let ts = event.ts();
        self.keep_fact(&mut state.history, &event, granted);
        if matches!(event, Event::Purchase(_)) && granted.contains(Purpose::Measurement) {
            segments.measure_conversion(&mut state, ts, self.conversion_window_ms);
        }
        state.clock = state.clock.max(ts).max(watermark);
        state.last_event = state.last_event.max(ts);
        let clock = state.clock;
        let output = self.refresh(segments, event.user_id(), &mut state, clock, now_ms).map(Output::Update);
        self.schedule(segments, event.user_id(), &mut state);
        Processed { output, ..Processed::without_output(Outcome::Applied) }
    }

    /// Keeps what the rules need of an admitted event, at the precision and
    /// with the categories its consent allows.
    fn keep_fact(&self, history: &mut History, event: &Event, granted: Purposes) {
        let ts = event.ts();
        history.seen_at(ts);
        match event {
            Event::Browse(browse) => {
                let category = browse.category.as_deref().map(hash_value);
                // Nothing about a product in a sensitive category is kept without consent.
                let hidden = category.is_some_and(|category| self.sensitive_categories.contains(&category))
                    && !granted.contains(Purpose::Sensitive);
                insert_by_time(
                    &mut history.browses,
                    BrowseFact {
                        ts,
                        page_type: hash_value(&browse.page_type),
                        category: if hidden { None } else { category },
                        product: if hidden { None } else { browse.product_id.as_deref().map(hash_value) },
                    },
                    |fact| fact.ts,
                );
            }
            Event::Purchase(purchase) => {
                let mut total_cents = purchase.total_cents;
                let mut items = Vec::with_capacity(purchase.items.len());
                for item in &purchase.items {
                    let category = hash_value(&item.category);
                    let sensitive = self.sensitive_categories.contains(&category);
                    let amount = item.price_cents.saturating_mul(i64::from(item.quantity));
                    if sensitive && !granted.contains(Purpose::Sensitive) {
                        total_cents = total_cents.saturating_sub(amount).max(0);
                        continue;
                    }
                    items.push(ItemFact {
                        category,
                        product: hash_value(&item.product_id),
                        quantity: item.quantity,
                        price_cents: item.price_cents,
                        sensitive,
                    });
                }
                if !items.is_empty() || purchase.items.is_empty() {
                    let currency = hash_value(&purchase.currency);
                    let fact = PurchaseFact { ts, currency, total_cents, items };
                    insert_by_time(&mut history.purchases, fact, |fact| fact.ts);
                }
            }
            Event::Location(location) => {
                let (lat, lon) = if granted.contains(Purpose::PreciseLocation) {
                    (location.lat, location.lon)
                } else {
                    coarsen(location.lat, location.lon)
                };
                insert_by_time(&mut history.locations, LocationFact { ts, lat, lon }, |fact| fact.ts);
            }
        }
    }

    /// Sets a timer for the next moment time alone can change a membership:
    /// a fact leaving a window, or a recency crossing its threshold.
    fn schedule(&self, segments: &Segments, user_id: &str, state: &mut UserState) {
        let recency_flip = segments
            .by_id
            .iter()
            .filter_map(|index| {
                next_recency_flip(&segments.catalogue.segments[*index].rule, &state.history, state.clock)
            })
            .min();
        let idle_expiry = state.holds_profile_data().then(|| state.last_event.saturating_add(self.idle_user_ms));
        let next_change = next_window_exit(&state.history, state.clock, &segments.catalogue.windows)
            .into_iter()
            .chain(recency_flip)
            .chain(idle_expiry)
            .min();
        if next_change != state.next_change {
            state.next_change = next_change;
            if let Some(due) = next_change {
                let mut timers = self.timers.lock().unwrap_or_else(PoisonError::into_inner);
                timers.entry(state.partition).or_default().insert((due, user_id.to_owned()));
            }
        }
    }

    /// Event time has progressed to `watermark` on every partition (offline use).
    pub fn advance_to(&self, watermark: i64, now_ms: i64) -> Vec<Output> {
        let partitions: Vec<i32> = self.timers.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        partitions.into_iter().flat_map(|partition| self.advance_partition(partition, watermark, now_ms)).collect()
    }

    /// Event time has progressed to `watermark` on `partition`: re-evaluates
    /// every user of it whose profile time alone changes by then, at that
    /// moment, and returns the updates (time-driven exits and entries, no new
    /// event needed), and the tombstones of users idle for too long.
    pub fn advance_partition(&self, partition: i32, watermark: i64, now_ms: i64) -> Vec<Output> {
        let segments = self.segments.load();
        let segments = segments.as_ref();
        let mut outputs = Vec::new();
        loop {
            let next = {
                let mut timers = self.timers.lock().unwrap_or_else(PoisonError::into_inner);
                let due_timers = timers.get_mut(&partition);
                match due_timers {
                    Some(due_timers) if due_timers.first().is_some_and(|(due, _)| *due <= watermark) => {
                        due_timers.pop_first()
                    }
                    _ => None,
                }
            };
            let Some((due, user_id)) = next else { break };
            let Some(mut state) = self.users.get_mut(&user_id) else { continue };
            // A timer replaced by a later one, or a user erased since, is stale.
            if state.next_change != Some(due) || !state.consent.as_ref().is_some_and(ConsentInForce::allows_profile) {
                continue;
            }
            if state.last_event.saturating_add(self.idle_user_ms) <= due {
                // Idle for too long: deleted (data minimisation).
                let erase = state.published.is_some();
                segments.clear(&mut state);
                outputs.extend(erase.then(|| Output::Tombstone { user_id: user_id.clone() }));
                continue;
            }
            state.clock = state.clock.max(due);
            let clock = state.clock;
            outputs.extend(self.refresh(segments, &user_id, &mut state, clock, now_ms).map(Output::Update));
            self.schedule(segments, &user_id, &mut state);
        }
        outputs
    }

    /// Forgets everything built for the users of `partitions` (they moved to
    /// another instance), keeping the consent table.
    pub fn drop_partitions(&self, partitions: &[i32]) {
        let segments = self.segments.load();
        self.timers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|partition, _| !partitions.contains(partition));
        self.users.retain(|_, state| {
            if !partitions.contains(&state.partition) {
                return true;
            }
            segments.clear(state);
            state.consent.is_some()
        });
    }

    /// The changelog value of `user_id`'s state; `None` when nothing beyond
    /// the consent table is held (a tombstone in the changelog).
    pub fn changelog_value(&self, user_id: &str) -> Option<Vec<u8>> {
        let state = self.users.get(user_id)?;
        if state.holds_only_consent() {
            return None;
        }
        let mut value = Vec::with_capacity(256);
        changelog::encode(&state, &self.segments.load().catalogue, &mut value);
        Some(value)
    }

    /// Installs a changelog record of a user of `partition` read while
    /// restoring (`None` = a tombstone). The consent table's entry for the
    /// user is kept aside in `restoring` to reconcile with at the end.
    pub fn restore(
        &self,
        restoring: &mut Restoring,
        partition: i32,
        user_id: &str,
        value: Option<&[u8]>,
    ) -> Result<(), ChangelogError> {
        let segments = self.segments.load();
        let restored = match value {
            Some(value) => Some(changelog::decode(value, &segments.catalogue)?),
            None => None,
        };
        let mut state = self.users.entry(user_id.to_owned()).or_default();
        if !restoring.table.contains_key(user_id) {
            restoring.table.insert(user_id.to_owned(), (partition, state.consent.clone()));
        }
        segments.count_members(state.published.as_ref(), None);
        match restored {
            Some(restored) => *state = UserState { partition, ..restored },
            None => {
                state.partition = partition;
                state.keep_only_consent();
            }
        }
        segments.count_members(None, state.published.as_ref());
        Ok(())
    }

    /// Ends a restore: reconciles each restored user with the consent table
    /// (which may be newer than the changelog: a withdrawal read while the
    /// state was elsewhere is enforced now), re-evaluates them under the
    /// segments in force, sets their timers, and returns what to publish,
    /// with the user's partition.
    pub fn finish_restore(&self, restoring: Restoring, now_ms: i64) -> Vec<(i32, Output)> {
        let segments = self.segments.load();
        let segments = segments.as_ref();
        let mut outputs = Vec::new();
        for (user_id, (partition, table)) in restoring.table {
            let Some(mut state) = self.users.get_mut(&user_id) else { continue };
            let changelog_ts = state.consent.as_ref().map(|consent| consent.ts);
            let output = match table {
                // Nothing known in the consent table: nothing granted.
                None => {
                    drop(state);
                    self.forget(segments, &user_id).output
                }
                Some(table) if changelog_ts.is_none_or(|ts| ts < table.ts) => {
                    let change_ts = table.ts;
                    self.enforce(segments, &user_id, &mut state, table, change_ts, now_ms)
                }
                Some(_) => {
                    let clock = state.clock;
                    let update = self.refresh(segments, &user_id, &mut state, clock, now_ms);
                    self.schedule(segments, &user_id, &mut state);
                    update.map(Output::Update)
                }
            };
            outputs.extend(output.map(|output| (partition, output)));
        }
        outputs
    }

    /// Puts a new segment catalogue in force without a restart: segments
    /// keep their index by id (a changed one is replaced in place, a new one
    /// is added, a removed one is retired), every user is re-evaluated from
    /// the state held, and the updates (entries into new segments, exits from
    /// removed ones, changed reasons) are returned with the user's partition.
    pub fn reload(&self, catalogue: Catalogue, now_ms: i64) -> Reloaded {
        let old = self.segments.load_full();
        let held = old.catalogue.retention;
        let mut merged = old.catalogue.segments.clone();
        let mut in_force = vec![false; merged.len()];
        let mut report = ReloadReport::default();
        for segment in catalogue.segments {
            let index = match merged.iter().position(|existing| existing.id == segment.id) {
                Some(index) if old.by_id.contains(&index) && merged[index] == segment => index,
                Some(index) => {
                    report.changed_or_added(&segment, old.by_id.contains(&index), &held);
                    merged[index] = segment;
                    index
                }
                None => {
                    report.changed_or_added(&segment, false, &held);
                    merged.push(segment);
                    in_force.push(false);
                    merged.len() - 1
                }
            };
            in_force[index] = true;
        }
        report.removed =
            old.by_id.iter().filter(|index| !in_force[**index]).map(|index| merged[*index].id.clone()).collect();
        let members: Vec<i64> = old.members.iter().map(|count| count.load(Ordering::Relaxed)).collect();
        let read = |arm: &ArmCounts| (arm.entered.load(Ordering::Relaxed), arm.converted.load(Ordering::Relaxed));
        let experiments: Vec<[(u64, u64); 2]> =
            old.experiments.iter().map(|[treatment, holdout]| [read(treatment), read(holdout)]).collect();
        let merged = Catalogue { segments: merged, retention: catalogue.retention, windows: catalogue.windows };
        self.segments.store(Arc::new(Segments::with_counts(merged, &in_force, &members, &experiments)));

        let segments = self.segments.load();
        let mut outputs = Vec::new();
        for mut entry in self.users.iter_mut() {
            let (user_id, state) = entry.pair_mut();
            if !state.consent.as_ref().is_some_and(ConsentInForce::allows_profile) {
                continue;
            }
            let clock = state.clock;
            if let Some(update) = self.refresh(&segments, user_id, state, clock, now_ms) {
                outputs.push((state.partition, Output::Update(update)));
            }
            // Windows may have changed: the timer is set anew.
            state.next_change = None;
            self.schedule(&segments, user_id, state);
        }
        Reloaded { outputs, report }
    }

    /// Re-evaluates every segment the user's consent allows and returns the
    /// update to publish, if anything changed. Reasons and channel names are
    /// rendered only then: an unchanged profile costs no allocation.
    fn refresh(
        &self,
        segments: &Segments,
        user_id: &str,
        state: &mut UserState,
        change_ts: i64,
        now_ms: i64,
    ) -> Option<ProfileUpdate> {
        let consent = state.consent.as_ref()?;
        let granted = consent.effective();
        let level = consent.level;
        let now = state.clock;
        // Data minimisation: keep facts only as long as the segments this
        // user's consent allows need them.
        state.history.prune(now, &self.retention_for(segments, level, granted));
        let previous = state.published.as_ref().map(|profile| profile.members.as_slice()).unwrap_or_default();
        let mut members = Vec::new();
        for &index in &segments.by_id {
            let segment = &segments.catalogue.segments[index];
            if !eligible(segment, level, granted) {
                continue;
            }
            let mut figures = [0.0; MAX_CAPTURES];
            if !evaluate(&segment.rule, &state.history, now, &mut figures) {
                continue;
            }
            let since = previous.iter().find(|member| member.segment == index).map_or(now, |member| member.since);
            members.push(PublishedMember {
                segment: index,
                since,
                figures,
                channels: segment.channels.intersect(granted),
            });
        }
        let profile = PublishedProfile { level, channels: Purposes::channels_of(granted), members };
        if state.published.as_ref() == Some(&profile) || (state.published.is_none() && profile.members.is_empty()) {
            return None;
        }
        let ids_missing_from = |these: &[PublishedMember], those: &[PublishedMember]| -> Vec<String> {
            these
                .iter()
                .filter(|member| !those.iter().any(|other| other.segment == member.segment))
                .map(|member| segments.catalogue.segments[member.segment].id.clone())
                .collect()
        };
        let new_entries = if granted.contains(Purpose::Measurement) {
            segments.measure_entries(user_id, &profile, previous)
        } else {
            Vec::new()
        };
        let entered = ids_missing_from(&profile.members, previous);
        let exited = ids_missing_from(previous, &profile.members);
        segments.count_members(state.published.as_ref(), Some(&profile));
        let update = ProfileUpdate {
            user_id: user_id.to_owned(),
            version: state.next_version(now_ms),
            ts: change_ts,
            level,
            channels: profile.channels.channel_names(),
            segments: self.render(segments, user_id, &profile),
            entered,
            exited,
        };
        state.experiment_entries.extend(new_entries);
        state.published = Some(profile);
        Some(update)
    }

    /// How long facts are kept for a user with `level` and `granted`.
    fn retention_for(&self, segments: &Segments, level: PersonalizationLevel, granted: Purposes) -> Retention {
        let none = Retention { max_ms: segments.catalogue.retention.max_ms, ..Retention::default() };
        segments
            .by_id
            .iter()
            .map(|index| &segments.catalogue.segments[*index])
            .filter(|segment| eligible(segment, level, granted))
            .fold(none, |kept, segment| kept.union(&segment.retention))
    }

    /// The memberships of a published profile as the contract shows them.
    fn render(&self, segments: &Segments, user_id: &str, profile: &PublishedProfile) -> Vec<Membership> {
        profile
            .members
            .iter()
            .map(|member| {
                let segment = &segments.catalogue.segments[member.segment];
                Membership {
                    id: segment.id.clone(),
                    since: member.since,
                    reason: render_reason(&segment.reason, &member.figures),
                    channels: member.channels.channel_names(),
                    arm: arm(segment, user_id),
                }
            })
            .collect()
    }
}

/// The segments in force and what is counted per segment, replaced as a whole
/// by a reload. A segment keeps its index for the life of the process (a
/// removed one is retired there, never reused), so the indices in users'
/// published memberships stay valid across a reload.
pub struct Segments {
    pub catalogue: Catalogue,
    /// Indices of the segments in force (not retired), in id order:
    /// memberships are published sorted by id.
    by_id: Vec<usize>,
    /// Current members per segment, by index; kept in step with every
    /// published change so reading it costs nothing.
    members: Vec<AtomicI64>,
    /// Per segment, [treatment, holdout] entries and conversions of users
    /// with `measurement` (aggregates only: nothing personal).
    experiments: Vec<[ArmCounts; 2]>,
}

impl Segments {
    fn new(catalogue: Catalogue) -> Self {
        let in_force = vec![true; catalogue.segments.len()];
        Self::with_counts(catalogue, &in_force, &[], &[])
    }

    /// `catalogue` with the segments marked in `in_force`, counters starting
    /// from `members` and `experiments` (by index; missing ones at zero).
    fn with_counts(catalogue: Catalogue, in_force: &[bool], members: &[i64], experiments: &[[(u64, u64); 2]]) -> Self {
        let mut by_id: Vec<usize> = (0..catalogue.segments.len()).filter(|index| in_force[*index]).collect();
        by_id.sort_by(|a, b| catalogue.segments[*a].id.cmp(&catalogue.segments[*b].id));
        let count = catalogue.segments.len();
        Self {
            by_id,
            members: (0..count).map(|index| AtomicI64::new(members.get(index).copied().unwrap_or(0))).collect(),
            experiments: (0..count)
                .map(|index| {
                    let [treatment, holdout] = experiments.get(index).copied().unwrap_or_default();
                    [ArmCounts::from(treatment), ArmCounts::from(holdout)]
                })
                .collect(),
            catalogue,
        }
    }

    /// Indices of the segments in force, in catalogue order.
    /// Whether `event` arrived too late to change anything: its partition's
    /// event time (`watermark`) is past it by more than any segment reads
    /// events of its kind, so every window that could hold it has passed.
    /// Anything newer is applied, even out of order.
    fn too_late(&self, event: &Event, watermark: i64) -> bool {
        let retention = &self.catalogue.retention;
        let reach_ms = match event {
            // Time since first seen reads every event the user ever had.
            _ if retention.first_seen => retention.max_ms,
            Event::Browse(_) => retention.browse_ms,
            // The last N purchases may be as old as the retention allows.
            Event::Purchase(_) if retention.purchase_last > 0 => retention.max_ms,
            Event::Purchase(_) => retention.purchase_ms,
            Event::Location(_) => retention.location_ms,
        };
        let ts = event.ts();
        ts < watermark && ts <= watermark.saturating_sub(reach_ms.min(retention.max_ms))
    }

    fn in_force(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.catalogue.segments.len()).filter(|index| self.by_id.contains(index))
    }

    /// Counts the entries into experiment segments of this update and
    /// returns them, to be measured for a conversion.
    fn measure_entries(
        &self,
        user_id: &str,
        profile: &PublishedProfile,
        previous: &[PublishedMember],
    ) -> Vec<ExperimentEntry> {
        let mut entries = Vec::new();
        for member in &profile.members {
            let segment = &self.catalogue.segments[member.segment];
            let entered = !previous.iter().any(|before| before.segment == member.segment);
            if let (true, Some(holdout)) = (entered, in_holdout(segment, user_id)) {
                self.experiments[member.segment][usize::from(holdout)].entered.fetch_add(1, Ordering::Relaxed);
                entries.push(ExperimentEntry { segment: member.segment, holdout, entered_at: member.since });
            }
        }
        entries
    }

    /// A purchase at `ts` converts every measured entry of the last `window_ms`.
    fn measure_conversion(&self, state: &mut UserState, ts: i64, window_ms: i64) {
        state.experiment_entries.retain(|entry| {
            let converts = entry.entered_at <= ts && ts <= entry.entered_at.saturating_add(window_ms);
            if converts {
                self.experiments[entry.segment][usize::from(entry.holdout)].converted.fetch_add(1, Ordering::Relaxed);
            }
            !converts && ts <= entry.entered_at.saturating_add(window_ms)
        });
    }

    /// Forgets everything built for a user (their memberships leave the
    /// counts), keeping their consent.
    fn clear(&self, state: &mut UserState) {
        self.count_members(state.published.as_ref(), None);
        state.keep_only_consent();
    }

    fn count_members(&self, before: Option<&PublishedProfile>, after: Option<&PublishedProfile>) {
        let adjust = |profile: Option<&PublishedProfile>, delta: i64| {
            for member in profile.map(|profile| profile.members.as_slice()).unwrap_or_default() {
                self.members[member.segment].fetch_add(delta, Ordering::Relaxed);
            }
        };
        adjust(before, -1);
        adjust(after, 1);
    }
}

/// The result of a reload.
#[derive(Debug)]
pub struct Reloaded {
    /// Updates to publish, with the user's partition.
    pub outputs: Vec<(i32, Output)>,
    pub report: ReloadReport,
}

/// What a reload changed, and where the state held could not fully serve a
/// new or changed segment (its memberships are complete once that much event
/// time has passed).
#[derive(Debug, Default, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// (segment id, what the state held lacks).
    pub partial: Vec<(String, String)>,
}

impl ReloadReport {
    fn changed_or_added(&mut self, segment: &Segment, existed: bool, held: &Retention) {
        if existed {
            self.changed.push(segment.id.clone());
        } else {
            self.added.push(segment.id.clone());
        }
        let days = |ms: i64| format!("{} days", (ms as f64 / 86_400_000.0 * 10.0).round() / 10.0);
        let wants = &segment.retention;
        let mut lacks = Vec::new();
        for (kind, wanted, kept) in [
            ("browses", wants.browse_ms, held.browse_ms),
            ("purchases", wants.purchase_ms, held.purchase_ms),
            ("locations", wants.location_ms, held.location_ms),
        ] {
            if wanted > kept {
                lacks.push(format!("it reads {kind} of the last {}, the state holds {}", days(wanted), days(kept)));
            }
        }
        if wants.purchase_last > held.purchase_last {
            lacks.push(format!(
                "it reads the last {} purchases, the state holds the last {}",
                wants.purchase_last, held.purchase_last
            ));
        }
        if wants.first_seen && !held.first_seen {
            lacks.push("first visits were not kept: time since first seen counts from the next event".to_owned());
        }
        if !lacks.is_empty() {
            self.partial.push((segment.id.clone(), lacks.join("; ")));
        }
    }
}

/// Where a record was read: its input partition, and the partition's
/// watermark (events older than it are late).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Source {
    pub partition: i32,
    pub watermark: i64,
}

/// The consent table's entries of the users being restored, as they were
/// before their changelog state was installed.
#[derive(Debug, Default)]
pub struct Restoring {
    /// User id → (partition, the consent table's entry).
    table: HashMap<String, (i32, Option<ConsentInForce>)>,
}

impl Restoring {
    /// Users restored so far.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no user was restored.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Entries and conversions of one experiment arm.
#[derive(Debug, Default)]
struct ArmCounts {
    entered: AtomicU64,
    converted: AtomicU64,
}

impl From<(u64, u64)> for ArmCounts {
    fn from((entered, converted): (u64, u64)) -> Self {
        Self { entered: AtomicU64::new(entered), converted: AtomicU64::new(converted) }
    }
}

/// Measured entries and conversions of one segment with a holdout.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentCounts {
    pub segment: String,
    /// (entered, converted) of the treatment arm.
    pub treatment: (u64, u64),
    /// (entered, converted) of the holdout arm.
    pub holdout: (u64, u64),
}

/// Whether the user's level and purposes allow computing `segment` at all.
fn eligible(segment: &Segment, level: PersonalizationLevel, granted: consent::Purposes) -> bool {
    let tier_allowed = match (segment.tier, level) {
        (_, PersonalizationLevel::None) => false,
        (Tier::Light, _) => true,
        (Tier::Full, PersonalizationLevel::Full) => true,
        (Tier::Sensitive, PersonalizationLevel::Full) => granted.contains(Purpose::Sensitive),
        (_, PersonalizationLevel::Light) => false,
    };
    tier_allowed && granted.contains_all(segment.needs)
}

/// Snaps coordinates to the centre of their coarse grid cell.
pub fn coarsen(lat: f64, lon: f64) -> (f64, f64) {
    let snap = |degrees: f64| ((degrees / COARSE_GRID_DEGREES).floor() + 0.5) * COARSE_GRID_DEGREES;
    (snap(lat).clamp(-90.0, 90.0), snap(lon).clamp(-180.0, 180.0))
}

/// Inserts `fact` keeping the list sorted by time; events mostly arrive in
/// order, so this is a push in the common case.
fn insert_by_time<T>(facts: &mut std::collections::VecDeque<T>, fact: T, ts: impl Fn(&T) -> i64) {
    let fact_ts = ts(&fact);
    let position = facts.iter().rposition(|existing| ts(existing) <= fact_ts).map_or(0, |index| index + 1);
    facts.insert(position, fact);
}

#[cfg(test)]
mod tests;
