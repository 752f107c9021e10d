//! The consent topic read as a table: every instance reads all of it from the
//! beginning (it is compacted), so the consent in force is known for every
//! user before any event is applied, also right after a restart. Before each
//! batch of events the table catches up to the topic's end as it was then, so
//! a choice recorded before an event was produced is in force when the event
//! is applied (CONTRACT §4).

use super::clients::{base_config, kafka, TableContext};
use super::{Batch, PipelineError};
use crate::config::Config;
use crate::model::InputKind;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Records applied between two position checks while catching up.
const POSITION_CHECK_EVERY: usize = 4_096;
/// Poll interval while catching up.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// The consent topic's reader and how far it has read.
pub struct ConsentTable {
    topic: String,
    partitions: i32,
    catch_up_timeout: Duration,
    /// Reads the whole consent topic, outside the consumer group.
    consumer: BaseConsumer<TableContext>,
    /// Asks for the topic's end offsets. A client of its own: on `consumer`
    /// the request would queue behind its long-polling fetches.
    watermarks: BaseConsumer<TableContext>,
}

impl ConsentTable {
    /// Creates the table's clients and assigns every partition from the beginning.
    pub fn open(config: &Config, partitions: i32) -> Result<Self, PipelineError> {
        let consumer: BaseConsumer<TableContext> = base_config(config)
            // librdkafka wants a group id even for assign(); this consumer
            // never subscribes or commits, so the group stays empty.
            .set("group.id", format!("{}.consent-table", config.group_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // End-of-partition events tell when the table has caught up.
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(TableContext)
            .map_err(kafka("create the consent consumer"))?;
        let watermarks =
            base_config(config).create_with_context(TableContext).map_err(kafka("create the watermark client"))?;
        let topic = config.topics.consent.clone();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .map_err(kafka("build the consent assignment"))?;
        }
        consumer.assign(&assignment).map_err(kafka("assign the consent topic"))?;
        Ok(Self {
            topic,
            partitions,
            catch_up_timeout: Duration::from_millis(config.consent_catch_up_timeout_ms),
            consumer,
            watermarks,
        })
    }

    /// Applies consent records until every partition reached the end it had
    /// when this call started, or the catch-up timeout passed (logged as degraded).
    pub fn catch_up(&mut self, batch: &mut Batch<'_>) -> Result<(), PipelineError> {
        let mut targets = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            let (_, high) = self
                .watermarks
                .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                .map_err(kafka("read consent watermarks"))?;
            targets.push((partition, high));
        }
        let deadline = Instant::now() + self.catch_up_timeout;
        let mut reached_end = HashSet::new();
        loop {
            // Apply what is already fetched; positions are checked when that
            // runs dry, or every few thousand records.
            for _ in 0..POSITION_CHECK_EVERY {
                match self.consumer.poll(Duration::ZERO) {
                    Some(result) => handle(result, batch, &mut reached_end),
                    None => break,
                }
            }
            let positions = self.consumer.position().map_err(kafka("read consent positions"))?;
            let pending = targets
                .iter()
                .filter(|(partition, high)| {
                    let position = positions
                        .find_partition(&self.topic, *partition)
                        .and_then(|element| element.offset().to_raw())
                        .unwrap_or(0);
                    position < *high && !reached_end.contains(partition)
                })
                .count();
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    pending_partitions = pending,
                    "consent topic did not catch up in time; applying events with the consent read so far"
                );
                return Ok(());
            }
            if let Some(result) = self.consumer.poll(CATCH_UP_POLL) {
                handle(result, batch, &mut reached_end);
            }
        }
    }

    /// Applies the consent records already fetched, without waiting.
    pub fn drain(&mut self, batch: &mut Batch<'_>) {
        let mut reached_end = HashSet::new();
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            handle(result, batch, &mut reached_end);
        }
    }
}

/// Applies a consent record, or notes that a partition reached its end.
fn handle(result: KafkaResult<BorrowedMessage<'_>>, batch: &mut Batch<'_>, reached_end: &mut HashSet<i32>) {
    match result {
        Ok(message) => {
            reached_end.remove(&message.partition());
            batch.apply(InputKind::Consent, &message);
        }
        Err(KafkaError::PartitionEOF(partition)) => {
            reached_end.insert(partition);
        }
        Err(error) => tracing::warn!(%error, "consent consumer error"),
    }
}
