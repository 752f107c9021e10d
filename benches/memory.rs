//! Bytes of state per user, measured: every allocation of the process is
//! counted (a wrapper around the system allocator), and the state's share is
//! the growth while the processor loads the synthetic population's consent
//! and applies its events (1M users, as `benches/pipeline.rs`). The workload
//! itself is generated before counting starts. Also counts the allocations
//! made per record applied (decode, state and the update, which is built
//! but not encoded here): a figure no other process on the machine moves.
//! Then the same users' month after, as the pipeline bench's `state held`:
//! the bytes per user held at its end, and its allocations per record.
//! Prints the figures that go to BENCHMARKS.md.

#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use tactful::codec::Codec;
use tactful::processor::{Processed, Processor, Source};
use tactful::state::Partition;
use tactful::synthetic::{Population, SyntheticRecord};
use tactful::time::{EventTime, DAY_MS};

/// The system allocator, counting the bytes currently allocated and the
/// allocations made.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// wrapper only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const USERS: usize = 1_000_000;
const RECORDS: u64 = 2_000_000;
const DAYS: i64 = 30;

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn main() {
    let now_ms = 1_800_000_000_000;
    let mut population = Population::new(42, USERS, RECORDS, DAYS, now_ms);
    let consents = population.consent_records();
    let events: Vec<_> = (0..RECORDS).map(|_| population.next_record()).collect();

    let (catalogue, settings) = tactful::config::embedded_defaults();
    let before = allocated();
    let processor = Processor::new(Codec::new(&[]).expect("codec"), catalogue, &settings);
    for record in &consents {
        processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
    }
    let consent_bytes = allocated() - before;
    let first = apply_month(&processor, &events, now_ms, events.len());
    let state_bytes = allocated() - before - consent_bytes;
    let (values, value_bytes) = consents
        .iter()
        .filter_map(|record| processor.changelog_value(Partition(0), &record.key))
        .fold((0, 0), |(values, bytes), value| (values + 1, bytes + value.len()));
    let consented = processor.user_count();
    let held = processor.held_user_count();
    println!("users with a consent recorded: {consented}");
    println!("consent table: {consent_bytes} bytes, {:.0} bytes per user", consent_bytes as f64 / consented as f64);
    println!("users with partition state: {held}");
    println!("partition state: {state_bytes} bytes, {:.0} bytes per user held", state_bytes as f64 / held as f64);
    println!("changelog: {value_bytes} bytes, {:.0} bytes per user held", value_bytes as f64 / values as f64);
    first.print("the first month");
    println!(
        "in all: {} bytes, {:.0} bytes per consented user",
        consent_bytes + state_bytes,
        (consent_bytes + state_bytes) as f64 / consented as f64
    );

    // The month after, over the state the first month left, with event time
    // advanced after every chunk as `benches/pipeline.rs` does (`state held`):
    // windows drop facts as fast as events bring them.
    let now_ms = now_ms + DAYS * DAY_MS;
    let mut population = Population::new(43, USERS, RECORDS, DAYS, now_ms);
    let events: Vec<_> = (0..RECORDS).map(|_| population.next_record()).collect();
    let before = allocated();
    let after = apply_month(&processor, &events, now_ms, 10_000);
    let held = processor.held_user_count();
    println!("users with partition state after the month after: {held}");
    println!(
        "partition state after the month after: {:.0} bytes per user held",
        (state_bytes + allocated() - before) as f64 / held as f64
    );
    after.print("the month after");
}

/// Allocations made by a month's records, per record.
struct Allocations {
    decoding: usize,
    applying: usize,
    time_driven: usize,
    records: usize,
}

impl Allocations {
    fn print(&self, month: &str) {
        let per_record = |count: usize| count as f64 / self.records as f64;
        println!(
            "allocations per record, {month}: {:.2} decoding, {:.2} applying, {:.2} time-driven",
            per_record(self.decoding),
            per_record(self.applying),
            per_record(self.time_driven)
        );
    }
}

/// Applies `events`, advancing event time to the newest seen after every
/// `chunk` of them, and counts the allocations of each step.
fn apply_month(processor: &Processor, events: &[SyntheticRecord], now_ms: i64, chunk: usize) -> Allocations {
    let mut counted = Allocations { decoding: 0, applying: 0, time_driven: 0, records: events.len() };
    for records in events.chunks(chunk) {
        let mut newest = None;
        for record in records {
            let start = allocations();
            let decoded = processor.decode(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
            let decoded_at = allocations();
            let processed = match decoded {
                Ok(input) => processor.apply(Source { partition: Partition(0), watermark: None }, input, now_ms),
                Err(rejection) => Processed::rejected(rejection),
            };
            counted.decoding += decoded_at - start;
            counted.applying += allocations() - decoded_at;
            newest = newest.max(processed.event_time.map(EventTime));
        }
        if let Some(watermark) = newest {
            let start = allocations();
            drop(processor.advance_to(watermark, now_ms));
            counted.time_driven += allocations() - start;
        }
    }
    counted
}
