//! The approver's pending escalations in PostgreSQL (`approver serve --db postgres://…`): one
//! table several approver replicas share, so any of them shows, decides and serves any
//! escalation.
//!
//! Owns the table `ecl_approver_escalations` (created idempotently at start, versioned with
//! the fleet's other tables) and every statement on it. Races are decided by the database: a
//! decision locks its row (`SELECT … FOR UPDATE`) in a transaction, the caller signs and
//! audits while holding it, and the row changes only `WHERE state = 'pending'`; a second
//! approver waits for the lock and then finds it decided. Each row keeps the gate's signed
//! notification, re-verified under the configured gate keys when read (a verified one is
//! remembered with its exact JWS), so a row written into the database by anyone else is never shown
//! as an escalation. It must never log the database password, and never hand out a token
//! whose row did not commit.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use ed25519_dalek::VerifyingKey;
use tokio_postgres::Row;

use crate::notify::wire::{self, Notification};
use crate::postgres::{self, PgSettings, Schema, SchemaError};

use super::{
    check_pending, Cursor, DecideError, DecideFailure, Entry, InboxPage, ReceiveFailure, Received,
    Status, StoreError, DECIDED_ROWS, PAGE_ROWS,
};

/// How often rows past their end are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per purge statement, so one purge never holds locks for long.
const PURGE_BATCH: i64 = 10_000;

/// Verified notifications remembered; past this the memory starts over (they re-verify).
const MAX_REMEMBERED: usize = 50_000;

const SCHEMA: Schema<'static> = Schema {
    component: "approver",
    version: 1,
    create: "CREATE TABLE ecl_approver_escalations (
                 intent_hash text PRIMARY KEY,
                 jws text NOT NULL,
                 asked_at bigint NOT NULL,
                 received_at bigint NOT NULL,
                 expires_at bigint NOT NULL,
                 state text NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
                 decided_at bigint,
                 decided_by text,
                 reason text,
                 token text,
                 jti text,
                 token_expires_at bigint,
                 live_until bigint NOT NULL);
             CREATE INDEX ecl_approver_escalations_inbox
                 ON ecl_approver_escalations (state, asked_at DESC, intent_hash DESC);
             CREATE INDEX ecl_approver_escalations_decided
                 ON ecl_approver_escalations (decided_at DESC) WHERE state <> 'pending';
             CREATE INDEX ecl_approver_escalations_live_until
                 ON ecl_approver_escalations (live_until);",
    probe: "SELECT intent_hash, jws, asked_at, received_at, expires_at, state, decided_at, \
            decided_by, reason, token, jti, token_expires_at, live_until \
            FROM ecl_approver_escalations LIMIT 0",
};

const COLUMNS: &str = "intent_hash, jws, received_at, state, decided_at, decided_by, reason, \
                       token, jti, token_expires_at";

/// A new escalation, or one replacing a row of the same intent that is no longer live (the
/// same call asked again after the last one expired). Zero rows: a live one is there.
const INSERT: &str = "INSERT INTO ecl_approver_escalations \
     (intent_hash, jws, asked_at, received_at, expires_at, state, live_until) \
     VALUES ($1, $2, $3, $4, $5, 'pending', $5) \
     ON CONFLICT (intent_hash) DO UPDATE SET \
       jws = EXCLUDED.jws, asked_at = EXCLUDED.asked_at, received_at = EXCLUDED.received_at, \
       expires_at = EXCLUDED.expires_at, state = 'pending', decided_at = NULL, \
       decided_by = NULL, reason = NULL, token = NULL, jti = NULL, token_expires_at = NULL, \
       live_until = EXCLUDED.live_until \
     WHERE ecl_approver_escalations.live_until <= EXCLUDED.received_at";

const APPROVE: &str = "UPDATE ecl_approver_escalations SET state = 'approved', \
     decided_at = $2, decided_by = $3, token = $4, jti = $5, token_expires_at = $6, \
     live_until = $6 WHERE intent_hash = $1 AND state = 'pending'";

const REJECT: &str = "UPDATE ecl_approver_escalations SET state = 'rejected', \
     decided_at = $2, decided_by = $3, reason = $4 \
     WHERE intent_hash = $1 AND state = 'pending'";

const PURGE: &str = "DELETE FROM ecl_approver_escalations WHERE ctid IN \
     (SELECT ctid FROM ecl_approver_escalations WHERE live_until <= $1 LIMIT $2)";

/// A notification that verified: its JWS exactly, and what it says.
type Verified = (String, Arc<Notification>);

pub struct PgStore {
    pool: Pool,
    /// The bound on one operation, pool wait included.
    timeout: Duration,
    /// The redacted URL, for messages.
    url: String,
    gate_keys: BTreeMap<String, VerifyingKey>,
    /// Notifications already verified, by intent: the JWS's hash and what it says.
    verified: Mutex<HashMap<String, Verified>>,
}

fn sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl PgStore {
    /// Connects, creates the table if missing (or checks it), and returns the store; an
    /// error refuses the approver's start and names what is wrong.
    pub async fn connect(
        settings: &PgSettings,
        gate_keys: BTreeMap<String, VerifyingKey>,
    ) -> Result<PgStore, SchemaError> {
        let pool = postgres::pool(settings).map_err(|err| SchemaError::Unreachable {
            url: postgres::redact(&settings.url),
            reason: err.to_string(),
        })?;
        postgres::ensure_schema(&pool, &settings.url, &SCHEMA).await?;
        Ok(PgStore {
            pool,
            timeout: settings.statement_timeout,
            url: postgres::redact(&settings.url),
            gate_keys,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|err| StoreError::Database(postgres::describe_pool(&err)))
    }

    /// Runs `work` within the operation bound.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Database(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            })
    }

    /// The notification a row holds, verified under the gate keys (or remembered as such).
    fn notification(&self, intent_hash: &str, jws: &str) -> Option<Arc<Notification>> {
        if let Ok(verified) = self.verified.lock() {
            if let Some((known, notification)) = verified.get(intent_hash) {
                if known == jws {
                    return Some(Arc::clone(notification));
                }
            }
        }
        match wire::verify(jws, &self.gate_keys) {
            Ok(notification) if notification.intent_hash == intent_hash => {
                let notification = Arc::new(notification);
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= MAX_REMEMBERED {
                        verified.clear();
                    }
                    verified.insert(
                        intent_hash.to_owned(),
                        (jws.to_owned(), Arc::clone(&notification)),
                    );
                }
                Some(notification)
            }
            Ok(_) => {
                tracing::warn!(
                    intent_hash,
                    "ignoring a stored escalation whose notification names another intent"
                );
                None
            }
            // The gate key was rotated away, or the row was not written by an approver.
            Err(err) => {
                tracing::warn!(intent_hash, error = %err, "ignoring a stored escalation whose notification does not verify");
                None
            }
        }
    }

    fn entry(&self, row: &Row) -> Result<Option<Entry>, StoreError> {
        let column = |err: tokio_postgres::Error| StoreError::Database(postgres::describe(&err));
        let intent_hash: String = row.try_get("intent_hash").map_err(column)?;
        let jws: String = row.try_get("jws").map_err(column)?;
        let Some(notification) = self.notification(&intent_hash, &jws) else {
            return Ok(None);
        };
        let state: String = row.try_get("state").map_err(column)?;
        let decided_at = row
            .try_get::<_, Option<i64>>("decided_at")
            .map_err(column)?
            .map_or(0, unsigned);
        let decided_by: Option<String> = row.try_get("decided_by").map_err(column)?;
        let corrupt = |what: &str| {
            StoreError::Database(format!(
                "row `{intent_hash}` is {what}: edited outside the approver?"
            ))
        };
        let status = match state.as_str() {
            "pending" => Status::Pending,
            "approved" => Status::Approved {
                at: decided_at,
                by: decided_by.ok_or_else(|| corrupt("approved without an approver"))?,
                token: row
                    .try_get::<_, Option<String>>("token")
                    .map_err(column)?
                    .ok_or_else(|| corrupt("approved without a token"))?,
                jti: row
                    .try_get::<_, Option<String>>("jti")
                    .map_err(column)?
                    .unwrap_or_default(),
                expires_at: row
                    .try_get::<_, Option<i64>>("token_expires_at")
                    .map_err(column)?
                    .map_or(0, unsigned),
            },
            "rejected" => Status::Rejected {
                at: decided_at,
                by: decided_by.ok_or_else(|| corrupt("rejected without an approver"))?,
                reason: row
                    .try_get::<_, Option<String>>("reason")
                    .map_err(column)?
                    .unwrap_or_default(),
            },
            _ => return Err(corrupt("in an unknown state")),
        };
        Ok(Some(Entry {
            notification: Notification::clone(&notification),
            received_at: unsigned(row.try_get("received_at").map_err(column)?),
            status,
        }))
    }

    fn entries(&self, rows: &[Row]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(entry) = self.entry(row)? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    pub async fn get(&self, intent_hash: &str, now: u64) -> Result<Option<Entry>, StoreError> {
        let rows = self
            .bounded(async {
                let client = self.client().await?;
                client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM ecl_approver_escalations \
                             WHERE intent_hash = $1 AND live_until > $2"
                        ),
                        &[&intent_hash, &sql(now)],
                    )
                    .await
                    .map_err(db)
            })
            .await?;
        Ok(self.entries(&rows)?.into_iter().next())
    }

    pub async fn pending(&self, now: u64) -> Result<usize, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM ecl_approver_escalations \
                     WHERE state = 'pending' AND expires_at > $1",
                    &[&sql(now)],
                )
                .await
                .map_err(db)?;
            Ok(usize::try_from(row.try_get::<_, i64>(0).map_err(db)?).unwrap_or(0))
        })
        .await
    }

    pub async fn page(&self, now: u64, before: Option<&Cursor>) -> Result<InboxPage, StoreError> {
        let (asked_at, intent_hash) = match before {
            Some(cursor) => (sql(cursor.asked_at), cursor.intent_hash.as_str()),
            // After every real intent hash (`sha256:` sorts before `~`).
            None => (i64::MAX, "~"),
        };
        let limit = i64::try_from(PAGE_ROWS + 1).unwrap_or(i64::MAX);
        let (pending_rows, total, decided_rows) = self
            .bounded(async {
                let client = self.client().await?;
                let pending = client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM ecl_approver_escalations \
                             WHERE state = 'pending' AND expires_at > $1 \
                               AND (asked_at, intent_hash) < ($2, $3) \
                             ORDER BY asked_at DESC, intent_hash DESC LIMIT $4"
                        ),
                        &[&sql(now), &asked_at, &intent_hash, &limit],
                    )
                    .await
                    .map_err(db)?;
                let total: i64 = client
                    .query_one(
                        "SELECT count(*) FROM ecl_approver_escalations \
                         WHERE state = 'pending' AND expires_at > $1",
                        &[&sql(now)],
                    )
                    .await
                    .map_err(db)?
                    .try_get(0)
                    .map_err(db)?;
                let decided = if before.is_none() {
                    client
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM ecl_approver_escalations \
                                 WHERE state <> 'pending' AND live_until > $1 \
                                 ORDER BY decided_at DESC LIMIT $2"
                            ),
                            &[&sql(now), &i64::try_from(DECIDED_ROWS).unwrap_or(i64::MAX)],
                        )
                        .await
                        .map_err(db)?
                } else {
                    Vec::new()
                };
                Ok((pending, total, decided))
            })
            .await?;
        let mut pending = self.entries(&pending_rows)?;
        let older = (pending_rows.len() > PAGE_ROWS).then(|| {
            pending.truncate(PAGE_ROWS);
            pending.last().map(Entry::position)
        });
        Ok(InboxPage {
            pending,
            pending_total: usize::try_from(total).unwrap_or(0),
            older: older.flatten(),
            decided: self.entries(&decided_rows)?,
        })
    }

    pub async fn receive<F, Fut>(
        &self,
        notification: Notification,
        jws: &str,
        now: u64,
        audit: F,
    ) -> Result<Received, ReceiveFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let intent_hash = notification.intent_hash.as_str();
        let known = self
            .bounded(async {
                let client = self.client().await?;
                let row = client
                    .query_opt(
                        "SELECT 1 FROM ecl_approver_escalations \
                         WHERE intent_hash = $1 AND live_until > $2",
                        &[&intent_hash, &sql(now)],
                    )
                    .await
                    .map_err(db)?;
                Ok(row.is_some())
            })
            .await
            .map_err(ReceiveFailure::Store)?;
        if known {
            return Ok(Received::Duplicate);
        }
        // Audited before it is stored, like the file store. Two replicas receiving the same
        // retry at once may both audit it; the insert below keeps one row.
        if !audit().await {
            return Err(ReceiveFailure::Audit);
        }
        let inserted = self
            .bounded(async {
                let client = self.client().await?;
                client
                    .execute(
                        INSERT,
                        &[
                            &intent_hash,
                            &jws,
                            &sql(notification.decided_at),
                            &sql(now),
                            &sql(notification.expires_at),
                        ],
                    )
                    .await
                    .map_err(db)
            })
            .await
            .map_err(ReceiveFailure::Store)?;
        Ok(if inserted == 1 {
            Received::New
        } else {
            Received::Duplicate
        })
    }

    pub async fn decide<F, Fut>(
        &self,
        intent_hash: &str,
        now: u64,
        decision: F,
    ) -> Result<Status, DecideFailure>
    where
        F: FnOnce(Entry) -> Fut,
        Fut: Future<Output = Result<Status, DecideFailure>>,
    {
        let store = |err: StoreError| DecideFailure::Store(err);
        let mut client = self.bounded(self.client()).await.map_err(store)?;
        let tx = self
            .bounded(async { client.transaction().await.map_err(db) })
            .await
            .map_err(store)?;
        // The row stays locked until commit: a racing approver waits here, then sees it decided.
        let row = self
            .bounded(async {
                tx.query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM ecl_approver_escalations \
                         WHERE intent_hash = $1 FOR UPDATE"
                    ),
                    &[&intent_hash],
                )
                .await
                .map_err(db)
            })
            .await
            .map_err(store)?;
        let entry = match row {
            Some(row) => self.entry(&row).map_err(store)?,
            None => None,
        };
        let Some(entry) = entry.filter(|e| match e.status {
            // Gone means gone, as in the file store: only a pending one reports "expired".
            Status::Pending => true,
            _ => e.is_live(now),
        }) else {
            return Err(DecideFailure::Refused(DecideError::Unknown(
                intent_hash.to_owned(),
            )));
        };
        check_pending(&entry, now).map_err(DecideFailure::Refused)?;
        let status = decision(entry).await?;
        let changed = self
            .bounded(async {
                match &status {
                    Status::Approved {
                        at,
                        by,
                        token,
                        jti,
                        expires_at,
                    } => tx
                        .execute(
                            APPROVE,
                            &[&intent_hash, &sql(*at), by, token, jti, &sql(*expires_at)],
                        )
                        .await
                        .map_err(db),
                    Status::Rejected { at, by, reason } => tx
                        .execute(REJECT, &[&intent_hash, &sql(*at), by, reason])
                        .await
                        .map_err(db),
                    Status::Pending => Ok(0),
                }
            })
            .await
            .map_err(store)?;
        if changed != 1 {
            // INVARIANT: the row is locked and was pending; anything else is an edit from
            // outside, and then no token leaves.
            return Err(store(StoreError::Database(format!(
                "escalation `{intent_hash}` changed while it was locked; nothing was recorded"
            ))));
        }
        self.bounded(async { tx.commit().await.map_err(db) })
            .await
            .map_err(store)?;
        Ok(status)
    }

    /// Deletes rows past their end (an escalation's `exp`, an approved one's token expiry),
    /// in bounded batches; returns how many.
    pub async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        let client = self.bounded(self.client()).await?;
        let mut total = 0;
        loop {
            let deleted = self
                .bounded(async {
                    client
                        .execute(PURGE, &[&sql(now), &PURGE_BATCH])
                        .await
                        .map_err(db)
                })
                .await?;
            total += deleted;
            if deleted < PURGE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

fn db(err: tokio_postgres::Error) -> StoreError {
    StoreError::Database(postgres::describe(&err))
}
