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

/// An event time (or a UTC day number derived from one) that may be absent,
/// in the 8 bytes of an `i64`: an `Option<i64>` takes 16, and two of them
/// sit in every user's slot. No event time is `i64::MIN` (timestamps are
/// validated to lie within the retention of now, and a time derived from
/// one moves forward from it), so that value stands for none; given as a
/// time, it is taken as none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Option<i64>", into = "Option<i64>")]
pub struct MaybeTime(i64);

impl MaybeTime {
    /// No time.
    pub const NONE: Self = Self(i64::MIN);

    /// The time, if there is one.
    pub fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }
}

impl Default for MaybeTime {
    fn default() -> Self {
        Self::NONE
    }
}

impl From<Option<i64>> for MaybeTime {
    fn from(time: Option<i64>) -> Self {
        Self(time.unwrap_or(i64::MIN))
    }
}

impl From<MaybeTime> for Option<i64> {
    fn from(time: MaybeTime) -> Self {
        time.get()
    }
}

/// Year, month (1–12) and day of month of day `day` since the epoch, in the
/// proleptic Gregorian calendar (the civil-from-days algorithm, to avoid a
/// date crate for one conversion).
pub fn civil_from_days(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction (1–12, 1–31).
    (year, month as u32, day_of_month as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maybe_time_holds_any_event_time_or_none_and_is_written_as_an_option() {
        for time in [None, Some(0), Some(-1), Some(1_700_000_000_000), Some(i64::MIN + 1), Some(i64::MAX)] {
            let held = MaybeTime::from(time);
            assert_eq!(held.get(), time);
            // The changelog's bytes of an `Option<i64>`, unchanged.
            assert_eq!(postcard::to_allocvec(&held).unwrap(), postcard::to_allocvec(&time).unwrap());
            assert_eq!(postcard::from_bytes::<MaybeTime>(&postcard::to_allocvec(&time).unwrap()).unwrap(), held);
        }
        assert_eq!(MaybeTime::default(), MaybeTime::NONE);
        assert_eq!(size_of::<MaybeTime>(), size_of::<i64>());
    }
}
