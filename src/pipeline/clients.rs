//! The Kafka clients and their settings, the topic layout check, and publishing.

use super::PipelineError;
use crate::codec::Codec;
use crate::config::{Config, Guarantee};
use crate::processor::Output;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
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
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
        error => tracing::warn!(%error, "kafka client error"),
    }
}

/// A change of the partitions this instance owns, by partition number (the
/// range assignor gives one member the same numbers of every event topic).
#[derive(Debug, PartialEq)]
pub enum Rebalanced {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Notes the partition assignments of the event consumer group, for the
/// pipeline to act on between two polls (drop state, restore state).
#[derive(Default)]
pub struct GroupContext {
    rebalances: std::sync::Mutex<Vec<Rebalanced>>,
}

/// The distinct partition numbers of `partitions`.
fn partition_numbers(partitions: &TopicPartitionList) -> Vec<i32> {
    let mut numbers: Vec<i32> = partitions.elements().iter().map(|element| element.partition()).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

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
        let change = match rebalance {
            Rebalance::Assign(partitions) => Rebalanced::Assigned(partition_numbers(partitions)),
            Rebalance::Revoke(partitions) => Rebalanced::Revoked(partition_numbers(partitions)),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance error");
                return;
            }
        };
        tracing::info!(?change, "rebalance");
        self.rebalances.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(change);
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

/// A changelog record: a user's state (or `None`, a tombstone), or a
/// partition's event time.
pub struct ChangelogRecord {
    pub key: Vec<u8>,
    pub partition: i32,
    pub value: Option<Vec<u8>>,
}

/// How profile updates are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProfileFormat {
    /// Avro single-object encoding.
    SingleObject,
    /// The Confluent wire format, with this registry id of `ProfileUpdate`'s schema.
    Confluent(u32),
}

/// The event consumer group and the producer of a running pipeline.
pub struct Clients {
    profile_format: ProfileFormat,
    /// The consumer group of the event topics.
    pub events: BaseConsumer<GroupContext>,
    producer: ThreadedProducer<DeliveryTracker>,
    /// Records handed to the producer so far.
    sent: std::cell::Cell<u64>,
    profiles_topic: String,
    dead_letters_topic: String,
    changelog_topic: String,
    /// Whether the producer is transactional.
    transactional: bool,
}

/// How long one transactional step may take before it is retried or fails.
const TRANSACTION_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transactional step is retried (through a broker restart).
const TRANSACTION_RETRY_DEADLINE: Duration = Duration::from_secs(180);

/// Sets `key` unless the configured client properties set it.
fn set_default(client: &mut ClientConfig, config: &Config, key: &str, value: &str) {
    if !config.client_properties.contains_key(key) {
        client.set(key, value);
    }
}

/// Whether a Kafka error leaves the open transaction to be aborted (the
/// pipeline then rewinds to the last commit); other errors are fatal.
pub fn requires_abort(error: &PipelineError) -> bool {
    matches!(error, PipelineError::Kafka { source: KafkaError::Transaction(error), .. } if error.txn_requires_abort())
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
    /// Creates the clients; exactly once, it also initialises the
    /// transactional producer (fencing a previous incarnation of this instance).
    pub fn connect(config: &Config, profile_format: ProfileFormat) -> Result<Self, PipelineError> {
        let transactional = config.guarantee == Guarantee::ExactlyOnce;
        let mut events = base_config(config);
        // A dead instance's partitions move after this long without heartbeats.
        set_default(&mut events, config, "session.timeout.ms", "10000");
        set_default(&mut events, config, "heartbeat.interval.ms", "2000");
        let events = events
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
            .create_with_context(GroupContext::default())
            .map_err(kafka("create the event consumer"))?;
        let mut producer = base_config(config);
        if transactional {
            // One id per instance: a restarted instance fences its previous
            // incarnation and aborts the transaction it left open.
            producer.set("transactional.id", format!("tactful.{}.{}", config.app_id, config.instance_id));
            // A transaction left open by an instance that never comes back
            // blocks read_committed readers until it times out.
            set_default(&mut producer, config, "transaction.timeout.ms", "30000");
        }
        let producer = producer
            // No duplicates or reordering from librdkafka's own retries.
            .set("enable.idempotence", "true")
            // Java clients' partitioner: a key lands where a Java producer would put it.
            .set("partitioner", "murmur2_random")
            // Small batches amortise requests without adding visible latency.
            .set("linger.ms", "5")
            .create_with_context(DeliveryTracker::default())
            .map_err(kafka("create the producer"))?;
        let clients = Self {
            profile_format,
            events,
            producer,
            sent: std::cell::Cell::new(0),
            profiles_topic: config.topics.profiles.clone(),
            dead_letters_topic: config.topics.dead_letters.clone(),
            changelog_topic: config.topics.changelog.clone(),
            transactional,
        };
        if transactional {
            retry_transactional(|| clients.producer.init_transactions(TRANSACTION_STEP_TIMEOUT))
                .map_err(kafka("initialise transactions (fencing a previous incarnation)"))?;
        }
        Ok(clients)
    }

    /// The partition changes since the last call.
    pub fn take_rebalances(&self) -> Vec<Rebalanced> {
        std::mem::take(&mut *self.events.context().rebalances.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Opens a transaction (exactly once), before the batch's records are sent.
    pub fn begin(&self) -> Result<(), PipelineError> {
        if self.transactional {
            self.producer.begin_transaction().map_err(kafka("begin a transaction"))?;
        }
        Ok(())
    }

    /// Commits the open transaction with the input `offsets` in it.
    pub fn commit_transaction(&self, offsets: &TopicPartitionList) -> Result<(), PipelineError> {
        if offsets.count() > 0 {
            let group = self.events.group_metadata().ok_or(PipelineError::Kafka {
                context: "read the group metadata",
                source: KafkaError::NoMessageReceived,
            })?;
            retry_transactional(|| {
                self.producer.send_offsets_to_transaction(offsets, &group, TRANSACTION_STEP_TIMEOUT)
            })
            .map_err(kafka("add the input offsets to the transaction"))?;
        }
        retry_transactional(|| self.producer.commit_transaction(TRANSACTION_STEP_TIMEOUT))
            .map_err(kafka("commit the transaction"))
    }

    /// Aborts the open transaction: none of its records becomes visible to
    /// read_committed readers.
    pub fn abort_transaction(&self) -> Result<(), PipelineError> {
        retry_transactional(|| self.producer.abort_transaction(TRANSACTION_STEP_TIMEOUT))
            .map_err(kafka("abort the transaction"))
    }

    /// Moves the event consumer back to the committed offsets of its assignment.
    pub fn rewind(&self) -> Result<(), PipelineError> {
        let committed = self.events.committed(TRANSACTION_STEP_TIMEOUT).map_err(kafka("read committed offsets"))?;
        let mut positions = TopicPartitionList::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            positions
                .add_partition_offset(element.topic(), element.partition(), offset)
                .map_err(kafka("build the rewind positions"))?;
        }
        self.events
            .seek_partitions(positions, TRANSACTION_STEP_TIMEOUT)
            .map_err(kafka("rewind to committed offsets"))?;
        Ok(())
    }

    /// Whether the event consumer has read `topic`'s `partition` to its end
    /// (as of the last fetch; no request is made). `positions` are the
    /// consumer's; `starts` where it started on partitions it has not
    /// returned a record of yet (their committed offsets).
    pub fn read_to_end(
        &self,
        positions: &TopicPartitionList,
        starts: &TopicPartitionList,
        topic: &str,
        partition: i32,
    ) -> bool {
        let offset_in = |list: &TopicPartitionList| {
            list.find_partition(topic, partition).and_then(|element| element.offset().to_raw()).filter(|o| *o >= 0)
        };
        let Some((low, high)) = cached_watermarks(&self.events, topic, partition) else {
            // Nothing fetched yet: records may be waiting.
            return false;
        };
        offset_in(positions).or_else(|| offset_in(starts)).unwrap_or(low) >= high
    }

    /// Sends outputs and dead letters without waiting for acknowledgements.
    /// Returns a mark to pass to [`Clients::wait_until_acknowledged`].
    pub fn send_all(
        &self,
        codec: &Codec,
        outputs: &[Output],
        dead_letters: &[DeadLetter],
        changelog: &[ChangelogRecord],
    ) -> Result<u64, PipelineError> {
        let mut value = Vec::with_capacity(512);
        for output in outputs {
            let record = BaseRecord::to(&self.profiles_topic).key(output.user_id());
            match output {
                Output::Update(update) => {
                    value.clear();
                    match self.profile_format {
                        ProfileFormat::SingleObject => codec.encode_profile(update, &mut value),
                        ProfileFormat::Confluent(id) => codec.encode_profile_confluent(id, update, &mut value),
                    }
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
        for change in changelog {
            // The user's state lives on the partition number of their events,
            // whatever partitioner the data platform used.
            let record = BaseRecord::to(&self.changelog_topic).key(change.key.as_slice()).partition(change.partition);
            match &change.value {
                Some(value) => self.send(record.payload(value.as_slice()))?,
                None => self.send(record)?,
            }
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
    if let Some(count) = partitions_of(&topics.changelog).filter(|count| *count != partitions) {
        return Err(PipelineError::Topics(format!(
            "the changelog topic `{}` has {count} partitions; it needs the input topics' {partitions}",
            topics.changelog
        )));
    }
    let outputs = [(&topics.profiles, "compact"), (&topics.dead_letters, "delete"), (&topics.changelog, "compact")];
    let missing: Vec<(&str, &str)> = outputs
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

/// Runs a transactional step again while it fails with a retriable error
/// (a broker restarting, a coordinator moving), up to a deadline.
fn retry_transactional(mut step: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let deadline = std::time::Instant::now() + TRANSACTION_RETRY_DEADLINE;
    loop {
        match step() {
            Err(KafkaError::Transaction(error)) if error.is_retriable() && std::time::Instant::now() < deadline => {
                tracing::warn!(%error, "transactional step failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

/// The low and high watermarks of `topic`'s `partition` as of the consumer's last
/// fetch, without a request to the broker. rust-rdkafka wraps only the
/// network query (`fetch_watermarks`), which would cost a round trip per
/// partition and batch; librdkafka's cached lookup is called directly.
fn cached_watermarks(consumer: &BaseConsumer<GroupContext>, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the
    // topic is a NUL-terminated string that outlives the call, and the two
    // out-pointers are valid i64s on this stack frame.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0 && high >= 0)
        .then_some((low, high))
}
