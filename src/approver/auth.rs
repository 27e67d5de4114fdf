//! Who is approving: a local password file (Argon2id hashes) with sessions, or an identity
//! header set by an authenticating reverse proxy; and the CSRF tokens on every form.
//!
//! Owns checking credentials, the session table and the CSRF rule. It must never accept a
//! form without a CSRF token bound to the approver's session (or, in header mode, identity),
//! never keep more than [`MAX_SESSIONS`] sessions, and never log a password or a session id.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signed-in approvers at once; the oldest session goes first beyond it.
pub const MAX_SESSIONS: usize = 10_000;
/// A session ends this long after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
pub const SESSION_COOKIE: &str = "ecl_approver_session";
pub const LOGIN_COOKIE: &str = "ecl_approver_login";
/// Longest accepted identity (user name or header value).
const MAX_IDENTITY: usize = 256;

/// `name:$argon2id$…` lines, as `ecl-gate approver passwd` prints them.
#[derive(Debug, Default)]
pub struct Passwords {
    hashes: BTreeMap<String, String>,
}

impl Passwords {
    pub fn load(path: &Path) -> Result<Passwords, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
        let mut hashes = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!(
                    "`{}` line {}: expected `name:$argon2id$…`",
                    path.display(),
                    index + 1
                ));
            };
            if !is_identity(name) {
                return Err(format!(
                    "`{}` line {}: `{name}` is not a valid approver name",
                    path.display(),
                    index + 1
                ));
            }
            PasswordHash::new(hash).map_err(|err| {
                format!(
                    "`{}` line {}: not a PHC password hash: {err}",
                    path.display(),
                    index + 1
                )
            })?;
            hashes.insert(name.to_owned(), hash.to_owned());
        }
        if hashes.is_empty() {
            return Err(format!("`{}` names no approver", path.display()));
        }
        Ok(Passwords { hashes })
    }

    /// Slow on purpose (Argon2id); call it off the async threads. An unknown name costs the
    /// same as a wrong password, so timing does not tell which names exist.
    pub fn check(&self, name: &str, password: &str) -> bool {
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ww1lY0HxPKoyQRJAXkdS+vzj1RrrnDrsa0mYOyrk2Mo";
        let (hash, known) = match self.hashes.get(name) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY, false),
        };
        let verified = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        verified && known
    }
}

/// A new Argon2id hash (default parameters) of `password`: what `approver passwd` prints.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| err.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// A name an approver may go by: printable ASCII without spaces, `:` or quotes; it becomes a
/// token's `iss` and appears in HTML (escaped anyway).
pub fn is_identity(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTITY
        && name.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b':' | b'"' | b'\'' | b'<' | b'>' | b'\\')
        })
}

/// Failed sign-ins a name may have within [`LOCKOUT`] before it is refused unheard.
pub const MAX_FAILURES: usize = 5;
/// How long failures count, and how long a locked name stays locked.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Names whose failures are remembered at once; the oldest goes first beyond it.
const MAX_TRACKED_NAMES: usize = 10_000;

/// Failed sign-ins by name: guessing a password costs a slow hash per try and stops after
/// [`MAX_FAILURES`] tries per [`LOCKOUT`].
#[derive(Debug, Default)]
pub struct Failures {
    by_name: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Failures {
    /// `Some(wait)` while `name` is locked out.
    pub fn locked(&self, name: &str) -> Option<Duration> {
        let table = self.by_name.lock().ok()?;
        let recent: Vec<&Instant> = table
            .get(name)?
            .iter()
            .filter(|t| t.elapsed() < LOCKOUT)
            .collect();
        if recent.len() < MAX_FAILURES {
            return None;
        }
        recent
            .iter()
            .map(|t| LOCKOUT.saturating_sub(t.elapsed()))
            .min()
    }

    pub fn failed(&self, name: &str) {
        let Ok(mut table) = self.by_name.lock() else {
            return;
        };
        if table.len() >= MAX_TRACKED_NAMES && !table.contains_key(name) {
            table.retain(|_, times| times.iter().any(|t| t.elapsed() < LOCKOUT));
            if table.len() >= MAX_TRACKED_NAMES {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, times)| times.last().copied())
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }
        let times = table
            .entry(name.chars().take(MAX_IDENTITY).collect())
            .or_default();
        times.retain(|t| t.elapsed() < LOCKOUT);
        times.push(Instant::now());
    }

    pub fn succeeded(&self, name: &str) {
        if let Ok(mut table) = self.by_name.lock() {
            table.remove(name);
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    identity: String,
    started: Instant,
}

/// Random 32 bytes, hex: session ids and login nonces.
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
    Ok(hex::encode(bytes))
}

/// Sessions by id, and the key CSRF tokens are derived with.
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    csrf_key: [u8; 32],
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new() -> Result<Sessions, String> {
        let mut csrf_key = [0u8; 32];
        getrandom::getrandom(&mut csrf_key).map_err(|err| format!("no randomness: {err}"))?;
        Ok(Sessions {
            table: Mutex::new(HashMap::new()),
            csrf_key,
        })
    }

    /// Starts a session for `identity`; returns its id (the cookie's value).
    pub fn start(&self, identity: &str) -> Result<String, String> {
        let id = random_token()?;
        let mut table = self
            .table
            .lock()
            .map_err(|_| "session table poisoned".to_owned())?;
        table.retain(|_, s| s.started.elapsed() < SESSION_LIFETIME);
        if table.len() >= MAX_SESSIONS {
            if let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        table.insert(
            id.clone(),
            Session {
                identity: identity.to_owned(),
                started: Instant::now(),
            },
        );
        Ok(id)
    }

    pub fn identity(&self, id: &str) -> Option<String> {
        let table = self.table.lock().ok()?;
        table
            .get(id)
            .filter(|s| s.started.elapsed() < SESSION_LIFETIME)
            .map(|s| s.identity.clone())
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(id);
        }
    }

    /// The CSRF token for forms of the approver known by `binding` (the session id, or in
    /// header mode the identity): an HMAC a cross-site page cannot compute or read.
    pub fn csrf_token(&self, binding: &str) -> String {
        hex::encode(self.mac(binding))
    }

    pub fn csrf_ok(&self, binding: &str, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.csrf_key) else {
            return false;
        };
        mac.update(b"csrf\0");
        mac.update(binding.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&given).is_ok()
    }

    fn mac(&self, binding: &str) -> Vec<u8> {
        match Hmac::<Sha256>::new_from_slice(&self.csrf_key) {
            Ok(mut mac) => {
                mac.update(b"csrf\0");
                mac.update(binding.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_checks_names_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        let hash = hash_password("correct horse").unwrap();
        std::fs::write(&path, format!("# approvers\nalice:{hash}\n")).unwrap();
        let passwords = Passwords::load(&path).unwrap();
        assert!(passwords.check("alice", "correct horse"));
        assert!(!passwords.check("alice", "wrong"));
        assert!(!passwords.check("mallory", "correct horse"));
    }

    #[test]
    fn a_bad_password_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        std::fs::write(&path, "alice:plaintext\n").unwrap();
        let err = Passwords::load(&path).unwrap_err();
        assert!(err.contains("line 1: not a PHC password hash"), "{err}");
    }

    #[test]
    fn a_name_is_locked_after_repeated_failures_and_others_are_not() {
        let failures = Failures::default();
        for _ in 0..MAX_FAILURES - 1 {
            failures.failed("alice");
        }
        assert_eq!(failures.locked("alice"), None);
        failures.failed("alice");
        let wait = failures.locked("alice").unwrap();
        assert!(
            wait > Duration::from_secs(14 * 60) && wait <= LOCKOUT,
            "{wait:?}"
        );
        assert_eq!(failures.locked("bob"), None);
        failures.succeeded("alice");
        assert_eq!(failures.locked("alice"), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let sessions = Sessions::new().unwrap();
        let a = sessions.start("alice").unwrap();
        let b = sessions.start("bob").unwrap();
        let token = sessions.csrf_token(&a);
        assert!(sessions.csrf_ok(&a, &token));
        assert!(!sessions.csrf_ok(&b, &token));
        assert!(!sessions.csrf_ok(&a, ""));
        assert_eq!(sessions.identity(&a).as_deref(), Some("alice"));
        sessions.end(&a);
        assert_eq!(sessions.identity(&a), None);
    }
}
