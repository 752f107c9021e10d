//! The Kafka driver of the pure core. One batch ([`driver`]): poll the event
//! topics ([`ingest`]) → act on partition changes ([`rebalance`]) → apply
//! records in event-time order ([`apply`], [`merge`]) with the consent table
//! read ahead ([`table`]) → advance event time ([`event_time`]) → deliver the
//! batch's outputs, dead letters, changelog records and offsets
//! ([`publish`], [`guarantee`]). Applying events and advancing event time
//! run partition by partition on `pipeline.workers` threads ([`workers`]).
//!
//! The state of a partition's users lives in memory while this instance owns
//! the partition: restored from the changelog when it is assigned (before any
//! of its events is applied), dropped when it is revoked.
//!
//! Everything here is blocking librdkafka calls, so it runs on its own
//! thread (with the worker threads it starts for a batch's apply step).

// The stages are public so that tests (and other drivers) can run them one
// at a time against a real broker; `run` is the driver.
pub mod apply;
pub mod driver;
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
pub mod workers;

use crate::codec::SchemaError;
use crate::config::{Config, OutputFormat};
use crate::control::Control;
use crate::erasure::Erasures;
use crate::processor::Processor;
use crate::state;
use driver::Driver;
use ingest::Ingest;
use merge::Merger;
use publish::ProfileFormat;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;
use registry::{RegistryClient, RegistryError};
use std::time::Duration;

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
    /// The brokers refused the client's credentials: the user's to fix, and
    /// retrying cannot help.
    #[error(
        "kafka: authentication failed at {bootstrap_servers}: {reason}; check the sasl.* settings in \
         [kafka.client_properties] and the secrets they name"
    )]
    Authentication {
        /// `kafka.bootstrap_servers`.
        bootstrap_servers: String,
        /// What librdkafka reported: the broker and its answer.
        reason: String,
    },
    /// The TLS handshake with the brokers failed: the user's to fix.
    #[error(
        "kafka: the TLS handshake with {bootstrap_servers} failed: {reason}; check the ssl.* settings in \
         [kafka.client_properties]"
    )]
    Tls {
        /// `kafka.bootstrap_servers`.
        bootstrap_servers: String,
        /// What librdkafka reported: the broker and the TLS error.
        reason: String,
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
    /// The event consumer hit a fatal error: with static membership, the
    /// broker fenced it (its session timed out while the coordinator was
    /// unreachable, and librdkafka's rejoin replaced it). `run` starts the
    /// consumer again; nothing is lost, as nothing it read is committed yet.
    #[error("kafka: the event consumer was fenced ({0})")]
    ConsumerFenced(KafkaError),
    /// A thread of the pipeline could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// A table's thread asking for its ends stopped (a defect).
    #[error("a table's watermark thread stopped")]
    EndsThreadGone,
}

/// Wraps a Kafka error with what the pipeline was doing.
fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { context, source }
}

/// Where a consumer reads next on each of `topic_partitions`, from
/// librdkafka's fetch state (no request is made). rdkafka's `position`
/// first asks for the whole assignment, a round trip through librdkafka's
/// main thread that took a tenth of the pipeline thread's time in small
/// batches (BENCHMARKS.md). A partition not fetched from has no offset.
fn positions<'t, C: ClientContext>(
    client: &Client<C>,
    topic_partitions: impl IntoIterator<Item = (&'t str, state::Partition)>,
) -> Result<TopicPartitionList, PipelineError> {
    let mut positions = TopicPartitionList::new();
    for (topic, partition) in topic_partitions {
        positions.add_partition(topic, partition.0);
    }
    // SAFETY: the client pointer is valid for the client's lifetime, and
    // the list is a valid one that outlives the call, which only writes the
    // offsets of its elements.
    match unsafe { rdkafka::bindings::rd_kafka_position(client.native_ptr(), positions.ptr()) } {
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(positions),
        error => Err(PipelineError::Kafka {
            context: "read consumer positions",
            source: KafkaError::MetadataFetch(error.into()),
        }),
    }
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
    loop {
        match consume(config, processor, erasures, control, registry.clone(), profile_format, partitions) {
            Err(PipelineError::ConsumerFenced(error)) => {
                // As after a restart of the process: the state of the
                // partitions it owned is restored when they are assigned again.
                tracing::warn!(%error, "event consumer fenced; starting it again");
                control.set_ready(false);
                processor.drop_partitions(&processor.partitions());
            }
            outcome => return outcome,
        }
    }
}

/// One life of the event consumer: joins the group and runs batches until a
/// shutdown is requested (then commits and stops), an error, or the
/// consumer is fenced.
fn consume(
    config: &Config,
    processor: &Processor,
    erasures: &Erasures,
    control: &Control,
    registry: Option<RegistryClient>,
    profile_format: ProfileFormat,
    partitions: i32,
) -> Result<(), PipelineError> {
    // Made before the driver, whose shell holds its committed offsets:
    // dropped after it, as librdkafka's destroy needs.
    let ingest = Ingest::new(config)?;
    let mut driver = Driver::start(config, processor, erasures, control, registry, profile_format, partitions)?;
    ingest.subscribe(config)?;
    // Ready once the first assignment's state is restored.
    tracing::info!(group = %config.group_id, partitions, guarantee = ?config.guarantee, "consuming events");
    // Records read and decoded, waiting for their turn in event-time order.
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    while !control.shutdown_requested() {
        if control.take_reload_request() {
            driver.shell.reload(config);
        }
        let applied = driver.batch(&ingest, &mut merger)?;
        driver.deliver(applied, &ingest, &mut merger)?;
    }
    driver.finish(&ingest)?;
    control.set_ready(false);
    // A static member does not leave the group: a restart within the
    // session timeout takes its partitions back without a rebalance.
    tracing::info!("shutting down: last batch committed");
    // Dropping the consumer leaves the group (see `Ingest`'s `Drop`).
    Ok(())
}
