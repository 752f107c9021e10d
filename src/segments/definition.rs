//! Segment definitions: the validated, compiled form the engine runs (the
//! file as written is [`super::compile`]'s). See `deploy/segments.toml` and
//! the README.

use crate::consent::Purposes;
use crate::state::Retention;
use serde::Deserialize;

/// Without `precise_location`, coordinates are coarsened to cells of about
/// this size, so a geofence smaller than it needs `precise_location`.
pub const COARSE_PRECISION_M: f64 = 5_000.0;

/// A segment file that cannot be used, with where and why. The author's to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}:{line}:{column}: {message}{}", hint.as_ref().map(|hint| format!("\n  hint: {hint}")).unwrap_or_default())]
pub struct DefinitionError {
    /// The segment file, as the operator named it (or `deploy/segments.toml` for the bundled one).
    pub file: String,
    /// 1-based line of the fault, so an editor can jump to it.
    pub line: usize,
    /// 1-based column of the fault.
    pub column: usize,
    /// What is wrong, in the author's terms (the key and the value at fault).
    pub message: String,
    /// How to fix it, where the message does not already say.
    pub hint: Option<String>,
}

/// How much consent a segment needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Allowed at level LIGHT and FULL.
    Light,
    /// Allowed at level FULL.
    Full,
    /// Allowed at level FULL with the `sensitive` purpose.
    Sensitive,
}

/// Which facts a measure reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Page views (`of = "browse"`).
    Browse,
    /// Whole orders (`of = "purchase"`): one fact per order, amounts are its total.
    Purchase,
    /// Each line of each purchase.
    PurchaseItem,
    /// Location fixes (`of = "location"`), at the precision consented.
    Location,
}

/// A field a filter or a `distinct`/`most_common` measure reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A page view's `page_type` (home, product, cart, ...).
    PageType,
    /// A page view's or a purchase line's product category; a purchase has
    /// the categories of all its lines.
    Category,
    /// A page view's or a purchase line's product; a purchase has the
    /// products of all its lines.
    ProductId,
    /// A purchase's ISO 4217 currency code.
    Currency,
}

/// One `where` condition: the field equals one of the (hashed) values.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// The field compared; a fact without the field never matches.
    pub field: Field,
    /// Hashes of the accepted values: facts keep hashes, not the text.
    pub any_of: Vec<u64>,
}

/// What a leaf rule measures over a user's facts.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    /// How many matching facts fall in the window.
    Count {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// Length of the sliding window ending at the evaluation time, in
        /// milliseconds; facts exactly this old are out.
        window_ms: i64,
    },
    /// Sum of amounts in cents: a purchase's total, or an item's price × quantity.
    Sum {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// Length of the sliding window ending at the evaluation time, in
        /// milliseconds; facts exactly this old are out.
        window_ms: i64,
    },
    /// On how many distinct UTC days of the window matching facts happened.
    DistinctDays {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// Length of the sliding window ending at the evaluation time, in
        /// milliseconds; facts exactly this old are out.
        window_ms: i64,
    },
    /// How many distinct values of `field` the matching facts in the window have.
    Distinct {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// The field whose distinct values are counted.
        field: Field,
        /// Length of the sliding window ending at the evaluation time, in
        /// milliseconds; facts exactly this old are out.
        window_ms: i64,
    },
    /// How many of the last `last` matching events share the most common value
    /// of `field`; 0 while there are fewer than `last`.
    MostCommon {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// The field whose values are compared.
        field: Field,
        /// How many of the newest matching facts are looked at.
        last: usize,
    },
    /// Of the last `last` matching events, the share (0 to 1) that also
    /// match `satisfying`; 0 while there are fewer than `last`.
    Share {
        /// Which facts are read.
        source: Source,
        /// Conditions that make a fact one of the last `last`.
        filters: Vec<Filter>,
        /// Conditions a counted fact must also meet to be in the share.
        satisfying: Vec<Filter>,
        /// How many of the newest matching facts are looked at.
        last: usize,
    },
    /// Milliseconds since the user's first applied event.
    SinceFirstSeen,
    /// Milliseconds since the newest matching event in the window; infinite
    /// when there is none.
    SinceLast {
        /// Which facts are read.
        source: Source,
        /// Conditions a fact must all meet to be read.
        filters: Vec<Filter>,
        /// How far back a matching fact is looked for, in milliseconds; also
        /// how long such facts are retained for this rule.
        window_ms: i64,
    },
    /// Location events within `radius_m` of any of `places`.
    Near {
        /// The named places' (latitude, longitude), in degrees.
        places: Vec<(f64, f64)>,
        /// How close to a place a fix must be, in metres; below about 5 km it
        /// needs `precise_location`.
        radius_m: f64,
        /// Length of the sliding window ending at the evaluation time, in
        /// milliseconds; facts exactly this old are out.
        window_ms: i64,
    },
}

impl Measure {
    /// Whether the value grows with time by itself (a recency): the rule's
    /// outcome can then change when its threshold is crossed.
    pub fn is_recency(&self) -> bool {
        matches!(self, Self::SinceFirstSeen | Self::SinceLast { .. })
    }
}

/// A comparison of a measure with a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    /// `at_least = n`: the measure is n or more.
    AtLeast(f64),
    /// `at_most = n`: the measure is n or less.
    AtMost(f64),
    /// `equals = n`: the measure is exactly n.
    Equals(f64),
    /// `more_than = n`: the measure is above n.
    MoreThan(f64),
    /// `less_than = n`: the measure is below n.
    LessThan(f64),
}

impl Comparison {
    /// The number compared with.
    pub fn threshold(self) -> f64 {
        match self {
            Self::AtLeast(bound)
            | Self::AtMost(bound)
            | Self::Equals(bound)
            | Self::MoreThan(bound)
            | Self::LessThan(bound) => bound,
        }
    }

    /// Whether `value` satisfies the comparison.
    pub fn holds(self, value: f64) -> bool {
        match self {
            Self::AtLeast(bound) => value >= bound,
            Self::AtMost(bound) => value <= bound,
            Self::Equals(bound) => value == bound,
            Self::MoreThan(bound) => value > bound,
            Self::LessThan(bound) => value < bound,
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Holds when every one of the rules holds.
    All(Vec<Rule>),
    /// Holds when at least one of the rules holds.
    Any(Vec<Rule>),
    /// Holds when the rule does not.
    Not(Box<Rule>),
    /// A leaf: holds when the measure's value satisfies the comparison.
    Compare {
        /// What is computed over the user's facts.
        measure: Measure,
        /// The threshold the value is held against.
        comparison: Comparison,
        /// Index of the value in the reason template's captures.
        capture: Option<usize>,
    },
}

/// One piece of a reason template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    /// Literal text, printed as written.
    Text(String),
    /// A captured value printed as a whole number.
    Number(usize),
    /// A captured amount in cents printed with two decimals.
    Cents(usize),
    /// A captured count with its noun: "1 purchase", "2 purchases".
    Counted {
        /// Index of the value in the segment's captures.
        index: usize,
        /// The noun printed after a count of exactly 1.
        singular: String,
        /// The noun printed after any other count.
        plural: String,
    },
    /// A captured duration in milliseconds printed as whole days.
    Days(usize),
    /// A captured share printed as a whole percentage.
    Percent(usize),
}

/// A compiled segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Stable id consumers key on (`Membership.id`, `entered`, `exited`).
    pub id: String,
    /// What the segment means, for the people who read the definitions; not published.
    pub description: String,
    /// How much consent the segment needs, checked against the user's level and purposes.
    pub tier: Tier,
    /// The channels the segment may be used on.
    pub channels: Purposes,
    /// The purposes the rule's reads need, derived from the rule.
    pub needs: Purposes,
    /// The reason template, filled with the captured figures to tell a user
    /// why they are a member.
    pub reason: Vec<TemplatePart>,
    /// Share of members (0 to below 1) held out of personalization to measure
    /// the segment's lift; `None` when the segment runs no experiment.
    pub holdout: Option<f64>,
    /// Who is a member, evaluated in event time.
    pub rule: Rule,
    /// Names of the values the rule captures (`as = ...`), by index.
    pub captures: Vec<String>,
    /// How long this segment needs each kind of fact. A user's facts are kept
    /// only as long as the segments their consent allows need them.
    pub retention: Retention,
}

/// The validated segment catalogue.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalogue {
    /// The segments in file order; a segment's index here is its [`super::SegmentIndex`].
    pub segments: Vec<Segment>,
    /// How long facts must be kept for all of these segments together.
    pub retention: Retention,
    /// Every distinct window a rule counts in, with the filters it counts
    /// through, and each source's retention: when a fact those filters
    /// accept leaves one of these windows, a membership may change without
    /// a new event (and at the end of its retention the fact is dropped).
    pub windows: Vec<Window>,
}

/// A window of the catalogue's rules, as the timers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The facts it holds: purchase-item windows are given as purchase
    /// windows (a purchase passes an item filter when one of its lines does).
    pub source: Source,
    /// Its length.
    pub window_ms: i64,
    /// What a fact must match to count in it (none: every fact).
    pub filters: Vec<Filter>,
    /// Whether it is also its source's retention: a fact leaving it is
    /// dropped, so its exits are timed for every user.
    pub retention_end: bool,
}

/// The default catalogue shipped with tactful.
pub const DEFAULT_SEGMENTS: &str = include_str!("../../deploy/segments.toml");
