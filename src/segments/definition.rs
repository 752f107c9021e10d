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
    pub file: String,
    pub line: usize,
    pub column: usize,
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
    Browse,
    Purchase,
    /// Each line of each purchase.
    PurchaseItem,
    Location,
}

/// A field a filter or a `distinct`/`most_common` measure reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    PageType,
    Category,
    ProductId,
    Currency,
}

/// One `where` condition: the field equals one of the (hashed) values.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub field: Field,
    pub any_of: Vec<u64>,
}

/// What a leaf rule measures over a user's facts.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    Count {
        source: Source,
        filters: Vec<Filter>,
        window_ms: i64,
    },
    /// Sum of amounts in cents: a purchase's total, or an item's price × quantity.
    Sum {
        source: Source,
        filters: Vec<Filter>,
        window_ms: i64,
    },
    DistinctDays {
        source: Source,
        filters: Vec<Filter>,
        window_ms: i64,
    },
    Distinct {
        source: Source,
        filters: Vec<Filter>,
        field: Field,
        window_ms: i64,
    },
    /// How many of the last `last` matching events share the most common value
    /// of `field`; 0 while there are fewer than `last`.
    MostCommon {
        source: Source,
        filters: Vec<Filter>,
        field: Field,
        last: usize,
    },
    /// Of the last `last` matching events, the share (0 to 1) that also
    /// match `satisfying`; 0 while there are fewer than `last`.
    Share {
        source: Source,
        filters: Vec<Filter>,
        satisfying: Vec<Filter>,
        last: usize,
    },
    /// Milliseconds since the user's first applied event.
    SinceFirstSeen,
    /// Milliseconds since the newest matching event in the window; infinite
    /// when there is none.
    SinceLast {
        source: Source,
        filters: Vec<Filter>,
        window_ms: i64,
    },
    /// Location events within `radius_m` of any of `places`.
    Near {
        places: Vec<(f64, f64)>,
        radius_m: f64,
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
    AtLeast(f64),
    AtMost(f64),
    Equals(f64),
    MoreThan(f64),
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
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Compare {
        measure: Measure,
        comparison: Comparison,
        /// Index of the value in the reason template's captures.
        capture: Option<usize>,
    },
}

/// One piece of a reason template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Text(String),
    /// A captured value printed as a whole number.
    Number(usize),
    /// A captured amount in cents printed with two decimals.
    Cents(usize),
    /// A captured count with its noun: "1 purchase", "2 purchases".
    Counted {
        index: usize,
        singular: String,
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
    pub id: String,
    pub description: String,
    pub tier: Tier,
    /// The channels the segment may be used on.
    pub channels: Purposes,
    /// The purposes the rule's reads need, derived from the rule.
    pub needs: Purposes,
    pub reason: Vec<TemplatePart>,
    pub holdout: Option<f64>,
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
    pub segments: Vec<Segment>,
    /// How long facts must be kept for all of these segments together.
    pub retention: Retention,
    /// Every distinct (source, window) a rule reads: when a fact leaves one of
    /// these windows a membership may change without a new event.
    pub windows: Vec<(Source, i64)>,
}

/// The default catalogue shipped with tactful.
pub const DEFAULT_SEGMENTS: &str = include_str!("../../deploy/segments.toml");
