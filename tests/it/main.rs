//! Integration tests, compiled as one binary: the crate against the shared vectors, and the
//! gate over real HTTP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod approvals;
mod audit;
mod cli;
mod common;
mod deploy;
mod determinism;
mod execute;
mod internal;
mod profiles;
mod proxy;
mod replay;
mod vectors;

/// The reference tool (examples/demo_tool.rs), compiled in so the bypass tests run against the
/// very code the example ships.
#[path = "../../examples/demo_tool.rs"]
#[allow(dead_code)]
mod demo_tool;
