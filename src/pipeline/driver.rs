//! The batch loop's steps, as one type that `run` and the driver tests
//! share: poll → rebalance → apply → advance event time ([`Driver::batch`]),
//! then deliver ([`Driver::deliver`]).
//!
//! The event consumer ([`Ingest`]) and the merger holding the records it
//! lent stay with the caller: the merger borrows from the consumer, and the
//! consumer must be made before the driver so that it is dropped after it
//! (see [`Ingest::new`]).

use super::apply::{Pending, Shell};
use super::guarantee::{self, Batch, Delivered, Delivery};
use super::ingest::{next_offsets, Ingest, Rebalanced};
use super::merge::Merger;
use super::publish::{ProfileFormat, Publisher, Records};
use super::registry::RegistryClient;
use super::table::Table;
use super::PipelineError;
use crate::config::{Config, Guarantee};
use crate::control::{now_ms, Control};
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::Processor;
use crate::state::Partition;
use crate::telemetry::{
    record_apply, record_batch, record_consumer_lag, record_experiments, record_segment_sizes, record_update_latency,
};
use rdkafka::message::BorrowedMessage;
use std::time::{Duration, Instant};

/// How long a batch with records waits for the next one once the fetched
/// records run out, before it is applied and delivered. Exactly once, 2 ms:
/// longer than the gaps between records librdkafka has already fetched, so
/// that records arriving together share a transaction (each batch commits
/// one), and shorter than anything a caught-up reader would notice. At least
/// once, none: offsets are committed on an interval whatever the batches,
/// so a pause would only delay each update (at 2,000 events/s, p99 16 ms
/// instead of 22; BENCHMARKS.md, "No arrival pause at least once").
fn arrival_pause(guarantee: Guarantee) -> Duration {
    match guarantee {
        Guarantee::ExactlyOnce => Duration::from_millis(2),
        Guarantee::AtLeastOnce => Duration::ZERO,
    }
}

/// The driver's state across batches.
pub struct Driver<'a> {
    config: &'a Config,
    control: &'a Control,
    /// The pipeline's state between batches, and the batch's effects.
    pub shell: Shell<'a>,
    /// The consent topic, read as a table.
    consent: Table,
    /// The changelog, read when partitions are restored.
    changelog: Table,
    /// How batches reach Kafka.
    pub delivery: Box<dyn Delivery + 'a>,
    /// When the batch being processed started.
    batch_started: Instant,
}

impl<'a> Driver<'a> {
    /// Connects the producer (exactly once, fencing an earlier incarnation
    /// of this instance), opens the tables, and reads the consent table of
    /// all `partitions` to its end. Nothing is owned yet, so no output.
    pub fn start(
        config: &'a Config,
        processor: &'a Processor,
        erasures: &'a Erasures,
        control: &'a Control,
        registry: Option<RegistryClient>,
        profile_format: ProfileFormat,
        partitions: i32,
    ) -> Result<Self, PipelineError> {
        let delivery = guarantee::delivery(config, Publisher::connect(config, profile_format)?, erasures);
        let mut consent = Table::open(config, &config.topics.consent, "consent-table")?;
        consent.assign(&(0..partitions).map(Partition).collect::<Vec<_>>())?;
        let changelog = Table::open(config, &config.topics.changelog, "restore")?;
        let mut shell = Shell::new(config, processor, erasures, registry);
        shell.catch_up_consent(&mut consent)?;
        shell.check_failure()?;
        tracing::info!(consent_records = shell.work.tally.applied_of(InputKind::Consent), "consent table loaded");
        shell.work.tally.flush_to_metrics();
        Ok(Self { config, control, shell, consent, changelog, delivery, batch_started: Instant::now() })
    }

    /// One batch up to its delivery: polls records for up to the commit
    /// interval, until the batch is full, or until records stop arriving
    /// (larger batches amortise the consent catch-up and the commit; a
    /// caught-up pipeline does not wait for them), acting on partition changes as
    /// polls note them; applies the consent table, then the events in
    /// event-time order; advances event time (events and event time on the
    /// worker threads, partition by partition). Returns the records applied.
    pub fn batch<'c>(
        &mut self,
        ingest: &'c Ingest,
        merger: &mut Merger<Pending<'c>>,
    ) -> Result<Vec<BorrowedMessage<'c>>, PipelineError> {
        self.batch_started = Instant::now();
        let batch_deadline = self.batch_started + Duration::from_millis(self.config.commit_interval_ms);
        let mut polled = 0;
        // Whether the consent topic's ends were asked for since the last
        // record polled: what the batch's consent catch-up reads up to. They
        // are asked for whenever the records fetched run out, so the round
        // trip overlaps with the pause for more.
        let mut asked = false;
        // Decoded together, on the worker threads, before a partition
        // change is acted on and when polling ends.
        let mut messages = Vec::new();
        while polled < self.config.max_batch_records {
            // Once the batch has records, a pause in their arrival ends it:
            // under a backlog the fetched records never run out and batches
            // fill up; a caught-up pipeline delivers what came at once, and
            // what arrives meanwhile makes the next batch.
            let remaining = batch_deadline.saturating_duration_since(Instant::now());
            let wait = match (polled, asked) {
                (0, _) => remaining,
                (_, false) => Duration::ZERO,
                (_, true) => remaining.min(arrival_pause(self.config.guarantee)),
            };
            let message = ingest.poll(wait);
            // Partition changes happen inside a poll: act on them before
            // keeping what it returned, with what was polled before them
            // already in the merger (where a revocation drops its records).
            let changes = ingest.take_rebalances();
            if !changes.is_empty() {
                self.shell.ingest(std::mem::take(&mut messages), merger);
            }
            for change in changes {
                self.rebalance(change, ingest, merger)?;
            }
            match message {
                Some(message) => {
                    polled += 1;
                    asked = false;
                    messages.push(message);
                }
                None if polled > 0 && !asked => {
                    self.consent.ask_ends()?;
                    asked = true;
                }
                None => break,
            }
        }
        if polled > 0 && !asked {
            self.consent.ask_ends()?;
        }
        self.shell.ingest(messages, merger);
        if let Some(error) = ingest.fatal_error() {
            return Err(PipelineError::ConsumerFenced(error));
        }
        self.shell.catch_up_consent_for_batch(&mut self.consent, polled)?;
        let applying = Instant::now();
        let ready = std::iter::from_fn(|| merger.next(applying)).collect();
        let applied = self.shell.apply_events(ready);
        self.shell.check_failure()?;
        // Time-driven changes of every owned partition.
        self.shell.advance_event_time(ingest, merger)?;
        record_apply(applying.elapsed());
        Ok(applied)
    }

    /// Acts on a partition change: what is delivered is committed first,
    /// and the instance is not ready while it restores.
    pub fn rebalance<'c>(
        &mut self,
        change: Rebalanced,
        ingest: &'c Ingest,
        merger: &mut Merger<Pending<'c>>,
    ) -> Result<(), PipelineError> {
        self.delivery.settle(ingest)?;
        self.control.set_ready(false);
        self.shell.rebalance(change, merger, ingest, &mut self.consent, &mut self.changelog)?;
        self.control.set_ready(true);
        Ok(())
    }

    /// Delivers the batch (its outputs, dead letters, changelog records and
    /// the offsets after `applied`); rewinds to the last commit if its
    /// transaction was aborted. Then the batch's metrics.
    pub fn deliver<'c>(
        &mut self,
        applied: Vec<BorrowedMessage<'c>>,
        ingest: &'c Ingest,
        merger: &mut Merger<Pending<'c>>,
    ) -> Result<Delivered, PipelineError> {
        let offsets = next_offsets(&applied)?;
        drop(applied);
        // An idle batch (no record read, nothing changed) writes nothing: a
        // moved event time waits for the next batch that does.
        let idle = offsets.count() == 0 && self.shell.work.is_idle();
        let changelog_records = if idle { Vec::new() } else { self.shell.changelog_records() };
        let work = &mut self.shell.work;
        let records =
            Records { outputs: &work.outputs, dead_letters: &work.dead_letters, changelog: &changelog_records };
        let batch = Batch { records, offsets, erased: std::mem::take(&mut work.erased), idle };
        let delivery_started = Instant::now();
        let delivered = self.delivery.deliver(ingest, batch)?;
        match delivered {
            Delivered::Done => {
                record_update_latency(&work.produced_at, now_ms());
                work.clear_delivered();
            }
            Delivered::Aborted => self.rewind(ingest, merger)?,
        }
        record_batch(self.batch_started.elapsed(), delivery_started.elapsed());
        record_consumer_lag(&self.shell.consumer_lag(ingest)?);
        self.shell.work.tally.flush_to_metrics();
        record_segment_sizes(self.shell.processor.segment_sizes());
        record_experiments(&self.shell.processor.experiment_counts());
        Ok(delivered)
    }

    /// Rewinds to the last commit (after an aborted transaction): the owned
    /// partitions' state is restored and their records are read again.
    pub fn rewind<'c>(&mut self, ingest: &'c Ingest, merger: &mut Merger<Pending<'c>>) -> Result<(), PipelineError> {
        self.shell.rewind(merger, ingest, &mut self.consent, &mut self.changelog)
    }

    /// Applies consent records up to the consent topic's end.
    pub fn catch_up_consent(&mut self) -> Result<(), PipelineError> {
        self.shell.catch_up_consent(&mut self.consent)
    }

    /// At shutdown: everything delivered is committed.
    pub fn finish(&mut self, ingest: &Ingest) -> Result<(), PipelineError> {
        self.delivery.finish(ingest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_more_records_only_when_it_is_a_transaction() {
        assert_eq!(arrival_pause(Guarantee::ExactlyOnce), Duration::from_millis(2));
        assert_eq!(arrival_pause(Guarantee::AtLeastOnce), Duration::ZERO);
    }
}
