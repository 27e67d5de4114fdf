//! The profile store: `{profiles_root}/{id}/{version}.json`, loaded once, then immutable.
//!
//! Untrusted ids and versions never reach the file system unless they match the SPEC §7
//! charset. A version's bytes are fixed the first time it loads; a version that appears later
//! is found without a restart. Failures are not cached, so a fixed file is picked up.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::ProfileLookup;

use super::{parse_profile_with, Profile, ProfileError, Shared};

/// Profiles larger than this are refused unread: a profile is policy, not data.
pub const MAX_PROFILE_BYTES: u64 = 4 * 1024 * 1024;

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` without `..` (SPEC §7).
pub fn is_valid_ref(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 128
        && first.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.contains("..")
}

type Versions = HashMap<String, Arc<Profile>>;

#[derive(Debug)]
pub struct ProfileStore {
    root: PathBuf,
    // INVARIANT: an entry, once inserted, is never replaced or removed.
    loaded: RwLock<HashMap<String, Versions>>,
    shared: Shared,
}

impl ProfileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProfileStore {
            root: root.into(),
            loaded: RwLock::new(HashMap::new()),
            shared: Shared::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many profile versions are loaded.
    pub fn loaded_count(&self) -> usize {
        self.loaded
            .read()
            .map(|loaded| loaded.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    /// The profile `id` at `version`, from the cache or, the first time, from disk.
    pub fn get(&self, id: &str, version: &str) -> ProfileLookup {
        if let Some(profile) = self.cached(id, version) {
            return Ok(profile);
        }
        let profile = Arc::new(self.load(id, version)?);
        let Ok(mut loaded) = self.loaded.write() else {
            return Ok(profile);
        };
        // Two first loads may race; the first to land fixes the version's bytes for good.
        let entry = loaded
            .entry(id.to_owned())
            .or_default()
            .entry(version.to_owned())
            .or_insert(profile);
        Ok(Arc::clone(entry))
    }

    fn cached(&self, id: &str, version: &str) -> Option<Arc<Profile>> {
        let loaded = self.loaded.read().ok()?;
        loaded.get(id)?.get(version).cloned()
    }

    /// Reads and validates one version from disk, bypassing the cache.
    pub fn load(&self, id: &str, version: &str) -> Result<Profile, ProfileError> {
        let not_found = || ProfileError::NotFound {
            id: id.to_owned(),
            version: version.to_owned(),
        };
        if !is_valid_ref(id) || !is_valid_ref(version) {
            return Err(not_found());
        }
        let path = self.root.join(id).join(format!("{version}.json"));
        let bytes = read_bounded(&path).map_err(|err| match err {
            ReadError::Missing => not_found(),
            ReadError::TooLarge => ProfileError::Invalid {
                id: id.to_owned(),
                version: version.to_owned(),
                ref_hash: super::no_profile_hash(),
                message: format!("file is larger than {MAX_PROFILE_BYTES} bytes"),
            },
        })?;
        parse_profile_with(id, version, &bytes, &self.shared)
    }

    /// Distinct `pattern` sources compiled for the versions loaded so far.
    pub fn distinct_patterns(&self) -> usize {
        self.shared.pattern_count()
    }

    /// Distinct tool policies held for the versions loaded so far.
    pub fn distinct_tools(&self) -> usize {
        self.shared.tool_count()
    }

    /// Every `{id}/{version}.json` under the root, sorted; names outside the charset included,
    /// so `profiles check` can say they will never be served.
    pub fn list(&self) -> std::io::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        for id_entry in std::fs::read_dir(&self.root)? {
            let id_entry = id_entry?;
            if !id_entry.file_type()?.is_dir() {
                continue;
            }
            let id = id_entry.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(id_entry.path())? {
                let name = file?.file_name().to_string_lossy().into_owned();
                if let Some(version) = name.strip_suffix(".json") {
                    found.push((id.clone(), version.to_owned()));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

enum ReadError {
    Missing,
    TooLarge,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(|_| ReadError::Missing)?;
    let meta = file.metadata().map_err(|_| ReadError::Missing)?;
    if !meta.is_file() {
        return Err(ReadError::Missing);
    }
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The limit holds even if the file grows between metadata and read.
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| ReadError::Missing)?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_follow_the_spec_charset() {
        for good in ["example", "1.0.0", "a", "A-b_c.9", &"x".repeat(128)] {
            assert!(is_valid_ref(good), "{good} should be valid");
        }
        for bad in [
            "",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "%2e%2e",
            "a\0b",
            ".hidden",
            "-x",
            "a..b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_ref(bad), "{bad:?} should be refused");
        }
    }
}
