//! Ingest: the consumer group of the event topics. It polls records, notes
//! the partition changes librdkafka makes inside a poll for the pipeline to
//! act on between two polls, tells whether a topic-partition is read to its
//! end (for event time), and commits or rewinds offsets. The records a
//! batch polls are decoded together on the worker threads (their writer
//! schemas fetched from the registry first, when needed) and buffered for
//! their turn in event-time order.

use super::apply::{Pending, Shell, EVENT_KINDS};
use super::merge::Merger;
use super::workers::{self, Encoded};
use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use crate::control::now_ms;
use crate::model::InputKind;
use crate::state::Partition;
use crate::validate::{Input, Rejection};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long reading the committed offsets for a rewind may take.
const REWIND_TIMEOUT: Duration = Duration::from_secs(30);

/// A change of the partitions this instance owns, by partition number (the
/// range assignor gives one member the same numbers of every event topic).
#[derive(Debug, PartialEq)]
pub enum Rebalanced {
    /// These partitions are now this instance's.
    Assigned(Vec<Partition>),
    /// These partitions are no longer this instance's.
    Revoked(Vec<Partition>),
}

/// Notes the partition assignments of the event consumer group.
#[derive(Default)]
pub struct GroupContext {
    rebalances: Mutex<Vec<Rebalanced>>,
}

/// The distinct partition numbers of `partitions`.
fn partition_numbers(partitions: &TopicPartitionList) -> Vec<Partition> {
    let mut numbers: Vec<Partition> =
        partitions.elements().iter().map(|element| Partition(element.partition())).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        log_client_error(error);
    }
}

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
        self.rebalances.lock().unwrap_or_else(PoisonError::into_inner).push(change);
    }
}

/// The event consumer group member.
pub struct Ingest {
    consumer: BaseConsumer<GroupContext>,
    /// The fatal error the consumer reported, if any: it reads nothing
    /// more, and must be made again (see [`PipelineError::ConsumerFenced`]).
    fatal: Mutex<Option<KafkaError>>,
}

impl Ingest {
    /// The consumer of the event topics, not subscribed yet.
    ///
    /// It must outlive everything read from it: librdkafka's destroy waits
    /// for every message and partition list that still refers to it (the
    /// driver declares it before the state that holds its offsets).
    pub fn new(config: &Config) -> Result<Self, PipelineError> {
        let consumer: BaseConsumer<GroupContext> = settings::event_consumer(config)
            .create_with_context(GroupContext::default())
            .map_err(kafka("create the event consumer"))?;
        Ok(Self { consumer, fatal: Mutex::new(None) })
    }

    /// Joins the consumer group of the event topics.
    pub fn subscribe(&self, config: &Config) -> Result<(), PipelineError> {
        self.consumer.subscribe(&config.topics.events()).map_err(kafka("subscribe to the event topics"))
    }

    /// The next record, waiting up to `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<BorrowedMessage<'_>> {
        match self.consumer.poll(timeout) {
            None => None,
            Some(Ok(message)) => Some(message),
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                tracing::warn!(%error, "event consumer error");
                *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                None
            }
            // Transient errors (a broker restarting, a rebalance) are retried by
            // librdkafka; they are logged and the loop goes on.
            Some(Err(error)) => {
                tracing::warn!(%error, "event consumer error");
                None
            }
        }
    }

    /// The fatal error the consumer reported, if it did.
    pub fn fatal_error(&self) -> Option<KafkaError> {
        self.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The partition changes since the last call.
    pub fn take_rebalances(&self) -> Vec<Rebalanced> {
        std::mem::take(&mut *self.consumer.context().rebalances.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The committed offsets of the assignment, waiting up to `timeout` for
    /// offsets a previous owner's transaction may still be committing.
    pub fn committed(&self, timeout: Duration) -> Result<TopicPartitionList, PipelineError> {
        self.consumer.committed(timeout).map_err(kafka("read committed offsets"))
    }

    /// The group's metadata, which a transaction's offsets are committed under.
    pub fn group_metadata(&self) -> Result<ConsumerGroupMetadata, PipelineError> {
        self.consumer
            .group_metadata()
            .ok_or(PipelineError::Kafka { context: "read the group metadata", source: KafkaError::NoMessageReceived })
    }

    /// Commits `offsets`, if there are any (at least once).
    pub fn commit(&self, offsets: &TopicPartitionList, mode: CommitMode) -> Result<(), PipelineError> {
        if offsets.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(offsets, mode).map_err(kafka("commit offsets"))
    }

    /// Moves the consumer back to the committed offsets of its assignment.
    pub fn rewind(&self) -> Result<(), PipelineError> {
        let committed = self.committed(REWIND_TIMEOUT)?;
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
        self.consumer.seek_partitions(positions, REWIND_TIMEOUT).map_err(kafka("rewind to committed offsets"))?;
        Ok(())
    }

    /// The consumer's positions now on `partitions` of each of `topics`, to
    /// ask [`Ingest::read_to_end`] with.
    pub fn positions(
        &self,
        topics: &[String],
        partitions: impl IntoIterator<Item = Partition>,
    ) -> Result<TopicPartitionList, PipelineError> {
        let topic_partitions =
            partitions.into_iter().flat_map(|partition| topics.iter().map(move |topic| (topic.as_str(), partition)));
        super::positions(self.consumer.client(), topic_partitions)
    }

    /// How many records of `topic`'s `partition` are not read yet, as of
    /// the last fetch (no request is made); `None` before anything was
    /// fetched. `positions` are the consumer's; `starts` where it started on
    /// partitions it has not returned a record of yet (their committed offsets).
    pub fn unread(
        &self,
        positions: &TopicPartitionList,
        starts: &TopicPartitionList,
        topic: &str,
        partition: Partition,
    ) -> Option<i64> {
        let offset_in = |list: &TopicPartitionList| {
            list.find_partition(topic, partition.0).and_then(|element| element.offset().to_raw()).filter(|o| *o >= 0)
        };
        let (low, high) = cached_watermarks(&self.consumer, topic, partition.0)?;
        Some((high - offset_in(positions).or_else(|| offset_in(starts)).unwrap_or(low)).max(0))
    }

    /// Whether `topic`'s `partition` is read to its end (see [`Ingest::unread`]);
    /// not before anything was fetched: records may be waiting.
    pub fn read_to_end(
        &self,
        positions: &TopicPartitionList,
        starts: &TopicPartitionList,
        topic: &str,
        partition: Partition,
    ) -> bool {
        self.unread(positions, starts, topic, partition) == Some(0)
    }
}

/// How long dropping the consumer serves the group's last rebalance events.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Ingest {
    /// Leaves the group and serves the rebalance events still queued before
    /// librdkafka's close (which `BaseConsumer`'s drop then does): an
    /// assignment served during the close waits forever in
    /// `rd_kafka_assign` (confluentinc/librdkafka#4884). Records polled
    /// here are dropped unapplied; their offsets were never committed.
    fn drop(&mut self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while Instant::now() < deadline {
            let quiet = self.consumer.poll(Duration::from_millis(100)).is_none();
            if quiet && self.consumer.assignment().is_ok_and(|assigned| assigned.count() == 0) {
                break;
            }
        }
    }
}

impl Shell<'_> {
    /// Records not yet read on the owned partitions, per event kind.
    pub fn consumer_lag(&self, ingest: &Ingest) -> Result<Vec<(InputKind, i64)>, PipelineError> {
        let positions = ingest.positions(&self.event_topics, self.owned.iter().copied())?;
        let lag_of = |topic: &str| -> i64 {
            let unread = |partition: &Partition| ingest.unread(&positions, &self.starts, topic, *partition);
            self.owned.iter().filter_map(unread).sum()
        };
        Ok(EVENT_KINDS.iter().zip(&self.event_topics).map(|(kind, topic)| (*kind, lag_of(topic))).collect())
    }

    /// Decodes records read from the event topics, on the worker threads,
    /// and buffers them for their turn in event-time order, in the order
    /// they were read.
    pub fn ingest<'c>(&mut self, messages: Vec<BorrowedMessage<'c>>, merger: &mut Merger<Pending<'c>>) {
        let mut known = Vec::with_capacity(messages.len());
        for message in messages {
            let Some(&topic) = self.topic_indices.get(message.topic()) else {
                tracing::error!(topic = message.topic(), "record from a topic that is not an input; skipped");
                continue;
            };
            // Writer schemas are fetched here, one at a time, before any is needed.
            if self.fetch_writer_schema(message.payload()) {
                known.push((topic, message));
            }
        }
        let encoded: Vec<Encoded<'_>> =
            known.iter().map(|(topic, message)| (EVENT_KINDS[*topic], message.key(), message.payload())).collect();
        let inputs = workers::decode_in_order(self.processor, &encoded, &self.workers, now_ms());
        for ((topic, message), input) in known.into_iter().zip(inputs) {
            let event_time = input.as_ref().ok().and_then(Input::event_time);
            merger.push(Partition(message.partition()), topic, event_time, Pending { message, input });
        }
    }

    /// Decodes and validates a record; `None` if it cannot be decoded now
    /// (the schema registry stayed unreachable: the pipeline stops).
    pub(super) fn decode(&mut self, kind: InputKind, message: &impl Message) -> Option<Result<Input, Rejection>> {
        if !self.fetch_writer_schema(message.payload()) {
            return None;
        }
        Some(self.processor.decode(kind, message.key(), message.payload(), now_ms()))
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
}

/// The offsets after the last record of each partition in `messages`.
pub fn next_offsets(messages: &[BorrowedMessage<'_>]) -> Result<TopicPartitionList, PipelineError> {
    let mut next_offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in messages {
        let next = next_offsets.entry((message.topic(), message.partition())).or_default();
        *next = (*next).max(message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(kafka("build the offsets to commit"))?;
    }
    Ok(offsets)
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
