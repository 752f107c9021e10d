//! The in-process path of one record: decode → consent gate → segment update
//! → encode the profile update, over 1M distinct synthetic users. Kafka I/O is
//! excluded (see BENCHMARKS.md for the end-to-end figures). `state held`
//! times the month after, over the state the first month left. `workers/` runs
//! the same path over 4 partitions as the Kafka driver does, with its
//! decode, apply and time-driven steps on 1 and 2 worker threads.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tactful::codec::Codec;
use tactful::model::InputKind;
use tactful::pipeline::workers::{
    advance_in_order, apply_in_order, apply_record, decode_in_order, Encoded, Record, Workers,
};
use tactful::processor::{Lookahead, Output, Processor, Source};
use tactful::segments::engine::{evaluate, write_reason, SharedMeasures};
use tactful::state::changelog::decode;
use tactful::state::restore::NewestValues;
use tactful::state::{Partition, UserState, MAX_CAPTURES};
use tactful::synthetic::{Population, SyntheticRecord};
use tactful::time::{EventTime, DAY_MS};

/// The allocator of the `tactful` binary, set up as it is (`main`), so the
/// figures are the product's.
#[global_allocator]
static ALLOCATOR: tactful::allocator::Allocator = tactful::allocator::Allocator;

const USERS: usize = 1_000_000;
const RECORDS: u64 = 2_000_000;
const CHUNK: usize = 10_000;

fn processor() -> Processor {
    let (catalogue, settings) = tactful::config::embedded_defaults();
    Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings)
}

const DAYS: i64 = 30;

struct Workload {
    now_ms: i64,
    consents: Vec<SyntheticRecord>,
    events: Vec<SyntheticRecord>,
}

fn workload() -> Workload {
    month(42, USERS, RECORDS)
}

/// `users` users and their `records` records over the `DAYS` before a fixed now, drawn from `seed`.
fn month(seed: u64, users: usize, records: u64) -> Workload {
    let now_ms = 1_800_000_000_000;
    let mut population = Population::new(seed, users, records, DAYS, now_ms);
    let consents = population.consent_records();
    let events = (0..records).map(|_| population.next_record()).collect();
    Workload { now_ms, consents, events }
}

/// The same users' next month: events over the `DAYS` after `workload`'s
/// (other draws, so other users are the busy ones).
fn next_month(workload: &Workload) -> Workload {
    let now_ms = workload.now_ms + DAYS * DAY_MS;
    let mut population = Population::new(43, USERS, RECORDS, DAYS, now_ms);
    let events = (0..RECORDS).map(|_| population.next_record()).collect();
    Workload { now_ms, consents: Vec::new(), events }
}

/// A processor that knows every user's consent, untimed.
fn loaded_processor(workload: &Workload) -> Processor {
    let processor = processor();
    for record in &workload.consents {
        processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), workload.now_ms);
    }
    processor
}

/// A processor that has processed `workload`'s month, untimed.
fn processor_after(workload: &Workload) -> Processor {
    let processor = loaded_processor(workload);
    let mut buffer = Vec::with_capacity(1024);
    for chunk in workload.events.chunks(CHUNK) {
        process_chunk(&processor, chunk, workload.now_ms, &mut buffer);
    }
    processor
}

/// Processes a chunk as the pipeline processes a batch: every record, then
/// the time-driven exits up to the newest event time (the stream is in order).
fn process_chunk(processor: &Processor, records: &[SyntheticRecord], now_ms: i64, buffer: &mut Vec<u8>) {
    let mut encode = |output: Output| {
        if let Output::Update(update) = output {
            buffer.clear();
            processor.codec().encode_profile(&update, buffer);
        }
    };
    let mut newest_event_time = None;
    let mut lookahead = Lookahead::default();
    for (index, record) in records.iter().enumerate() {
        // As the pipeline's workers do.
        lookahead.before_next(processor, |distance| Some((Partition(0), records.get(index + distance)?.key.as_str())));
        let processed = processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
        newest_event_time = newest_event_time.max(processed.event_time.map(EventTime));
        processed.output.map(&mut encode);
    }
    if let Some(watermark) = newest_event_time {
        processor.advance_to(watermark, now_ms).into_iter().for_each(encode);
    }
}

/// Times `run` over the workload's events, CHUNK records at a time, on state
/// from `fresh`; when the stream is used up, it starts again on fresh state,
/// untimed.
fn replay<S>(
    bencher: &mut criterion::Bencher<'_>,
    workload: &Workload,
    fresh: impl Fn(&Workload) -> S,
    mut run: impl FnMut(&mut S, &[SyntheticRecord]),
) {
    let mut state = fresh(workload);
    let mut position = 0;
    bencher.iter_custom(|iterations| {
        let mut elapsed = Duration::ZERO;
        for _ in 0..iterations {
            if position + CHUNK > workload.events.len() {
                state = fresh(workload);
                position = 0;
            }
            let started = Instant::now();
            run(&mut state, &workload.events[position..position + CHUNK]);
            elapsed += started.elapsed();
            position += CHUNK;
        }
        elapsed
    });
}

fn full_path(criterion: &mut Criterion) {
    let workload = workload();
    let mut group = criterion.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.sample_size(30).measurement_time(Duration::from_secs(20));
    group.bench_function(BenchmarkId::new("decode_consent_segments_encode", "1M users"), |bencher| {
        let mut buffer = Vec::with_capacity(1024);
        replay(bencher, &workload, loaded_processor, |processor, chunk| {
            process_chunk(processor, chunk, workload.now_ms, &mut buffer);
        });
    });
    // The month after, over the state the first month left: the users are
    // held already, and windows drop their facts as fast as events bring
    // them, so time causes about as many updates as the events do.
    let month = next_month(&workload);
    group.bench_function(BenchmarkId::new("decode_consent_segments_encode", "1M users, state held"), |bencher| {
        let mut buffer = Vec::with_capacity(1024);
        replay(
            bencher,
            &month,
            |_| processor_after(&workload),
            |processor, chunk| {
                process_chunk(processor, chunk, month.now_ms, &mut buffer);
            },
        );
    });
    // Busy users, as in the latency runs: 10,000 users with about 60 events
    // each in the month, so a user holds many facts (their windows are kept
    // as tallies, `src/segments/tally.rs`) and the state stays in the cache.
    let busy = busy_month();
    group.bench_function(BenchmarkId::new("decode_consent_segments_encode", "10k busy users"), |bencher| {
        let mut buffer = Vec::with_capacity(1024);
        replay(bencher, &busy, loaded_processor, |processor, chunk| {
            process_chunk(processor, chunk, busy.now_ms, &mut buffer);
        });
    });
    group.finish();
}

/// 10,000 users with about 60 events each in the month.
fn busy_month() -> Workload {
    month(44, 10_000, 600_000)
}

/// Input partitions of the `workers/` workload.
const PARTITIONS: u64 = 4;

/// The partition of a user's records, as a producer keyed by user id would spread them.
fn partition_of(key: &str) -> Partition {
    Partition((tactful::state::hash_value(key) % PARTITIONS) as i32)
}

/// A processor owning the 4 partitions that knows every user's consent, untimed.
fn loaded_sharded_processor(workload: &Workload) -> Processor {
    let processor = processor();
    processor.own(&(0..PARTITIONS as i32).map(Partition).collect::<Vec<_>>());
    for record in &workload.consents {
        let source = Source { partition: partition_of(&record.key), watermark: None };
        processor.process_from(
            source,
            record.kind,
            Some(record.key.as_bytes()),
            record.value.as_deref(),
            workload.now_ms,
        );
    }
    processor
}

/// Processes a chunk as the Kafka driver processes a batch, with the same
/// code for its parallel steps: consent records decoded and applied on the
/// calling thread; the events decoded on the `workers` threads, then applied
/// partition by partition on them; each partition's event time advanced to
/// its newest event on them; the updates encoded on the calling thread (as
/// the publisher does).
fn process_chunk_on_workers(
    processor: &Processor,
    records: &[SyntheticRecord],
    workers: &Workers,
    now_ms: i64,
    watermarks: &mut BTreeMap<Partition, EventTime>,
    buffer: &mut Vec<u8>,
) {
    let mut encode = |output: Output| {
        if let Output::Update(update) = output {
            buffer.clear();
            processor.codec().encode_profile(&update, buffer);
        }
    };
    let mut encoded: Vec<Encoded<'_>> = Vec::with_capacity(records.len());
    let mut sources = Vec::with_capacity(records.len());
    for record in records {
        let partition = partition_of(&record.key);
        let (key, value) = (Some(record.key.as_bytes()), record.value.as_deref());
        if record.kind == InputKind::Consent {
            let source = Source { partition, watermark: None };
            let input = processor.decode(record.kind, key, value, now_ms);
            apply_record(processor, (source, input), now_ms).output.map(&mut encode);
        } else {
            encoded.push((record.kind, key, value));
            sources.push(Source { partition, watermark: watermarks.get(&partition).copied() });
        }
    }
    let inputs = decode_in_order(processor, &encoded, workers, now_ms);
    let events: Vec<Record> = sources.into_iter().zip(inputs).collect();
    let partitions: Vec<Partition> = events.iter().map(|(source, _)| source.partition).collect();
    let mut newest: BTreeMap<Partition, EventTime> = BTreeMap::new();
    for (partition, processed) in partitions.into_iter().zip(apply_in_order(processor, events, workers, now_ms)) {
        if let Some(event_time) = processed.event_time {
            let newest = newest.entry(partition).or_insert(EventTime(event_time));
            *newest = (*newest).max(EventTime(event_time));
        }
        processed.output.map(&mut encode);
    }
    let advanced: Vec<(Partition, EventTime)> = newest.into_iter().collect();
    for outputs in advance_in_order(processor, &advanced, workers, now_ms) {
        outputs.into_iter().for_each(&mut encode);
    }
    watermarks.extend(advanced);
}

fn on_workers(criterion: &mut Criterion) {
    let workload = workload();
    let mut group = criterion.benchmark_group("workers");
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(20));
    for threads in [1, 2] {
        let workers = Workers::new(threads);
        let id =
            BenchmarkId::new("decode_consent_segments_encode", format!("1M users, 4 partitions, {threads} threads"));
        group.bench_function(id, |bencher| {
            let mut buffer = Vec::with_capacity(1024);
            let fresh = |workload: &Workload| (loaded_sharded_processor(workload), BTreeMap::new());
            replay(bencher, &workload, fresh, |(processor, watermarks), chunk| {
                process_chunk_on_workers(processor, chunk, &workers, workload.now_ms, watermarks, &mut buffer);
            });
        });
    }
    group.finish();
}

fn stages(criterion: &mut Criterion) {
    let workload = workload();
    let codec = Codec::new(&[]).unwrap();
    let browse: Vec<&SyntheticRecord> =
        workload.events.iter().filter(|record| record.kind == InputKind::Browse).take(CHUNK * 2).collect();
    let (avro, json): (Vec<&SyntheticRecord>, Vec<&SyntheticRecord>) = browse
        .into_iter()
        .partition(|record| record.value.as_deref().is_some_and(|value| value.first() == Some(&0xC3)));
    let mut group = criterion.benchmark_group("decode");
    for (name, records) in [("browse_avro", &avro), ("browse_json", &json)] {
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                for record in records.iter() {
                    let _ =
                        std::hint::black_box(codec.decode(record.kind, record.value.as_deref().unwrap_or_default()));
                }
            })
        });
    }
    group.finish();

    // Framing the updates a fresh processor publishes for the first records
    // (each written as its datum when it was due), as the publisher does.
    let processor = loaded_processor(&workload);
    let updates: Vec<_> = workload
        .events
        .iter()
        .take(CHUNK * 5)
        .filter_map(|record| {
            match processor
                .process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), workload.now_ms)
                .output
            {
                Some(Output::Update(update)) => Some(update),
                _ => None,
            }
        })
        .collect();
    let mut group = criterion.benchmark_group("encode");
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.bench_function("profile_update", |bencher| {
        let mut buffer = Vec::with_capacity(1024);
        bencher.iter(|| {
            for update in &updates {
                buffer.clear();
                codec.encode_profile(update, &mut buffer);
            }
            std::hint::black_box(buffer.len())
        })
    });
    // Every default segment's reason rendered with two figures, as a
    // membership is written into an update (a figure the template does
    // not name is not read).
    let (catalogue, _) = tactful::config::embedded_defaults();
    group.throughput(Throughput::Elements(catalogue.segments.len() as u64));
    group.bench_function("reasons", |bencher| {
        let mut text = String::with_capacity(1024);
        bencher.iter(|| {
            text.clear();
            for segment in &catalogue.segments {
                write_reason(&segment.reason, std::hint::black_box(&[3.0, 12_345.0]), &mut text);
            }
            std::hint::black_box(text.len())
        })
    });
    group.finish();
}

/// The changelog value of a user's state, written with every update the
/// pipeline publishes and read back by a restore: encoding and decoding the
/// states of 100,000 users after the first month, installing them as a
/// restore does, and encoding those of
/// 10,000 busy users. They are encoded as the pipeline encodes a
/// partition's changed users: together, the shard locked once.
fn changelog(criterion: &mut Criterion) {
    let workload = workload();
    let processor = processor_after(&workload);
    let catalogue = processor.catalogue();
    let users: Vec<&str> = workload.consents.iter().map(|record| record.key.as_str()).take(100_000).collect();
    let newest_values = processor.changelog_values(Partition(0), &users);
    let values: Vec<&[u8]> = newest_values.iter().flatten().map(Vec::as_slice).collect();
    let mut group = criterion.benchmark_group("changelog");
    group.throughput(Throughput::Elements(users.len() as u64));
    group.bench_function("encode", |bencher| {
        bencher.iter(|| processor.changelog_values(Partition(0), &users).iter().flatten().map(Vec::len).sum::<usize>())
    });
    group.throughput(Throughput::Elements(values.len() as u64));
    group.bench_function("decode", |bencher| {
        bencher.iter(|| values.iter().filter(|value| decode(value, &catalogue).is_ok()).count())
    });
    // A restore's install, as a worker restores a partition: the same
    // users' newest values decoded into an empty shard, reconciled with the
    // consent table and re-evaluated (the shard emptied before each, untimed).
    let mut newest = NewestValues::default();
    for (user_id, value) in users.iter().zip(&newest_values) {
        newest.note(user_id, value.as_deref());
    }
    group.throughput(Throughput::Elements(newest.len() as u64));
    group.bench_function("install", |bencher| {
        bencher.iter_batched(
            || processor.drop_partitions(&[Partition(1)]),
            |()| processor.restore_partition(Partition(1), &newest, workload.now_ms),
            BatchSize::PerIteration,
        )
    });
    // Busy users, as in the latency runs (scripts/bench-latency.sh): 10,000
    // users with about 60 events each in the month, so each value holds many
    // facts and many distinct products.
    let busy = busy_month();
    let users: Vec<&str> = busy.consents.iter().map(|record| record.key.as_str()).collect();
    let processor = processor_after(&busy);
    let facts: usize = (processor.changelog_values(Partition(0), &users).iter().flatten())
        .filter_map(|value| decode(value, &catalogue).ok())
        .map(|restored| restored.state.history.browses.len() + restored.state.history.purchases.len())
        .sum();
    println!("changelog/encode_busy: {:.1} page views and purchases per user", facts as f64 / users.len() as f64);
    group.throughput(Throughput::Elements(users.len() as u64));
    group.bench_function("encode_busy", |bencher| {
        bencher.iter(|| processor.changelog_values(Partition(0), &users).iter().flatten().map(Vec::len).sum::<usize>())
    });
    group.finish();
}

/// Each segment's rule evaluated over the facts users hold at the end of
/// the month, at each user's own evaluation time, as a refresh evaluates
/// it from the facts: what reading a user's facts costs per segment (what
/// a user below `TALLY_FROM` facts pays, and what tallies replace for the
/// others), over 100,000 of the 1 M users and over the 10,000 busy users.
fn evaluation(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("evaluate");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (name, workload, users) in [("1M users", workload(), 100_000), ("10k busy users", busy_month(), 10_000)] {
        let processor = processor_after(&workload);
        let catalogue = processor.catalogue();
        let ids: Vec<&str> = workload.consents.iter().map(|record| record.key.as_str()).take(users).collect();
        let states: Vec<UserState> = (processor.changelog_values(Partition(0), &ids).iter().flatten())
            .filter_map(|value| decode(value, &catalogue).ok())
            .map(|restored| restored.state)
            .collect();
        group.throughput(Throughput::Elements(states.len() as u64));
        for segment in &catalogue.segments {
            group.bench_function(BenchmarkId::new(segment.id.as_str(), name), |bencher| {
                let mut figures = [0.0; MAX_CAPTURES];
                bencher.iter(|| {
                    (states.iter())
                        .filter(|state| {
                            let mut shared = SharedMeasures::new();
                            evaluate(&segment.rule, &state.history, state.clock, &mut figures, &mut shared)
                        })
                        .count()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, full_path, on_workers, stages, changelog, evaluation);

/// criterion_main!'s `main`, with the allocator set up first, as the binary's does.
fn main() {
    tactful::allocator::keep_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
