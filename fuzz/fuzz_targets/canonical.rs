//! The strict parser and canonical writer: never panic; a parsed value re-canonicalizes to
//! itself (the canonical form is a fixed point).
#![no_main]

use ecl_gate::canonical::{parse, to_canonical};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse(data) {
        let canonical = to_canonical(&value);
        let again = parse(&canonical).expect("canonical bytes must parse");
        assert_eq!(to_canonical(&again), canonical, "canonical form is not a fixed point");
    }
});
