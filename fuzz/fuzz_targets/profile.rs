//! The profile loader: arbitrary bytes as `fuzz/1.json` never panic it.
#![no_main]

use ecl_gate::profile::parse_profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_profile("fuzz", "1", data);
});
