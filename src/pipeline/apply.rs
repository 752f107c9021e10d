//! Apply: the pipeline's state between batches, and how each record read
//! reaches the core. The event records a batch polls are decoded on the
//! worker threads ([`workers`]) and buffered for their turn in event-time
//! order, then applied partition by partition on them; consent records are
//! applied as the consent table is read, on the pipeline thread. Every
//! effect (outputs, dead letters, changed users, erasures, counts) is noted
//! on the pipeline thread, record by record in their order, in the batch's
//! [`Work`].

use super::event_time::{self, EventTimes};
use super::ingest::Ingest;
use super::merge::Merger;
use super::publish::{ChangelogRecord, DeadLetter};
use super::registry::RegistryClient;
use super::table::{CaughtUp, Record, Table};
use super::workers;
use super::PipelineError;
use crate::config::Config;
use crate::control::now_ms;
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::{Outcome, Output, Processed, Processor, Source};
use crate::state::Partition;
use crate::telemetry::{record_segment_reload, Tally};
use crate::time::EventTime;
use crate::validate::{Input, Rejection};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::TopicPartitionList;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// The kinds of the event topics, in the order of their indices (browse,
/// purchase, location), as the merger and the watermarks number them.
pub(super) const EVENT_KINDS: [InputKind; 3] = [InputKind::Browse, InputKind::Purchase, InputKind::Location];

/// An event record read and decoded, waiting for its turn (its kind is
/// its topic's: [`EVENT_KINDS`] by the merger's topic index).
pub struct Pending<'c> {
    /// The record as read.
    pub message: BorrowedMessage<'c>,
    /// The record decoded, or why it is bad.
    pub input: Result<Input, Rejection>,
}

/// The effects of the records processed since the last delivery.
#[derive(Default)]
pub struct Work {
    /// Profile updates and tombstones to publish.
    pub outputs: Vec<Output>,
    /// Bad records to dead-letter.
    pub dead_letters: Vec<DeadLetter>,
    /// Users whose state changed, with their partition: their changelog
    /// records go with the batch.
    pub changed: HashMap<String, Partition>,
    /// Users erased by a consent tombstone in this batch.
    pub erased: Vec<String>,
    /// The Kafka timestamp (epoch milliseconds) of each input record that
    /// caused an output, for the update latency once they are delivered.
    pub produced_at: Vec<i64>,
    /// Outcome counts, flushed to the metrics after each batch.
    pub tally: Tally,
}

impl Work {
    /// Notes an output that no input record produced (time-driven, restored, reloaded).
    pub fn push_output(&mut self, partition: Partition, output: Output) {
        self.changed.insert(output.user_id().to_owned(), partition);
        self.tally.record_output(&output);
        self.outputs.push(output);
    }

    /// Whether nothing was produced or changed since the last delivery.
    pub fn is_idle(&self) -> bool {
        self.outputs.is_empty() && self.dead_letters.is_empty() && self.changed.is_empty()
    }

    /// Forgets what was delivered (the tally is flushed separately).
    pub fn clear_delivered(&mut self) {
        self.outputs.clear();
        self.dead_letters.clear();
        self.produced_at.clear();
    }

    /// Forgets everything but the counts (the batch is read again).
    pub fn clear_all(&mut self) {
        *self = Work { tally: std::mem::take(&mut self.tally), ..Work::default() };
    }
}

/// The pipeline's state between batches.
pub struct Shell<'a> {
    pub(super) processor: &'a Processor,
    erasures: &'a Erasures,
    dead_letters_enabled: bool,
    consent_catch_up_timeout: Duration,
    /// The threads that apply event records and advance event time, partition by partition.
    pub(super) workers: workers::Workers,
    /// Each event topic's index (its kind is `EVENT_KINDS[index]`).
    pub(super) topic_indices: BTreeMap<String, usize>,
    pub(super) event_topics: [String; 3],
    /// Partitions this instance owns (restored).
    pub(super) owned: BTreeSet<Partition>,
    /// Partitions revoked, with their changelog's end offset then, until the
    /// next assignment decides whether their state is kept.
    pub(super) revoked: BTreeMap<Partition, Option<i64>>,
    /// The segment file's text last loaded (or rejected).
    segments_source: Option<String>,
    /// The committed offsets of the assignment when it was made: where the
    /// consumer starts on each event partition.
    pub(super) starts: TopicPartitionList,
    pub(super) event_times: EventTimes,
    /// The batch's effects.
    pub work: Work,
    /// Where writer schemas of Confluent-framed records come from.
    pub(super) registry: Option<RegistryClient>,
    /// Why processing stopped within a batch (the registry stayed
    /// unreachable): the batch is not committed and the pipeline stops.
    pub(super) failure: Option<PipelineError>,
}

impl<'a> Shell<'a> {
    /// The state of a pipeline that owns no partition yet.
    pub fn new(
        config: &Config,
        processor: &'a Processor,
        erasures: &'a Erasures,
        registry: Option<RegistryClient>,
    ) -> Self {
        let topics = &config.topics;
        let event_topics = [topics.browse.clone(), topics.purchase.clone(), topics.location.clone()];
        let topic_indices = event_topics.iter().enumerate().map(|(index, topic)| (topic.clone(), index)).collect();
        Self {
            processor,
            erasures,
            dead_letters_enabled: config.dead_letters_enabled,
            consent_catch_up_timeout: Duration::from_millis(config.consent_catch_up_timeout_ms),
            workers: workers::Workers::new(config.workers),
            topic_indices,
            event_topics,
            owned: BTreeSet::new(),
            revoked: BTreeMap::new(),
            segments_source: config.segments_text.clone(),
            starts: TopicPartitionList::new(),
            event_times: EventTimes::new(config.allowed_lateness_ms),
            work: Work::default(),
            registry,
            failure: None,
        }
    }

    /// Fails if a record of this batch could not be processed (the schema
    /// registry stayed unreachable): nothing of the batch is committed.
    pub fn check_failure(&mut self) -> Result<(), PipelineError> {
        self.failure.take().map_or(Ok(()), Err)
    }

    /// Applies consent records up to the consent topic's end.
    pub fn catch_up_consent(&mut self, consent: &mut Table) -> Result<(), PipelineError> {
        consent.ask_ends()?;
        self.catch_up_consent_to_asked(consent)
    }

    /// Applies consent records up to the ends asked for last.
    fn catch_up_consent_to_asked(&mut self, consent: &mut Table) -> Result<(), PipelineError> {
        let timeout = self.consent_catch_up_timeout;
        if let CaughtUp::Behind(partitions) =
            consent.catch_up_to_asked(timeout, |message| self.apply_consent(message))?
        {
            tracing::warn!(
                pending_partitions = partitions,
                "consent topic did not catch up in time; applying events with the consent read so far"
            );
        }
        Ok(())
    }

    /// Applies the consent records a batch of `polled` event records needs:
    /// all of them up to the topic's end before events are applied (the end
    /// the batch loop asked for once its last record was polled); while
    /// events are quiet, those already fetched, so a withdrawal is honoured
    /// (and its tombstone published) promptly. Between a revocation and the
    /// assignment that follows, none: nothing may be published for users
    /// this instance may no longer own.
    pub fn catch_up_consent_for_batch(&mut self, consent: &mut Table, polled: usize) -> Result<(), PipelineError> {
        if self.between_revocation_and_assignment() {
            Ok(())
        } else if polled == 0 {
            consent.drain(|message| self.apply_consent(message));
            Ok(())
        } else {
            self.catch_up_consent_to_asked(consent)
        }
    }

    /// Reloads the segment file: its segments are in force from the next
    /// batch on, and the updates it causes go with this one. An invalid file
    /// changes nothing.
    pub fn reload(&mut self, config: &Config) {
        let source = match config.read_segments_file() {
            Ok(Some(source)) => source,
            Ok(None) => {
                tracing::info!("no segment file configured (the bundled segments are in force): nothing to reload");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "segment file unreadable; the segments in force stay");
                return;
            }
        };
        // A signal and the file watcher may both ask for the same text.
        if self.segments_source.as_ref() == Some(&source) {
            return;
        }
        let parsed = config.parse_segments_file(&source);
        self.segments_source = Some(source);
        let catalogue = match parsed {
            Ok(catalogue) => catalogue,
            Err(error) => {
                record_segment_reload(false);
                tracing::error!(%error, "segment file rejected; the segments in force stay");
                return;
            }
        };
        let reloaded = self.processor.reload(catalogue, now_ms());
        for (partition, output) in reloaded.outputs {
            self.work.push_output(partition, output);
        }
        let report = reloaded.report;
        record_segment_reload(true);
        tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "segments reloaded");
        for (segment, lacks) in &report.partial {
            tracing::info!(
                %segment,
                "evaluated from the state held, which is not all it reads ({lacks}); \
                 its memberships are complete once that much event time has passed"
            );
        }
    }

    /// Fires time-driven changes on every owned partition whose watermark advanced.
    pub fn advance_event_time(&mut self, ingest: &Ingest, merger: &Merger<Pending<'_>>) -> Result<(), PipelineError> {
        let positions = ingest.positions(&self.event_topics, self.owned.iter().copied())?;
        let owned: Vec<Partition> = self.owned.iter().copied().collect();
        let topics = &self.event_topics;
        let starts = &self.starts;
        // A topic-partition is read to its end when nothing is left to fetch
        // and nothing fetched waits in the merger.
        let advanced = self.event_times.advance(&owned, topics.len(), |topic, partition| {
            !merger.holds(partition, topic) && ingest.read_to_end(&positions, starts, &topics[topic], partition)
        });
        let outputs = workers::advance_in_order(self.processor, &advanced, &self.workers, now_ms());
        for ((partition, _), outputs) in advanced.into_iter().zip(outputs) {
            for output in outputs {
                self.work.push_output(partition, output);
            }
        }
        Ok(())
    }

    /// Applies the event records whose turn has come, `(partition, topic
    /// index, record)` in the merger's order: partition by partition on the
    /// worker threads, then each record's effects are noted in that order.
    /// Returns the records (their offsets go with the batch).
    pub fn apply_events<'c>(&mut self, ready: Vec<(Partition, usize, Pending<'c>)>) -> Vec<BorrowedMessage<'c>> {
        let mut records = Vec::with_capacity(ready.len());
        let mut messages = Vec::with_capacity(ready.len());
        for (partition, topic, Pending { message, input }) in ready {
            // A watermark moves only when event time advances, after this
            // step: each record sees its partition's as it was before it.
            records.push((Source { partition, watermark: self.event_times.watermark(partition) }, input));
            messages.push((partition, topic, message));
        }
        let results = workers::apply_in_order(self.processor, records, &self.workers, now_ms());
        let mut applied = Vec::with_capacity(messages.len());
        for ((partition, topic, message), processed) in messages.into_iter().zip(results) {
            if let Some(event_time) = self.settle(EVENT_KINDS[topic], partition, &message, processed) {
                self.event_times.observe(topic, partition, EventTime(event_time));
            }
            applied.push(message);
        }
        applied
    }

    /// Applies one consent record (every instance reads all of them).
    fn apply_consent(&mut self, message: &Record<'_>) {
        let partition = Partition(message.partition());
        if let Some(input) = self.decode(InputKind::Consent, message) {
            let record = (Source { partition, watermark: None }, input);
            let processed = workers::apply_record(self.processor, record, now_ms());
            self.settle(InputKind::Consent, partition, message, processed);
        }
    }

    /// Notes the effects of a record of `kind` read from `partition` that
    /// the core processed: counts, a bad one's dead letter, the user whose
    /// state changed, an erasure, the output. Returns its event time.
    fn settle(
        &mut self,
        kind: InputKind,
        partition: Partition,
        message: &impl Message,
        processed: Processed,
    ) -> Option<i64> {
        let work = &mut self.work;
        work.tally.record(kind, &processed);
        if let Outcome::Rejected(rejection) = &processed.outcome {
            tracing::debug!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                reason = rejection.reason(),
                "bad record"
            );
            if self.dead_letters_enabled {
                work.dead_letters.push(DeadLetter::of(message, rejection.reason()));
            }
        }
        // Consent records of other instances' users change only the consent table.
        let owned = self.owned.contains(&partition);
        if processed.outcome == Outcome::Applied && owned {
            if let Some(user_id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                work.changed.insert(user_id.to_owned(), partition);
                if kind == InputKind::Consent && message.payload().is_none() {
                    self.erasures.state_cleared(user_id, now_ms());
                    work.erased.push(user_id.to_owned());
                }
            }
        } else if !owned && kind == InputKind::Consent && message.payload().is_none() {
            if let Some(user_id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                self.erasures.owned_elsewhere(user_id);
            }
        }
        if processed.output.is_some() {
            work.produced_at.extend(message.timestamp().to_millis());
        }
        work.outputs.extend(processed.output);
        processed.event_time
    }

    /// The changelog records of the users whose state changed (their
    /// values encoded on the worker threads), and of the partitions whose
    /// event time moved.
    pub fn changelog_records(&mut self) -> Vec<ChangelogRecord> {
        let mut by_partition: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
        for (user_id, partition) in self.work.changed.drain() {
            by_partition.entry(partition).or_default().push(user_id);
        }
        let values = workers::changelog_values(self.processor, by_partition.into_iter().collect(), &self.workers);
        let users = values.into_iter().flat_map(|(partition, values)| {
            values.into_iter().map(move |(user_id, value)| ChangelogRecord {
                key: user_id.into_bytes(),
                partition,
                value,
            })
        });
        let event_times = self.event_times.take_changed().into_iter().map(|(partition, value)| ChangelogRecord {
            key: event_time::CHANGELOG_KEY.to_vec(),
            partition,
            value: Some(value),
        });
        users.chain(event_times).collect()
    }
}
