//! The single-use ledger (`approvals.single_use`): a token's `jti` is honoured once until it
//! expires, also across restarts and across gate processes sharing the ledger file.
//!
//! I/O around the pure decision: `decide` says a call is approved; this ledger then says
//! whether that approval was already spent. Each line is `{"exp":…,"jti":…,"kid":…}`; the file
//! is locked while it is read and appended, so two processes cannot both spend one token.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::canonical::{self, Value};

use super::Approval;

pub struct UsedTokens {
    path: PathBuf,
    state: Mutex<Ledger>,
}

struct Ledger {
    file: File,
    /// How far this process has read the shared file.
    read_to: u64,
    /// `(kid, jti)` → `exp`, pruned once expired.
    spent: HashMap<(String, String), u64>,
}

/// Whether an approval could be spent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    Fresh,
    AlreadyUsed,
}

impl UsedTokens {
    pub fn open(path: &Path) -> std::io::Result<UsedTokens> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        Ok(UsedTokens {
            path: path.to_path_buf(),
            state: Mutex::new(Ledger {
                file,
                read_to: 0,
                spent: HashMap::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Spends `approval` at `now` (seconds since 1970); durable before it returns `Fresh`.
    pub fn spend(&self, approval: &Approval, now: u64) -> std::io::Result<Spend> {
        let mut ledger = self
            .state
            .lock()
            .map_err(|_| std::io::Error::other("single-use ledger lock poisoned"))?;
        ledger.file.lock()?;
        let result = ledger.spend_locked(approval, now);
        let unlocked = ledger.file.unlock();
        let spend = result?;
        unlocked?;
        Ok(spend)
    }
}

impl Ledger {
    fn spend_locked(&mut self, approval: &Approval, now: u64) -> std::io::Result<Spend> {
        self.catch_up()?;
        self.spent.retain(|_, exp| *exp > now);
        let key = (approval.kid.clone(), approval.jti.clone());
        if self.spent.contains_key(&key) {
            return Ok(Spend::AlreadyUsed);
        }
        let mut line = canonical::to_canonical(&Value::object([
            ("kid", approval.kid.as_str().into()),
            ("jti", approval.jti.as_str().into()),
            ("exp", approval.expires_at.into()),
        ]));
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.read_to += line.len() as u64;
        self.spent.insert(key, approval.expires_at);
        Ok(Spend::Fresh)
    }

    /// Reads what other processes (or an earlier run) appended since the last look.
    fn catch_up(&mut self) -> std::io::Result<()> {
        let end = self.file.seek(SeekFrom::End(0))?;
        if end <= self.read_to {
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(self.read_to))?;
        let mut reader = BufReader::new(&self.file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 || line.last() != Some(&b'\n') {
                // A torn last line was never acknowledged: its token was never spent.
                break;
            }
            self.read_to += read as u64;
            if let Ok(entry) = canonical::parse(&line[..read - 1]) {
                if let (Some(kid), Some(jti), Some(exp)) = (
                    entry["kid"].as_str(),
                    entry["jti"].as_str(),
                    entry["exp"].as_i64(),
                ) {
                    self.spent.insert(
                        (kid.to_owned(), jti.to_owned()),
                        u64::try_from(exp).unwrap_or(0),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(jti: &str, exp: u64) -> Approval {
        Approval {
            kid: "k".into(),
            issuer: "alice".into(),
            jti: jti.into(),
            issued_at: 0,
            expires_at: exp,
        }
    }

    #[test]
    fn a_token_is_spent_once_until_it_expires_also_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("used.jsonl");
        let ledger = UsedTokens::open(&path).unwrap();
        assert_eq!(ledger.spend(&approval("a", 100), 10).unwrap(), Spend::Fresh);
        assert_eq!(
            ledger.spend(&approval("a", 100), 11).unwrap(),
            Spend::AlreadyUsed
        );
        assert_eq!(ledger.spend(&approval("b", 100), 11).unwrap(), Spend::Fresh);
        drop(ledger);

        // A restart, or a second process sharing the file, sees what was spent.
        let reopened = UsedTokens::open(&path).unwrap();
        let other = UsedTokens::open(&path).unwrap();
        assert_eq!(
            reopened.spend(&approval("a", 100), 12).unwrap(),
            Spend::AlreadyUsed
        );
        assert_eq!(other.spend(&approval("c", 100), 12).unwrap(), Spend::Fresh);
        assert_eq!(
            reopened.spend(&approval("c", 100), 12).unwrap(),
            Spend::AlreadyUsed
        );
        // Once expired, an entry is forgotten (the token itself is refused as expired anyway).
        assert_eq!(
            reopened.spend(&approval("a", 100), 100).unwrap(),
            Spend::Fresh
        );
    }
}
