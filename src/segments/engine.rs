//! Evaluates compiled rules over a user's retained facts at an evaluation time.
//! Pure: time comes in as an argument.

use super::definition::{Comparison, Field, Filter, Measure, Rule, Segment, Source, TemplatePart, Window};
use super::tally::Tallied;
use crate::model::Name;
use crate::state::{BrowseFact, History, ItemFact, LocationFact, PurchaseFact};
use crate::time::DAY_MS;
use smallvec::SmallVec;
use std::fmt::Write;
use std::hash::Hasher as _;
use std::num::NonZeroU64;
use std::ops::ControlFlow;

/// Mean Earth radius used by the haversine distance.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// One retained fact as a measure sees it.
#[derive(Clone, Copy)]
pub(super) enum Fact<'a> {
    Browse(&'a BrowseFact),
    Purchase(&'a PurchaseFact),
    Item(i64, &'a ItemFact),
    Location(&'a LocationFact),
}

impl Fact<'_> {
    pub(super) fn ts(self) -> i64 {
        match self {
            Self::Browse(fact) => fact.ts,
            Self::Purchase(fact) => fact.ts,
            Self::Item(ts, _) => ts,
            Self::Location(fact) => fact.ts,
        }
    }

    fn field(self, field: Field) -> Option<u64> {
        match (self, field) {
            (Self::Browse(fact), Field::PageType) => Some(fact.page_type),
            (Self::Browse(fact), Field::Category) => fact.category.map(NonZeroU64::get),
            (Self::Browse(fact), Field::ProductId) => fact.product.map(NonZeroU64::get),
            (Self::Purchase(fact), Field::Currency) => Some(fact.currency),
            (Self::Item(_, item), Field::Category) => Some(item.category),
            (Self::Item(_, item), Field::ProductId) => Some(item.product),
            _ => None,
        }
    }

    /// Calls `each` with every value of `field` the fact has: a purchase has
    /// the product and category of each of its lines.
    fn each_value(self, field: Field, mut each: impl FnMut(u64)) {
        match (self, field) {
            (Self::Purchase(fact), Field::ProductId) => fact.items.iter().for_each(|item| each(item.product)),
            (Self::Purchase(fact), Field::Category) => fact.items.iter().for_each(|item| each(item.category)),
            _ => self.field(field).into_iter().for_each(each),
        }
    }

    pub(super) fn matches(self, filter: &Filter) -> bool {
        match self {
            // A purchase matches a filter on its lines when any line does.
            Self::Purchase(fact) if matches!(filter.field, Field::Category | Field::ProductId) => {
                fact.items.iter().any(|item| Self::Item(fact.ts, item).matches(filter))
            }
            _ => self.field(filter.field).is_some_and(|value| filter.any_of.contains(&value)),
        }
    }

    pub(super) fn amount_cents(self) -> i64 {
        match self {
            Self::Purchase(fact) => fact.total_cents,
            Self::Item(_, item) => item.price_cents.saturating_mul(i64::from(item.quantity)),
            _ => 0,
        }
    }
}

/// Visits the facts of `source` matching `filters`, newest first, until `visit` breaks.
fn newest_first<'a>(
    history: &'a History,
    source: Source,
    filters: &[Filter],
    mut visit: impl FnMut(Fact<'a>) -> ControlFlow<()>,
) {
    let mut visit_matching = |fact: Fact<'a>| {
        if filters.iter().all(|filter| fact.matches(filter)) {
            visit(fact)
        } else {
            ControlFlow::Continue(())
        }
    };
    let _ = match source {
        Source::Browse => history.browses.iter().rev().try_for_each(|fact| visit_matching(Fact::Browse(fact))),
        Source::Purchase => history.purchases.iter().rev().try_for_each(|fact| visit_matching(Fact::Purchase(fact))),
        Source::PurchaseItem => history.purchases.iter().rev().try_for_each(|fact| {
            fact.items.iter().rev().try_for_each(|item| visit_matching(Fact::Item(fact.ts, item)))
        }),
        Source::Location => history.locations.iter().rev().try_for_each(|fact| visit_matching(Fact::Location(fact))),
    };
}

/// Visits the matching facts inside the window `(now - window_ms, now]`.
/// Facts are kept sorted by time, so the walk stops at the window's edge.
fn within_window<'a>(
    history: &'a History,
    source: Source,
    filters: &[Filter],
    now: i64,
    window_ms: i64,
    mut visit: impl FnMut(Fact<'a>),
) {
    let edge = now - window_ms;
    newest_first(history, source, filters, |fact| {
        let ts = fact.ts();
        if ts <= edge {
            return ControlFlow::Break(());
        }
        if ts <= now {
            visit(fact);
        }
        ControlFlow::Continue(())
    });
}

/// The values a measure collects from a user's facts while it is evaluated:
/// on the stack up to 16 (a user's facts in a window are mostly fewer), so
/// evaluating a rule, done for every event, allocates nothing.
type Values = SmallVec<[u64; 16]>;

/// How many distinct values `values` holds (sorted in place: a `Values` is
/// 136 bytes, not moved).
fn count_distinct(values: &mut Values) -> f64 {
    values.sort_unstable();
    values.chunk_by(|a, b| a == b).count() as f64
}

/// Great-circle distance in metres.
pub fn distance_m(from: (f64, f64), to: (f64, f64)) -> f64 {
    let (lat1, lat2) = (from.0.to_radians(), to.0.to_radians());
    let delta_lat = lat2 - lat1;
    let delta_lon = (to.1 - from.1).to_radians();
    let a = (delta_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (delta_lon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The value of `measure` over `history` at evaluation time `now`.
pub fn measure(measure: &Measure, history: &History, now: i64) -> f64 {
    match measure {
        Measure::Count { source, filters, window_ms } => {
            let mut count = 0u64;
            within_window(history, *source, filters, now, *window_ms, |_| count += 1);
            count as f64
        }
        Measure::Sum { source, filters, window_ms } => {
            let mut sum = 0i64;
            within_window(history, *source, filters, now, *window_ms, |fact| {
                sum = sum.saturating_add(fact.amount_cents())
            });
            sum as f64
        }
        Measure::DistinctDays { source, filters, window_ms } => {
            // Facts come newest first, so a day's facts are next to each
            // other: a day is new when it differs from the one before.
            let (mut days, mut last) = (0u64, None);
            within_window(history, *source, filters, now, *window_ms, |fact| {
                let day = fact.ts().div_euclid(DAY_MS);
                days += u64::from(last != Some(day));
                last = Some(day);
            });
            days as f64
        }
        Measure::Distinct { source, filters, field, window_ms } => {
            let mut values = Values::new();
            within_window(history, *source, filters, now, *window_ms, |fact| {
                fact.each_value(*field, |value| values.push(value))
            });
            count_distinct(&mut values)
        }
        Measure::MostCommon { source, filters, field, last } => {
            // Each of the last N events counts once for every distinct value
            // it has: a purchase for every product (or category) on any line.
            let (mut events, mut values) = (0usize, Values::new());
            newest_first(history, *source, filters, |fact| {
                if fact.ts() <= now {
                    events += 1;
                    let first = values.len();
                    fact.each_value(*field, |value| {
                        if !values[first..].contains(&value) {
                            values.push(value);
                        }
                    });
                }
                if events == *last {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if events < *last {
                return 0.0;
            }
            values.sort_unstable();
            values.chunk_by(|a, b| a == b).map(|run| run.len()).max().unwrap_or(0) as f64
        }
        Measure::Share { source, filters, satisfying, last } => {
            let (mut seen, mut satisfied) = (0usize, 0usize);
            newest_first(history, *source, filters, |fact| {
                if fact.ts() <= now {
                    seen += 1;
                    satisfied += usize::from(satisfying.iter().all(|filter| fact.matches(filter)));
                }
                if seen == *last {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if seen < *last {
                0.0
            } else {
                satisfied as f64 / *last as f64
            }
        }
        Measure::SinceFirstSeen => history.first_seen.get().map_or(0.0, |first| (now - first) as f64),
        Measure::SinceLast { source, filters, window_ms } => {
            newest_in_window(history, *source, filters, now, *window_ms).map_or(f64::INFINITY, |ts| (now - ts) as f64)
        }
        Measure::Near { places, radius_m, window_ms } => {
            let mut count = 0u64;
            within_window(history, Source::Location, &[], now, *window_ms, |fact| {
                if let Fact::Location(location) = fact {
                    let here = (location.lat, location.lon);
                    if places.iter().any(|place| distance_m(here, *place) <= *radius_m) {
                        count += 1;
                    }
                }
            });
            count as f64
        }
    }
}

/// Calls `each` with the measure of every leaf of `rule`, in the order
/// [`evaluate`] reaches them.
fn for_each_leaf<'r>(rule: &'r Rule, each: &mut impl FnMut(&'r Measure)) {
    match rule {
        Rule::All(rules) | Rule::Any(rules) => rules.iter().for_each(|rule| for_each_leaf(rule, each)),
        Rule::Not(rule) => for_each_leaf(rule, each),
        Rule::Compare { measure, .. } => each(measure),
    }
}

/// How many measures are given a slot: computed once per evaluation of a
/// user (see [`measure_slots`]); any others are computed at each leaf.
const MAX_SHARED: usize = 16;

/// A leaf whose measure has no slot (see [`measure_slots`]).
const UNSHARED: u8 = u8::MAX;

/// The measures given a slot, computed at most once while a user is
/// evaluated: those several leaves read, such as `new_visitor` and
/// `returning_visitor`'s distinct days of browses over 30 days, and those
/// kept as tallies ([`Tallied`]). Returns them by slot, and for each segment
/// the slot of each of its rule's leaves (in the order [`evaluate`] reaches
/// them), [`UNSHARED`] for a leaf whose measure has none.
pub fn measure_slots(segments: &[Segment]) -> (Vec<&Measure>, Vec<Box<[u8]>>) {
    let per_segment: Vec<Vec<&Measure>> = (segments.iter())
        .map(|segment| {
            let mut measures = Vec::new();
            for_each_leaf(&segment.rule, &mut |measure| measures.push(measure));
            measures
        })
        .collect();
    let all: Vec<&Measure> = per_segment.iter().flatten().copied().collect();
    let mut slotted: Vec<&Measure> = Vec::new();
    for (index, measure) in all.iter().enumerate() {
        let shared = all[index + 1..].contains(measure);
        if slotted.len() < MAX_SHARED && !slotted.contains(measure) && (shared || Tallied::keeps(measure)) {
            slotted.push(measure);
        }
    }
    let slot = |measure: &&Measure| slotted.iter().position(|each| each == measure).map_or(UNSHARED, |slot| slot as u8);
    let slots = per_segment.iter().map(|measures| measures.iter().map(slot).collect()).collect();
    (slotted, slots)
}

/// The values of the measures given a slot ([`measure_slots`]), computed at
/// most once while one user is evaluated (at one time, over unchanged
/// facts), or read from the user's tallies.
pub struct SharedMeasures<'a> {
    /// The slots of the leaves of the segment being evaluated.
    slots: &'a [u8],
    /// The next leaf of that segment.
    leaf: usize,
    values: [f64; MAX_SHARED],
    /// Which slots hold a value, a bit each.
    known: u16,
}

impl<'a> SharedMeasures<'a> {
    /// Nothing computed yet.
    pub fn new() -> Self {
        Self { slots: &[], leaf: 0, values: [0.0; MAX_SHARED], known: 0 }
    }

    /// The measure at `slot` has `value` (a tally's).
    pub fn know(&mut self, slot: u8, value: f64) {
        let slot = usize::from(slot);
        self.values[slot] = value;
        self.known |= 1 << slot;
    }

    /// Evaluation moves on to a segment whose leaves have `slots` ([`measure_slots`]).
    pub fn segment(&mut self, slots: &'a [u8]) -> &mut Self {
        (self.slots, self.leaf) = (slots, 0);
        self
    }

    /// The value of the next leaf's measure, `compute`d unless another leaf's was the same.
    fn next(&mut self, compute: impl FnOnce() -> f64) -> f64 {
        let slot = self.slots.get(self.leaf).copied().unwrap_or(UNSHARED);
        self.leaf += 1;
        if slot == UNSHARED {
            return compute();
        }
        let (slot, bit) = (usize::from(slot), 1 << slot);
        if self.known & bit == 0 {
            self.values[slot] = compute();
            self.known |= bit;
        }
        self.values[slot]
    }
}

impl Default for SharedMeasures<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `rule` holds over `history` at `now`; captured values are written
/// into `captures` (indexed as the segment's `captures`). A measure another
/// leaf read already, as `shared` knows, is not computed again.
pub fn evaluate(rule: &Rule, history: &History, now: i64, captures: &mut [f64], shared: &mut SharedMeasures) -> bool {
    match rule {
        // Every branch is evaluated so that the reason's figures are all
        // filled in (and the leaves are reached in the order `shared` counts them).
        Rule::All(rules) => {
            let mut all = true;
            for rule in rules {
                all &= evaluate(rule, history, now, captures, shared);
            }
            all
        }
        Rule::Any(rules) => {
            let mut any = false;
            for rule in rules {
                any |= evaluate(rule, history, now, captures, shared);
            }
            any
        }
        Rule::Not(rule) => !evaluate(rule, history, now, captures, shared),
        Rule::Compare { measure: what, comparison, capture } => {
            let value = shared.next(|| measure(what, history, now));
            if let Some(index) = capture {
                captures[*index] = value;
            }
            comparison.holds(value)
        }
    }
}

/// Which of the catalogue's windows a rule reads, and through which of them
/// a fact leaving can make the rule hold where it did not: bits by window
/// index ([`window_bit`]; a window not in the catalogue sets them all).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowUse {
    /// The windows whose exits can change the rule's figures or its result.
    pub reads: u64,
    /// The windows whose exits can make it hold for a user it did not.
    pub enters: u64,
}

/// The bit of the catalogue's window at `index` in a [`WindowUse`] or a
/// timed mask; the last bit stands for every window from the 64th on.
pub fn window_bit(index: usize) -> u64 {
    1 << index.min(63)
}

/// How `rule` uses `windows` (see [`WindowUse`]).
pub fn window_use(rule: &Rule, windows: &[Window]) -> WindowUse {
    fn walk(rule: &Rule, negated: bool, windows: &[Window], usage: &mut WindowUse) {
        match rule {
            Rule::All(rules) | Rule::Any(rules) => rules.iter().for_each(|rule| walk(rule, negated, windows, usage)),
            Rule::Not(rule) => walk(rule, !negated, windows, usage),
            Rule::Compare { measure, comparison, .. } => {
                let (source, filters, window_ms) = match measure {
                    Measure::Count { source, filters, window_ms }
                    | Measure::Sum { source, filters, window_ms }
                    | Measure::DistinctDays { source, filters, window_ms }
                    | Measure::Distinct { source, filters, window_ms, .. }
                    | Measure::SinceLast { source, filters, window_ms } => (*source, filters.as_slice(), *window_ms),
                    Measure::Near { window_ms, .. } => (Source::Location, [].as_slice(), *window_ms),
                    Measure::MostCommon { .. } | Measure::Share { .. } | Measure::SinceFirstSeen => return,
                };
                let source = if source == Source::PurchaseItem { Source::Purchase } else { source };
                let bit = windows
                    .iter()
                    .position(|window| {
                        window.source == source && window.window_ms == window_ms && window.filters == filters
                    })
                    .map_or(u64::MAX, window_bit);
                usage.reads |= bit;
                // A fact leaving lowers a count, a sum (amounts are never
                // negative) or a number of distinct values or days: a bound
                // from below can then only stop holding.
                let only_falls = !matches!(measure, Measure::SinceLast { .. })
                    && matches!(comparison, Comparison::AtLeast(_) | Comparison::MoreThan(_));
                if negated || !only_falls {
                    usage.enters |= bit;
                }
            }
        }
    }
    let mut usage = WindowUse::default();
    walk(rule, false, windows, &mut usage);
    usage
}

/// The earliest time after `now` at which a retained fact leaves one of
/// `windows` that its filters accept, among those whose bit is set in
/// `timed`: the next moment a membership can change without a new event.
/// Facts are sorted by time.
pub fn next_window_exit(history: &History, now: i64, windows: &[Window], timed: u64) -> Option<i64> {
    fn first_leaving<T>(facts: &[T], fact: impl Fn(&T) -> Fact<'_>, now: i64, window: &Window) -> Option<i64> {
        // A fact at `ts` is in the window until `ts + window_ms`, when it leaves.
        let first_inside = facts.partition_point(|each| fact(each).ts() + window.window_ms <= now);
        facts[first_inside..]
            .iter()
            .map(fact)
            .find(|fact| window.filters.iter().all(|filter| fact.matches(filter)))
            .map(|fact| fact.ts() + window.window_ms)
    }
    windows
        .iter()
        .enumerate()
        .filter(|(index, _)| timed & window_bit(*index) != 0)
        .filter_map(|(_, window)| match window.source {
            Source::Browse => first_leaving(&history.browses, |fact| Fact::Browse(fact), now, window),
            Source::Purchase | Source::PurchaseItem => {
                first_leaving(&history.purchases, |fact| Fact::Purchase(fact), now, window)
            }
            Source::Location => first_leaving(&history.locations, |fact| Fact::Location(fact), now, window),
        })
        .min()
}

/// The time of the newest matching fact inside the window, if any.
fn newest_in_window(history: &History, source: Source, filters: &[Filter], now: i64, window_ms: i64) -> Option<i64> {
    let mut newest = None;
    newest_first(history, source, filters, |fact| {
        let ts = fact.ts();
        if ts <= now - window_ms {
            return ControlFlow::Break(());
        }
        if ts <= now {
            newest = Some(ts);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    newest
}

/// Whether `rule` compares a recency (time since first seen, or since the
/// last matching fact), which time passing alone can flip.
pub fn compares_recency(rule: &Rule) -> bool {
    let mut compares = false;
    for_each_leaf(rule, &mut |measure| {
        compares |= matches!(measure, Measure::SinceFirstSeen | Measure::SinceLast { .. })
    });
    compares
}

/// The earliest time after `now` at which a recency comparison in `rule`
/// flips by time passing alone (its reference plus its threshold).
pub fn next_recency_flip(rule: &Rule, history: &History, now: i64) -> Option<i64> {
    match rule {
        Rule::All(rules) | Rule::Any(rules) => {
            rules.iter().filter_map(|rule| next_recency_flip(rule, history, now)).min()
        }
        Rule::Not(rule) => next_recency_flip(rule, history, now),
        Rule::Compare { measure, comparison, .. } => {
            let reference = match measure {
                Measure::SinceFirstSeen => history.first_seen.get()?,
                Measure::SinceLast { source, filters, window_ms } => {
                    newest_in_window(history, *source, filters, now, *window_ms)?
                }
                _ => return None,
            };
            let threshold = comparison.threshold();
            if !threshold.is_finite() {
                return None;
            }
            // The comparison can flip at reference + threshold, or one
            // millisecond later (strict comparisons).
            let at = reference.saturating_add(threshold.ceil() as i64);
            [at, at.saturating_add(1)].into_iter().find(|moment| *moment > now)
        }
    }
}

/// The reason sentence with the captured figures filled in (see [`write_reason`]).
pub fn render_reason(parts: &[TemplatePart], captures: &[f64]) -> String {
    let mut reason = String::with_capacity(96);
    write_reason(parts, captures, &mut reason);
    reason
}

/// Writes the reason sentence with the captured figures filled in to `out`.
/// A figure the template names but `captures` lacks reads as 0: a profile
/// published before a reload gave its segment more captures, read before
/// the reload's re-evaluation reached the user.
pub fn write_reason(parts: &[TemplatePart], captures: &[f64], out: &mut impl Write) {
    let figure = |index: &usize| captures.get(*index).copied().unwrap_or_default();
    // Whole numbers are written by itoa: `write!` went through the
    // formatting machinery for each, a quarter of the time a reason took
    // (`encode/reasons`). Cents keep it, for their two places.
    let mut digits = itoa::Buffer::new();
    for part in parts {
        // Both writers tactful passes (a `String`, a byte buffer) cannot fail.
        let _ = match part {
            TemplatePart::Text(text) => out.write_str(text),
            TemplatePart::Number(index) => out.write_str(digits.format(figure(index) as i64)),
            TemplatePart::Counted { index, singular, plural } => {
                let count = figure(index) as i64;
                let noun = if count == 1 { singular } else { plural };
                out.write_str(digits.format(count)).and(out.write_char(' ')).and(out.write_str(noun))
            }
            TemplatePart::Days(index) => match figure(index) {
                value if value.is_finite() => out.write_str(digits.format((value / DAY_MS as f64).floor() as i64)),
                _ => out.write_str("many"),
            },
            TemplatePart::Percent(index) => {
                out.write_str(digits.format((figure(index) * 100.0).round() as i64)).and(out.write_char('%'))
            }
            TemplatePart::Cents(index) => {
                let cents = figure(index) as i64;
                let sign = if cents < 0 { "-" } else { "" };
                let (units, hundredths) = (cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
                write!(out, "{sign}{units}.{hundredths:02}")
            }
        };
    }
}

/// The experiment arm of `user_id` in `segment`: deterministic, so stable
/// across restarts and instances.
pub fn arm(segment: &Segment, user_id: &str) -> Option<Name> {
    in_holdout(segment, user_id).map(|holdout| Name::Borrowed(if holdout { "holdout" } else { "treatment" }))
}

/// Whether `user_id` is in the holdout of `segment`; `None` without an experiment.
pub fn in_holdout(segment: &Segment, user_id: &str) -> Option<bool> {
    let share = segment.holdout?;
    // FNV-1a alone spreads similar ids (user-1, user-2, ...) unevenly; mix its bits.
    // The FNV-1a hash of "<segment id>\0<user id>", written piece by piece.
    let mut hasher = fnv::FnvHasher::default();
    for piece in [segment.id.as_bytes(), &[0], user_id.as_bytes()] {
        hasher.write(piece);
    }
    let draw = mix(hasher.finish()) as f64 / u64::MAX as f64;
    Some(draw < share)
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn mix(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}
