//! Workers: a batch's apply step and its time-driven step spread over
//! `pipeline.workers` threads, each partition's work on one thread. A
//! user's records are all on one partition (the input topics are
//! co-partitioned by user id), so applying partitions side by side keeps
//! every user's records in their order. The core's state is sharded by
//! partition: threads on different partitions share only the consent table,
//! which the pipeline thread alone writes, and never during these steps
//! (consent records are applied before and after them, not within).
//!
//! This is the one place where the work is split and merged. Results come
//! back in the order of what was given, whichever thread computed them, so
//! a batch's outputs are the same and in the same order with one worker or
//! several. With one worker, or one partition with work, nothing is spawned.
//! No Kafka and no clock (`now_ms` is an argument): the benchmark runs this
//! same code.

use crate::processor::{Output, Processed, Processor, Source};
use crate::state::Partition;
use crate::time::EventTime;
use crate::validate::{Input, Rejection};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// A record whose turn has come: where it was read (its partition and that
/// partition's watermark) and what it decoded to, or why it is bad.
pub type Record = (Source, Result<Input, Rejection>);

/// Applies one record at processing time `now_ms` (a bad one only gets its rejection).
pub fn apply_record(processor: &Processor, (source, input): Record, now_ms: i64) -> Processed {
    match input {
        Ok(input) => processor.apply(source, input, now_ms),
        Err(rejection) => Processed::rejected(rejection),
    }
}

/// Applies `records` on up to `workers` threads, all of a partition's
/// records on one thread in their order; returns each record's result, in
/// the order of `records`.
pub fn apply_in_order(processor: &Processor, records: Vec<Record>, workers: usize, now_ms: i64) -> Vec<Processed> {
    if workers <= 1 {
        return records.into_iter().map(|record| apply_record(processor, record, now_ms)).collect();
    }
    let count = records.len();
    // Split: each partition's records, with their positions.
    let mut by_partition: BTreeMap<Partition, Vec<(usize, Record)>> = BTreeMap::new();
    for (position, record) in records.into_iter().enumerate() {
        by_partition.entry(record.0.partition).or_default().push((position, record));
    }
    // The largest first: one taken last would leave the other workers idle.
    let mut groups: Vec<Vec<(usize, Record)>> = by_partition.into_values().collect();
    groups.sort_by_key(|group| std::cmp::Reverse(group.len()));
    let applied: Vec<Vec<(usize, Processed)>> = on_workers(workers, groups, |group| {
        group.into_iter().map(|(position, record)| (position, apply_record(processor, record, now_ms))).collect()
    });
    // Merge: back in the order of the records.
    let mut results: Vec<Option<Processed>> = std::iter::repeat_with(|| None).take(count).collect();
    for (position, processed) in applied.into_iter().flatten() {
        results[position] = Some(processed);
    }
    results.into_iter().flatten().collect()
}

/// Fires the time-driven changes of each partition up to its new watermark
/// on up to `workers` threads; returns each partition's outputs, in the
/// order of `advanced`.
pub fn advance_in_order(
    processor: &Processor,
    advanced: &[(Partition, EventTime)],
    workers: usize,
    now_ms: i64,
) -> Vec<Vec<Output>> {
    on_workers(workers, advanced.to_vec(), |(partition, watermark)| {
        processor.advance_partition(partition, watermark, now_ms)
    })
}

/// `work` done on each of `items` by up to `workers` threads, the calling
/// thread one of them; each takes the next item when done with one, so an
/// uneven split evens out. The results are in the order of `items`.
fn on_workers<T: Send, R: Send>(workers: usize, items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = workers.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(work).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate());
    let work_off_queue = || {
        let mut done = Vec::new();
        loop {
            // A statement of its own: the lock is held to take an item, not while working on it.
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((index, item)) = next else { return done };
            done.push((index, work(item)));
        }
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let spawn =
            || std::thread::Builder::new().name("tactful-worker".to_owned()).spawn_scoped(scope, work_off_queue);
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| match spawn() {
                Ok(helper) => Some(helper),
                // The others take its share.
                Err(error) => {
                    tracing::warn!(%error, "a worker thread could not be started");
                    None
                }
            })
            .collect();
        let mut done = work_off_queue();
        for helper in helpers {
            // A worker's panic is the pipeline's: it goes on unwinding here.
            done.extend(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        done
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
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

    /// A seeded stream over 4 partitions, in batches of 2,000 records, run
    /// as the driver runs it with `workers` threads: a batch's consent
    /// records on the calling thread first, then its events, then event
    /// time advanced to each partition's newest event minus a minute.
    fn run(workers: usize) -> Produced {
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
            let records: Vec<Record> = events
                .iter()
                .map(|record| {
                    let partition = partition_of(&record.key);
                    let source = Source { partition, watermark: watermarks.get(&partition).copied() };
                    let key = Some(record.key.as_bytes());
                    (source, processor.decode(record.kind, key, record.value.as_deref(), NOW_MS))
                })
                .collect();
            let sources: Vec<Source> = records.iter().map(|(source, _)| *source).collect();
            let applied = apply_in_order(&processor, records, workers, NOW_MS);
            for (source, processed) in sources.iter().zip(&applied) {
                if let Some(event_time) = processed.event_time {
                    let newest = EventTime(event_time - MINUTE_MS);
                    let watermark = watermarks.entry(source.partition).or_insert(newest);
                    *watermark = (*watermark).max(newest);
                }
            }
            results.extend(applied);
            let advanced: Vec<(Partition, EventTime)> = watermarks.iter().map(|(p, w)| (*p, *w)).collect();
            produced.push((results, advance_in_order(&processor, &advanced, workers, NOW_MS)));
        }
        produced
    }

    #[test]
    fn records_of_several_partitions_applied_by_two_workers_give_what_one_gives_in_the_same_order() {
        let one = run(1);
        let two = run(2);
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
    fn work_comes_back_in_the_order_it_was_given_whatever_thread_did_it() {
        let squares = on_workers(3, (0..50_u64).collect(), |n| (n * n, std::thread::current().id()));
        assert_eq!(
            squares.iter().map(|(square, _)| *square).collect::<Vec<_>>(),
            (0..50).map(|n| n * n).collect::<Vec<_>>()
        );
        // One worker, or one item: the calling thread does it all.
        let here = std::thread::current().id();
        assert!(on_workers(1, vec![1, 2, 3], |_| std::thread::current().id()).iter().all(|id| *id == here));
        assert_eq!(on_workers(4, vec![7], |_| std::thread::current().id()), vec![here]);
        assert_eq!(on_workers(4, Vec::<u8>::new(), |n| n), Vec::<u8>::new());
    }
}
