//! The delivery guarantee, as one type with two implementations, so the
//! batch loop reads the same either way.
//!
//! Exactly once (the default): each batch's outputs, dead letters, changelog
//! records and input offsets are one Kafka transaction. At least once: a
//! batch's offsets are committed once every record it produced is
//! acknowledged; the next batch is processed meanwhile.

use super::ingest::Ingest;
use super::publish::{requires_abort, Publisher, Records};
use super::PipelineError;
use crate::config::Guarantee;
use crate::control::now_ms;
use crate::erasure::Erasures;
use rdkafka::consumer::CommitMode;
use rdkafka::TopicPartitionList;

/// A batch ready to be delivered.
pub struct Batch<'a> {
    /// What it publishes.
    pub records: Records<'a>,
    /// The input offsets after its records.
    pub offsets: TopicPartitionList,
    /// Users whose erasure completes with its tombstones.
    pub erased: Vec<String>,
    /// No record was read and nothing changed: there is nothing to write.
    pub idle: bool,
}

/// What became of a delivered batch.
#[derive(Debug, PartialEq)]
pub enum Delivered {
    /// Committed, or (at least once) sent and committed once acknowledged.
    Done,
    /// The transaction had to be aborted: nothing of the batch is visible,
    /// and the pipeline must rewind to the last commit.
    Aborted,
}

/// How a batch's records and input offsets reach Kafka.
pub trait Delivery {
    /// Delivers `batch`.
    fn deliver(&mut self, ingest: &Ingest, batch: Batch<'_>) -> Result<Delivered, PipelineError>;

    /// Before the partitions change: whatever is delivered is committed.
    fn settle(&mut self, ingest: &Ingest) -> Result<(), PipelineError>;

    /// At shutdown: everything delivered is committed.
    fn finish(&mut self, ingest: &Ingest) -> Result<(), PipelineError>;
}

/// The delivery of `guarantee`, publishing through `publisher`.
pub fn delivery<'a>(guarantee: Guarantee, publisher: Publisher, erasures: &'a Erasures) -> Box<dyn Delivery + 'a> {
    match guarantee {
        Guarantee::ExactlyOnce => Box::new(ExactlyOnce { publisher, erasures }),
        Guarantee::AtLeastOnce => Box::new(AtLeastOnce { publisher, erasures, in_flight: None }),
    }
}

/// Each batch is one transaction.
struct ExactlyOnce<'a> {
    publisher: Publisher,
    erasures: &'a Erasures,
}

impl Delivery for ExactlyOnce<'_> {
    fn deliver(&mut self, ingest: &Ingest, batch: Batch<'_>) -> Result<Delivered, PipelineError> {
        let records = &batch.records;
        if batch.idle {
            // No transaction for a batch without records.
            return Ok(Delivered::Done);
        }
        let publisher = &self.publisher;
        publisher.begin_transaction()?;
        let committed = publisher.send(records).and_then(|mark| {
            publisher.wait_until_reported(mark);
            publisher.commit_transaction(&batch.offsets, || ingest.group_metadata())
        });
        match committed {
            Ok(()) => {
                let now = now_ms();
                for user_id in &batch.erased {
                    self.erasures.committed(user_id, now);
                }
                Ok(Delivered::Done)
            }
            Err(error) if requires_abort(&error) => {
                tracing::warn!(%error, "transaction aborted; rewinding to the last commit");
                publisher.abort_transaction()?;
                Ok(Delivered::Aborted)
            }
            Err(error) => Err(error),
        }
    }

    fn settle(&mut self, _ingest: &Ingest) -> Result<(), PipelineError> {
        // Every batch was committed when it was delivered.
        Ok(())
    }

    fn finish(&mut self, _ingest: &Ingest) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// A batch's offsets are committed once its records are acknowledged.
struct AtLeastOnce<'a> {
    publisher: Publisher,
    erasures: &'a Erasures,
    /// The batch before this one, whose records are in flight while this
    /// one is processed.
    in_flight: Option<InFlight>,
}

/// An at-least-once batch whose records are sent but maybe not yet acknowledged.
struct InFlight {
    /// Acknowledgement mark of its last record.
    mark: u64,
    /// Its input offsets, committed once it is acknowledged.
    offsets: TopicPartitionList,
    /// Users whose erasure completes with its tombstones.
    erased: Vec<String>,
}

impl AtLeastOnce<'_> {
    /// Waits until every record of `batch` is acknowledged and completes
    /// the erasure receipts it carried.
    fn acknowledged(&self, batch: &InFlight) -> Result<(), PipelineError> {
        self.publisher.wait_until_acknowledged(batch.mark)?;
        let now = now_ms();
        for user_id in &batch.erased {
            self.erasures.committed(user_id, now);
        }
        Ok(())
    }
}

impl Delivery for AtLeastOnce<'_> {
    fn deliver(&mut self, ingest: &Ingest, batch: Batch<'_>) -> Result<Delivered, PipelineError> {
        let mark = self.publisher.send(&batch.records)?;
        let sent = InFlight { mark, offsets: batch.offsets, erased: batch.erased };
        if let Some(previous) = self.in_flight.replace(sent) {
            self.acknowledged(&previous)?;
            ingest.commit(&previous.offsets, CommitMode::Async)?;
        }
        Ok(Delivered::Done)
    }

    fn settle(&mut self, ingest: &Ingest) -> Result<(), PipelineError> {
        if let Some(previous) = self.in_flight.take() {
            // What is acknowledged is committed; the rest repeats.
            self.acknowledged(&previous)?;
            if let Err(error) = ingest.commit(&previous.offsets, CommitMode::Sync) {
                tracing::warn!(%error, "offsets of the last batch not committed before the rebalance");
            }
        }
        Ok(())
    }

    fn finish(&mut self, ingest: &Ingest) -> Result<(), PipelineError> {
        if let Some(last) = self.in_flight.take() {
            self.acknowledged(&last)?;
            ingest.commit(&last.offsets, CommitMode::Sync)?;
        }
        Ok(())
    }
}
