//! Any key and value through the whole core (decode, validate, consent gate,
//! facts, segments, profile diff), against state that earlier inputs built:
//! a counted outcome, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tactful::codec::Codec;
use tactful::model::InputKind;
use tactful::processor::{Processor, Source};
use tactful::state::Partition;
use tactful::time::EventTime;

static PROCESSOR: LazyLock<Processor> = LazyLock::new(|| {
    let (catalogue, settings) = tactful::config::embedded_defaults();
    Processor::new(Codec::new(&[]).expect("bundled schemas"), catalogue, &settings)
});

const KINDS: [InputKind; 4] = [InputKind::Browse, InputKind::Purchase, InputKind::Location, InputKind::Consent];
/// Processing time: 2027-01-01, so the seed corpus' timestamps are plausible.
const NOW_MS: i64 = 1_798_761_600_000;

fuzz_target!(|data: &[u8]| {
    // [kind selector][key length][key][value]; a value of one byte 0xFF is a tombstone.
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((&key_length, rest)) = rest.split_first() else { return };
    let (key, value) = rest.split_at(usize::from(key_length).min(rest.len()));
    let value = (value != [0xFF]).then_some(value);
    let kind = KINDS[usize::from(selector) % KINDS.len()];
    let source = Source { partition: Partition(i32::from(selector >> 4)), watermark: None };
    let processed = PROCESSOR.process_from(source, kind, Some(key), value, NOW_MS);
    if let Ok(user_id) = std::str::from_utf8(key) {
        // Whatever was built round-trips through the changelog encoding.
        if let Some(bytes) = PROCESSOR.changelog_value(source.partition, user_id) {
            tactful::state::changelog::decode(&bytes, &PROCESSOR.catalogue()).expect("own changelog values decode");
        }
    }
    if selector == 0xFF {
        let _ = PROCESSOR.advance_to(EventTime(processed.event_time.unwrap_or(NOW_MS)), NOW_MS);
    }
});
