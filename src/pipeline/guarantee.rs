//! The delivery guarantee, as one type with two implementations, so the
//! batch loop reads the same either way.
//!
//! Exactly once (the default): each batch's outputs, dead letters, changelog
//! records and input offsets are one Kafka transaction. At least once: a
//! batch's offsets are committed once every record it produced is
//! acknowledged; the next batches are processed meanwhile.

use super::ingest::Ingest;
use super::publish::{requires_abort, Publisher, Records};
use super::{kafka, PipelineError};
use crate::config::{Config, Guarantee};
use crate::control::now_ms;
use crate::erasure::Erasures;
use rdkafka::consumer::CommitMode;
use rdkafka::TopicPartitionList;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The delivery of `config`'s guarantee, publishing through `publisher`.
pub fn delivery<'a>(config: &Config, publisher: Publisher, erasures: &'a Erasures) -> Box<dyn Delivery + 'a> {
    match config.guarantee {
        Guarantee::ExactlyOnce => Box::new(ExactlyOnce { publisher, erasures }),
        Guarantee::AtLeastOnce => Box::new(AtLeastOnce {
            publisher,
            erasures,
            in_flight: VecDeque::new(),
            acknowledged: TopicPartitionList::new(),
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            committed_at: Instant::now(),
        }),
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
        let committed = publisher.send(records).and_then(|_| {
            publisher.flush();
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

/// A batch's offsets are committed once its records are acknowledged, at
/// most once per commit interval, as a consumer's automatic commits are.
/// The loop does not wait for the acknowledgements: the next batches are
/// polled and processed meanwhile, up to [`MOST_IN_FLIGHT`] of them.
struct AtLeastOnce<'a> {
    publisher: Publisher,
    erasures: &'a Erasures,
    /// Batches sent and not yet known to be acknowledged, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The input offsets of acknowledged batches, not yet committed.
    acknowledged: TopicPartitionList,
    /// How often offsets are committed at most.
    commit_interval: Duration,
    /// When offsets were last committed.
    committed_at: Instant,
}

/// How many at-least-once batches may be sent and not yet acknowledged
/// before the loop waits for the oldest.
const MOST_IN_FLIGHT: usize = 8;

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
    /// Takes the batches in flight whose records are all acknowledged
    /// (every one, after waiting for them, when `wait`): their offsets are
    /// to be committed, and the erasure receipts they carried complete.
    fn take_acknowledged(&mut self, wait: bool) -> Result<(), PipelineError> {
        if let Some(last) = self.in_flight.back().filter(|_| wait) {
            self.publisher.wait_until_acknowledged(last.mark)?;
        }
        let now = now_ms();
        while let Some(oldest) = self.in_flight.front() {
            if !self.publisher.acknowledged(oldest.mark)? {
                break;
            }
            let Some(done) = self.in_flight.pop_front() else { break };
            for element in done.offsets.elements() {
                let (topic, partition, offset) = (element.topic(), element.partition(), element.offset());
                // A later batch's offset of a partition supersedes an earlier one's.
                let noted = match self.acknowledged.find_partition(topic, partition) {
                    Some(_) => self.acknowledged.set_partition_offset(topic, partition, offset),
                    None => self.acknowledged.add_partition_offset(topic, partition, offset),
                };
                noted.map_err(kafka("note the offsets to commit"))?;
            }
            for user_id in &done.erased {
                self.erasures.committed(user_id, now);
            }
        }
        Ok(())
    }

    /// Commits the acknowledged batches' offsets, if there are any (the
    /// interval runs from the last commit that committed something).
    fn commit(&mut self, ingest: &Ingest, mode: CommitMode) -> Result<(), PipelineError> {
        if self.acknowledged.count() == 0 {
            return Ok(());
        }
        let offsets = std::mem::replace(&mut self.acknowledged, TopicPartitionList::new());
        self.committed_at = Instant::now();
        ingest.commit(&offsets, mode)
    }
}

impl Delivery for AtLeastOnce<'_> {
    fn deliver(&mut self, ingest: &Ingest, batch: Batch<'_>) -> Result<Delivered, PipelineError> {
        if !batch.idle {
            let mark = self.publisher.send(&batch.records)?;
            self.in_flight.push_back(InFlight { mark, offsets: batch.offsets, erased: batch.erased });
        }
        if let Some(oldest) = self.in_flight.front().filter(|_| self.in_flight.len() > MOST_IN_FLIGHT) {
            self.publisher.wait_until_acknowledged(oldest.mark)?;
        }
        self.take_acknowledged(false)?;
        if self.committed_at.elapsed() >= self.commit_interval {
            self.commit(ingest, CommitMode::Async)?;
        }
        Ok(Delivered::Done)
    }

    fn settle(&mut self, ingest: &Ingest) -> Result<(), PipelineError> {
        // What is acknowledged is committed; the rest repeats.
        self.take_acknowledged(true)?;
        if let Err(error) = self.commit(ingest, CommitMode::Sync) {
            tracing::warn!(%error, "offsets of the last batches not committed before the rebalance");
        }
        Ok(())
    }

    fn finish(&mut self, ingest: &Ingest) -> Result<(), PipelineError> {
        self.take_acknowledged(true)?;
        self.commit(ingest, CommitMode::Sync)
    }
}
