//! The approver's pending escalations: where they are kept, and the one way to decide one.
//!
//! Owns the types both backends share and [`Escalations`], which picks the backend: a local
//! JSON Lines file ([`file`], the default: one approver) or a PostgreSQL table ([`postgres`],
//! `--db`: several approver replicas sharing state). Either way a decision goes through
//! [`Escalations::decide`], which holds the entry (a lock, or the database row) while the
//! token is signed and audited, so two approvers racing get one token between them. It must
//! never record a second decision for an intent, and never serve an entry past its expiry.

pub mod file;
pub mod postgres;

use std::future::Future;

use crate::notify::wire::{self, Notification};

pub use file::FileStore;
pub use postgres::PgStore;

/// Where an escalation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved {
        at: u64,
        by: String,
        token: String,
        jti: String,
        expires_at: u64,
    },
    Rejected {
        at: u64,
        by: String,
        reason: String,
    },
}

impl Status {
    /// When it was decided; `None` while pending.
    pub fn decided_at(&self) -> Option<u64> {
        match self {
            Status::Pending => None,
            Status::Approved { at, .. } | Status::Rejected { at, .. } => Some(*at),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub notification: Notification,
    /// When the approver received it, seconds since 1970.
    pub received_at: u64,
    pub status: Status,
}

impl Entry {
    /// After this the entry is gone: an approved one when its token expires, the others when
    /// the escalation itself does.
    pub fn expires_at(&self) -> u64 {
        match &self.status {
            Status::Approved { expires_at, .. } => *expires_at,
            _ => self.notification.expires_at,
        }
    }

    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at()
    }

    /// Where it sorts in the inbox: newest asked first.
    pub fn position(&self) -> Cursor {
        Cursor {
            asked_at: self.notification.decided_at,
            intent_hash: self.notification.intent_hash.clone(),
        }
    }
}

/// A place in the pending list, newest first: a page starts strictly after (older than) it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// When the gate decided to escalate, seconds since 1970.
    pub asked_at: u64,
    pub intent_hash: String,
}

impl Cursor {
    /// `ASKED_AT.INTENT_HASH`, as the inbox's "Older" link carries it.
    pub fn to_param(&self) -> String {
        format!("{}.{}", self.asked_at, self.intent_hash)
    }

    /// The inverse of [`Cursor::to_param`]; `None` for anything else (never a path, never
    /// an unbounded string: the intent hash must be `sha256:` and 64 hex digits).
    pub fn parse(text: &str) -> Option<Cursor> {
        let (asked_at, intent_hash) = text.split_once('.')?;
        if asked_at.is_empty() || asked_at.len() > 20 || !wire::is_hash(intent_hash) {
            return None;
        }
        Some(Cursor {
            asked_at: asked_at.parse().ok()?,
            intent_hash: intent_hash.to_owned(),
        })
    }
}

/// Pending rows on one inbox page: a person works from the top, and the page stays fast
/// however many wait.
pub const PAGE_ROWS: usize = 200;
/// Recent decisions shown under the first page.
pub const DECIDED_ROWS: usize = 50;

/// One inbox page.
#[derive(Debug, Clone, Default)]
pub struct InboxPage {
    /// At most [`PAGE_ROWS`], newest first, older than the page's cursor.
    pub pending: Vec<Entry>,
    /// Every live pending escalation, on all pages.
    pub pending_total: usize,
    /// Where the next (older) page starts, when there is one.
    pub older: Option<Cursor>,
    /// Recent decisions, newest first: on the first page only.
    pub decided: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state file `{}`: {source}", .path.display())]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("state file `{}` line {line} is unreadable: {why}", .path.display())]
    Corrupt {
        path: std::path::PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write the state file: {0}")]
    Write(#[source] std::io::Error),
    #[error("the escalations database: {0}")]
    Database(String),
}

/// Why an approval or rejection was not recorded. Messages go to the approver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no escalation `{0}` is known here (it may have expired and been removed)")]
    Unknown(String),
    #[error("escalation `{0}` has expired; the agent must ask again")]
    Expired(String),
    #[error(
        "escalation `{intent_hash}` was already {what} by `{by}`; no second decision is recorded"
    )]
    AlreadyDecided {
        intent_hash: String,
        what: &'static str,
        by: String,
    },
}

/// Why [`Escalations::decide`] recorded nothing.
#[derive(Debug)]
pub enum DecideFailure {
    /// The escalation cannot be decided (unknown, expired, decided already).
    Refused(DecideError),
    /// The caller's step failed before anything was recorded: `what` could not be made or
    /// written (the message says it to the approver).
    NotRecorded(&'static str),
    /// The state could not be read or written; nothing was handed out.
    Store(StoreError),
}

/// What a notification did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    New,
    /// The intent is known already (a retry, or the same call asked again): nothing changed.
    Duplicate,
}

/// Why [`Escalations::receive`] stored nothing.
#[derive(Debug)]
pub enum ReceiveFailure {
    /// The audit record could not be written.
    Audit,
    Store(StoreError),
}

/// The pending escalations, in a file or in PostgreSQL.
pub enum Escalations {
    File(tokio::sync::Mutex<FileStore>),
    Postgres(PgStore),
}

impl std::fmt::Debug for Escalations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Escalations {
    pub fn kind(&self) -> &'static str {
        match self {
            Escalations::File(_) => "file",
            Escalations::Postgres(_) => "postgres",
        }
    }

    /// Whether another process may change an entry: then waiting agents must look again
    /// now and then, as no local event tells them.
    pub fn is_shared(&self) -> bool {
        matches!(self, Escalations::Postgres(_))
    }

    pub async fn get(&self, intent_hash: &str, now: u64) -> Result<Option<Entry>, StoreError> {
        match self {
            Escalations::File(store) => Ok(store.lock().await.get(intent_hash, now).cloned()),
            Escalations::Postgres(pg) => pg.get(intent_hash, now).await,
        }
    }

    /// The inbox page starting after `before` (the newest when `None`).
    pub async fn page(&self, now: u64, before: Option<&Cursor>) -> Result<InboxPage, StoreError> {
        match self {
            Escalations::File(store) => Ok(store.lock().await.page(now, before)),
            Escalations::Postgres(pg) => pg.page(now, before).await,
        }
    }

    /// Live pending escalations.
    pub async fn pending(&self, now: u64) -> Result<usize, StoreError> {
        match self {
            Escalations::File(store) => Ok(store.lock().await.pending(now)),
            Escalations::Postgres(pg) => pg.pending(now).await,
        }
    }

    /// Records a verified notification (`jws` is its token as received). `audit` runs first,
    /// and only for a notification not known yet; when it fails nothing is stored.
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
        match self {
            Escalations::File(store) => {
                let mut store = store.lock().await;
                if store.get(&notification.intent_hash, now).is_some() {
                    return Ok(Received::Duplicate);
                }
                if !audit().await {
                    return Err(ReceiveFailure::Audit);
                }
                tokio::task::block_in_place(|| store.receive(notification, jws, now))
                    .map_err(ReceiveFailure::Store)
            }
            Escalations::Postgres(pg) => pg.receive(notification, jws, now, audit).await,
        }
    }

    /// Decides `intent_hash` at `now`: `decision` gets the pending entry, signs and audits,
    /// and returns the status to record. The entry is held (the file store's lock, or the
    /// row's lock in a transaction) from the check to the write, so of two approvers racing
    /// exactly one reaches `decision`; the other is refused with who decided.
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
        match self {
            Escalations::File(store) => {
                let mut store = store.lock().await;
                let entry = store
                    .check_pending(intent_hash, now)
                    .map_err(DecideFailure::Refused)?
                    .clone();
                let status = decision(entry).await?;
                tokio::task::block_in_place(|| store.decide(intent_hash, status.clone()))
                    .map_err(DecideFailure::Store)?;
                Ok(status)
            }
            Escalations::Postgres(pg) => pg.decide(intent_hash, now, decision).await,
        }
    }
}

/// Whether a pending entry can still be decided at `now`, else why not.
pub fn check_pending(entry: &Entry, now: u64) -> Result<(), DecideError> {
    let intent_hash = &entry.notification.intent_hash;
    match &entry.status {
        Status::Approved { by, .. } => Err(DecideError::AlreadyDecided {
            intent_hash: intent_hash.clone(),
            what: "approved",
            by: by.clone(),
        }),
        Status::Rejected { by, .. } => Err(DecideError::AlreadyDecided {
            intent_hash: intent_hash.clone(),
            what: "rejected",
            by: by.clone(),
        }),
        Status::Pending if !entry.is_live(now) => Err(DecideError::Expired(intent_hash.clone())),
        Status::Pending => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_anything_else() {
        let cursor = Cursor {
            asked_at: 1_795_999_083,
            intent_hash: format!("sha256:{}", "ab".repeat(32)),
        };
        assert_eq!(Cursor::parse(&cursor.to_param()), Some(cursor));
        for bad in [
            "",
            "1",
            ".sha256:00",
            "x.sha256:abab",
            "1.sha256:../../etc/passwd",
            &format!("99999999999999999999999.sha256:{}", "ab".repeat(32)),
            &format!("-1.sha256:{}", "ab".repeat(32)),
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
