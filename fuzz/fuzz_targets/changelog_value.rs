//! Any bytes as a changelog value (another writer's record, a corrupted
//! log): restored or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tactful::segments::Catalogue;

static CATALOGUE: LazyLock<Catalogue> = LazyLock::new(|| tactful::config::embedded_defaults().0);

fuzz_target!(|data: &[u8]| {
    let _ = tactful::state::changelog::decode(data, &CATALOGUE);
});
