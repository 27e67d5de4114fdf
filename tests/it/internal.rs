//! A panic while deciding still ends in an audited DENY INTERNAL_ERROR.

use std::time::SystemTime;

use ecl_gate::decision::{Attempt, Context, Decision};

use crate::common::*;
use crate::execute::assert_verify_ok;

fn panicking_decide(
    _: Attempt<'_>,
    _: &Context,
    _: &ecl_gate::caller::Caller,
    _: SystemTime,
) -> Decision {
    panic!("injected fault: decide panicked")
}

#[tokio::test]
async fn a_panic_is_an_audited_internal_error() {
    let gate = TestGate::start_with(Options {
        decide: Some(panicking_decide),
        ..Options::default()
    })
    .await;
    let body = bytes_of(&request(
        "r-p",
        "email.send",
        email_args("bob@example.com", "hi"),
    ));
    for _ in 0..2 {
        let (status, decision) = gate.execute(body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(decision["decision_type"].str(), "DENY");
        assert_eq!(decision["reason_code"].str(), "INTERNAL_ERROR");
        assert!(decision["approved_call"].is_null());
        assert_eq!(
            decision["request_hash"].str(),
            ecl_gate::canonical::sha256_prefixed(&body)
        );
        let record = gate.record_for(&decision);
        assert_eq!(record["reason_code"].str(), "INTERNAL_ERROR");
    }
    // The gate survived the panics and its chain is intact.
    assert_verify_ok(&gate.audit_path, 2);
}
