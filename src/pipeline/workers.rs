//! Workers: a batch's decoding, its apply step and its time-driven step
//! spread over `pipeline.workers` threads. Decoding is pure: any record on
//! any thread. Applying takes each partition's work on one thread at a
//! time. A user's records are all on one partition (the input topics are
//! co-partitioned by user id), so applying partitions side by side keeps
//! every user's records in their order. The core's state is sharded by
//! partition: threads on different partitions share only the consent table,
//! which the pipeline thread alone writes, and never during these steps
//! (consent records are applied before them, not beside them). Restoring
//! partitions from the changelog is the exception: each partition's task
//! writes the consent entries of its own users only (a reconciliation), so
//! no entry has two writers.
//!
//! This is the one place where the work is split and merged. Results come
//! back in the order of what was given, whichever thread computed them, so
//! a batch's outputs are the same and in the same order with one worker or
//! several. One worker is the pipeline thread itself: no pool, no handover;
//! so is a batch of fewer than [`POOL_MIN_RECORDS`] records, and the
//! time-driven step of at most one partition with a timer due.
//! No Kafka and no clock (`now_ms` is an argument): the benchmark runs this
//! same code.
//!
//! The threads are a pool kept for the life of the pipeline (rayon's, with
//! work stealing), not threads started per batch: a thread started per batch
//! begins each batch with its allocator cache empty, and in the benchmark
//! that cost more than the second thread gained (BENCHMARKS.md).

use crate::model::InputKind;
use crate::processor::{Lookahead, Output, Processed, Processor, RestoredPartition, Source};
use crate::state::restore::NewestValues;
use crate::state::Partition;
use crate::time::EventTime;
use crate::validate::{Input, Rejection};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A record whose turn has come: where it was read (its partition and that
/// partition's watermark) and what it decoded to, or why it is bad.
pub type Record = (Source, Result<Input, Rejection>);

/// Fewer records than this are applied on the caller's thread. Handing a
/// few records to the pool costs more than it saves: the threads are woken,
/// and they spin for more work before they sleep again, on the cores the
/// broker and the clients need (at 2,000 events/s a batch holds a handful
/// of records, and the pool's spinning was a fifth of tactful's CPU).
/// At ~2 µs a record, 256 records are half a millisecond of work.
const POOL_MIN_RECORDS: usize = 256;

/// Items handed from one stage of [`Workers::pipelined`] to the next that
/// may wait at once: enough for the stages' paces to even out, few enough
/// to bound what is held.
const PIPELINE_DEPTH: usize = 4;

/// The threads that apply records: none of their own for one worker (the
/// caller's thread does the work), else a pool of `workers` threads.
pub struct Workers {
    pool: Option<rayon::ThreadPool>,
}

impl Workers {
    /// `workers` threads (at least 1). A pool that cannot be started leaves
    /// the work to the caller's thread: slower, not wrong.
    pub fn new(workers: usize) -> Self {
        if workers <= 1 {
            return Self { pool: None };
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|_| "tactful-worker".to_owned())
            .build()
            .inspect_err(
                |error| tracing::warn!(%error, workers, "worker threads not started: one thread applies records"),
            )
            .ok();
        Self { pool }
    }

    /// `work` done on each of `items`, on the pool's threads when there is
    /// a pool and more than one item (each item one task, so an uneven
    /// split evens out by stealing); the results in the order of `items`.
    fn run<T: Send, R: Send>(&self, items: Vec<T>, work: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        match &self.pool {
            Some(pool) if items.len() > 1 => pool.install(|| items.into_par_iter().with_max_len(1).map(work).collect()),
            _ => items.into_iter().map(work).collect(),
        }
    }

    /// Two stages of one job side by side: `produce` runs on this thread
    /// and hands items to `consume`, which takes them in their order on a
    /// pool thread meanwhile (at most [`PIPELINE_DEPTH`] items waiting).
    /// With one worker, each item is consumed as it is handed over, on this
    /// thread. Returns what `produce` returns, once everything it handed
    /// over is consumed.
    pub fn pipelined<T: Send, R>(
        &self,
        produce: impl FnOnce(&mut dyn FnMut(T)) -> R,
        mut consume: impl FnMut(T) + Send,
    ) -> R {
        let Some(pool) = &self.pool else {
            return produce(&mut consume);
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
        pool.in_place_scope(|scope| {
            scope.spawn(move |_| receiver.into_iter().for_each(consume));
            // A send fails only once `consume` panicked: the scope raises that panic.
            let result = produce(&mut |item| sender.send(item).unwrap_or(()));
            // The consuming task ends once the channel is closed and empty.
            drop(sender);
            result
        })
    }

    /// Whether `records` records are worth handing to the pool.
    fn worth_the_pool(&self, records: usize) -> bool {
        self.pool.is_some() && records >= POOL_MIN_RECORDS
    }
}

/// A record as read, to decode: its kind, key and value.
pub type Encoded<'a> = (InputKind, Option<&'a [u8]>, Option<&'a [u8]>);

/// Decodes and validates `records` on the `workers`, a run of records per
/// thread (decoding is pure: any record on any thread); returns each
/// record's result, in the order of `records`.
pub fn decode_in_order(
    processor: &Processor,
    records: &[Encoded<'_>],
    workers: &Workers,
    now_ms: i64,
) -> Vec<Result<Input, Rejection>> {
    let decode = |&(kind, key, value): &Encoded<'_>| processor.decode(kind, key, value, now_ms);
    match &workers.pool {
        Some(pool) if workers.worth_the_pool(records.len()) => {
            // A run per thread, each result written in its place in the
            // vector returned (rayon's indexed collect): nothing is copied
            // once decoded.
            let run = records.len().div_ceil(pool.current_num_threads());
            pool.install(|| records.par_iter().with_min_len(run).map(decode).collect())
        }
        _ => records.iter().map(decode).collect(),
    }
}

/// Applies one record at processing time `now_ms` (a bad one only gets its rejection).
pub fn apply_record(processor: &Processor, (source, input): Record, now_ms: i64) -> Processed {
    match input {
        Ok(input) => processor.apply(source, input, now_ms),
        Err(rejection) => Processed::rejected(rejection),
    }
}

/// Applies `records` in their order on this thread, prefetching what each
/// reads a few records ahead (see [`Lookahead`]); returns each record's result.
fn apply_records(processor: &Processor, records: Vec<Record>, now_ms: i64) -> Vec<Processed> {
    let mut results = Vec::with_capacity(records.len());
    let mut lookahead = Lookahead::default();
    let mut records = records.into_iter();
    while let Some(record) = records.next() {
        lookahead.before_next(processor, |distance| {
            let (source, input) = records.as_slice().get(distance - 1)?;
            Some((source.partition, input.as_ref().ok()?.event_user()?))
        });
        results.push(apply_record(processor, record, now_ms));
    }
    results
}

/// Applies `records` on the `workers`, all of a partition's records on one
/// thread in their order; returns each record's result, in the order of
/// `records`.
pub fn apply_in_order(processor: &Processor, records: Vec<Record>, workers: &Workers, now_ms: i64) -> Vec<Processed> {
    if !workers.worth_the_pool(records.len()) {
        return apply_records(processor, records, now_ms);
    }
    // Split: each partition's records into a vector of its own, sized
    // first, and for each record the place of its partition's.
    let mut counts: BTreeMap<Partition, usize> = BTreeMap::new();
    for (source, _) in &records {
        *counts.entry(source.partition).or_default() += 1;
    }
    let places: BTreeMap<Partition, usize> =
        counts.keys().enumerate().map(|(place, partition)| (*partition, place)).collect();
    let mut by_partition: Vec<Vec<Record>> = counts.into_values().map(Vec::with_capacity).collect();
    let mut order = Vec::with_capacity(records.len());
    for record in records {
        let place = places[&record.0.partition];
        order.push(place);
        by_partition[place].push(record);
    }
    let applied = workers.run(by_partition, |records| apply_records(processor, records, now_ms));
    // Merge: back in the order of the records, each partition's results
    // taken in theirs.
    let mut applied: Vec<_> = applied.into_iter().map(Vec::into_iter).collect();
    let mut results = Vec::with_capacity(order.len());
    results.extend(order.into_iter().filter_map(|place| applied[place].next()));
    results
}

/// Restores each partition's users from their newest changelog values on
/// the `workers`, a partition per task (see [`Processor::restore_partition`]);
/// returns what each gave, in the order of `partitions`.
pub fn restore_partitions(
    processor: &Processor,
    partitions: Vec<(Partition, NewestValues)>,
    workers: &Workers,
    now_ms: i64,
) -> Vec<(Partition, RestoredPartition)> {
    workers.run(partitions, |(partition, newest)| (partition, processor.restore_partition(partition, &newest, now_ms)))
}

/// A user id with their changelog value (`None`: a tombstone).
pub type UserValue = (String, Option<Vec<u8>>);

/// The changelog values of each partition's changed users on the
/// `workers`, a partition per task (its shard locked once); returns each
/// user id with its value (see [`Processor::changelog_values`]), partition
/// by partition in the order of `changed`.
pub fn changelog_values(
    processor: &Processor,
    changed: Vec<(Partition, Vec<String>)>,
    workers: &Workers,
) -> Vec<(Partition, Vec<UserValue>)> {
    let values_of = |(partition, user_ids): (Partition, Vec<String>)| {
        let values = processor.changelog_values(partition, &user_ids);
        (partition, user_ids.into_iter().zip(values).collect())
    };
    if !workers.worth_the_pool(changed.iter().map(|(_, user_ids)| user_ids.len()).sum()) {
        return changed.into_iter().map(values_of).collect();
    }
    workers.run(changed, values_of)
}

/// Fires the time-driven changes of each partition up to its new watermark
/// on the `workers`; returns each partition's outputs, in the order of
/// `advanced`.
pub fn advance_in_order(
    processor: &Processor,
    advanced: &[(Partition, EventTime)],
    workers: &Workers,
    now_ms: i64,
) -> Vec<Vec<Output>> {
    // Only the partitions with a timer due are worked on: in most batches
    // of a steady load there is none, or one, and the pool is not woken.
    let due: Vec<usize> =
        (0..advanced.len()).filter(|&index| processor.may_be_due(advanced[index].0, advanced[index].1)).collect();
    let fired = workers.run(due.iter().map(|&index| advanced[index]).collect(), |(partition, watermark)| {
        processor.advance_partition(partition, watermark, now_ms)
    });
    let mut outputs: Vec<Vec<Output>> = std::iter::repeat_with(Vec::new).take(advanced.len()).collect();
    for (index, fired) in due.into_iter().zip(fired) {
        outputs[index] = fired;
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::model::InputKind;
    use crate::synthetic::Population;
    use crate::time::MINUTE_MS;

    const PARTITIONS: u64 = 4;
    const NOW_MS: i64 = 1_800_000_000_000;

    /// What a run of batches produced: per batch, each record's result in
    /// the order of the records, then each advanced partition's outputs.
    type Produced = Vec<(Vec<Processed>, Vec<Vec<Output>>)>;

    /// How a batch's events are applied.
    #[derive(Clone, Copy)]
    enum Applying {
        /// As the driver applies them, on this many threads.
        OnWorkers(usize),
        /// One after another, nothing prefetched.
        OneByOne,
    }

    /// A seeded stream over 4 partitions, in batches of 2,000 records, run
    /// as the driver runs it: a batch's consent records on the calling
    /// thread first, then its events as `applying` says, then event time
    /// advanced to each partition's newest event minus a minute.
    fn run(applying: Applying) -> Produced {
        let threads = match applying {
            Applying::OnWorkers(threads) => threads,
            Applying::OneByOne => 1,
        };
        let workers = Workers::new(threads);
        let (catalogue, settings) = crate::config::embedded_defaults();
        let processor = Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings);
        let mut population = Population::new(5, 2_000, 20_000, 30, NOW_MS);
        let partition_of = |key: &str| Partition((crate::state::hash_value(key) % PARTITIONS) as i32);
        let partitions: Vec<Partition> = (0..PARTITIONS as i32).map(Partition).collect();
        processor.own(&partitions);
        for record in population.consent_records() {
            let source = Source { partition: partition_of(&record.key), watermark: None };
            processor.process_from(source, record.kind, Some(record.key.as_bytes()), record.value.as_deref(), NOW_MS);
        }
        let mut watermarks: BTreeMap<Partition, EventTime> = BTreeMap::new();
        let mut produced = Vec::new();
        for _ in 0..10 {
            let batch: Vec<_> = (0..2_000).map(|_| population.next_record()).collect();
            let (consents, events): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|record| record.kind == InputKind::Consent);
            let mut results = Vec::new();
            for record in consents {
                let source = Source { partition: partition_of(&record.key), watermark: None };
                let input = processor.decode(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), NOW_MS);
                results.push(apply_record(&processor, (source, input), NOW_MS));
            }
            let encoded: Vec<Encoded<'_>> = events
                .iter()
                .map(|record| (record.kind, Some(record.key.as_bytes()), record.value.as_deref()))
                .collect();
            let inputs = decode_in_order(&processor, &encoded, &workers, NOW_MS);
            let records: Vec<Record> = (events.iter().zip(inputs))
                .map(|(record, input)| {
                    let partition = partition_of(&record.key);
                    (Source { partition, watermark: watermarks.get(&partition).copied() }, input)
                })
                .collect();
            let sources: Vec<Source> = records.iter().map(|(source, _)| *source).collect();
            let applied: Vec<Processed> = match applying {
                Applying::OnWorkers(_) => apply_in_order(&processor, records, &workers, NOW_MS),
                Applying::OneByOne => {
                    records.into_iter().map(|record| apply_record(&processor, record, NOW_MS)).collect()
                }
            };
            for (source, processed) in sources.iter().zip(&applied) {
                if let Some(event_time) = processed.event_time {
                    let newest = EventTime(event_time - MINUTE_MS);
                    let watermark = watermarks.entry(source.partition).or_insert(newest);
                    *watermark = (*watermark).max(newest);
                }
            }
            results.extend(applied);
            let advanced: Vec<(Partition, EventTime)> = watermarks.iter().map(|(p, w)| (*p, *w)).collect();
            produced.push((results, advance_in_order(&processor, &advanced, &workers, NOW_MS)));
        }
        produced
    }

    #[test]
    fn records_decoded_by_two_workers_come_back_as_one_decodes_them_in_their_order() {
        let (catalogue, settings) = crate::config::embedded_defaults();
        let processor = Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings);
        let mut population = Population::new(7, 500, 5_000, 30, NOW_MS);
        let mut records: Vec<_> = (0..3_000).map(|_| population.next_record()).collect();
        // Bad ones among them: not JSON, and a key that is not the event's user.
        records[10].value = Some(b"{ not json".to_vec());
        records[11].key = "someone-else".into();
        let encoded: Vec<Encoded<'_>> =
            records.iter().map(|record| (record.kind, Some(record.key.as_bytes()), record.value.as_deref())).collect();
        let one_by_one: Vec<_> =
            encoded.iter().map(|&(kind, key, value)| processor.decode(kind, key, value, NOW_MS)).collect();
        assert!(one_by_one[10].is_err() && one_by_one[11].is_err());
        assert!(one_by_one.iter().filter(|input| input.is_ok()).count() > 2_500);
        for workers in [1, 2, 3] {
            let decoded = decode_in_order(&processor, &encoded, &Workers::new(workers), NOW_MS);
            assert_eq!(decoded, one_by_one, "{workers} workers");
        }
    }

    #[test]
    fn records_of_several_partitions_applied_by_two_workers_give_what_one_gives_in_the_same_order() {
        let one = run(Applying::OnWorkers(1));
        let two = run(Applying::OnWorkers(2));
        // Every result and every output, versions included, record by record.
        assert_eq!(one.len(), two.len());
        for (batch, ((one_applied, one_advanced), (two_applied, two_advanced))) in one.iter().zip(&two).enumerate() {
            assert_eq!(one_applied.len(), two_applied.len(), "batch {batch}");
            for (position, (with_one, with_two)) in one_applied.iter().zip(two_applied).enumerate() {
                assert_eq!(with_one, with_two, "batch {batch}, record {position}");
            }
            assert_eq!(one_advanced, two_advanced, "batch {batch}, time-driven");
        }
        // The stream exercised what ordering is about: updates of the same
        // user within a batch, on every partition, and time-driven ones.
        let (results, advanced) = &one[5];
        let updated: Vec<&str> =
            results.iter().filter_map(|processed| processed.output.as_ref()).map(Output::user_id).collect();
        let distinct: std::collections::BTreeSet<&str> = updated.iter().copied().collect();
        assert!(updated.len() > distinct.len() + 100, "{} updates of {} users", updated.len(), distinct.len());
        assert_eq!(advanced.len(), PARTITIONS as usize);
        assert!(advanced.iter().all(|outputs| !outputs.is_empty()), "time-driven updates on every partition");
    }

    #[test]
    fn prefetching_ahead_of_the_records_applied_changes_none_of_their_results() {
        // Prefetching only loads what applying reads (see `Lookahead`).
        assert_eq!(run(Applying::OnWorkers(2)), run(Applying::OneByOne));
    }

    #[test]
    fn changelog_values_encoded_by_two_workers_are_each_users_value_partition_by_partition() {
        let workers = Workers::new(2);
        let (catalogue, settings) = crate::config::embedded_defaults();
        let processor = Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings);
        let mut population = Population::new(11, 2_000, 20_000, 30, NOW_MS);
        let partition_of = |key: &str| Partition((crate::state::hash_value(key) % PARTITIONS) as i32);
        processor.own(&(0..PARTITIONS as i32).map(Partition).collect::<Vec<_>>());
        let mut users: BTreeMap<Partition, std::collections::BTreeSet<String>> = BTreeMap::new();
        for record in population.consent_records().into_iter().chain((0..5_000).map(|_| population.next_record())) {
            let source = Source { partition: partition_of(&record.key), watermark: None };
            processor.process_from(source, record.kind, Some(record.key.as_bytes()), record.value.as_deref(), NOW_MS);
            users.entry(source.partition).or_default().insert(record.key);
        }
        let changed: Vec<(Partition, Vec<String>)> =
            users.into_iter().map(|(partition, users)| (partition, users.into_iter().collect())).collect();
        assert!(changed.iter().map(|(_, users)| users.len()).sum::<usize>() >= POOL_MIN_RECORDS, "the pool is used");
        let values = changelog_values(&processor, changed.clone(), &workers);
        assert_eq!(values.len(), PARTITIONS as usize);
        let (mut states, mut tombstones) = (0, 0);
        for ((partition, user_ids), (given, values)) in changed.iter().zip(&values) {
            assert_eq!(partition, given);
            let expected: Vec<UserValue> = user_ids
                .iter()
                .map(|user_id| (user_id.clone(), processor.changelog_value(*partition, user_id)))
                .collect();
            assert_eq!(values, &expected, "{partition:?}");
            states += values.iter().filter(|(_, value)| value.is_some()).count();
            tombstones += values.iter().filter(|(_, value)| value.is_none()).count();
        }
        // Both kinds: users with state, and users who hold only consent.
        assert!(states > 100 && tombstones > 100, "{states} states, {tombstones} tombstones");
        assert_eq!(changelog_values(&processor, changed, &Workers::new(1)), values);
    }

    #[test]
    fn a_pipelined_job_consumes_every_item_in_order_beside_the_producer() {
        let here = std::thread::current().id();
        for workers in [1, 2] {
            let mut consumed = Vec::new();
            let mut consuming_threads = std::collections::HashSet::new();
            let produced = Workers::new(workers).pipelined(
                |hand_over| {
                    for n in 0..1_000_u32 {
                        hand_over(n);
                    }
                    "all handed over"
                },
                |n| {
                    consumed.push(n);
                    consuming_threads.insert(std::thread::current().id());
                },
            );
            assert_eq!(produced, "all handed over");
            assert_eq!(consumed, (0..1_000).collect::<Vec<_>>(), "{workers} workers");
            assert_eq!(consuming_threads.contains(&here), workers == 1, "{workers} workers");
        }
    }

    #[test]
    fn work_comes_back_in_the_order_it_was_given_whatever_thread_did_it() {
        let here = std::thread::current().id();
        let squares = Workers::new(3).run((0..50_u64).collect(), |n| (n * n, std::thread::current().id()));
        let expected: Vec<u64> = (0..50).map(|n| n * n).collect();
        assert_eq!(squares.iter().map(|(square, _)| *square).collect::<Vec<_>>(), expected);
        assert!(squares.iter().all(|(_, thread)| *thread != here), "the pool's threads did the work");
        // One worker: the calling thread does it all.
        assert!(Workers::new(1).run(vec![1, 2, 3], |_| std::thread::current().id()).iter().all(|id| *id == here));
        assert_eq!(Workers::new(2).run(Vec::<u8>::new(), |n| n), Vec::<u8>::new());
        // A batch of a few records is applied where it is, not handed over.
        assert!(!Workers::new(2).worth_the_pool(POOL_MIN_RECORDS - 1));
        assert!(Workers::new(2).worth_the_pool(POOL_MIN_RECORDS));
        assert!(!Workers::new(1).worth_the_pool(100_000));
    }
}
