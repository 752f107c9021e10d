//! Ingest: the consumer group of the event topics. It polls records, notes
//! the partition changes librdkafka makes inside a poll for the pipeline to
//! act on between two polls, tells whether a topic-partition is read to its
//! end (for event time), and commits or rewinds offsets.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use crate::state::Partition;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

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
}

impl Ingest {
    /// Joins the consumer group of the event topics.
    pub fn subscribe(config: &Config) -> Result<Self, PipelineError> {
        let consumer: BaseConsumer<GroupContext> = settings::event_consumer(config)
            .create_with_context(GroupContext::default())
            .map_err(kafka("create the event consumer"))?;
        consumer.subscribe(&config.topics.events()).map_err(kafka("subscribe to the event topics"))?;
        Ok(Self { consumer })
    }

    /// The next record, waiting up to `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<BorrowedMessage<'_>> {
        match self.consumer.poll(timeout) {
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

    /// The consumer's positions now, to ask [`Ingest::read_to_end`] with.
    pub fn positions(&self) -> Result<TopicPartitionList, PipelineError> {
        self.consumer.position().map_err(kafka("read consumer positions"))
    }

    /// Whether `topic`'s `partition` is read to its end (as of the last
    /// fetch; no request is made). `positions` are the consumer's; `starts`
    /// where it started on partitions it has not returned a record of yet
    /// (their committed offsets).
    pub fn read_to_end(
        &self,
        positions: &TopicPartitionList,
        starts: &TopicPartitionList,
        topic: &str,
        partition: Partition,
    ) -> bool {
        let offset_in = |list: &TopicPartitionList| {
            list.find_partition(topic, partition.0).and_then(|element| element.offset().to_raw()).filter(|o| *o >= 0)
        };
        let Some((low, high)) = cached_watermarks(&self.consumer, topic, partition.0) else {
            // Nothing fetched yet: records may be waiting.
            return false;
        };
        offset_in(positions).or_else(|| offset_in(starts)).unwrap_or(low) >= high
    }

    /// Leaves the consumer group.
    pub fn leave(&self) {
        self.consumer.unsubscribe();
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
