//! Any text as a segment file: a catalogue, or an error with a position,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tactful::segments::Catalogue;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Catalogue::parse("fuzz.toml", text, &["prenatal".to_owned()], 365 * 86_400_000);
    }
});
