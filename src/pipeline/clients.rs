//! The Kafka clients and their settings, the topic layout check, and publishing.

use super::PipelineError;
use crate::codec::Codec;
use crate::config::Config;
use crate::processor::Output;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a metadata or watermark request may take before the start fails.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for all records of a batch to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How often to check whether a batch's records are all acknowledged.
const ACKNOWLEDGEMENT_POLL: Duration = Duration::from_micros(500);

/// librdkafka's global errors are transient (it reconnects and retries) or,
/// for the consent table, the expected end of a partition: logged as
/// degraded (warn) or not at all, never as data loss (error).
fn log_client_error(error: KafkaError) {
    match error {
        KafkaError::PartitionEOF(_) => {}
        error => tracing::warn!(%error, "kafka client error"),
    }
}

/// Logs partition assignments of the event consumer group.
pub struct GroupContext;

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        log_client_error(error);
    }
}

/// The consent table's consumer.
pub struct TableContext;

impl ClientContext for TableContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        log_client_error(error);
    }
}

impl ConsumerContext for TableContext {}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // A lost commit only means those records are processed again after a restart.
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => tracing::info!(partitions = partitions.count(), "partitions assigned"),
            Rebalance::Revoke(partitions) => tracing::info!(partitions = partitions.count(), "partitions revoked"),
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

/// Counts delivery reports: every record sent gets one, success or failure.
#[derive(Default)]
pub struct DeliveryTracker {
    reported: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for DeliveryTracker {
    fn error(&self, error: KafkaError, _reason: &str) {
        log_client_error(error);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "record not delivered");
        }
        self.reported.fetch_add(1, Ordering::Release);
    }
}

/// A bad input record on its way to the dead-letter topic.
pub struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
    topic: String,
    partition: i32,
    offset: i64,
}

impl DeadLetter {
    /// The dead letter of `message`, rejected for `reason`.
    pub fn of(message: &BorrowedMessage<'_>, reason: &'static str) -> Self {
        Self {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            reason,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

/// The event consumer group and the producer of a running pipeline.
pub struct Clients {
    /// The consumer group of the event topics.
    pub events: BaseConsumer<GroupContext>,
    producer: ThreadedProducer<DeliveryTracker>,
    /// Records handed to the producer so far.
    sent: std::cell::Cell<u64>,
    profiles_topic: String,
    dead_letters_topic: String,
}

pub(crate) fn base_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

pub(super) fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { context, source }
}

impl Clients {
    /// Creates the clients (connections are made lazily by librdkafka).
    pub fn connect(config: &Config) -> Result<Self, PipelineError> {
        let events = base_config(config)
            .set("group.id", &config.group_id)
            // Offsets are committed by hand, only after the batch's outputs are acknowledged.
            .set("enable.auto.commit", "false")
            // A new group reads what the topics retain instead of skipping it.
            .set("auto.offset.reset", "earliest")
            // Range gives one member the same partition numbers of every
            // co-partitioned topic.
            .set("partition.assignment.strategy", "range")
            // Never act on records of aborted transactions.
            .set("isolation.level", "read_committed")
            .create_with_context(GroupContext)
            .map_err(kafka("create the event consumer"))?;
        let producer = base_config(config)
            // No duplicates or reordering from librdkafka's own retries.
            .set("enable.idempotence", "true")
            // Java clients' partitioner: a key lands where a Java producer would put it.
            .set("partitioner", "murmur2_random")
            // Small batches amortise requests without adding visible latency.
            .set("linger.ms", "5")
            .create_with_context(DeliveryTracker::default())
            .map_err(kafka("create the producer"))?;
        Ok(Self {
            events,
            producer,
            sent: std::cell::Cell::new(0),
            profiles_topic: config.topics.profiles.clone(),
            dead_letters_topic: config.topics.dead_letters.clone(),
        })
    }

    /// Sends outputs and dead letters without waiting for acknowledgements.
    /// Returns a mark to pass to [`Clients::wait_until_acknowledged`].
    pub fn send_all(
        &self,
        codec: &Codec,
        outputs: &[Output],
        dead_letters: &[DeadLetter],
    ) -> Result<u64, PipelineError> {
        let mut value = Vec::with_capacity(512);
        for output in outputs {
            let record = BaseRecord::to(&self.profiles_topic).key(output.user_id());
            match output {
                Output::Update(update) => {
                    value.clear();
                    codec.encode_profile(update, &mut value);
                    self.send(record.payload(&value))?;
                }
                Output::Tombstone { .. } => self.send(record)?,
            }
        }
        for letter in dead_letters {
            let partition = letter.partition.to_string();
            let offset = letter.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "tactful.reason", value: Some(letter.reason) })
                .insert(Header { key: "tactful.source.topic", value: Some(&letter.topic) })
                .insert(Header { key: "tactful.source.partition", value: Some(&partition) })
                .insert(Header { key: "tactful.source.offset", value: Some(&offset) });
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.dead_letters_topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.value {
                record = record.payload(payload.as_slice());
            }
            self.send(record)?;
        }
        Ok(self.sent.get())
    }

    /// Waits until every record sent up to `mark` got its delivery report,
    /// and fails if any record was not delivered. (rdkafka's `flush` sleeps
    /// in 100 ms steps when a background thread serves delivery reports.)
    pub fn wait_until_acknowledged(&self, mark: u64) -> Result<(), PipelineError> {
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        let tracker = self.producer.context();
        loop {
            let failed = tracker.failed.load(Ordering::Relaxed);
            if failed > 0 {
                return Err(PipelineError::Delivery(failed));
            }
            if tracker.reported.load(Ordering::Acquire) >= mark {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(PipelineError::Kafka {
                    context: "wait for acknowledgements",
                    source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            std::thread::sleep(ACKNOWLEDGEMENT_POLL);
        }
    }

    fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), PipelineError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.set(self.sent.get() + 1);
                    return Ok(());
                }
                // The local queue is full: wait for acknowledgements to drain it.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => return Err(PipelineError::Kafka { context: "send a record", source }),
            }
        }
    }
}

/// Checks that the four input topics exist and are co-partitioned, creates
/// missing output topics when configured to, and returns the partition count.
pub fn check_topics(config: &Config, runtime: &tokio::runtime::Handle) -> Result<i32, PipelineError> {
    let probe: BaseConsumer = base_config(config).create().map_err(kafka("create a metadata client"))?;
    let metadata = probe.fetch_metadata(None, METADATA_TIMEOUT).map_err(kafka("read cluster metadata"))?;
    let partitions_of = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name && topic.error().is_none())
            .map(|topic| topic.partitions().len() as i32)
    };
    let topics = &config.topics;
    let inputs = [&topics.browse, &topics.purchase, &topics.location, &topics.consent];
    let mut counts = Vec::new();
    for name in inputs {
        match partitions_of(name) {
            Some(count) => counts.push((name.as_str(), count)),
            None => return Err(PipelineError::Topics(format!("input topic `{name}` does not exist"))),
        }
    }
    let partitions = counts[0].1;
    if counts.iter().any(|(_, count)| *count != partitions) {
        let listing: Vec<String> = counts.iter().map(|(name, count)| format!("`{name}` has {count}")).collect();
        return Err(PipelineError::Topics(format!(
            "the input topics must have the same partition count (co-partitioned by user id): {}",
            listing.join(", ")
        )));
    }
    let missing: Vec<(&str, &str)> = [(&topics.profiles, "compact"), (&topics.dead_letters, "delete")]
        .into_iter()
        .filter(|(name, _)| partitions_of(name).is_none())
        .map(|(name, cleanup)| (name.as_str(), cleanup))
        .collect();
    if missing.is_empty() {
        return Ok(partitions);
    }
    if !config.create_output_topics {
        let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        return Err(PipelineError::Topics(format!(
            "output topics missing and pipeline.create_output_topics is false: {}",
            names.join(", ")
        )));
    }
    let admin: AdminClient<DefaultClientContext> =
        base_config(config).create().map_err(kafka("create an admin client"))?;
    // -1: the cluster's default replication factor.
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, cleanup)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", cleanup)
        })
        .collect();
    let results = runtime
        .block_on(admin.create_topics(&new_topics, &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT))))
        .map_err(kafka("create output topics"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created output topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %name, "output topic exists"),
            Err((name, code)) => {
                return Err(PipelineError::Topics(format!("cannot create output topic `{name}`: {code}")));
            }
        }
    }
    Ok(partitions)
}
