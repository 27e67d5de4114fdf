//! Integration tests, compiled as one binary: the crate against the shared vectors, and the
//! gate over real HTTP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod approvals;
mod approver;
mod approver_pg;
mod audit;
mod audit_cli;
mod browser;
mod callers;
mod checkpoints;
mod cli;
mod common;
mod crashtest;
mod deploy;
mod determinism;
mod execute;
mod hostile;
mod internal;
mod ledger_pg;
mod pg;
mod profiles;
mod props;
mod proxy;
mod proxy_mtls;
mod proxy_ops;
mod replay;
mod schemas;
mod shadow;
mod ship;
mod tls;
mod vectors;

/// The reference tool (examples/demo_tool.rs), compiled in so the bypass tests run against the
/// very code the example ships.
#[path = "../../examples/demo_tool.rs"]
#[allow(dead_code)]
mod demo_tool;
