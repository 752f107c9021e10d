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
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::time::Duration;

// Every metric, declared once: its name here, its description in
// `install_metrics`.
const RECORDS_APPLIED: &str = "tactful_records_applied_total";
const EVENTS_DROPPED: &str = "tactful_events_dropped_total";
const RECORDS_REJECTED: &str = "tactful_records_rejected_total";
const PROFILE_UPDATES: &str = "tactful_profile_updates_total";
const LEGACY_FINGERPRINT: &str = "tactful_records_legacy_fingerprint_total";
/// Entries into experiment segments, per segment and arm (`tactful report` reads it).
pub const ENTERED_METRIC: &str = "tactful_experiment_entered_total";
/// Purchases within the conversion window after an entry, per segment and arm.
pub const CONVERTED_METRIC: &str = "tactful_experiment_converted_total";
const SEGMENT_MEMBERS: &str = "tactful_segment_members";
const SEGMENT_RELOADS: &str = "tactful_segment_reloads_total";
const RESTORED_USERS: &str = "tactful_restored_users_total";
const PRIVACY_CENTER_REQUESTS: &str = "tactful_privacy_center_requests_total";
const RESTORE_DURATION: &str = "tactful_restore_duration_seconds";
const BATCH_DURATION: &str = "tactful_batch_duration_seconds";
const COMMIT_DURATION: &str = "tactful_commit_duration_seconds";
const APPLY_DURATION: &str = "tactful_apply_duration_seconds";
const CONSUMER_LAG: &str = "tactful_consumer_lag_records";
const UPDATE_LATENCY: &str = "tactful_update_latency_seconds";
const ERASURES_PENDING: &str = "tactful_erasures_pending";

/// Histogram buckets for durations, in seconds: from a fast commit (1 ms)
/// to a long restore (5 min).
const DURATION_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

/// Installs the Prometheus recorder (histograms with [`DURATION_BUCKETS`],
/// so dashboards can compute quantiles across instances) and describes
/// every metric; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &DURATION_BUCKETS)?
        .install_recorder()?;
    describe_counter!(RECORDS_APPLIED, "Input records applied, by input kind.");
    describe_counter!(EVENTS_DROPPED, "Events dropped by the consent gate (or late), by kind and reason.");
    describe_counter!(RECORDS_REJECTED, "Bad input records, counted and dead-lettered, by kind and reason.");
    describe_counter!(PROFILE_UPDATES, "Records published on the profile topic: updates and tombstones.");
    describe_counter!(LEGACY_FINGERPRINT, "Records written with the legacy single-object fingerprint, by kind.");
    describe_counter!(
        ENTERED_METRIC,
        "Entries into experiment segments of users with measurement, by segment and arm."
    );
    describe_counter!(CONVERTED_METRIC, "Purchases within the conversion window after an entry, by segment and arm.");
    describe_gauge!(SEGMENT_MEMBERS, "Current members of each segment on this instance's partitions.");
    describe_counter!(SEGMENT_RELOADS, "Reloads of the segment file, applied or rejected.");
    describe_counter!(RESTORED_USERS, "Users whose state was restored from the changelog.");
    describe_counter!(
        PRIVACY_CENTER_REQUESTS,
        "Privacy center requests, by outcome (page, saved, erased, forwarded, refused_forged, refused_expired, rate_limited, csrf, unavailable, write_failed)."
    );
    describe_histogram!(RESTORE_DURATION, Unit::Seconds, "Time to restore assigned partitions from the changelog.");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Time of one batch, from its first poll to its delivery.");
    describe_histogram!(COMMIT_DURATION, Unit::Seconds, "Time to deliver a batch: its transaction or its send.");
    describe_histogram!(
        APPLY_DURATION,
        Unit::Seconds,
        "Time to apply a batch's event records and advance event time: the part on the worker threads."
    );
    describe_histogram!(
        UPDATE_LATENCY,
        Unit::Seconds,
        "From an input record's Kafka timestamp to the delivery of the profile update it caused \
         (exactly once: its transaction's commit, when read_committed consumers see it)."
    );
    describe_gauge!(CONSUMER_LAG, Unit::Count, "Records not yet read on this instance's partitions, by event kind.");
    describe_gauge!(
        ERASURES_PENDING,
        Unit::Count,
        "Erasure receipts this instance has yet to complete (state, profile and changelog cleared)."
    );
    // Exported from the start, so a dashboard or alert reads 0 rather than nothing.
    record_erasures_pending(0);
    Ok(handle)
}

/// Records how long a batch took, and how long its delivery.
pub fn record_batch(batch: Duration, delivery: Duration) {
    metrics::histogram!(BATCH_DURATION).record(batch.as_secs_f64());
    metrics::histogram!(COMMIT_DURATION).record(delivery.as_secs_f64());
}

/// Records, for each update an input record caused, the time from the
/// record's Kafka timestamp (`produced_at`, epoch milliseconds) to its
/// delivery at `delivered_ms`. A clock behind the producer's reads as 0.
pub fn record_update_latency(produced_at: &[i64], delivered_ms: i64) {
    let histogram = metrics::histogram!(UPDATE_LATENCY);
    for produced in produced_at {
        histogram.record(delivered_ms.saturating_sub(*produced).max(0) as f64 / 1000.0);
    }
}

/// Records how long applying a batch's event records and advancing event
/// time took: set against the batch's time, what the worker threads shorten.
pub fn record_apply(apply: Duration) {
    metrics::histogram!(APPLY_DURATION).record(apply.as_secs_f64());
}

/// Sets the consumer lag of each event kind: records not yet read on the
/// partitions this instance owns. A gauge, not a histogram: lag is a level
/// an operator watches grow, per topic.
pub fn record_consumer_lag(lag: &[(InputKind, i64)]) {
    for (kind, records) in lag {
        metrics::gauge!(CONSUMER_LAG, "kind" => kind.as_str()).set(*records as f64);
    }
}

/// Sets the count of erasure receipts this instance has yet to complete.
pub fn record_erasures_pending(receipts: usize) {
    metrics::gauge!(ERASURES_PENDING).set(receipts as f64);
}

/// Counts a privacy center request by its `outcome` (a fixed label; never a user).
pub fn record_privacy_center(outcome: &'static str) {
    metrics::counter!(PRIVACY_CENTER_REQUESTS, "outcome" => outcome).increment(1);
}

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
    /// Profile updates published.
    pub updates: u64,
    /// Tombstones published (erasures and idle deletions).
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
                metrics::counter!(RECORDS_APPLIED, "kind" => kind.as_str()).increment(count);
            }
        }
        for ((kind, reason), count) in &self.dropped {
            metrics::counter!(EVENTS_DROPPED, "kind" => *kind, "reason" => *reason).increment(*count);
        }
        for ((kind, reason), count) in &self.rejected {
            metrics::counter!(RECORDS_REJECTED, "kind" => *kind, "reason" => *reason).increment(*count);
        }
        if self.updates > 0 {
            metrics::counter!(PROFILE_UPDATES, "type" => "update").increment(self.updates);
        }
        if self.tombstones > 0 {
            metrics::counter!(PROFILE_UPDATES, "type" => "tombstone").increment(self.tombstones);
        }
        for (kind, count) in KINDS.iter().zip(self.legacy_fingerprint) {
            if count > 0 {
                metrics::counter!(LEGACY_FINGERPRINT, "kind" => kind.as_str()).increment(count);
            }
        }
        *self = Self::default();
    }
}

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
    metrics::counter!(SEGMENT_RELOADS, "result" => result).increment(1);
}

/// Counts the users of a restore and how long it took.
pub fn record_restore(users: u64, elapsed: Duration) {
    metrics::counter!(RESTORED_USERS).increment(users);
    metrics::histogram!(RESTORE_DURATION).record(elapsed.as_secs_f64());
}

/// Sets the per-segment member gauges.
pub fn record_segment_sizes(sizes: impl IntoIterator<Item = (String, i64)>) {
    for (segment, members) in sizes {
        metrics::gauge!(SEGMENT_MEMBERS, "segment" => segment).set(members as f64);
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
