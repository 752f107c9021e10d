//! The Kafka shell around the pure core: ingest the event topics as a
//! consumer group, read the consent topic ahead of them as a table, apply each
//! record through the [`Processor`], publish profile updates and dead letters,
//! then commit (at least once: a batch's offsets are committed only after
//! every record it produced was acknowledged by the broker; the next batch is
//! processed meanwhile).
//!
//! Everything here is blocking librdkafka calls, so it runs on its own thread.

mod clients;
mod consent_table;

use crate::config::Config;
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::{Outcome, Output, Processor};
use crate::telemetry::{record_segment_sizes, Tally};
use clients::{Clients, DeadLetter};
use consent_table::ConsentTable;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use clients::check_topics;

/// A client configuration with the cluster address and the configured
/// extra librdkafka settings.
pub fn client_config(config: &Config) -> rdkafka::config::ClientConfig {
    clients::base_config(config)
}

/// A failure that stops the pipeline. Kafka errors are the outside system's;
/// the process exits non-zero and uncommitted records are read again on restart.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: &'static str, source: rdkafka::error::KafkaError },
    #[error("topic layout: {0}")]
    Topics(String),
    #[error("{0} records could not be delivered; their input offsets were not committed")]
    Delivery(u64),
}

/// Shared flags between the pipeline thread and the admin endpoint.
#[derive(Debug, Default)]
pub struct Health {
    /// The consent table is loaded and the consumer is running.
    pub ready: AtomicBool,
}

/// Milliseconds since the epoch, the processing time handed to the core.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

/// Runs the pipeline until `shutdown` is set, then commits and leaves the group.
pub fn run(
    config: &Config,
    processor: &Processor,
    erasures: &Erasures,
    health: &Health,
    shutdown: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> Result<(), PipelineError> {
    let partitions = check_topics(config, runtime)?;
    let clients = Clients::connect(config)?;
    let mut consent = ConsentTable::open(config, partitions)?;
    let mut batch = Batch::new(config, processor, erasures);
    consent.catch_up(&mut batch)?;
    let loaded = batch.send(&clients)?;
    loaded.settle(&clients, erasures)?;
    tracing::info!(consent_records = batch.tally.applied_of(InputKind::Consent), "consent table loaded");
    batch.tally.flush_to_metrics();

    clients
        .events
        .subscribe(&config.topics.events())
        .map_err(|source| PipelineError::Kafka { context: "subscribe to the event topics", source })?;
    health.ready.store(true, Ordering::Release);
    tracing::info!(group = %config.group_id, partitions, "consuming events");

    let poll_timeout = Duration::from_millis(config.poll_timeout_ms);
    // The batch before this one: its outputs are in flight while this one is
    // processed; its offsets are committed once they are all acknowledged.
    let mut in_flight: Option<InFlight> = None;
    while !shutdown.load(Ordering::Acquire) {
        // A batch collects records for up to `poll_timeout` or until it is
        // full: larger batches amortise the consent catch-up and the commit.
        let mut messages = Vec::new();
        let batch_deadline = Instant::now() + poll_timeout;
        while messages.len() < config.max_batch_records {
            match poll(&clients, batch_deadline.saturating_duration_since(Instant::now()))? {
                Some(message) => messages.push(message),
                None => break,
            }
        }
        let collected = Instant::now();
        if messages.is_empty() {
            // Apply consent changes that arrive while events are quiet, so a
            // withdrawal is honoured (and its tombstone published) promptly.
            consent.drain(&mut batch);
        } else {
            consent.catch_up(&mut batch)?;
        }
        let caught_up = Instant::now();
        for message in &messages {
            batch.apply_event(message);
        }
        batch.advance_event_time(config.allowed_lateness_ms);
        let applied = Instant::now();
        let mut sent = batch.send(&clients)?;
        sent.offsets = next_offsets(&messages)?;
        let records = messages.len();
        drop(messages);
        if let Some(previous) = in_flight.take() {
            previous.settle(&clients, erasures)?;
            commit(&clients, &previous.offsets, CommitMode::Async)?;
        }
        if records > 0 {
            tracing::debug!(
                records,
                consent_catch_up_us = (caught_up - collected).as_micros() as u64,
                apply_us = (applied - caught_up).as_micros() as u64,
                send_and_commit_previous_us = applied.elapsed().as_micros() as u64,
                "batch"
            );
        }
        in_flight = Some(sent);
        batch.tally.flush_to_metrics();
        record_segment_sizes(processor.segment_sizes());
        crate::report::record_metrics(&processor.experiment_counts());
    }
    if let Some(last) = in_flight {
        last.settle(&clients, erasures)?;
        commit(&clients, &last.offsets, CommitMode::Sync)?;
    }
    health.ready.store(false, Ordering::Release);
    tracing::info!("shutting down: last batch committed, leaving the group");
    clients.events.unsubscribe();
    Ok(())
}

fn poll<'a>(clients: &'a Clients, timeout: Duration) -> Result<Option<BorrowedMessage<'a>>, PipelineError> {
    match clients.events.poll(timeout) {
        None => Ok(None),
        Some(Ok(message)) => Ok(Some(message)),
        // Transient errors (a broker restarting, a rebalance) are retried by
        // librdkafka; they are logged and the loop goes on.
        Some(Err(error)) => {
            tracing::warn!(%error, "event consumer error");
            Ok(None)
        }
    }
}

/// A batch whose records are sent but maybe not yet acknowledged.
struct InFlight {
    /// Acknowledgement mark of its last record.
    mark: u64,
    /// Its input offsets, committed once it is acknowledged.
    offsets: TopicPartitionList,
    /// Users whose erasure completes with its profile tombstones.
    erased: Vec<String>,
}

impl InFlight {
    /// Waits until every record of the batch is acknowledged and completes
    /// the erasure receipts it carried.
    fn settle(&self, clients: &Clients, erasures: &Erasures) -> Result<(), PipelineError> {
        clients.wait_until_acknowledged(self.mark)?;
        let now = now_ms();
        for user_id in &self.erased {
            erasures.profile_cleared(user_id, now);
        }
        Ok(())
    }
}

/// The offsets after the last record of each partition in `messages`.
fn next_offsets(messages: &[BorrowedMessage<'_>]) -> Result<TopicPartitionList, PipelineError> {
    let mut next_offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in messages {
        let next = next_offsets.entry((message.topic(), message.partition())).or_default();
        *next = (*next).max(message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(|source| PipelineError::Kafka { context: "build the offsets to commit", source })?;
    }
    Ok(offsets)
}

/// Commits `offsets`, if there are any.
fn commit(clients: &Clients, offsets: &TopicPartitionList, mode: CommitMode) -> Result<(), PipelineError> {
    if offsets.count() == 0 {
        return Ok(());
    }
    clients.events.commit(offsets, mode).map_err(|source| PipelineError::Kafka { context: "commit offsets", source })
}

/// The effects of the records processed since the last commit.
pub(crate) struct Batch<'a> {
    processor: &'a Processor,
    erasures: &'a Erasures,
    /// Users erased by a consent tombstone whose profile tombstone is in this batch.
    erased: Vec<String>,
    dead_letters_enabled: bool,
    kinds: BTreeMap<String, InputKind>,
    outputs: Vec<Output>,
    dead_letters: Vec<DeadLetter>,
    tally: Tally,
    /// The newest event time seen per partition number (the event topics are
    /// co-partitioned, so a partition number stands for one key range).
    newest_event_time: BTreeMap<i32, i64>,
    /// The watermark timers were last advanced to.
    watermark: i64,
}

impl<'a> Batch<'a> {
    fn new(config: &Config, processor: &'a Processor, erasures: &'a Erasures) -> Self {
        let topics = &config.topics;
        let kinds = [
            (&topics.browse, InputKind::Browse),
            (&topics.purchase, InputKind::Purchase),
            (&topics.location, InputKind::Location),
        ]
        .into_iter()
        .map(|(topic, kind)| (topic.clone(), kind))
        .collect();
        Self {
            processor,
            erasures,
            erased: Vec::new(),
            dead_letters_enabled: config.dead_letters_enabled,
            kinds,
            outputs: Vec::new(),
            dead_letters: Vec::new(),
            tally: Tally::default(),
            newest_event_time: BTreeMap::new(),
            watermark: i64::MIN,
        }
    }

    /// Fires the time-driven exits up to the watermark: the oldest of the
    /// partitions' newest event times, minus the allowed lateness.
    fn advance_event_time(&mut self, allowed_lateness_ms: i64) {
        let Some(oldest) = self.newest_event_time.values().min() else { return };
        let watermark = oldest.saturating_sub(allowed_lateness_ms);
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        let outputs = self.processor.advance_to(watermark, now_ms());
        self.tally.updates += outputs.len() as u64;
        self.outputs.extend(outputs);
    }

    /// Processes one record read from an event topic.
    fn apply_event(&mut self, message: &BorrowedMessage<'_>) {
        match self.kinds.get(message.topic()).copied() {
            Some(kind) => self.apply(kind, message),
            None => tracing::error!(topic = message.topic(), "record from a topic that is not an input; skipped"),
        }
    }

    /// Processes one record of `kind`.
    pub(crate) fn apply(&mut self, kind: InputKind, message: &BorrowedMessage<'_>) {
        let processed = self.processor.process(kind, message.key(), message.payload(), now_ms());
        self.tally.record(kind, &processed.outcome, processed.output.as_ref());
        if let Some(event_time) = processed.event_time {
            let newest = self.newest_event_time.entry(message.partition()).or_insert(event_time);
            *newest = (*newest).max(event_time);
        }
        if let Outcome::Rejected(rejection) = &processed.outcome {
            tracing::debug!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                reason = rejection.reason(),
                "bad record"
            );
            if self.dead_letters_enabled {
                self.dead_letters.push(DeadLetter::of(message, rejection.reason()));
            }
        }
        if kind == InputKind::Consent && message.payload().is_none() && processed.outcome == Outcome::Applied {
            if let Some(user_id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                let tombstone = matches!(processed.output, Some(Output::Tombstone { .. }));
                self.erasures.state_cleared(user_id, tombstone, now_ms());
                if tombstone {
                    self.erased.push(user_id.to_owned());
                }
            }
        }
        self.outputs.extend(processed.output);
    }

    /// Sends every output and dead letter (the offsets are the caller's to add).
    fn send(&mut self, clients: &Clients) -> Result<InFlight, PipelineError> {
        let mark = clients.send_all(self.processor.codec(), &self.outputs, &self.dead_letters)?;
        self.outputs.clear();
        self.dead_letters.clear();
        Ok(InFlight { mark, offsets: TopicPartitionList::new(), erased: std::mem::take(&mut self.erased) })
    }
}
