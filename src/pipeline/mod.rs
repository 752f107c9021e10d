//! The Kafka shell around the pure core: ingest the event topics as a
//! consumer group, read the consent topic ahead of them as a table, apply each
//! record through the [`Processor`], publish profile updates, dead letters and
//! changelog records, then commit.
//!
//! Exactly once (the default): each batch's outputs, dead letters, changelog
//! records and input offsets are one Kafka transaction. At least once: a
//! batch's offsets are committed once every record it produced is
//! acknowledged (the next batch is processed meanwhile).
//!
//! The state of a partition's users lives in memory while this instance owns
//! the partition: restored from the changelog when it is assigned (before any
//! of its events is applied), dropped when it is revoked.
//!
//! Everything here is blocking librdkafka calls, so it runs on its own thread.

mod clients;
mod event_time;
mod merge;
mod registry;
mod table;

use crate::config::{Config, Guarantee, OutputFormat};
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::{Input, Outcome, Output, Processed, Processor, Rejection, Restoring, Source};
use crate::telemetry::{record_segment_sizes, Tally};
use clients::{requires_abort, ChangelogRecord, Clients, DeadLetter, ProfileFormat, Rebalanced};
use event_time::EventTime;
use merge::Merger;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use registry::RegistryClient;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use table::{CaughtUp, Table};

pub use clients::check_topics;

/// How long restoring a partition's state may take before the start fails
/// (a transaction left open by a dead instance blocks it until it times out).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a revocation waits for this instance's last commit markers
/// before noting where the changelog ends (past it, the partition is simply
/// restored if it comes back).
const SETTLE_ON_REVOKE: Duration = Duration::from_secs(2);

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
    #[error("the changelog could not be read to its end within {0:?}")]
    Restore(Duration),
    #[error("schema registry: {0}")]
    Registry(String),
}

/// Shared flags between the pipeline thread, the admin endpoint and the
/// signal and file watchers.
#[derive(Debug, Default)]
pub struct Health {
    /// The consent table is loaded, the state of every assigned partition is
    /// restored, and the consumer is running.
    pub ready: AtomicBool,
    /// The segment file changed (or SIGHUP): reload it before the next batch.
    pub reload_requested: AtomicBool,
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
    let registry = config.schema_registry.as_ref().map(RegistryClient::new).transpose()?;
    let profile_format = match (config.output_format, &registry) {
        (OutputFormat::Confluent, Some(registry)) => {
            // The subject Confluent's serializers use for the topic's values (TopicNameStrategy).
            let subject = format!("{}-value", config.topics.profiles);
            let id = registry.register(&subject, crate::codec::PROFILE_SCHEMA)?;
            tracing::info!(%subject, id, "profile updates are written in the confluent wire format");
            ProfileFormat::Confluent(id)
        }
        _ => ProfileFormat::SingleObject,
    };
    let clients = Clients::connect(config, profile_format)?;
    let mut consent = Table::open(config, &config.topics.consent, "consent-table")?;
    consent.assign(&(0..partitions).collect::<Vec<_>>())?;
    let mut changelog = Table::open(config, &config.topics.changelog, "restore")?;
    let mut shell = Shell::new(config, processor, erasures, registry);
    // Nothing is restored yet, so the consent table alone produces no output.
    shell.catch_up_consent(&mut consent)?;
    shell.check_failure()?;
    tracing::info!(consent_records = shell.work.tally.applied_of(InputKind::Consent), "consent table loaded");
    shell.work.tally.flush_to_metrics();

    clients
        .events
        .subscribe(&config.topics.events())
        .map_err(|source| PipelineError::Kafka { context: "subscribe to the event topics", source })?;
    // Ready once the first assignment's state is restored (below).
    tracing::info!(group = %config.group_id, partitions, guarantee = ?config.guarantee, "consuming events");

    let commit_interval = Duration::from_millis(config.commit_interval_ms);
    // Records read and decoded, waiting for their turn in event-time order.
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    // At least once: the batch before this one, whose records are in flight
    // while this one is processed; its offsets are committed once they are
    // all acknowledged.
    let mut in_flight: Option<InFlight> = None;
    while !shutdown.load(Ordering::Acquire) {
        if health.reload_requested.swap(false, Ordering::AcqRel) {
            shell.reload(config);
        }
        // A batch collects records for up to the commit interval or until it
        // is full: larger batches amortise the consent catch-up and the commit.
        let mut polled = 0;
        let batch_deadline = Instant::now() + commit_interval;
        while polled < config.max_batch_records {
            let message = poll(&clients, batch_deadline.saturating_duration_since(Instant::now()));
            // Partition changes happen inside a poll: act on them before
            // keeping what it returned.
            for change in clients.take_rebalances() {
                if let Some(previous) = in_flight.take() {
                    // At least once: what is acknowledged is committed; the rest repeats.
                    previous.settle(&clients, erasures)?;
                    if let Err(error) = commit(&clients, &previous.offsets, CommitMode::Sync) {
                        tracing::warn!(%error, "offsets of the last batch not committed before the rebalance");
                    }
                }
                health.ready.store(false, Ordering::Release);
                shell.rebalance(change, &mut merger, &clients, &mut consent, &mut changelog)?;
                health.ready.store(true, Ordering::Release);
            }
            match message {
                Some(message) => {
                    polled += 1;
                    shell.ingest(message, &mut merger);
                }
                None => break,
            }
        }
        if shell.between_revocation_and_assignment() {
            // No partition is owned (and no event read): consent waits.
        } else if polled == 0 {
            // Apply consent changes that arrive while events are quiet, so a
            // withdrawal is honoured (and its tombstone published) promptly.
            consent.drain(|message| shell.apply(InputKind::Consent, message));
        } else {
            shell.catch_up_consent(&mut consent)?;
        }
        let mut applied = Vec::new();
        while let Some((partition, topic, pending)) = merger.next(Instant::now()) {
            shell.apply_event(partition, topic, &pending.message, pending.input);
            applied.push(pending.message);
        }
        shell.check_failure()?;
        shell.advance_event_time(&clients, &merger)?;
        let offsets = next_offsets(&applied)?;
        drop(applied);
        match config.guarantee {
            Guarantee::ExactlyOnce => {
                shell.commit_exactly_once(&clients, &offsets, &mut merger, &mut consent, &mut changelog)?
            }
            Guarantee::AtLeastOnce => {
                let sent = shell.send(&clients, offsets)?;
                if let Some(previous) = in_flight.replace(sent) {
                    previous.settle(&clients, erasures)?;
                    commit(&clients, &previous.offsets, CommitMode::Async)?;
                }
            }
        }
        shell.work.tally.flush_to_metrics();
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

fn poll<'a>(clients: &'a Clients, timeout: Duration) -> Option<BorrowedMessage<'a>> {
    match clients.events.poll(timeout) {
        None => None,
        Some(Ok(message)) => Some(message),
        // Transient errors (a broker restarting, a rebalance) are retried by
        // librdkafka; they are logged and the loop goes on.
        Some(Err(error)) => {
            tracing::warn!(%error, "event consumer error");
            None
        }
    }
}

/// An at-least-once batch whose records are sent but maybe not yet acknowledged.
struct InFlight {
    /// Acknowledgement mark of its last record.
    mark: u64,
    /// Its input offsets, committed once it is acknowledged.
    offsets: TopicPartitionList,
    /// Users whose erasure completes with its tombstones.
    erased: Vec<String>,
}

impl InFlight {
    /// Waits until every record of the batch is acknowledged and completes
    /// the erasure receipts it carried.
    fn settle(&self, clients: &Clients, erasures: &Erasures) -> Result<(), PipelineError> {
        clients.wait_until_acknowledged(self.mark)?;
        let now = now_ms();
        for user_id in &self.erased {
            erasures.committed(user_id, now);
        }
        Ok(())
    }
}

/// An event record read and decoded, waiting for its turn (its kind is
/// its topic's: [`EVENT_KINDS`] by the merger's topic index).
struct Pending<'c> {
    message: BorrowedMessage<'c>,
    input: Result<Input, Rejection>,
}

/// The kinds of the event topics, in the order of their indices (browse,
/// purchase, location), as the merger and the watermarks number them.
const EVENT_KINDS: [InputKind; 3] = [InputKind::Browse, InputKind::Purchase, InputKind::Location];

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
#[derive(Default)]
struct Work {
    outputs: Vec<Output>,
    dead_letters: Vec<DeadLetter>,
    /// Users whose state changed, with their partition: their changelog
    /// records go with the batch.
    changed: HashMap<String, i32>,
    /// Users erased by a consent tombstone in this batch.
    erased: Vec<String>,
    tally: Tally,
}

/// The pipeline's state between batches.
struct Shell<'a> {
    processor: &'a Processor,
    erasures: &'a Erasures,
    dead_letters_enabled: bool,
    consent_catch_up_timeout: Duration,
    /// Each event topic's index (its kind is `EVENT_KINDS[index]`).
    topic_indices: BTreeMap<String, usize>,
    event_topics: [String; 3],
    /// Partition numbers this instance owns (restored).
    owned: BTreeSet<i32>,
    /// Partitions revoked, with their changelog's end offset then, until the
    /// next assignment decides whether their state is kept.
    revoked: BTreeMap<i32, Option<i64>>,
    /// The segment file's text last loaded (or rejected).
    segments_source: Option<String>,
    /// The committed offsets of the assignment when it was made: where the
    /// consumer starts on each event partition.
    starts: TopicPartitionList,
    event_time: EventTime,
    work: Work,
    /// Where writer schemas of Confluent-framed records come from.
    registry: Option<RegistryClient>,
    /// Why processing stopped within a batch (the registry stayed
    /// unreachable): the batch is not committed and the pipeline stops.
    failure: Option<PipelineError>,
}

impl<'a> Shell<'a> {
    fn new(
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
            topic_indices,
            event_topics,
            owned: BTreeSet::new(),
            revoked: BTreeMap::new(),
            segments_source: config.segments_text.clone(),
            starts: TopicPartitionList::new(),
            event_time: EventTime::new(config.allowed_lateness_ms),
            work: Work::default(),
            registry,
            failure: None,
        }
    }

    /// Fails if a record of this batch could not be processed (the schema
    /// registry stayed unreachable): nothing of the batch is committed.
    fn check_failure(&mut self) -> Result<(), PipelineError> {
        self.failure.take().map_or(Ok(()), Err)
    }

    /// Makes sure the codec knows the writer schema of a Confluent-framed
    /// `value`, fetching it from the registry; false if the registry stayed
    /// unreachable (the failure is noted and nothing more is processed).
    fn fetch_writer_schema(&mut self, value: Option<&[u8]>) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let codec = self.processor.codec();
        let (Some(registry), Some(id)) = (&self.registry, value.and_then(|value| codec.missing_schema_id(value)))
        else {
            return true;
        };
        match registry.schema_by_id(id) {
            Ok(answer) => {
                if let Err(why) = &answer {
                    tracing::warn!(id, %why, "no usable writer schema in the registry: its records are dead-lettered");
                }
                codec.add_registry_schema(id, answer.as_deref().map_err(Clone::clone));
                true
            }
            Err(error) => {
                self.failure = Some(error);
                false
            }
        }
    }

    /// Applies consent records up to the consent topic's end.
    fn catch_up_consent(&mut self, consent: &mut Table) -> Result<(), PipelineError> {
        let timeout = self.consent_catch_up_timeout;
        if let CaughtUp::Behind(partitions) =
            consent.catch_up(timeout, |message| self.apply(InputKind::Consent, message))?
        {
            tracing::warn!(
                pending_partitions = partitions,
                "consent topic did not catch up in time; applying events with the consent read so far"
            );
        }
        Ok(())
    }

    /// Reloads the segment file: its segments are in force from the next
    /// batch on, and the updates it causes go with this one. An invalid file
    /// changes nothing.
    fn reload(&mut self, config: &Config) {
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
                metrics::counter!("tactful_segment_reloads_total", "result" => "rejected").increment(1);
                tracing::error!(%error, "segment file rejected; the segments in force stay");
                return;
            }
        };
        let reloaded = self.processor.reload(catalogue, now_ms());
        for (partition, output) in reloaded.outputs {
            self.work.changed.insert(output.user_id().to_owned(), partition);
            self.work.tally.record_output(&output);
            self.work.outputs.push(output);
        }
        let report = reloaded.report;
        metrics::counter!("tactful_segment_reloads_total", "result" => "applied").increment(1);
        tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "segments reloaded");
        for (segment, lacks) in &report.partial {
            tracing::info!(
                %segment,
                "evaluated from the state held, which is not all it reads ({lacks}); \
                 its memberships are complete once that much event time has passed"
            );
        }
    }

    /// Acts on a partition change: a revoked partition's state and unapplied
    /// records are dropped; an assigned partition's state is restored from
    /// the changelog before any of its events is applied.
    fn rebalance(
        &mut self,
        change: Rebalanced,
        merger: &mut Merger<Pending<'_>>,
        clients: &Clients,
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        match change {
            Rebalanced::Revoked(partitions) => {
                merger.drop_partitions(&partitions);
                // Kept aside until the assignment that follows (an eager
                // rebalance revokes everything first): a partition given back
                // whose changelog nobody wrote meanwhile keeps its state. Its
                // end is read once this instance's last commit markers are in.
                changelog.wait_until_settled(&partitions, SETTLE_ON_REVOKE);
                let ends = changelog.end_offsets(&partitions);
                for (index, partition) in partitions.iter().enumerate() {
                    self.revoked.insert(*partition, ends.as_ref().map(|ends| ends[index]));
                }
                self.release(&partitions);
            }
            Rebalanced::Assigned(partitions) => {
                let returned: Vec<i32> =
                    partitions.iter().copied().filter(|partition| self.revoked.contains_key(partition)).collect();
                let ends = changelog.end_offsets(&returned);
                let unchanged: Vec<i32> = returned
                    .iter()
                    .enumerate()
                    .filter(|(index, partition)| {
                        let before = self.revoked.get(partition).copied().flatten();
                        before.is_some() && before == ends.as_ref().map(|ends| ends[*index])
                    })
                    .map(|(_, partition)| *partition)
                    .collect();
                let gone: Vec<i32> =
                    self.revoked.keys().copied().filter(|partition| !unchanged.contains(partition)).collect();
                self.forget(&gone);
                self.revoked.clear();
                self.owned.extend(&unchanged);
                if !unchanged.is_empty() {
                    tracing::info!(partitions = ?unchanged, "state kept: nobody wrote these partitions' changelog meanwhile");
                }
                let fresh: Vec<i32> =
                    partitions.iter().copied().filter(|partition| !self.owned.contains(partition)).collect();
                // Waits for offsets a previous owner's transaction may still be
                // committing (read_committed fetches stable offsets only), so its
                // changelog records are complete before they are read.
                self.starts =
                    clients.events.committed(RESTORE_TIMEOUT).map_err(clients::kafka("read committed offsets"))?;
                self.restore(&fresh, consent, changelog)?;
            }
        }
        Ok(())
    }

    /// Whether partitions were revoked and the assignment that follows has
    /// not come yet: consent records wait, so that nothing is published for
    /// users this instance may no longer own.
    fn between_revocation_and_assignment(&self) -> bool {
        !self.revoked.is_empty()
    }

    /// Drops the state of `partitions` and the pending work for their users.
    fn forget(&mut self, partitions: &[i32]) {
        self.processor.drop_partitions(partitions);
        self.event_time.forget(partitions);
        self.release(partitions);
    }

    /// Stops owning `partitions`: their pending work is dropped (their state stays).
    fn release(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.owned.remove(partition);
        }
        let changed = &mut self.work.changed;
        self.work.outputs.retain(|output| changed.get(output.user_id()).is_none_or(|p| !partitions.contains(p)));
        changed.retain(|_, partition| !partitions.contains(partition));
    }

    /// Restores the state of `partitions` from the changelog and reconciles
    /// it with the consent table (caught up first).
    fn restore(&mut self, partitions: &[i32], consent: &mut Table, changelog: &mut Table) -> Result<(), PipelineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.catch_up_consent(consent)?;
        changelog.assign(partitions)?;
        if !changelog.wait_until_settled(partitions, RESTORE_TIMEOUT) {
            return Err(PipelineError::Restore(RESTORE_TIMEOUT));
        }
        // The last record of each user wins (the topic is compacted, but not
        // necessarily yet): only that one is decoded.
        let mut latest: HashMap<String, (i32, Option<Vec<u8>>)> = HashMap::new();
        let mut bad_records = 0_u64;
        let mut records = 0_u64;
        loop {
            let caught_up = changelog.catch_up(RESTORE_TIMEOUT, |message| {
                records += 1;
                if message.key() == Some(event_time::CHANGELOG_KEY) {
                    let value = message.payload().unwrap_or_default();
                    if !self.event_time.restore(message.partition(), value) {
                        bad_records += 1;
                    }
                    return;
                }
                match message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                    Some(user_id) => {
                        let value = message.payload().map(<[u8]>::to_vec);
                        latest.insert(user_id.to_owned(), (message.partition(), value));
                    }
                    None => bad_records += 1,
                }
            })?;
            match caught_up {
                CaughtUp::Complete => break,
                CaughtUp::Behind(_) if started.elapsed() < RESTORE_TIMEOUT => continue,
                CaughtUp::Behind(_) => return Err(PipelineError::Restore(RESTORE_TIMEOUT)),
            }
        }
        let mut restoring = Restoring::default();
        for (user_id, (partition, value)) in latest {
            if self.processor.restore(&mut restoring, partition, &user_id, value.as_deref()).is_err() {
                bad_records += 1;
            }
        }
        changelog.assign(&[])?;
        let users = restoring.len();
        for (partition, output) in self.processor.finish_restore(restoring, now_ms()) {
            self.work.changed.insert(output.user_id().to_owned(), partition);
            self.work.tally.record_output(&output);
            self.work.outputs.push(output);
        }
        self.owned.extend(partitions);
        let elapsed = started.elapsed();
        metrics::counter!("tactful_restored_users_total").increment(users as u64);
        if bad_records > 0 {
            // Another writer's records, or a corrupted log: those users start afresh.
            tracing::error!(bad_records, "unreadable changelog records skipped");
        }
        tracing::info!(
            ?partitions,
            records,
            users,
            elapsed_ms = elapsed.as_millis() as u64,
            users_per_second = (users as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
            "state restored"
        );
        Ok(())
    }

    /// Fires time-driven changes on every owned partition whose watermark advanced.
    fn advance_event_time(&mut self, clients: &Clients, merger: &Merger<Pending<'_>>) -> Result<(), PipelineError> {
        let positions = clients.events.position().map_err(clients::kafka("read consumer positions"))?;
        let owned: Vec<i32> = self.owned.iter().copied().collect();
        let topics = &self.event_topics;
        let starts = &self.starts;
        // A topic-partition is read to its end when nothing is left to fetch
        // and nothing fetched waits in the merger.
        let advanced = self.event_time.advance(&owned, topics.len(), |topic, partition| {
            !merger.holds(partition, topic) && clients.read_to_end(&positions, starts, &topics[topic], partition)
        });
        let now = now_ms();
        for (partition, watermark) in advanced {
            for output in self.processor.advance_partition(partition, watermark, now) {
                self.work.changed.insert(output.user_id().to_owned(), partition);
                self.work.tally.record_output(&output);
                self.work.outputs.push(output);
            }
        }
        Ok(())
    }

    /// Decodes a record read from an event topic and buffers it for its
    /// turn in event-time order.
    fn ingest<'c>(&mut self, message: BorrowedMessage<'c>, merger: &mut Merger<Pending<'c>>) {
        let Some(&topic) = self.topic_indices.get(message.topic()) else {
            tracing::error!(topic = message.topic(), "record from a topic that is not an input; skipped");
            return;
        };
        let Some(input) = self.decode(EVENT_KINDS[topic], &message) else { return };
        let event_time = input.as_ref().ok().and_then(Input::event_time);
        merger.push(message.partition(), topic, event_time, Pending { message, input });
    }

    /// Applies an event record whose turn has come.
    fn apply_event(
        &mut self,
        partition: i32,
        topic: usize,
        message: &BorrowedMessage<'_>,
        input: Result<Input, Rejection>,
    ) {
        let source = Source { partition, watermark: self.event_time.watermark(partition) };
        if let Some(event_time) = self.settle(EVENT_KINDS[topic], source, message, input) {
            self.event_time.observe(topic, partition, event_time);
        }
    }

    /// Processes one consent record (every instance reads all of them).
    fn apply(&mut self, kind: InputKind, message: &BorrowedMessage<'_>) {
        let source = Source { partition: message.partition(), watermark: i64::MIN };
        if let Some(input) = self.decode(kind, message) {
            self.settle(kind, source, message, input);
        }
    }

    /// Decodes and validates a record; `None` if it cannot be decoded now
    /// (the schema registry stayed unreachable: the pipeline stops).
    fn decode(&mut self, kind: InputKind, message: &BorrowedMessage<'_>) -> Option<Result<Input, Rejection>> {
        if !self.fetch_writer_schema(message.payload()) {
            return None;
        }
        Some(self.processor.decode(kind, message.key(), message.payload(), now_ms()))
    }

    /// Applies a decoded record of `kind` from `source` (or counts and
    /// dead-letters a bad one); returns its event time.
    fn settle(
        &mut self,
        kind: InputKind,
        source: Source,
        message: &BorrowedMessage<'_>,
        input: Result<Input, Rejection>,
    ) -> Option<i64> {
        let processed = match input {
            Ok(input) => self.processor.apply(source, input, now_ms()),
            Err(rejection) => Processed::rejected(rejection),
        };
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
        let owned = self.owned.contains(&source.partition);
        if processed.outcome == Outcome::Applied && owned {
            if let Some(user_id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                work.changed.insert(user_id.to_owned(), source.partition);
                if kind == InputKind::Consent && message.payload().is_none() {
                    self.erasures.state_cleared(user_id, now_ms());
                    work.erased.push(user_id.to_owned());
                }
            }
        }
        work.outputs.extend(processed.output);
        processed.event_time
    }

    /// The changelog records of the users whose state changed, and of the
    /// partitions whose event time moved.
    fn changelog_records(&mut self) -> Vec<ChangelogRecord> {
        let users = self.work.changed.drain().map(|(user_id, partition)| {
            let value = self.processor.changelog_value(&user_id);
            ChangelogRecord { key: user_id.into_bytes(), partition, value }
        });
        let event_times = self.event_time.take_changed().into_iter().map(|(partition, value)| ChangelogRecord {
            key: event_time::CHANGELOG_KEY.to_vec(),
            partition,
            value: Some(value),
        });
        users.chain(event_times).collect()
    }

    /// Sends the batch's outputs, dead letters and changelog records (at least once).
    fn send(&mut self, clients: &Clients, offsets: TopicPartitionList) -> Result<InFlight, PipelineError> {
        let changelog = self.changelog_records();
        let mark = clients.send_all(self.processor.codec(), &self.work.outputs, &self.work.dead_letters, &changelog)?;
        self.work.outputs.clear();
        self.work.dead_letters.clear();
        Ok(InFlight { mark, offsets, erased: std::mem::take(&mut self.work.erased) })
    }

    /// Sends the batch and commits it with its input offsets in one
    /// transaction. A transaction that must be aborted rewinds the
    /// instance to the last commit: its partitions' state is restored from
    /// the changelog and their records are read again.
    fn commit_exactly_once(
        &mut self,
        clients: &Clients,
        offsets: &TopicPartitionList,
        merger: &mut Merger<Pending<'_>>,
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        let work = &self.work;
        if offsets.count() == 0 && work.outputs.is_empty() && work.dead_letters.is_empty() && work.changed.is_empty() {
            return Ok(());
        }
        clients.begin()?;
        let result = self.send(clients, TopicPartitionList::new()).and_then(|sent| {
            clients.commit_transaction(offsets)?;
            Ok(sent)
        });
        match result {
            Ok(sent) => {
                let now = now_ms();
                for user_id in &sent.erased {
                    self.erasures.committed(user_id, now);
                }
                Ok(())
            }
            Err(error) if requires_abort(&error) => {
                tracing::warn!(%error, "transaction aborted; rewinding to the last commit");
                clients.abort_transaction()?;
                let owned: Vec<i32> = self.owned.iter().copied().collect();
                self.forget(&owned);
                self.work = Work { tally: std::mem::take(&mut self.work.tally), ..Work::default() };
                // Everything after the last commit is read again.
                merger.clear();
                clients.rewind()?;
                self.restore(&owned, consent, changelog)
            }
            Err(error) => Err(error),
        }
    }
}
