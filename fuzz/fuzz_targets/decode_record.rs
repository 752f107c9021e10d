//! Any bytes as any input record's value: decoded (Avro single-object,
//! Confluent framing, JSON) or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tactful::codec::Codec;
use tactful::model::InputKind;

static CODEC: LazyLock<Codec> = LazyLock::new(|| Codec::new(&[]).expect("bundled schemas"));

const KINDS: [InputKind; 4] = [InputKind::Browse, InputKind::Purchase, InputKind::Location, InputKind::Consent];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topic the record came from.
    let Some((&selector, value)) = data.split_first() else { return };
    let _ = CODEC.decode(KINDS[usize::from(selector) % KINDS.len()], value);
});
