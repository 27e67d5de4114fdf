//! The load generator behind `ecl-gate load`: keep-alive HTTP/1.1 connections sending
//! execution requests, each with its own `request_id`, and a latency histogram of the answers.
//!
//! Owns the request bodies (serialized once; per request only the id is spliced in), the check
//! that an answer is a well-formed decision, and the report. It must stay cheap per request,
//! because its CPU competes with the server it measures, and it must stop by itself: a run is
//! bounded by a request count or a deadline, every request by a timeout, every reconnect by a
//! retry limit.

mod body;
mod check;
mod run;
mod secure;

pub use body::{Scenario, Template, Workload};
pub use check::{check_full, Checked, Checker};
pub use run::{
    check_options, check_url, run, Latency, Limit, LoadError, Options, Progress, Report,
};
pub use secure::TlsFiles;
