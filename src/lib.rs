//! ecl-gate: a deterministic, fail-closed execution gate for AI agents' tool calls.
//!
//! The pure core — [`canonical`], [`request`], [`profile`] parsing and [`decision`] — decides;
//! the I/O around it — [`server`], [`audit`], the profile store and [`config`] — reads bytes,
//! writes evidence and answers. Nothing in the core touches a socket, a file or the clock.

pub mod admin;
pub mod approval;
pub mod approver;
pub mod audit;
pub mod auth;
pub mod caller;
pub mod canonical;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod decision;
pub mod grant;
pub mod jws;
pub mod ledger;
pub mod load;
pub mod merkle;
pub mod metrics;
pub mod notify;
pub mod postgres;
pub mod profile;
pub mod proxy;
pub mod reason;
mod reload;
pub mod replay;
pub mod request;
pub mod rfc3339;
pub mod server;
pub mod ship;
mod strict;
