//! `decide` over arbitrary request bytes against the shipped profiles: never panics, is
//! deterministic, and never ALLOWs a tool its profile does not list.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use ecl_gate::approval::Approvals;
use ecl_gate::decision::{decide, Attempt, Context, DecisionType};
use ecl_gate::profile::ProfileStore;
use ecl_gate::request::decode;
use libfuzzer_sys::fuzz_target;

fn store() -> &'static ProfileStore {
    static STORE: OnceLock<ProfileStore> = OnceLock::new();
    STORE.get_or_init(|| ProfileStore::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles")))
}

fuzz_target!(|data: &[u8]| {
    let context = Context::new(Approvals::default());
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let Ok(request) = decode(data) else { return };
    let profile = store().get(&request.profile_id, &request.profile_version);
    let first = decide(Attempt::Request { request: &request, profile: &profile }, &context, now);
    let second = decide(Attempt::Request { request: &request, profile: &profile }, &context, now);
    assert_eq!(first.fingerprint(), second.fingerprint());
    if first.decision_type == DecisionType::Allow {
        let profile = profile.as_ref().map(Arc::clone).expect("ALLOW needs a profile");
        assert!(profile.tool(&request.tool_name).is_some(), "ALLOW for an unlisted tool");
        assert!(first.approved_call.is_some());
    }
});
