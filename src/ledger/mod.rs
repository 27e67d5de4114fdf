//! The single-use ledger behind `approvals.single_use`: where a spent approval token is
//! recorded so it is honoured once — in a local file (one host) or in PostgreSQL (a fleet).
//!
//! I/O around the pure decision: `decide` says a call is approved; the ledger then says
//! whether that approval was already spent. It must never answer "fresh" for a token it could
//! not record durably: every error is [`LedgerUnavailable`], which the caller turns into DENY.

mod postgres;

use std::sync::Arc;

use crate::approval::{Approval, Spend, UsedTokens};

pub use postgres::{LedgerHealth, PgLedger, PURGE_EVERY};

/// Where spent tokens are recorded.
#[derive(Clone)]
pub enum Ledger {
    File(Arc<UsedTokens>),
    Postgres(Arc<PgLedger>),
}

/// The ledger could not say whether a token is fresh; the approved call is denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("single-use ledger unavailable: {0}")]
pub struct LedgerUnavailable(pub String);

impl Ledger {
    /// Spends `approval` at `now` (seconds since 1970): `Fresh` only once it is durably
    /// recorded, `AlreadyUsed` when it was spent before (by this gate or any other).
    pub async fn spend(&self, approval: &Approval, now: u64) -> Result<Spend, LedgerUnavailable> {
        match self {
            Ledger::File(file) => {
                let (spender, approval) = (Arc::clone(file), approval.clone());
                match tokio::task::spawn_blocking(move || spender.spend(&approval, now)).await {
                    Ok(Ok(spend)) => Ok(spend),
                    Ok(Err(err)) => Err(LedgerUnavailable(format!(
                        "cannot write `{}`: {err}",
                        file.path().display()
                    ))),
                    Err(_) => Err(LedgerUnavailable("the ledger task failed".into())),
                }
            }
            Ledger::Postgres(pg) => pg.spend(approval, now).await,
        }
    }

    /// `None` when healthy (the file ledger reports through its spends); else why not.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Ledger::File(_) => None,
            Ledger::Postgres(pg) => pg.health().unavailable(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Ledger::File(_) => "file",
            Ledger::Postgres(_) => "postgres",
        }
    }
}
