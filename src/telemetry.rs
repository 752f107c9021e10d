//! Metrics and logs. Metric names follow Prometheus conventions
//! (`tactful_<what>_total` for counters); labels are bounded enums, never a
//! user id. Per-record counts accumulate in a [`Tally`] and are flushed once
//! per batch, so the hot path touches no shared counter.

#![allow(clippy::disallowed_macros)] // the one place metrics are recorded

use crate::codec::Encoding;
use crate::consent::DropReason;
use crate::experiments::ExperimentCounts;
use crate::model::InputKind;
use crate::processor::{Outcome, Output, Processed};
use std::collections::BTreeMap;

/// Input kinds, in a fixed order for tallies.
const KINDS: [InputKind; 4] = [InputKind::Browse, InputKind::Purchase, InputKind::Location, InputKind::Consent];

fn kind_index(kind: InputKind) -> usize {
    match kind {
        InputKind::Browse => 0,
        InputKind::Purchase => 1,
        InputKind::Location => 2,
        InputKind::Consent => 3,
    }
}

/// Counts of outcomes since the last flush.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Applied records per input kind.
    pub applied: [u64; 4],
    /// Dropped events per (kind, reason).
    pub dropped: BTreeMap<(&'static str, &'static str), u64>,
    /// Bad records per (kind, reason).
    pub rejected: BTreeMap<(&'static str, &'static str), u64>,
    pub updates: u64,
    pub tombstones: u64,
    /// Records per input kind written with the legacy (non-standard)
    /// single-object fingerprint: accepted, and counted so producers can be
    /// moved to the standard one.
    pub legacy_fingerprint: [u64; 4],
}

impl Tally {
    /// Counts one processed record.
    pub fn record(&mut self, kind: InputKind, processed: &Processed) {
        if processed.encoding == Some(Encoding::SingleObjectLegacy) {
            self.legacy_fingerprint[kind_index(kind)] += 1;
        }
        match &processed.outcome {
            Outcome::Applied => self.applied[kind_index(kind)] += 1,
            Outcome::Dropped(reason) => *self.dropped.entry((kind.as_str(), reason.as_str())).or_default() += 1,
            Outcome::Rejected(rejection) => *self.rejected.entry((kind.as_str(), rejection.reason())).or_default() += 1,
        }
        if let Some(output) = &processed.output {
            self.record_output(output);
        }
    }

    /// Counts an update or tombstone that no input record produced (time-driven, restored).
    pub fn record_output(&mut self, output: &Output) {
        match output {
            Output::Update(_) => self.updates += 1,
            Output::Tombstone { .. } => self.tombstones += 1,
        }
    }

    /// Applied records of `kind`.
    pub fn applied_of(&self, kind: InputKind) -> u64 {
        self.applied[kind_index(kind)]
    }

    /// Records processed, of any outcome.
    pub fn records(&self) -> u64 {
        self.applied.iter().sum::<u64>() + self.dropped.values().sum::<u64>() + self.rejected.values().sum::<u64>()
    }

    /// Events dropped for `reason`, of any kind.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.iter().filter(|((_, label), _)| *label == reason.as_str()).map(|(_, count)| count).sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        for (mine, theirs) in self.applied.iter_mut().zip(other.applied) {
            *mine += theirs;
        }
        for (key, count) in &other.dropped {
            *self.dropped.entry(*key).or_default() += count;
        }
        for (key, count) in &other.rejected {
            *self.rejected.entry(*key).or_default() += count;
        }
        self.updates += other.updates;
        self.tombstones += other.tombstones;
        for (mine, theirs) in self.legacy_fingerprint.iter_mut().zip(other.legacy_fingerprint) {
            *mine += theirs;
        }
    }

    /// Adds the counts to the process's metrics and resets the tally.
    pub fn flush_to_metrics(&mut self) {
        for (kind, count) in KINDS.iter().zip(self.applied) {
            if count > 0 {
                metrics::counter!("tactful_records_applied_total", "kind" => kind.as_str()).increment(count);
            }
        }
        for ((kind, reason), count) in &self.dropped {
            metrics::counter!("tactful_events_dropped_total", "kind" => *kind, "reason" => *reason).increment(*count);
        }
        for ((kind, reason), count) in &self.rejected {
            metrics::counter!("tactful_records_rejected_total", "kind" => *kind, "reason" => *reason).increment(*count);
        }
        if self.updates > 0 {
            metrics::counter!("tactful_profile_updates_total", "type" => "update").increment(self.updates);
        }
        if self.tombstones > 0 {
            metrics::counter!("tactful_profile_updates_total", "type" => "tombstone").increment(self.tombstones);
        }
        for (kind, count) in KINDS.iter().zip(self.legacy_fingerprint) {
            if count > 0 {
                metrics::counter!("tactful_records_legacy_fingerprint_total", "kind" => kind.as_str()).increment(count);
            }
        }
        *self = Self::default();
    }
}

/// The metric names the pipeline exports experiment counts under.
pub const ENTERED_METRIC: &str = "tactful_experiment_entered_total";
/// See [`ENTERED_METRIC`].
pub const CONVERTED_METRIC: &str = "tactful_experiment_converted_total";

/// Exports experiment counts as Prometheus counters.
pub fn record_experiments(counts: &[ExperimentCounts]) {
    for experiment in counts {
        for (arm, (entered, converted)) in [("treatment", experiment.treatment), ("holdout", experiment.holdout)] {
            let labels = [("segment", experiment.segment.clone()), ("arm", arm.to_owned())];
            metrics::counter!(ENTERED_METRIC, &labels).absolute(entered);
            metrics::counter!(CONVERTED_METRIC, &labels).absolute(converted);
        }
    }
}

/// Counts a reload of the segment file: applied, or rejected as invalid.
pub fn record_segment_reload(applied: bool) {
    let result = if applied { "applied" } else { "rejected" };
    metrics::counter!("tactful_segment_reloads_total", "result" => result).increment(1);
}

/// Counts the users of a restore and how long it took.
pub fn record_restore(users: u64, elapsed: std::time::Duration) {
    metrics::counter!("tactful_restored_users_total").increment(users);
    metrics::histogram!("tactful_restore_duration_seconds").record(elapsed.as_secs_f64());
}

/// Sets the per-segment member gauges.
pub fn record_segment_sizes(sizes: impl IntoIterator<Item = (String, i64)>) {
    for (segment, members) in sizes {
        metrics::gauge!("tactful_segment_members", "segment" => segment).set(members as f64);
    }
}

/// Installs the `tracing` subscriber: compact lines on stderr, level from
/// `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
