//! Any text as an IAB TCF v2 TC string: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tactful::consent::tcf::TcString;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(tc) = TcString::parse(text) {
            for purpose in 0..=u8::MAX {
                let _ = (tc.purpose_consent(purpose), tc.special_feature_opt_in(purpose));
            }
        }
    }
});
