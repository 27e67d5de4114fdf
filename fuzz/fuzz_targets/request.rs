//! The request decoder: never panics; a decoded request's normalized form decodes to the same
//! request hash (normalization is idempotent).
#![no_main]

use ecl_gate::canonical::to_canonical;
use ecl_gate::request::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode(data) {
        let again = decode(&to_canonical(&request.normalized)).expect("normalized form must decode");
        assert_eq!(again.request_hash, request.request_hash);
        assert_eq!(again.intent_hash, request.intent_hash);
    }
});
