//! Any text as a writer schema a schema registry answers with, then any
//! datum in the Confluent wire format under it: its canonical form and
//! fingerprint are computed or refused, the record decoded or refused with
//! an error, never a panic (a registry is outside the process).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tactful::codec::{canonical, Codec};
use tactful::model::InputKind;

/// One codec for every run: each run's schema replaces the last under id 7.
static CODEC: LazyLock<Codec> = LazyLock::new(|| Codec::with_registry(&[]).expect("bundled schemas"));

const KINDS: [InputKind; 4] = [InputKind::Browse, InputKind::Purchase, InputKind::Location, InputKind::Consent];

/// libfuzzer-sys aborts on any panic, even one the codec contains (see
/// `contain_panics`): panics are made silent, so only one that escapes the
/// codec (caught by libfuzzer-sys itself) fails the run.
static QUIET_PANICS: LazyLock<()> = LazyLock::new(|| std::panic::set_hook(Box::new(|_| {})));

fuzz_target!(|data: &[u8]| {
    LazyLock::force(&QUIET_PANICS);
    // The first byte picks the topic; the schema text ends at the first NUL.
    let Some((&selector, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|byte| *byte == 0).unwrap_or(rest.len());
    let (text, datum) = rest.split_at(split);
    let Ok(text) = std::str::from_utf8(text) else { return };
    let _ = canonical::fingerprint(text);
    CODEC.add_registry_schema(7, Ok(text));
    let mut value = vec![0, 0, 0, 0, 7];
    value.extend_from_slice(datum.get(1..).unwrap_or_default());
    let _ = CODEC.decode(KINDS[usize::from(selector) % KINDS.len()], &value);
});
