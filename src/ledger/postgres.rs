//! The single-use ledger in PostgreSQL (`approvals.ledger = "postgres://…"`): one table that
//! every gate of a fleet spends tokens in, so a token is honoured once across all of them.
//!
//! A spend is one autocommitted `INSERT … ON CONFLICT DO NOTHING`: the row count says whether
//! this call spent the token, and it is committed before the gate answers ALLOW. It must never
//! report a token as fresh when the statement failed, timed out or its outcome is unknown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use super::LedgerUnavailable;
use crate::approval::{Approval, Spend};
use crate::postgres::{self, PgSettings, Schema, SchemaError};

/// How often expired rows are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per purge statement, so one purge never holds locks for long.
const PURGE_BATCH: i64 = 10_000;

const SCHEMA: Schema<'static> = Schema {
    component: "approvals",
    version: 1,
    create: "CREATE TABLE ecl_approvals_spent (
                 kid text NOT NULL,
                 jti text NOT NULL,
                 exp bigint NOT NULL,
                 spent_at timestamptz NOT NULL DEFAULT now(),
                 spent_by text NOT NULL,
                 PRIMARY KEY (kid, jti));
             CREATE INDEX ecl_approvals_spent_exp ON ecl_approvals_spent (exp);",
    probe: "SELECT kid, jti, exp, spent_at, spent_by FROM ecl_approvals_spent LIMIT 0",
};

const SPEND: &str = "INSERT INTO ecl_approvals_spent (kid, jti, exp, spent_by) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (kid, jti) DO NOTHING";

const PURGE: &str = "DELETE FROM ecl_approvals_spent WHERE ctid IN \
                     (SELECT ctid FROM ecl_approvals_spent WHERE exp < $1 LIMIT $2)";

pub struct PgLedger {
    pool: Pool,
    /// The bound on one spend, pool wait included.
    timeout: Duration,
    /// Recorded with each spend: which gate spent it (its audit stream's host).
    spent_by: String,
    /// The redacted URL, for messages.
    url: String,
    health: Mutex<LedgerHealth>,
}

/// The ledger's state as last seen by a spend or a probe.
#[derive(Debug, Clone, Default)]
pub struct LedgerHealth {
    last_error: Option<String>,
    since: Option<Instant>,
}

impl LedgerHealth {
    /// `None` when the last spend or probe succeeded; else its error.
    pub fn unavailable(&self) -> Option<String> {
        self.last_error.clone()
    }
}

/// Opens the pool's connections now, so the first burst of approved calls does not pay for
/// (or time out on) the handshakes; a failure here is left for the first spend to report.
async fn warm_up(pool: &Pool, size: usize) {
    let opening = (0..size).map(|_| pool.get());
    let opened = futures_util::future::join_all(opening).await;
    let failed = opened.iter().filter(|c| c.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            size,
            "could not open every ledger connection at start"
        );
    }
}

impl PgLedger {
    /// Connects, creates the table if missing (or checks it), and returns the ledger; an
    /// error refuses the gate's start and names what is wrong.
    pub async fn connect(settings: &PgSettings, spent_by: &str) -> Result<PgLedger, SchemaError> {
        let pool = postgres::pool(settings).map_err(|err| SchemaError::Unreachable {
            url: postgres::redact(&settings.url),
            reason: err.to_string(),
        })?;
        postgres::ensure_schema(&pool, &settings.url, &SCHEMA).await?;
        warm_up(&pool, settings.pool_size).await;
        Ok(PgLedger {
            pool,
            timeout: settings.statement_timeout,
            spent_by: spent_by.to_owned(),
            url: postgres::redact(&settings.url),
            health: Mutex::new(LedgerHealth::default()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn spend(&self, approval: &Approval, _now: u64) -> Result<Spend, LedgerUnavailable> {
        let exp = i64::try_from(approval.expires_at).unwrap_or(i64::MAX);
        let attempt = async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|err| postgres::describe_pool(&err))?;
            let statement = client
                .prepare_cached(SPEND)
                .await
                .map_err(|err| postgres::describe(&err))?;
            client
                .execute(
                    &statement,
                    &[&approval.kid, &approval.jti, &exp, &self.spent_by],
                )
                .await
                .map_err(|err| postgres::describe(&err))
        };
        let outcome = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(1)) => Ok(Spend::Fresh),
            Ok(Ok(_)) => Ok(Spend::AlreadyUsed),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        self.observe(outcome.as_ref().err().cloned());
        outcome.map_err(LedgerUnavailable)
    }

    /// A cheap round trip, so readiness and the metric follow PostgreSQL between spends.
    pub async fn probe(&self) {
        let attempt = async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|err| postgres::describe_pool(&err))?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|err| postgres::describe(&err))
        };
        let error = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(_)) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        self.observe(error);
    }

    /// Deletes rows whose token expired before `before` (seconds since 1970); a token is
    /// refused as expired by the decision anyway, so its row is no longer needed.
    pub async fn purge(&self, before: u64) -> Result<u64, String> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let client = self
            .pool
            .get()
            .await
            .map_err(|err| postgres::describe_pool(&err))?;
        let mut total = 0;
        loop {
            let deleted = tokio::time::timeout(
                self.timeout,
                client.execute(PURGE, &[&before, &PURGE_BATCH]),
            )
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|err| postgres::describe(&err))?;
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub fn health(&self) -> LedgerHealth {
        self.health
            .lock()
            .map(|health| health.clone())
            .unwrap_or_else(|_| LedgerHealth {
                last_error: Some("ledger state lock poisoned".into()),
                since: None,
            })
    }

    fn observe(&self, error: Option<String>) {
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        match (&health.last_error, error) {
            (None, None) => {}
            (Some(_), None) => {
                let down_for = health.since.map(|since| since.elapsed());
                tracing::info!(url = %self.url, ?down_for, "single-use ledger is available again");
                *health = LedgerHealth::default();
            }
            (None, Some(reason)) => {
                tracing::error!(url = %self.url, error = %reason, "single-use ledger unavailable: approved calls are denied until it is back");
                health.last_error = Some(reason);
                health.since = Some(Instant::now());
            }
            (Some(_), Some(reason)) => health.last_error = Some(reason),
        }
    }
}
