//! Topics read as tables, outside the consumer group, from the beginning to
//! their end: the consent topic (every instance reads all of it, so the
//! consent in force is known for every user before any event is applied, also
//! right after a restart), and the changelog partitions an instance restores
//! when it is assigned their event partitions.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use crate::state::Partition;
use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::marker::PhantomData;
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

    /// Asks for the assigned partitions' ends as of now, without waiting for
    /// the answer: [`Table::catch_up_to_asked`] reads up to them.
    pub fn ask_ends(&mut self) -> Result<(), PipelineError> {
        self.ends.ask(&self.partitions)
    }

    /// Hands every record to `handle` until each assigned partition reached
    /// the end it had when [`Table::ask_ends`] was last called (or, if a
    /// catch-up read up to those ends already, the end it has now), or
    /// `timeout` passed. What is fetched is handed over a few thousand
    /// records at a time; a partition has reached its end when its position
    /// is there, or when librdkafka found it ended there (its position stays
    /// behind when the last offsets hold no record: compacted away, or a
    /// transaction's marker).
    pub fn catch_up_to_asked(
        &mut self,
        timeout: Duration,
        mut handle: impl FnMut(&Record<'_>),
    ) -> Result<CaughtUp, PipelineError> {
        // The cluster is unreachable: go on with what is read (the caller decides).
        let Some(targets) = self.asked_ends()? else { return Ok(CaughtUp::Behind(self.partitions.len())) };
        let deadline = Instant::now() + timeout;
        let mut fetched = Fetched::of(&self.consumer, &self.topic);
        let mut ended = HashSet::new();
        let mut wait = Duration::ZERO;
        loop {
            fetched.read(POSITION_CHECK_EVERY, wait, |fetch| match fetch {
                Fetch::Record(record) => handle(&record),
                // An end found before the target was written is not the
                // target's: a fetch made before a transaction's markers, or
                // before records written since, found it (and queued it).
                Fetch::End { partition, offset } => {
                    if targets.iter().any(|&(target, end)| target == partition && offset >= end) {
                        ended.insert(partition);
                    }
                }
            });
            let assigned = self.partitions.iter().map(|partition| (self.topic.as_str(), *partition));
            let positions = super::positions(self.consumer.client(), assigned)?;
            let pending = targets
                .iter()
                .filter(|(partition, high)| {
                    let position = positions
                        .find_partition(&self.topic, *partition)
                        .and_then(|element| element.offset().to_raw())
                        .unwrap_or(0);
                    position < *high && !ended.contains(partition)
                })
                .count();
            if pending == 0 {
                return Ok(CaughtUp::Complete);
            }
            if Instant::now() >= deadline {
                return Ok(CaughtUp::Behind(pending));
            }
            wait = CATCH_UP_POLL;
        }
    }

    /// Hands every record to `handle` until each assigned partition reached
    /// the end it has when this call starts, or `timeout` passed. For
    /// reading a whole changelog.
    pub fn read_to_end(
        &mut self,
        timeout: Duration,
        handle: impl FnMut(&Record<'_>),
    ) -> Result<CaughtUp, PipelineError> {
        self.ask_ends()?;
        self.catch_up_to_asked(timeout, handle)
    }

    /// The ends asked for last (each assigned partition with records, and
    /// its end), or `None` if they could not be read.
    fn asked_ends(&mut self) -> Result<Option<Vec<(i32, i64)>>, PipelineError> {
        Ok(match self.ends.answer(&self.partitions)? {
            Ok(targets) => Some(targets),
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "cannot read the end of a table topic");
                None
            }
        })
    }

    /// Hands the records already fetched to `handle`, without waiting.
    pub fn drain(&mut self, mut handle: impl FnMut(&Record<'_>)) {
        Fetched::of(&self.consumer, &self.topic).read(usize::MAX, Duration::ZERO, |fetch| {
            if let Fetch::Record(record) = fetch {
                handle(&record);
            }
        });
    }
}

/// A record of a table: a Kafka message of its topic, borrowed from
/// librdkafka while it is handled.
pub struct Record<'m> {
    /// The table's topic (a table reads one).
    topic: &'m str,
    message: &'m rdsys::rd_kafka_message_t,
}

impl Message for Record<'_> {
    /// A table's records are read without their headers (nothing reads them).
    type Headers = OwnedHeaders;

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: librdkafka's key pointer is null or points to `key_len`
        // bytes, which live as long as the message this borrows.
        unsafe { bytes(self.message.key, self.message.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as for the key.
        unsafe { bytes(self.message.payload, self.message.len) }
    }

    /// A table's records are read-only.
    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        None
    }

    fn topic(&self) -> &str {
        self.topic
    }

    fn partition(&self) -> i32 {
        self.message.partition
    }

    fn offset(&self) -> i64 {
        self.message.offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is one librdkafka handed over, alive while borrowed.
        let millis = unsafe { rdsys::rd_kafka_message_timestamp(self.message, &mut kind) };
        match kind {
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(millis),
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Timestamp::LogAppendTime(millis),
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&OwnedHeaders> {
        None
    }
}

/// The `len` bytes at `pointer`, unless it is null.
///
/// # Safety
/// A non-null `pointer` must point to `len` bytes that outlive `'m`.
unsafe fn bytes<'m>(pointer: *mut std::ffi::c_void, len: usize) -> Option<&'m [u8]> {
    // SAFETY: the caller's.
    (!pointer.is_null()).then(|| unsafe { std::slice::from_raw_parts(pointer.cast::<u8>(), len) })
}

/// What a table's consumer hands over (besides errors).
enum Fetch<'m> {
    /// A record.
    Record(Record<'m>),
    /// A fetch found `partition` ended at `offset` (its last stable offset
    /// then): librdkafka's end-of-partition event, which it sends once per end.
    End { partition: i32, offset: i64 },
}

/// What a message taken from the queue holds: a record of `topic`, a
/// partition's end, or an error of the consumer.
///
/// # Safety
/// `message` must be a message librdkafka handed over and not yet destroyed.
unsafe fn fetch<'m>(message: &'m rdsys::rd_kafka_message_t, topic: &'m str) -> Result<Fetch<'m>, KafkaError> {
    match message.err {
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(Fetch::Record(Record { topic, message })),
        // librdkafka puts the offset the fetch found the end at in the event.
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
            Ok(Fetch::End { partition: message.partition, offset: message.offset })
        }
        error => Err(KafkaError::MessageConsumption(error.into())),
    }
}

/// The records a table consumer fetched, taken from librdkafka's queue in
/// runs (`rd_kafka_consume_batch_queue`, which rdkafka does not offer).
/// rdkafka's `poll` asks for one record at a time, wrapping each in an
/// event it allocates a handle for (reading a changelog took about a
/// quarter longer that way: BENCHMARKS.md, "… a restore that takes its
/// records in runs"), and its end-of-partition error leaves out the
/// offset the end was found at.
struct Fetched<'c> {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// The consumer's topic.
    topic: &'c str,
    /// Room for the pointers of a run of [`Fetched::RUN`] messages.
    run: Vec<*mut rdsys::rd_kafka_message_t>,
    /// The queue is the consumer's, and must not outlive it.
    consumer: PhantomData<&'c BaseConsumer<TableContext>>,
}

impl<'c> Fetched<'c> {
    /// The most messages taken in one call.
    const RUN: usize = 1_024;

    /// The queue `consumer`'s fetched records of `topic` arrive in.
    fn of(consumer: &'c BaseConsumer<TableContext>, topic: &'c str) -> Self {
        // SAFETY: the client pointer is valid for the consumer's lifetime,
        // which bounds this one's; the handle is released in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        Self { queue, topic, run: vec![std::ptr::null_mut(); Self::RUN], consumer: PhantomData }
    }

    /// Hands up to about `most` records fetched (or a partition's end) to
    /// `each`, waiting up to `wait` for the first; logs the consumer's errors.
    fn read(&mut self, most: usize, wait: Duration, mut each: impl FnMut(Fetch<'_>)) {
        if self.queue.is_null() {
            return;
        }
        let mut wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        let mut read = 0;
        while read < most {
            let run = &mut self.run;
            // SAFETY: the queue handle is valid (see `of`), and `run` has
            // room for its length of pointers.
            let taken =
                unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue, wait_ms, run.as_mut_ptr(), run.len()) };
            let Ok(taken @ 1..) = usize::try_from(taken) else { return };
            wait_ms = 0;
            read += taken;
            for &message in &run[..taken] {
                // SAFETY: librdkafka handed over `taken` valid messages,
                // each destroyed once, right after it is read; what is
                // borrowed from it does not outlive it.
                unsafe {
                    match fetch(&*message, self.topic) {
                        Ok(fetched) => each(fetched),
                        Err(error) => tracing::warn!(topic = self.topic, %error, "table consumer error"),
                    }
                    rdsys::rd_kafka_message_destroy(message);
                }
            }
        }
    }
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        if !self.queue.is_null() {
            // SAFETY: the handle came from `rd_kafka_queue_get_consumer` and is released once.
            unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as librdkafka hands one over: `key` and `value` borrowed.
    fn message(err: rdsys::rd_kafka_resp_err_t, key: Option<&[u8]>, value: Option<&[u8]>) -> rdsys::rd_kafka_message_t {
        let pointer =
            |bytes: Option<&[u8]>| bytes.map_or(std::ptr::null_mut(), |bytes| bytes.as_ptr().cast_mut().cast());
        rdsys::rd_kafka_message_t {
            err,
            rkt: std::ptr::null_mut(),
            partition: 3,
            payload: pointer(value),
            len: value.map_or(0, <[u8]>::len),
            key: pointer(key),
            key_len: key.map_or(0, <[u8]>::len),
            offset: 42,
            _private: std::ptr::null_mut(),
        }
    }

    /// What a test sees of a message taken from the queue.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Record { topic: String, partition: i32, offset: i64, key: Option<Vec<u8>>, value: Option<Vec<u8>> },
        End { partition: i32, offset: i64 },
        Failed(KafkaError),
    }

    #[test]
    fn a_message_taken_from_the_queue_is_a_record_of_the_table_or_a_partitions_end_at_its_offset_or_an_error() {
        use rdsys::rd_kafka_resp_err_t as Code;
        let read = |message: &rdsys::rd_kafka_message_t| {
            // SAFETY: the message's pointers are the slices below, alive for the call.
            match unsafe { fetch(message, "consent") } {
                Ok(Fetch::Record(record)) => Seen::Record {
                    topic: record.topic().to_owned(),
                    partition: record.partition(),
                    offset: record.offset(),
                    key: record.key().map(<[u8]>::to_vec),
                    value: record.payload().map(<[u8]>::to_vec),
                },
                Ok(Fetch::End { partition, offset }) => Seen::End { partition, offset },
                Err(error) => Seen::Failed(error),
            }
        };
        let record = |key: Option<&[u8]>, value: Option<&[u8]>| Seen::Record {
            topic: "consent".to_owned(),
            partition: 3,
            offset: 42,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
        };
        let full = message(Code::RD_KAFKA_RESP_ERR_NO_ERROR, Some(b"user-1"), Some(&[2, 0, 255]));
        assert_eq!(read(&full), record(Some(b"user-1"), Some(&[2, 0, 255])));
        // A tombstone has no value; an empty value is not a tombstone.
        let tombstone = message(Code::RD_KAFKA_RESP_ERR_NO_ERROR, Some(b"user-1"), None);
        assert_eq!(read(&tombstone), record(Some(b"user-1"), None));
        let empty = message(Code::RD_KAFKA_RESP_ERR_NO_ERROR, None, Some(&[]));
        assert_eq!(read(&empty), record(None, Some(&[])));
        // The end carries the offset the fetch found it at.
        let end = message(Code::RD_KAFKA_RESP_ERR__PARTITION_EOF, None, None);
        assert_eq!(read(&end), Seen::End { partition: 3, offset: 42 });
        let failed = message(Code::RD_KAFKA_RESP_ERR__TRANSPORT, None, None);
        assert_eq!(
            read(&failed),
            Seen::Failed(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure))
        );
    }
}
