//! Topics read as tables, outside the consumer group, from the beginning to
//! their end: the consent topic (every instance reads all of it, so the
//! consent in force is known for every user before any event is applied, also
//! right after a restart), and the changelog partitions an instance restores
//! when it is assigned their event partitions.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use crate::state::Partition;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Records applied between two position checks while catching up.
const POSITION_CHECK_EVERY: usize = 4_096;
/// Poll interval while catching up.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// The context of a table's clients: errors are logged as degraded, the
/// expected end of a partition not at all.
pub struct TableContext;

impl ClientContext for TableContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        log_client_error(error);
    }
}

impl ConsumerContext for TableContext {}

/// A reader of some partitions of one topic.
pub struct Table {
    topic: String,
    /// The partitions read.
    partitions: Vec<Partition>,
    /// Reads the assigned partitions, outside the consumer group.
    consumer: BaseConsumer<TableContext>,
    /// Asks for the partitions' end offsets (last stable offsets). A client
    /// of its own: on `consumer` the request would queue behind its
    /// long-polling fetches.
    watermarks: Arc<BaseConsumer<TableContext>>,
    /// Asks for the partitions' high watermarks, open transactions included.
    high_watermarks: BaseConsumer<TableContext>,
    /// Asks `watermarks` for the ends while the caller goes on.
    ends: Ends,
}

/// The answer to an ask for the stable ends: its number, and the ends.
type Answer = (u64, Result<Vec<(i32, i64)>, KafkaError>);

/// Asks for a table's stable ends on a thread of its own, so that the
/// round trip overlaps with what the caller does meanwhile (the batch loop:
/// its pause for more records). Asks made while one is answered are
/// answered once, by one request made after the newest of them.
struct Ends {
    asks: Sender<(u64, Vec<Partition>)>,
    answers: Receiver<Answer>,
    /// The number of the newest ask.
    asked: u64,
    /// The number of the newest ask whose answer was taken.
    answered: u64,
}

impl Ends {
    fn start(topic: &str, watermarks: Arc<BaseConsumer<TableContext>>) -> Result<Self, PipelineError> {
        let (asks, asked) = mpsc::channel::<(u64, Vec<Partition>)>();
        let (answer, answers) = mpsc::channel();
        let topic = topic.to_owned();
        std::thread::Builder::new()
            .name("table-ends".to_owned())
            .spawn(move || {
                while let Ok(mut ask) = asked.recv() {
                    while let Ok(newer) = asked.try_recv() {
                        ask = newer;
                    }
                    let (number, partitions) = ask;
                    if answer.send((number, stable_ends(&watermarks, &topic, &partitions))).is_err() {
                        return;
                    }
                }
            })
            .map_err(PipelineError::Thread)?;
        Ok(Self { asks, answers, asked: 0, answered: 0 })
    }

    /// Asks for the stable ends of `partitions`, as of now.
    fn ask(&mut self, partitions: &[Partition]) -> Result<(), PipelineError> {
        self.asked += 1;
        self.asks.send((self.asked, partitions.to_vec())).map_err(|_| PipelineError::EndsThreadGone)
    }

    /// The answer to the newest ask (asking now if its answer was taken).
    fn answer(&mut self, partitions: &[Partition]) -> Result<Result<Vec<(i32, i64)>, KafkaError>, PipelineError> {
        if self.answered == self.asked {
            self.ask(partitions)?;
        }
        self.answered = self.asked;
        // Every ask is answered within WATERMARK_TIMEOUT, when its request gives up.
        loop {
            let (number, ends) = self.answers.recv().map_err(|_| PipelineError::EndsThreadGone)?;
            if number == self.asked {
                return Ok(ends);
            }
        }
    }
}

/// How far a catch-up got.
#[derive(Debug, PartialEq, Eq)]
pub enum CaughtUp {
    /// Every partition reached the end it had when the catch-up started.
    Complete,
    /// The timeout passed (or the ends could not be read); this many partitions were behind.
    Behind(usize),
}

impl Table {
    /// A reader of `topic` with nothing assigned yet.
    pub fn open(config: &Config, topic: &str, role: &str) -> Result<Self, PipelineError> {
        let consumer: BaseConsumer<TableContext> = settings::table_consumer(config, role)
            .create_with_context(TableContext)
            .map_err(kafka("create a table consumer"))?;
        let watermarks: Arc<BaseConsumer<TableContext>> = Arc::new(
            settings::watermark_client(config, true)
                .create_with_context(TableContext)
                .map_err(kafka("create a watermark client"))?,
        );
        let high_watermarks = settings::watermark_client(config, false)
            .create_with_context(TableContext)
            .map_err(kafka("create a watermark client"))?;
        let ends = Ends::start(topic, Arc::clone(&watermarks))?;
        Ok(Self { topic: topic.to_owned(), partitions: Vec::new(), consumer, watermarks, high_watermarks, ends })
    }

    /// Reads `partitions` from their beginning (replacing what was read before).
    ///
    /// The consumer is told about the topic first: assigned partitions of a
    /// topic it has no metadata for wait for librdkafka's periodic scan of
    /// unknown topics, and the first record arrived up to a second after the
    /// assignment (measured, BENCHMARKS.md "Restore speed"). If the request
    /// fails, the scan still finds the topic, later.
    pub fn assign(&mut self, partitions: &[Partition]) -> Result<(), PipelineError> {
        if !partitions.is_empty() {
            if let Err(error) = self.consumer.fetch_metadata(Some(&self.topic), WATERMARK_TIMEOUT) {
                tracing::warn!(topic = %self.topic, %error, "cannot read a table topic's metadata");
            }
        }
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            assignment
                .add_partition_offset(&self.topic, partition.0, Offset::Beginning)
                .map_err(kafka("build a table assignment"))?;
        }
        self.consumer.assign(&assignment).map_err(kafka("assign table partitions"))?;
        self.partitions = partitions.to_vec();
        Ok(())
    }

    /// The high watermarks of `partitions` now (open transactions included),
    /// or `None` if they cannot be read: whether anybody wrote them.
    pub fn end_offsets(&self, partitions: &[Partition]) -> Option<Vec<i64>> {
        partitions
            .iter()
            .map(|partition| {
                self.high_watermarks
                    .fetch_watermarks(&self.topic, partition.0, WATERMARK_TIMEOUT)
                    .ok()
                    .map(|(_, high)| high)
            })
            .collect()
    }

    /// Waits until no transaction is open on `partitions` (their
    /// last stable offset is their high watermark), up to `timeout`; false if
    /// one still is. A transaction the previous owner committed just before
    /// it let go may still lack its commit markers: until they are written,
    /// its records would be missing from what is read.
    pub fn wait_until_settled(&self, partitions: &[Partition], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let settled = partitions.iter().all(|partition| {
                let stable = self.watermarks.fetch_watermarks(&self.topic, partition.0, WATERMARK_TIMEOUT);
                let high = self.high_watermarks.fetch_watermarks(&self.topic, partition.0, WATERMARK_TIMEOUT);
                matches!((stable, high), (Ok((_, stable)), Ok((_, high))) if stable >= high)
            });
            if settled {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(CATCH_UP_POLL);
        }
    }

    /// Hands every record to `handle` until each assigned partition reached
    /// the end it had when this call started, or `timeout` passed.
    pub fn catch_up(
        &mut self,
        timeout: Duration,
        handle: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<CaughtUp, PipelineError> {
        self.ask_ends()?;
        self.catch_up_to_asked(timeout, handle)
    }

    /// Asks for the assigned partitions' ends as of now, without waiting for
    /// the answer: [`Table::catch_up_to_asked`] reads up to them.
    pub fn ask_ends(&mut self) -> Result<(), PipelineError> {
        self.ends.ask(&self.partitions)
    }

    /// Hands every record to `handle` until each assigned partition reached
    /// the end it had when [`Table::ask_ends`] was last called (or, if a
    /// catch-up read up to those ends already, the end it has now), or
    /// `timeout` passed.
    pub fn catch_up_to_asked(
        &mut self,
        timeout: Duration,
        mut handle: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<CaughtUp, PipelineError> {
        let targets = match self.ends.answer(&self.partitions)? {
            Ok(targets) => targets,
            // The cluster is unreachable: go on with what is read (the caller decides).
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "cannot read the end of a table topic");
                return Ok(CaughtUp::Behind(self.partitions.len()));
            }
        };
        let deadline = Instant::now() + timeout;
        let mut reached_end = HashSet::new();
        loop {
            // Apply what is already fetched; positions are checked when that
            // runs dry, or every few thousand records.
            for _ in 0..POSITION_CHECK_EVERY {
                match self.consumer.poll(Duration::ZERO) {
                    Some(result) => self.handle(result, &mut reached_end, &mut handle),
                    None => break,
                }
            }
            let assigned = self.partitions.iter().map(|partition| (self.topic.as_str(), *partition));
            let positions = super::positions(self.consumer.client(), assigned)?;
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
                return Ok(CaughtUp::Complete);
            }
            if Instant::now() >= deadline {
                return Ok(CaughtUp::Behind(pending));
            }
            if let Some(result) = self.consumer.poll(CATCH_UP_POLL) {
                self.handle(result, &mut reached_end, &mut handle);
            }
        }
    }

    /// Hands the records already fetched to `handle`, without waiting.
    pub fn drain(&mut self, mut handle: impl FnMut(&BorrowedMessage<'_>)) {
        let mut reached_end = HashSet::new();
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            self.handle(result, &mut reached_end, &mut handle);
        }
    }

    /// Hands a record to `handle`, or notes that a partition reached its end.
    fn handle(
        &self,
        result: Result<BorrowedMessage<'_>, KafkaError>,
        reached_end: &mut HashSet<i32>,
        handle: &mut impl FnMut(&BorrowedMessage<'_>),
    ) {
        match result {
            Ok(message) => {
                reached_end.remove(&rdkafka::message::Message::partition(&message));
                handle(&message);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                reached_end.insert(partition);
            }
            Err(error) => tracing::warn!(topic = %self.topic, %error, "table consumer error"),
        }
    }
}

/// The last stable offset of each of `partitions` of `topic` that has any
/// records: one request for all of them (a ListOffsets for the latest
/// offset, read_committed), where a watermark query per partition cost a
/// round trip each, every batch.
fn stable_ends(
    watermarks: &BaseConsumer<TableContext>,
    topic: &str,
    partitions: &[Partition],
) -> Result<Vec<(i32, i64)>, KafkaError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut latest = TopicPartitionList::new();
    for partition in partitions {
        latest.add_partition_offset(topic, partition.0, Offset::End)?;
    }
    let ends = watermarks.offsets_for_times(latest, WATERMARK_TIMEOUT)?;
    let mut targets = Vec::with_capacity(partitions.len());
    for element in ends.elements() {
        element.error()?;
        // An empty partition has nothing to read; a compacted one whose
        // records were all removed reports its end when it reaches it.
        if let Some(end) = element.offset().to_raw().filter(|end| *end > 0) {
            targets.push((element.partition(), end));
        }
    }
    Ok(targets)
}
