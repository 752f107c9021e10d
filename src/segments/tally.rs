//! Window aggregates kept incrementally: a count, a sum or a number of
//! distinct days of a source's facts in a window, kept for a user between
//! evaluations and moved on by the facts that entered and left the window
//! since, instead of read again from every fact held. Kept only for users who
//! hold many facts ([`TALLY_FROM`]): for one who holds a few, reading them is
//! as quick as moving a tally on, and costs no memory. Pure.
//!
//! A tally is a cache of what [`super::engine::measure`] would compute: it is
//! dropped whenever the facts change other than by a new fact after all the
//! others (a late event, a narrower consent) or by pruning facts that had
//! already left its window, and read again from the facts the next time.

use super::definition::{Filter, Measure, Source};
use super::engine::{Fact, SharedMeasures};
use crate::state::{prefetch_whole, History, PurchaseFact};
use crate::time::{MaybeTime, DAY_MS};
use smallvec::SmallVec;

/// From how many facts held (page views and purchases) a user's window
/// measures are tallied.
pub const TALLY_FROM: usize = 8;

/// A sum is tallied only while its amounts' magnitudes add up to less than
/// this: then no partial sum saturates, read in any order, and the tally is
/// exactly what adding the facts newest first gives.
const LARGEST_MAGNITUDE: u64 = i64::MAX as u64;

/// What a tallied measure reports.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Count,
    Sum,
    Days,
}

/// A measure of the segments in force kept as a tally: its slot among the
/// measures computed once per evaluation (see [`super::engine::measure_slots`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Tallied {
    slot: u8,
    kind: Kind,
    source: Source,
    filters: Vec<Filter>,
    window_ms: i64,
}

impl Tallied {
    /// Whether `measure` can be kept as a tally: a count, a sum or a number
    /// of distinct days over a window.
    pub fn keeps(measure: &Measure) -> bool {
        Self::parts(measure).is_some()
    }

    /// `measure`, at `slot`, as a tally, if it is one that can be kept so.
    pub fn of(slot: u8, measure: &Measure) -> Option<Self> {
        let (kind, source, filters, window_ms) = Self::parts(measure)?;
        Some(Self { slot, kind, source, filters: filters.to_vec(), window_ms })
    }

    /// What a tally of `measure` reports, and what it reads, if it can be kept.
    fn parts(measure: &Measure) -> Option<(Kind, Source, &[Filter], i64)> {
        match measure {
            Measure::Count { source, filters, window_ms } => Some((Kind::Count, *source, filters, *window_ms)),
            Measure::Sum { source, filters, window_ms } => Some((Kind::Sum, *source, filters, *window_ms)),
            Measure::DistinctDays { source, filters, window_ms } => Some((Kind::Days, *source, filters, *window_ms)),
            _ => None,
        }
    }
}

/// The list of facts a tally reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum List {
    /// [`History::browses`].
    Browses,
    /// [`History::purchases`].
    Purchases,
    /// [`History::locations`].
    Locations,
}

impl List {
    fn of(source: Source) -> Self {
        match source {
            Source::Browse => Self::Browses,
            Source::Purchase | Source::PurchaseItem => Self::Purchases,
            Source::Location => Self::Locations,
        }
    }
}

/// One tally. The facts of its list at `start..end` are those that were
/// inside its window when it was last moved on (`end`: every fact then
/// held); of them, `units` matched its filters (a purchase counts once for
/// each matching line when its source is purchase lines), amounting to
/// `sum` (their magnitudes to `magnitude`), on `days` distinct days, the
/// newest `last_day` (none with no unit).
#[derive(Clone, Copy, Debug)]
struct Tally {
    sum: i64,
    magnitude: u64,
    last_day: MaybeTime,
    start: u32,
    end: u32,
    units: u32,
    days: u32,
    list: List,
}

/// A user's tallies, in the order of the segments' tallied measures; none
/// for a user who holds few facts, or after a change that made them stale.
/// A cache derived from the facts held: equal whatever it holds, and never
/// written to the changelog.
#[derive(Clone, Debug, Default)]
pub struct Tallies(Option<Box<Kept>>);

#[derive(Clone, Debug)]
struct Kept {
    /// The segments in force they were kept for (see [`generation`]).
    generation: u64,
    /// The evaluation time they were last moved on to.
    at: i64,
    /// In the same allocation up to the default catalogue's six.
    tallies: SmallVec<[Tally; 6]>,
}

impl PartialEq for Tallies {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Tallies {
    /// Whether tallies are kept.
    pub fn are_kept(&self) -> bool {
        self.0.is_some()
    }

    /// Starts loading the tallies into the cache without waiting.
    pub fn prefetch(&self) {
        if let Some(kept) = &self.0 {
            prefetch_whole(&**kept);
        }
    }

    /// Drops the tallies: the facts changed in a way they cannot follow.
    pub fn forget(&mut self) {
        self.0 = None;
    }

    /// `removed` facts left the start of `list` (pruned): the tallies'
    /// positions follow, unless one of them still counted a fact removed.
    pub fn shift(&mut self, list: List, removed: usize) {
        let Some(kept) = &mut self.0 else { return };
        let Ok(removed) = u32::try_from(removed) else { return self.forget() };
        let mut stale = false;
        for tally in kept.tallies.iter_mut().filter(|tally| tally.list == list) {
            stale |= tally.start < removed;
            tally.start = tally.start.saturating_sub(removed);
            tally.end = tally.end.saturating_sub(removed);
        }
        if stale {
            self.forget();
        }
    }
}

/// A number for each set of segments put in force: tallies kept for one
/// are not read under another, whose measures may differ.
pub fn generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Moves `history`'s tallies of the `tallied` measures on to `now`, or starts
/// them from its facts for a user who holds many; drops them where they
/// cannot be kept. Done before facts are pruned at `now`: the facts leaving
/// the windows are still there to be taken off.
pub fn advance(history: &mut History, tallied: &[Tallied], generation: u64, now: i64) {
    let mut kept = match history.tallies.0.take() {
        Some(kept) if kept.generation == generation && kept.at <= now => kept,
        _ if tallied.is_empty() || history.browses.len() + history.purchases.len() < TALLY_FROM => return,
        _ => Box::new(Kept { generation, at: now, tallies: tallied.iter().map(Tally::new).collect() }),
    };
    for (tally, measure) in kept.tallies.iter_mut().zip(tallied) {
        if tally.advance(history, measure, now).is_none() {
            return;
        }
    }
    kept.at = now;
    history.tallies.0 = Some(kept);
}

/// Gives `shared` the value of every tallied measure `history` keeps a
/// tally of, moved on to the evaluation time by [`advance`].
pub fn read(history: &History, tallied: &[Tallied], shared: &mut SharedMeasures) {
    let Some(kept) = &history.tallies.0 else { return };
    for (tally, measure) in kept.tallies.iter().zip(tallied) {
        let value = match measure.kind {
            Kind::Count => f64::from(tally.units),
            Kind::Sum => tally.sum as f64,
            Kind::Days => f64::from(tally.days),
        };
        shared.know(measure.slot, value);
    }
}

/// What one fact adds to a tally: its matching units (a purchase has one
/// for each matching line when the source is purchase lines), their amount
/// and the magnitude of their amounts.
#[derive(Clone, Copy, Default)]
struct Contribution {
    units: u32,
    amount: i64,
    magnitude: u64,
}

impl Contribution {
    fn of(fact: Fact<'_>) -> Self {
        let amount = fact.amount_cents();
        Self { units: 1, amount, magnitude: amount.unsigned_abs() }
    }

    fn and(self, other: Self) -> Self {
        Self {
            units: self.units.saturating_add(other.units),
            amount: self.amount.saturating_add(other.amount),
            magnitude: self.magnitude.saturating_add(other.magnitude),
        }
    }
}

impl Tally {
    fn new(measure: &Tallied) -> Self {
        let list = List::of(measure.source);
        Self { sum: 0, magnitude: 0, last_day: MaybeTime::NONE, start: 0, end: 0, units: 0, days: 0, list }
    }

    /// Moves the tally on to `now`; `None` when it cannot be kept.
    fn advance(&mut self, history: &History, measure: &Tallied, now: i64) -> Option<()> {
        let matching = |fact: Fact<'_>| measure.filters.iter().all(|filter| fact.matches(filter));
        let whole = |fact: Fact<'_>| if matching(fact) { Contribution::of(fact) } else { Contribution::default() };
        match measure.source {
            Source::Browse => {
                self.step(&history.browses, |fact| fact.ts, |fact| whole(Fact::Browse(fact)), measure, now)
            }
            Source::Purchase => {
                self.step(&history.purchases, |fact| fact.ts, |fact| whole(Fact::Purchase(fact)), measure, now)
            }
            Source::PurchaseItem => {
                let lines = |fact: &PurchaseFact| {
                    (fact.items.iter().map(|item| whole(Fact::Item(fact.ts, item))))
                        .fold(Contribution::default(), Contribution::and)
                };
                self.step(&history.purchases, |fact| fact.ts, lines, measure, now)
            }
            Source::Location => {
                self.step(&history.locations, |fact| fact.ts, |fact| whole(Fact::Location(fact)), measure, now)
            }
        }
    }

    /// Takes off the facts that left the window `(now - window, now]`, then
    /// adds those held since the last step that are inside it.
    fn step<T>(
        &mut self,
        facts: &[T],
        ts: impl Fn(&T) -> i64,
        contribution: impl Fn(&T) -> Contribution,
        measure: &Tallied,
        now: i64,
    ) -> Option<()> {
        let edge = now - measure.window_ms;
        let day = |fact: &T| ts(fact).div_euclid(DAY_MS);
        let (start, end) = (self.start as usize, self.end as usize);
        let inside = facts.get(start..end)?;
        // Few facts leave at a time: read from the oldest, not searched.
        let leaving = inside.iter().take_while(|fact| ts(*fact) <= edge).count();
        for (index, fact) in inside[..leaving].iter().enumerate() {
            let leaves = contribution(fact);
            if leaves.units == 0 {
                continue;
            }
            self.units -= leaves.units;
            (self.sum, self.magnitude) = (self.sum - leaves.amount, self.magnitude - leaves.magnitude);
            if measure.kind == Kind::Days {
                // A day leaves with its last matching fact.
                let next = inside[index + 1..].iter().find(|fact| contribution(fact).units > 0);
                self.days -= u32::from(next.is_none_or(|next| day(next) != day(fact)));
            }
        }
        self.start = u32::try_from(start + leaving).ok()?;
        if self.units == 0 {
            self.last_day = MaybeTime::NONE;
        }
        for (index, fact) in facts.iter().enumerate().skip(end) {
            if ts(fact) > now {
                return None;
            }
            if ts(fact) <= edge {
                // Sorted by time: every fact before this one is out too.
                self.start = u32::try_from(index + 1).ok()?;
                continue;
            }
            let enters = contribution(fact);
            if enters.units == 0 {
                continue;
            }
            self.magnitude = self.magnitude.checked_add(enters.magnitude).filter(|sum| *sum < LARGEST_MAGNITUDE)?;
            (self.units, self.sum) = (self.units.checked_add(enters.units)?, self.sum + enters.amount);
            let day = day(fact);
            self.days += u32::from(self.last_day.get() != Some(day));
            self.last_day = Some(day).into();
        }
        self.end = u32::try_from(facts.len()).ok()?;
        Some(())
    }
}
