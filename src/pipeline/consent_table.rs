//! The consent topic read as a table: every instance reads all of it from the
//! beginning (it is compacted), so the consent in force is known for every
//! user before any event is applied, also right after a restart. Before each
//! batch of events the table catches up to the topic's end as it was then, so
//! a choice recorded before an event was produced is in force when the event
//! is applied (CONTRACT §4).

use super::clients::TableContext;
use super::{Batch, PipelineError};
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

/// Progress through the consent topic.
pub struct ConsentTable {
    topic: String,
    partitions: i32,
}

impl ConsentTable {
    /// Assigns every partition of `topic` from the beginning.
    pub fn assign(consumer: &BaseConsumer<TableContext>, topic: &str, partitions: i32) -> Result<Self, PipelineError> {
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|source| PipelineError::Kafka { context: "build the consent assignment", source })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| PipelineError::Kafka { context: "assign the consent topic", source })?;
        Ok(Self { topic: topic.to_owned(), partitions })
    }

    /// Applies consent records until every partition reached the end it had
    /// when this call started, or `timeout` passed (logged as degraded).
    pub fn catch_up(
        &mut self,
        consumer: &BaseConsumer<TableContext>,
        watermarks: &BaseConsumer<TableContext>,
        batch: &mut Batch<'_>,
        timeout: Duration,
    ) -> Result<(), PipelineError> {
        let mut targets = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            let (_, high) = watermarks
                .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                .map_err(|source| PipelineError::Kafka { context: "read consent watermarks", source })?;
            targets.push((partition, high));
        }
        let deadline = Instant::now() + timeout;
        let mut reached_end = HashSet::new();
        loop {
            // Apply what is already fetched; positions are checked when that
            // runs dry, or every few thousand records.
            for _ in 0..POSITION_CHECK_EVERY {
                match consumer.poll(Duration::ZERO) {
                    Some(result) => handle(result, batch, &mut reached_end),
                    None => break,
                }
            }
            let positions = consumer
                .position()
                .map_err(|source| PipelineError::Kafka { context: "read consent positions", source })?;
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
            if let Some(result) = consumer.poll(CATCH_UP_POLL) {
                handle(result, batch, &mut reached_end);
            }
        }
    }

    /// Applies the consent records already fetched, without waiting.
    pub fn drain(&mut self, consumer: &BaseConsumer<TableContext>, batch: &mut Batch<'_>) -> Result<(), PipelineError> {
        let mut reached_end = HashSet::new();
        while let Some(result) = consumer.poll(Duration::ZERO) {
            handle(result, batch, &mut reached_end);
        }
        Ok(())
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
