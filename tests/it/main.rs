//! Integration tests, compiled as one binary: the crate against the shared vectors, and the
//! gate over real HTTP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod approvals;
mod audit;
mod cli;
mod common;
mod crashtest;
mod determinism;
mod execute;
mod hostile;
mod internal;
mod profiles;
mod props;
mod replay;
mod schemas;
mod vectors;
