//! The consent topic read as a table: every instance reads all of it from the
//! beginning (it is compacted), so the consent in force is known for every
//! user before any event is applied, also right after a restart. Before each
//! batch of events the table catches up to the topic's end as it was then, so
//! a choice recorded before an event was produced is in force when the event
//! is applied (CONTRACT §4).

use super::{Batch, PipelineError};
use crate::model::InputKind;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while catching up.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// Progress through the consent topic.
pub struct ConsentTable {
    topic: String,
    partitions: i32,
}

impl ConsentTable {
    /// Assigns every partition of `topic` from the beginning.
    pub fn assign(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<Self, PipelineError> {
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
        consumer: &BaseConsumer,
        batch: &mut Batch<'_>,
        timeout: Duration,
    ) -> Result<(), PipelineError> {
        let mut targets = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            let (_, high) = consumer
                .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                .map_err(|source| PipelineError::Kafka { context: "read consent watermarks", source })?;
            targets.push((partition, high));
        }
        let deadline = Instant::now() + timeout;
        let mut reached_end = HashSet::new();
        loop {
            let positions = consumer
                .position()
                .map_err(|source| PipelineError::Kafka { context: "read consent positions", source })?;
            let pending = targets.iter().filter(|(partition, high)| {
                let position = positions
                    .find_partition(&self.topic, *partition)
                    .and_then(|element| element.offset().to_raw())
                    .unwrap_or(0);
                position < *high && !reached_end.contains(partition)
            });
            let pending = pending.count();
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
            match consumer.poll(CATCH_UP_POLL) {
                Some(Ok(message)) => {
                    reached_end.remove(&message.partition());
                    batch.apply(InputKind::Consent, &message);
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    reached_end.insert(partition);
                }
                Some(Err(error)) => tracing::warn!(%error, "consent consumer error"),
                None => {}
            }
        }
    }

    /// Applies the consent records already fetched, without waiting.
    pub fn drain(&mut self, consumer: &BaseConsumer, batch: &mut Batch<'_>) -> Result<(), PipelineError> {
        while let Some(result) = consumer.poll(Duration::ZERO) {
            match result {
                Ok(message) => batch.apply(InputKind::Consent, &message),
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(error) => tracing::warn!(%error, "consent consumer error"),
            }
        }
        Ok(())
    }
}
