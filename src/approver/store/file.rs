//! The approver's pending escalations in one append-only JSON Lines file (the default store).
//!
//! Owns the file and the in-memory indices built from it: the entries by intent, and three
//! ordered sets (pending by when asked, decided by when decided, everything by expiry) kept
//! up to date at every change, so an inbox page is a range read and pruning pops expired
//! entries off the front instead of scanning all of them. Each change (a notification
//! received, an approval, a rejection) is one line, written and fdatasync'ed before it takes
//! effect; at start the file is replayed (notifications re-verified under the gate keys) and
//! rewritten without what has expired, so it never grows past the live entries. It must never
//! record a second decision for an intent, and never serve an entry past its expiry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::notify::wire::{self, Notification};

use super::{
    check_pending, Cursor, DecideError, Entry, InboxPage, Received, Status, StoreError,
    DECIDED_ROWS, PAGE_ROWS,
};

/// One line of the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
enum Event {
    Notified {
        at: u64,
        /// The gate's signed notification, exactly as received: re-verified at every start.
        jws: String,
    },
    Approved {
        intent_hash: String,
        at: u64,
        by: String,
        token: String,
        jti: String,
        expires_at: u64,
    },
    Rejected {
        intent_hash: String,
        at: u64,
        by: String,
        reason: String,
    },
}

pub struct FileStore {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
    /// Pending entries by (asked at, intent): the inbox reads it backwards.
    pending: BTreeSet<Cursor>,
    /// Decided entries by (decided at, intent).
    decided: BTreeSet<(u64, String)>,
    /// Every entry by (gone at, intent): pruning pops from the front.
    expiry: BTreeSet<(u64, String)>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Replays `path` (creating it when missing), drops what expired before `now`, and
    /// rewrites the file with the live entries only.
    pub fn open(
        path: &Path,
        gate_keys: &BTreeMap<String, VerifyingKey>,
        now: u64,
    ) -> Result<FileStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut entries: HashMap<String, Entry> = HashMap::new();
        // Lines in the order of the live entries' first appearance, rewritten below.
        let mut kept: Vec<Event> = Vec::new();
        match File::open(path) {
            Ok(file) => {
                let mut lines = io::BufReader::new(file).split(b'\n').enumerate().peekable();
                while let Some((index, line)) = lines.next() {
                    let line = line.map_err(open_err)?;
                    let last = lines.peek().is_none();
                    let event: Event = match serde_json::from_slice(&line) {
                        Ok(event) => event,
                        // A torn last line was never acknowledged: it is dropped.
                        Err(_) if last => {
                            tracing::warn!(path = %path.display(), line = index + 1, "dropping a torn last line of the state file");
                            continue;
                        }
                        Err(err) => {
                            return Err(StoreError::Corrupt {
                                path: path.to_owned(),
                                line: index + 1,
                                why: err.to_string(),
                            })
                        }
                    };
                    apply(&mut entries, &event, gate_keys, path, index + 1);
                    kept.push(event);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(open_err(err)),
        }
        entries.retain(|_, entry| entry.is_live(now));
        kept.retain(|event| {
            entries.contains_key(intent_of(event, gate_keys).as_deref().unwrap_or(""))
        });

        let fresh = path.with_extension("jsonl.tmp");
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(open_err)?;
        for event in &kept {
            out.write_all(&line_of(event)).map_err(open_err)?;
        }
        out.sync_all().map_err(open_err)?;
        std::fs::rename(&fresh, path).map_err(open_err)?;
        let file = OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let mut store = FileStore {
            path: path.to_owned(),
            file,
            entries: HashMap::new(),
            pending: BTreeSet::new(),
            decided: BTreeSet::new(),
            expiry: BTreeSet::new(),
        };
        for (_, entry) in entries {
            store.insert(entry);
        }
        Ok(store)
    }

    /// Adds `entry` to the map and its indices.
    fn insert(&mut self, entry: Entry) {
        let intent = entry.notification.intent_hash.clone();
        self.index(&entry);
        self.entries.insert(intent, entry);
    }

    fn index(&mut self, entry: &Entry) {
        let intent = &entry.notification.intent_hash;
        match entry.status.decided_at() {
            None => self.pending.insert(entry.position()),
            Some(at) => self.decided.insert((at, intent.clone())),
        };
        self.expiry.insert((entry.expires_at(), intent.clone()));
    }

    fn unindex(&mut self, entry: &Entry) {
        let intent = &entry.notification.intent_hash;
        match entry.status.decided_at() {
            None => self.pending.remove(&entry.position()),
            Some(at) => self.decided.remove(&(at, intent.clone())),
        };
        self.expiry.remove(&(entry.expires_at(), intent.clone()));
    }

    pub fn get(&self, intent_hash: &str, now: u64) -> Option<&Entry> {
        self.entries.get(intent_hash).filter(|e| e.is_live(now))
    }

    /// One inbox page: up to [`PAGE_ROWS`] pending entries older than `before`, newest
    /// first, and on the first page the latest decisions.
    pub fn page(&mut self, now: u64, before: Option<&Cursor>) -> InboxPage {
        self.prune(now);
        let newest_first: Box<dyn Iterator<Item = &Cursor>> = match before {
            Some(cursor) => Box::new(self.pending.range(..cursor).rev()),
            None => Box::new(self.pending.iter().rev()),
        };
        let mut pending: Vec<Entry> = newest_first
            .take(PAGE_ROWS + 1)
            .filter_map(|at| self.entries.get(&at.intent_hash).cloned())
            .collect();
        let older = (pending.len() > PAGE_ROWS).then(|| {
            pending.truncate(PAGE_ROWS);
            pending.last().map(Entry::position)
        });
        let decided = if before.is_none() {
            self.decided
                .iter()
                .rev()
                .take(DECIDED_ROWS)
                .filter_map(|(_, intent)| self.entries.get(intent).cloned())
                .collect()
        } else {
            Vec::new()
        };
        InboxPage {
            pending,
            pending_total: self.pending.len(),
            older: older.flatten(),
            decided,
        }
    }

    /// Live pending entries.
    pub fn pending(&mut self, now: u64) -> usize {
        self.prune(now);
        self.pending.len()
    }

    /// Whether a notification for this intent would change anything.
    pub fn is_duplicate(&self, intent_hash: &str, now: u64) -> bool {
        self.get(intent_hash, now).is_some()
    }

    /// Records a verified notification (`jws` is its token as received).
    pub fn receive(
        &mut self,
        notification: Notification,
        jws: &str,
        now: u64,
    ) -> Result<Received, StoreError> {
        if self.is_duplicate(&notification.intent_hash, now) {
            return Ok(Received::Duplicate);
        }
        self.write(&Event::Notified {
            at: now,
            jws: jws.to_owned(),
        })?;
        self.prune(now);
        // A known intent that is no longer live (not pruned yet) is replaced.
        if let Some(old) = self.entries.remove(&notification.intent_hash) {
            self.unindex(&old);
        }
        self.insert(Entry {
            notification,
            received_at: now,
            status: Status::Pending,
        });
        Ok(Received::New)
    }

    /// Checks that `intent_hash` can still be decided at `now`.
    pub fn check_pending(&self, intent_hash: &str, now: u64) -> Result<&Entry, DecideError> {
        let entry = self
            .entries
            .get(intent_hash)
            .ok_or_else(|| DecideError::Unknown(intent_hash.to_owned()))?;
        check_pending(entry, now)?;
        Ok(entry)
    }

    /// Records a decision already checked with [`Store::check_pending`] (under the same lock).
    pub fn decide(&mut self, intent_hash: &str, status: Status) -> Result<(), StoreError> {
        let event = match &status {
            Status::Pending => return Ok(()),
            Status::Approved {
                at,
                by,
                token,
                jti,
                expires_at,
            } => Event::Approved {
                intent_hash: intent_hash.to_owned(),
                at: *at,
                by: by.clone(),
                token: token.clone(),
                jti: jti.clone(),
                expires_at: *expires_at,
            },
            Status::Rejected { at, by, reason } => Event::Rejected {
                intent_hash: intent_hash.to_owned(),
                at: *at,
                by: by.clone(),
                reason: reason.clone(),
            },
        };
        self.write(&event)?;
        if let Some(mut entry) = self.entries.remove(intent_hash) {
            self.unindex(&entry);
            entry.status = status;
            self.insert(entry);
        }
        Ok(())
    }

    /// Forgets expired entries (the file forgets them at the next start): only those, found
    /// at the front of the expiry index.
    pub fn prune(&mut self, now: u64) {
        while self
            .expiry
            .first()
            .is_some_and(|(gone_at, _)| *gone_at <= now)
        {
            let Some((gone_at, intent)) = self.expiry.pop_first() else {
                break;
            };
            if self.entries.get(&intent).map(Entry::expires_at) == Some(gone_at) {
                if let Some(entry) = self.entries.remove(&intent) {
                    self.unindex(&entry);
                }
            }
        }
    }

    fn write(&mut self, event: &Event) -> Result<(), StoreError> {
        self.file
            .write_all(&line_of(event))
            .and_then(|()| self.file.sync_data())
            .map_err(StoreError::Write)
    }
}

fn line_of(event: &Event) -> Vec<u8> {
    // Serializing plain strings and integers cannot fail.
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    line
}

fn intent_of(event: &Event, gate_keys: &BTreeMap<String, VerifyingKey>) -> Option<String> {
    match event {
        Event::Notified { jws, .. } => wire::verify(jws, gate_keys).ok().map(|n| n.intent_hash),
        Event::Approved { intent_hash, .. } | Event::Rejected { intent_hash, .. } => {
            Some(intent_hash.clone())
        }
    }
}

fn apply(
    entries: &mut HashMap<String, Entry>,
    event: &Event,
    gate_keys: &BTreeMap<String, VerifyingKey>,
    path: &Path,
    line: usize,
) {
    match event {
        Event::Notified { at, jws } => match wire::verify(jws, gate_keys) {
            Ok(notification) => {
                entries
                    .entry(notification.intent_hash.clone())
                    .or_insert(Entry {
                        notification,
                        received_at: *at,
                        status: Status::Pending,
                    });
            }
            // The gate key was rotated away: its escalations are no longer trusted.
            Err(err) => {
                tracing::warn!(path = %path.display(), line, error = %err, "dropping a stored notification that no longer verifies")
            }
        },
        Event::Approved {
            intent_hash,
            at,
            by,
            token,
            jti,
            expires_at,
        } => {
            if let Some(entry) = entries.get_mut(intent_hash) {
                entry.status = Status::Approved {
                    at: *at,
                    by: by.clone(),
                    token: token.clone(),
                    jti: jti.clone(),
                    expires_at: *expires_at,
                };
            }
        }
        Event::Rejected {
            intent_hash,
            at,
            by,
            reason,
        } => {
            if let Some(entry) = entries.get_mut(intent_hash) {
                entry.status = Status::Rejected {
                    at: *at,
                    by: by.clone(),
                    reason: reason.clone(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Value;
    use crate::notify::wire::RecordRef;
    use ed25519_dalek::SigningKey;

    fn notification(n: u8, decided_at: u64) -> Notification {
        Notification {
            gate_kid: "gate".into(),
            intent_hash: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            request_id: format!("r-{n}"),
            provenance_id: "prov".into(),
            actor: Value::object([("principal_id", "agent:7".into())]),
            caller: None,
            tool_name: "payments.transfer".into(),
            tool_args: Value::object([("amount", 5000u64.into())]),
            profile_id: "example".into(),
            profile_version: "1.0.0".into(),
            profile_ref_hash: "sha256:00".into(),
            rules: vec!["$.amount".into()],
            detail: "too much".into(),
            record: RecordRef {
                stream: "s".into(),
                seq: 1,
                record_hash: "sha256:11".into(),
            },
            decided_at,
            expires_at: decided_at + 100,
        }
    }

    fn keys(key: &SigningKey) -> BTreeMap<String, VerifyingKey> {
        BTreeMap::from([("gate".to_owned(), key.verifying_key())])
    }

    fn receive(store: &mut FileStore, key: &SigningKey, n: Notification, now: u64) -> Received {
        let jws = wire::sign(key, "gate", &n);
        store.receive(n, &jws, now).unwrap()
    }

    #[test]
    fn survives_a_restart_and_forgets_what_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.jsonl");
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut store = FileStore::open(&path, &keys(&key), 1000).unwrap();
        assert_eq!(
            receive(&mut store, &key, notification(1, 1000), 1000),
            Received::New
        );
        assert_eq!(
            receive(&mut store, &key, notification(1, 1000), 1001),
            Received::Duplicate
        );
        receive(&mut store, &key, notification(2, 1010), 1010);
        receive(&mut store, &key, notification(3, 900), 1010);
        let one = notification(1, 1000).intent_hash;
        store.check_pending(&one, 1020).unwrap();
        store
            .decide(
                &one,
                Status::Rejected {
                    at: 1020,
                    by: "alice".into(),
                    reason: "no".into(),
                },
            )
            .unwrap();
        drop(store);

        // At 1050 entry 3 (expires 1000) is gone; 1 stays rejected; 2 pending, listed first.
        let store = FileStore::open(&path, &keys(&key), 1050).unwrap();
        let mut store = store;
        let page = store.page(1050, None);
        let pending: Vec<_> = page
            .pending
            .iter()
            .map(|e| e.notification.request_id.clone())
            .collect();
        let decided: Vec<_> = page
            .decided
            .iter()
            .map(|e| e.notification.request_id.clone())
            .collect();
        assert_eq!(
            (pending, decided),
            (vec!["r-2".to_owned()], vec!["r-1".to_owned()])
        );
        assert!(matches!(
            store.check_pending(&one, 1050),
            Err(DecideError::AlreadyDecided {
                what: "rejected",
                ..
            })
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            3,
            "the expired entry's line was compacted away"
        );
    }

    #[test]
    fn an_expired_entry_cannot_be_decided() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut store = FileStore::open(&dir.path().join("s.jsonl"), &keys(&key), 1000).unwrap();
        receive(&mut store, &key, notification(1, 1000), 1000);
        let hash = notification(1, 1000).intent_hash;
        assert_eq!(
            store.check_pending(&hash, 1100).unwrap_err(),
            DecideError::Expired(hash.clone())
        );
        assert!(store.get(&hash, 1100).is_none());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_middle_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut store = FileStore::open(&path, &keys(&key), 1000).unwrap();
        receive(&mut store, &key, notification(1, 1000), 1000);
        drop(store);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"event\":\"appro").unwrap();
        drop(file);
        let mut store = FileStore::open(&path, &keys(&key), 1000).unwrap();
        assert_eq!(store.pending(1000), 1);
        drop(store);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let err = FileStore::open(&path, &keys(&key), 1000).unwrap_err();
        assert!(err.to_string().contains("line 1 is unreadable"), "{err}");
    }

    #[test]
    fn a_notification_from_a_key_no_longer_trusted_is_dropped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let old = SigningKey::from_bytes(&[3; 32]);
        let mut store = FileStore::open(&path, &keys(&old), 1000).unwrap();
        receive(&mut store, &old, notification(1, 1000), 1000);
        drop(store);
        let new = SigningKey::from_bytes(&[4; 32]);
        let mut store = FileStore::open(&path, &keys(&new), 1000).unwrap();
        assert_eq!(store.pending(1000), 0);
    }

    fn notification_n(n: u16, decided_at: u64) -> Notification {
        let mut out = notification(0, decided_at);
        out.intent_hash = format!("sha256:{}", format!("{n:04x}").repeat(16));
        out.request_id = format!("r-{n}");
        out
    }

    #[test]
    fn pages_walk_every_pending_entry_newest_first_and_pruning_keeps_the_indices() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut store = FileStore::open(&dir.path().join("s.jsonl"), &keys(&key), 1000).unwrap();
        // 450 pending; several asked in the same second, so the intent breaks ties.
        for n in 0..450u16 {
            let mut asked = notification_n(n, 1000 + u64::from(n / 3));
            asked.expires_at = 5000 + u64::from(n);
            receive(&mut store, &key, asked, 1000);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store.page(1000, cursor.as_ref());
            pages += 1;
            assert_eq!(page.pending_total, 450);
            assert!(page.pending.len() <= PAGE_ROWS);
            seen.extend(page.pending.iter().map(Entry::position));
            match page.older {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut expected = seen.clone();
        expected.sort();
        expected.reverse();
        expected.dedup();
        assert_eq!(seen, expected, "newest first, each exactly once");
        assert_eq!(seen.len(), 450);

        // Entries 0..=99 are live until 5000..=5099: at 5099 they are gone from every index.
        assert_eq!(store.pending(5099), 350);
        assert_eq!(store.page(5099, None).pending_total, 350);
        assert!(store.entries.len() == 350 && store.expiry.len() == 350);
    }
}
