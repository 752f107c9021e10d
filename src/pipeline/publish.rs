//! Publish: the producer of profile updates, dead letters and changelog
//! records, with delivery tracking and, exactly once, the transaction they
//! are written in. It owns its encoder of profile updates.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::codec::Codec;
use crate::config::{Config, Guarantee};
use crate::processor::Output;
use crate::state::Partition;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::TopicPartitionList;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for all records of a batch to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How often to check whether a batch's records are all acknowledged.
const ACKNOWLEDGEMENT_POLL: Duration = Duration::from_micros(500);
/// How long one transactional step may take before it is retried or fails.
const TRANSACTION_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transactional step is retried (through a broker restart).
const TRANSACTION_RETRY_DEADLINE: Duration = Duration::from_secs(180);
/// How long to wait before sending again when librdkafka's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

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
    pub fn of(message: &impl Message, reason: &'static str) -> Self {
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
    /// The user id, or the event-time key.
    pub key: Vec<u8>,
    /// The input partition the state belongs to.
    pub partition: Partition,
    /// The encoded state; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// What one batch publishes.
pub struct Records<'a> {
    /// Profile updates and tombstones.
    pub outputs: &'a [Output],
    /// Bad input records.
    pub dead_letters: &'a [DeadLetter],
    /// The state of the users and partitions that changed.
    pub changelog: &'a [ChangelogRecord],
}

/// How profile updates are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProfileFormat {
    /// Avro single-object encoding.
    SingleObject,
    /// The Confluent wire format, with this registry id of `ProfileUpdate`'s schema.
    Confluent(u32),
}

/// The producer of a running pipeline.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryTracker>,
    /// Encodes profile updates (the bundled schemas only).
    codec: Codec,
    profile_format: ProfileFormat,
    /// Records handed to the producer so far.
    sent: Cell<u64>,
    profiles_topic: String,
    dead_letters_topic: String,
    changelog_topic: String,
}

impl Publisher {
    /// Creates the producer; exactly once, it also initialises transactions
    /// (fencing a previous incarnation of this instance).
    pub fn connect(config: &Config, profile_format: ProfileFormat) -> Result<Self, PipelineError> {
        let producer = settings::producer(config)
            .create_with_context(DeliveryTracker::default())
            .map_err(kafka("create the producer"))?;
        let codec = Codec::new(&[]).map_err(PipelineError::Schema)?;
        let publisher = Self {
            producer,
            codec,
            profile_format,
            sent: Cell::new(0),
            profiles_topic: config.topics.profiles.clone(),
            dead_letters_topic: config.topics.dead_letters.clone(),
            changelog_topic: config.topics.changelog.clone(),
        };
        if config.guarantee == Guarantee::ExactlyOnce {
            retry_transactional(|| publisher.producer.init_transactions(TRANSACTION_STEP_TIMEOUT))
                .map_err(kafka("initialise transactions (fencing a previous incarnation)"))?;
        }
        Ok(publisher)
    }

    /// Opens a transaction, before a batch's records are sent.
    pub fn begin_transaction(&self) -> Result<(), PipelineError> {
        self.producer.begin_transaction().map_err(kafka("begin a transaction"))
    }

    /// Commits the open transaction with the input `offsets` in it.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: impl FnOnce() -> Result<ConsumerGroupMetadata, PipelineError>,
    ) -> Result<(), PipelineError> {
        if offsets.count() > 0 {
            let group = group()?;
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

    /// Sends a batch's records without waiting for acknowledgements.
    /// Returns a mark to pass to [`Publisher::wait_until_acknowledged`].
    pub fn send(&self, records: &Records<'_>) -> Result<u64, PipelineError> {
        let mut value = Vec::with_capacity(512);
        for output in records.outputs {
            let record = BaseRecord::to(&self.profiles_topic).key(output.user_id());
            match output {
                Output::Update(update) => {
                    value.clear();
                    match self.profile_format {
                        ProfileFormat::SingleObject => self.codec.encode_profile(update, &mut value),
                        ProfileFormat::Confluent(id) => self.codec.encode_profile_confluent(id, update, &mut value),
                    }
                    self.send_one(record.payload(&value))?;
                }
                Output::Tombstone { .. } => self.send_one(record)?,
            }
        }
        for letter in records.dead_letters {
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
            self.send_one(record)?;
        }
        for change in records.changelog {
            // The user's state lives on the partition number of their events,
            // whatever partitioner the data platform used.
            let record = BaseRecord::to(&self.changelog_topic).key(change.key.as_slice()).partition(change.partition.0);
            match &change.value {
                Some(value) => self.send_one(record.payload(value.as_slice()))?,
                None => self.send_one(record)?,
            }
        }
        Ok(self.sent.get())
    }

    /// Waits until every record sent up to `mark` got its delivery report,
    /// and fails if any record was not delivered. (rdkafka's `flush` sleeps
    /// in 100 ms steps when a background thread serves delivery reports.)
    pub fn wait_until_acknowledged(&self, mark: u64) -> Result<(), PipelineError> {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while !self.acknowledged(mark)? {
            if Instant::now() > deadline {
                return Err(PipelineError::Kafka {
                    context: "wait for acknowledgements",
                    source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            std::thread::sleep(ACKNOWLEDGEMENT_POLL);
        }
        Ok(())
    }

    /// Whether every record sent up to `mark` is acknowledged, without
    /// waiting; an error once any record sent failed.
    pub fn acknowledged(&self, mark: u64) -> Result<bool, PipelineError> {
        let tracker = self.producer.context();
        match tracker.failed.load(Ordering::Relaxed) {
            0 => Ok(tracker.reported.load(Ordering::Acquire) >= mark),
            failed => Err(PipelineError::Delivery(failed)),
        }
    }

    /// Sends the records that linger in the producer's queues at once, and
    /// waits until every record handed over got its delivery report,
    /// whatever it said, before a transaction is committed. This is
    /// librdkafka's own flush, which treats `linger.ms` as elapsed while it
    /// waits. rdkafka's `flush` (which the commit calls first) calls it
    /// without waiting and then polls for events, which the producer's own
    /// thread takes, in 100 ms steps: each transaction took ~100 ms. The
    /// commit still gives the verdict (a failed record aborts the
    /// transaction), and waits itself for whatever is not reported by the
    /// time this gives up.
    pub fn flush(&self) {
        let timeout_ms = i32::try_from(FLUSH_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the client pointer is valid for the producer's lifetime.
        // With delivery reports as events (rdkafka's), librdkafka's flush
        // only waits for the count of records in flight to reach zero, which
        // the producer's polling thread brings about.
        unsafe { rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), timeout_ms) };
    }

    fn send_one<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), PipelineError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
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
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((source, _)) => return Err(PipelineError::Kafka { context: "send a record", source }),
            }
        }
    }
}

/// Whether a Kafka error leaves the open transaction to be aborted (the
/// pipeline then rewinds to the last commit); other errors are fatal.
pub fn requires_abort(error: &PipelineError) -> bool {
    matches!(error, PipelineError::Kafka { source: KafkaError::Transaction(error), .. } if error.txn_requires_abort())
}

/// Runs a transactional step again while it fails with a retriable error
/// (a broker restarting, a coordinator moving), up to a deadline.
fn retry_transactional(mut step: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let deadline = Instant::now() + TRANSACTION_RETRY_DEADLINE;
    loop {
        match step() {
            Err(KafkaError::Transaction(error)) if error.is_retriable() && Instant::now() < deadline => {
                tracing::warn!(%error, "transactional step failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}
