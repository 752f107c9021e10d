//! Time units and event time. Every duration in tactful is milliseconds in
//! an `i64` (the contract's timestamps are epoch milliseconds); these are the
//! only definitions of the units.

/// One second in milliseconds.
pub const SECOND_MS: i64 = 1_000;
/// One minute in milliseconds.
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
/// One hour in milliseconds.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// One day in milliseconds (UTC days: no leap seconds in epoch time).
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// A moment in event time: epoch milliseconds as the events carry them, as
/// opposed to processing time (the wall clock the shell hands the core).
/// A partition's watermark is an `Option<EventTime>`: none until its events
/// say how far time has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(pub i64);

impl EventTime {
    /// The epoch milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This moment minus `ms`, saturating at the earliest representable one.
    pub fn minus(self, ms: i64) -> EventTime {
        EventTime(self.0.saturating_sub(ms))
    }
}
