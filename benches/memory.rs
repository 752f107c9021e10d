//! Bytes of state per user, measured: every allocation of the process is
//! counted (a wrapper around the system allocator), and the state's share is
//! the growth while the processor loads the synthetic population's consent
//! and applies its events (1M users, as `benches/pipeline.rs`). The workload
//! itself is generated before counting starts. Also counts the allocations
//! made per record applied (decode, state and the update, which is built
//! but not encoded here): a figure no other process on the machine moves.
//! Prints the figures that go to BENCHMARKS.md.

#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use tactful::codec::Codec;
use tactful::processor::{Processed, Processor, Source};
use tactful::state::Partition;
use tactful::synthetic::Population;
use tactful::time::EventTime;

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

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn main() {
    let now_ms = 1_800_000_000_000;
    let mut population = Population::new(42, USERS, RECORDS, 30, now_ms);
    let consents = population.consent_records();
    let events: Vec<_> = (0..RECORDS).map(|_| population.next_record()).collect();

    let (catalogue, settings) = tactful::config::embedded_defaults();
    let before = allocated();
    let processor = Processor::new(Codec::new(&[]).expect("codec"), catalogue, &settings);
    for record in &consents {
        processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
    }
    let consent_bytes = allocated() - before;
    let (mut decoding, mut applying) = (0, 0);
    let mut newest = None;
    for record in &events {
        let start = allocations();
        let decoded = processor.decode(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
        let decoded_at = allocations();
        let processed = match decoded {
            Ok(input) => processor.apply(Source { partition: Partition(0), watermark: None }, input, now_ms),
            Err(rejection) => Processed::rejected(rejection),
        };
        (decoding, applying) = (decoding + decoded_at - start, applying + allocations() - decoded_at);
        newest = newest.max(processed.event_time.map(EventTime));
    }
    if let Some(watermark) = newest {
        drop(processor.advance_to(watermark, now_ms));
    }
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
    let per_record = |count: usize| count as f64 / RECORDS as f64;
    println!("allocations per record: {:.2} decoding, {:.2} applying", per_record(decoding), per_record(applying));
    println!(
        "in all: {} bytes, {:.0} bytes per consented user",
        consent_bytes + state_bytes,
        (consent_bytes + state_bytes) as f64 / consented as f64
    );
}
