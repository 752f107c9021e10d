//! The Kafka driver of the pure core. One batch: poll the event topics
//! ([`ingest`]) → act on partition changes ([`rebalance`]) → apply records
//! in event-time order ([`apply`], [`merge`]) with the consent table read
//! ahead ([`table`]) → advance event time ([`event_time`]) → deliver the
//! batch's outputs, dead letters, changelog records and offsets
//! ([`publish`], [`guarantee`]).
//!
//! The state of a partition's users lives in memory while this instance owns
//! the partition: restored from the changelog when it is assigned (before any
//! of its events is applied), dropped when it is revoked.
//!
//! Everything here is blocking librdkafka calls, so it runs on its own thread.

// The stages are public so that tests (and other drivers) can run them one
// at a time against a real broker; `run` is the driver.
pub mod apply;
pub mod event_time;
pub mod guarantee;
pub mod ingest;
pub mod merge;
pub mod publish;
pub mod rebalance;
pub mod registry;
pub mod settings;
pub mod table;
pub mod topics;

use crate::codec::SchemaError;
use crate::config::{Config, OutputFormat};
use crate::control::Control;
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::Processor;
use crate::telemetry::{record_batch, record_consumer_lag, record_experiments, record_segment_sizes};
use apply::Shell;
use guarantee::{Batch, Delivered};
use ingest::{next_offsets, Ingest};
use merge::Merger;
use publish::{ProfileFormat, Publisher, Records};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use registry::{RegistryClient, RegistryError};
use std::time::{Duration, Instant};
use table::Table;

pub use topics::{check_topics, TopicsError};

/// A failure that stops the pipeline. Kafka errors are the outside system's;
/// the process exits non-zero and uncommitted records are read again on restart.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A Kafka client call failed.
    #[error("kafka: {context}")]
    Kafka {
        /// What the pipeline was doing.
        context: &'static str,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The topics do not have the layout the contract needs.
    #[error("topic layout")]
    Topics(#[from] TopicsError),
    /// Records were not acknowledged by the brokers.
    #[error("{0} records could not be delivered; their input offsets were not committed")]
    Delivery(u64),
    /// Restoring state took too long.
    #[error("the changelog could not be read to its end within {0:?}")]
    Restore(Duration),
    /// The schema registry is unreachable or answered unusably.
    #[error("schema registry")]
    Registry(#[from] RegistryError),
    /// A bundled schema is invalid (a build defect).
    #[error("the bundled schemas")]
    Schema(#[source] SchemaError),
}

/// Wraps a Kafka error with what the pipeline was doing.
fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { context, source }
}

/// librdkafka's global errors are transient (it reconnects and retries) or,
/// for a table, the expected end of a partition: logged as degraded (warn)
/// or not at all, never as data loss (error).
fn log_client_error(error: KafkaError) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
        error => tracing::warn!(%error, "kafka client error"),
    }
}

/// Runs the pipeline until a shutdown is requested, then commits and leaves the group.
pub fn run(
    config: &Config,
    processor: &Processor,
    erasures: &Erasures,
    control: &Control,
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
    let mut delivery = guarantee::delivery(config.guarantee, Publisher::connect(config, profile_format)?, erasures);
    // Declared before everything that holds what it returns (the shell keeps
    // its committed offsets): dropped last, as librdkafka's destroy needs.
    let ingest = Ingest::new(config)?;
    let mut consent = Table::open(config, &config.topics.consent, "consent-table")?;
    consent.assign(&(0..partitions).map(crate::state::Partition).collect::<Vec<_>>())?;
    let mut changelog = Table::open(config, &config.topics.changelog, "restore")?;
    let mut shell = Shell::new(config, processor, erasures, registry);
    // Nothing is owned yet, so the consent table alone produces no output.
    shell.catch_up_consent(&mut consent)?;
    shell.check_failure()?;
    tracing::info!(consent_records = shell.work.tally.applied_of(InputKind::Consent), "consent table loaded");
    shell.work.tally.flush_to_metrics();

    ingest.subscribe(config)?;
    // Ready once the first assignment's state is restored (below).
    tracing::info!(group = %config.group_id, partitions, guarantee = ?config.guarantee, "consuming events");

    let commit_interval = Duration::from_millis(config.commit_interval_ms);
    // Records read and decoded, waiting for their turn in event-time order.
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    while !control.shutdown_requested() {
        if control.take_reload_request() {
            shell.reload(config);
        }
        // Poll: a batch collects records for up to the commit interval or
        // until it is full (larger batches amortise the consent catch-up and
        // the commit).
        let mut polled = 0;
        let batch_started = Instant::now();
        let batch_deadline = batch_started + commit_interval;
        while polled < config.max_batch_records {
            let message = ingest.poll(batch_deadline.saturating_duration_since(Instant::now()));
            // Rebalance: partition changes happen inside a poll; act on them
            // before keeping what it returned.
            for change in ingest.take_rebalances() {
                delivery.settle(&ingest)?;
                control.set_ready(false);
                shell.rebalance(change, &mut merger, &ingest, &mut consent, &mut changelog)?;
                control.set_ready(true);
            }
            let Some(message) = message else { break };
            polled += 1;
            shell.ingest(message, &mut merger);
        }
        // Apply: the consent table first, then events in event-time order.
        shell.catch_up_consent_for_batch(&mut consent, polled)?;
        let mut applied = Vec::new();
        while let Some((partition, topic, pending)) = merger.next(Instant::now()) {
            shell.apply_event(partition, topic, &pending.message, pending.input);
            applied.push(pending.message);
        }
        shell.check_failure()?;
        // Advance event time: time-driven changes of every owned partition.
        shell.advance_event_time(&ingest, &merger)?;
        // Deliver.
        let offsets = next_offsets(&applied)?;
        drop(applied);
        // An idle batch (no record read, nothing changed) writes nothing: a
        // moved event time waits for the next batch that does.
        let idle = offsets.count() == 0 && shell.work.is_idle();
        let changelog_records = if idle { Vec::new() } else { shell.changelog_records() };
        let work = &mut shell.work;
        let records =
            Records { outputs: &work.outputs, dead_letters: &work.dead_letters, changelog: &changelog_records };
        let batch = Batch { records, offsets, erased: std::mem::take(&mut work.erased), idle };
        let delivery_started = Instant::now();
        match delivery.deliver(&ingest, batch)? {
            Delivered::Done => work.clear_delivered(),
            Delivered::Aborted => shell.rewind(&mut merger, &ingest, &mut consent, &mut changelog)?,
        }
        record_batch(batch_started.elapsed(), delivery_started.elapsed());
        record_consumer_lag(&shell.consumer_lag(&ingest)?);
        shell.work.tally.flush_to_metrics();
        record_segment_sizes(processor.segment_sizes());
        record_experiments(&processor.experiment_counts());
    }
    delivery.finish(&ingest)?;
    control.set_ready(false);
    tracing::info!("shutting down: last batch committed, leaving the group");
    ingest.leave();
    Ok(())
}
