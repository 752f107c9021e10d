//! Experiments: segments with a holdout. A share of a segment's members
//! (chosen by a stable hash of the user id, see
//! [`crate::segments::engine::in_holdout`]) is held out of personalization;
//! for users with the `measurement` purpose, entries into the segment and
//! purchases within the conversion window after them are counted per arm.
//! Aggregates only: nothing personal is counted. `tactful report` turns the
//! exported counts into a lift ([`crate::report`]).

use crate::segments::engine::in_holdout;
use crate::segments::{Catalogue, SegmentIndex};
use crate::state::{ExperimentEntry, PublishedMember, UserState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries and conversions of one experiment arm.
#[derive(Debug, Default)]
struct ArmCounts {
    entered: AtomicU64,
    converted: AtomicU64,
}

impl ArmCounts {
    fn read(&self) -> (u64, u64) {
        (self.entered.load(Ordering::Relaxed), self.converted.load(Ordering::Relaxed))
    }
}

impl From<(u64, u64)> for ArmCounts {
    fn from((entered, converted): (u64, u64)) -> Self {
        Self { entered: AtomicU64::new(entered), converted: AtomicU64::new(converted) }
    }
}

/// Measured entries and conversions of one segment with a holdout.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentCounts {
    /// The segment's id.
    pub segment: String,
    /// (entered, converted) of the treatment arm.
    pub treatment: (u64, u64),
    /// (entered, converted) of the holdout arm.
    pub holdout: (u64, u64),
}

/// The counts of every segment, by segment index: [treatment, holdout].
#[derive(Debug, Default)]
pub struct Experiments {
    arms: Vec<[ArmCounts; 2]>,
}

impl Experiments {
    /// Counters for `segments` segments, starting from `carried` (by index;
    /// missing ones at zero): a reload keeps what was counted.
    pub fn carried_over(segments: usize, carried: &Experiments) -> Self {
        let arms = (0..segments)
            .map(|index| match carried.arms.get(index) {
                Some([treatment, holdout]) => [ArmCounts::from(treatment.read()), ArmCounts::from(holdout.read())],
                None => Default::default(),
            })
            .collect();
        Self { arms }
    }

    /// The counts of `segments_in_force` that have a holdout, in that order.
    pub fn counts(
        &self,
        catalogue: &Catalogue,
        segments_in_force: impl Iterator<Item = SegmentIndex>,
    ) -> Vec<ExperimentCounts> {
        segments_in_force
            .map(|index| (catalogue.segment(index), &self.arms[index.0]))
            .filter(|(segment, _)| segment.holdout.is_some())
            .map(|(segment, [treatment, holdout])| ExperimentCounts {
                segment: segment.id.clone(),
                treatment: treatment.read(),
                holdout: holdout.read(),
            })
            .collect()
    }

    /// Counts the entries into experiment segments among `members` (the
    /// memberships about to be published) that were not in `previous`, and
    /// returns them, to be measured for a conversion.
    pub fn measure_entries(
        &self,
        catalogue: &Catalogue,
        user_id: &str,
        members: &[PublishedMember],
        previous: &[PublishedMember],
    ) -> Vec<ExperimentEntry> {
        let mut entries = Vec::new();
        for member in members {
            let entered = !previous.iter().any(|before| before.segment == member.segment);
            if let (true, Some(holdout)) = (entered, in_holdout(catalogue.segment(member.segment), user_id)) {
                self.arms[member.segment.0][usize::from(holdout)].entered.fetch_add(1, Ordering::Relaxed);
                entries.push(ExperimentEntry { segment: member.segment, holdout, entered_at: member.since });
            }
        }
        entries
    }

    /// A purchase at `ts` converts every measured entry of the last
    /// `window_ms`; entries older than the window are dropped.
    pub fn measure_conversion(&self, state: &mut UserState, ts: i64, window_ms: i64) {
        state.experiment_entries.retain(|entry| {
            let converts = entry.entered_at <= ts && ts <= entry.entered_at.saturating_add(window_ms);
            if converts {
                self.arms[entry.segment.0][usize::from(entry.holdout)].converted.fetch_add(1, Ordering::Relaxed);
            }
            !converts && ts <= entry.entered_at.saturating_add(window_ms)
        });
    }
}
