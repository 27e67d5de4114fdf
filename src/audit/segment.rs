//! The names of a chain's files on disk: the active file, its rolled segments, and the files
//! the gate creates beside them.
//!
//! - The active file keeps the configured name (`audit/ecl-audit.log`); the writer appends to
//!   it and holds an exclusive lock on it.
//! - Rotation renames nothing the chain depends on: it gives the active file a second name,
//!   `<name>.<first-seq>` (the `seq` of its first record, zero-padded to [`SEQ_DIGITS`] digits so
//!   that names sort like seqs and cannot be mistaken for a pid in the configured name), then
//!   puts a fresh file under the active name. Rolled segments are never written again.
//! - `.<name>.next` is the fresh file while it is being prepared (hidden, never holds a record).
//! - `<name>.checkpoints` holds the chain's signed checkpoints (append-only).
//! - `<name>.tampered-<unix-seconds>` holds a bad tail that `--audit-repair` moved out of the
//!   chain; it is evidence and is never deleted.
//!
//! Restart finds the chain head in the active file, or, when that is empty, in the newest
//! rolled segment. This module only computes names and lists directories; it must never
//! create, rename or remove a file.

use std::io;
use std::path::{Path, PathBuf};

/// Width of the seq in a rolled segment's name: every `u64` fits.
pub const SEQ_DIGITS: usize = 20;

const TAMPERED: &str = ".tampered-";

/// `<name>.checkpoints`: the signed tree heads of the chain (see `tree`); not a chain file.
pub const CHECKPOINTS_SUFFIX: &str = ".checkpoints";

/// The directory holding `path` (`.` for a bare file name).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<active>.<first_seq>`: the name a segment gets when it is rolled.
pub(super) fn rolled_path(active: &Path, first_seq: u64) -> PathBuf {
    active.with_file_name(format!("{}.{first_seq:0SEQ_DIGITS$}", file_name(active)))
}

/// `.<active>.next`: where the next active file is prepared.
pub(super) fn next_path(active: &Path) -> PathBuf {
    active.with_file_name(format!(".{}.next", file_name(active)))
}

/// The first of `<active>.tampered-<unix_secs>`, `…-1`, `…-2`, … that does not exist yet.
pub(super) fn set_aside_path(active: &Path, unix_secs: u64) -> PathBuf {
    let stem = format!("{}{TAMPERED}{unix_secs}", file_name(active));
    let mut candidate = active.with_file_name(&stem);
    let mut n = 1u32;
    while candidate.symlink_metadata().is_ok() {
        candidate = active.with_file_name(format!("{stem}-{n}"));
        n += 1;
    }
    candidate
}

/// Splits a rolled segment's file name into the active file's name and the first seq.
pub fn split_rolled(file_name: &str) -> Option<(&str, u64)> {
    let (base, digits) = file_name.rsplit_once('.')?;
    if base.is_empty() || digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// A bad tail set aside by `--audit-repair`: not part of any chain.
pub fn is_set_aside(file_name: &str) -> bool {
    file_name.contains(TAMPERED)
}

/// A chain's checkpoints file: not part of any chain.
pub fn is_checkpoints(file_name: &str) -> bool {
    file_name.ends_with(CHECKPOINTS_SUFFIX)
}

/// The rolled segments of the chain whose active file is `active`, oldest first.
pub fn rolled_segments(active: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let name = file_name(active);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir_of(active))? {
        let entry = entry?;
        let entry_name = entry.file_name();
        let Some(entry_name) = entry_name.to_str() else {
            continue;
        };
        if let Some((base, seq)) = split_rolled(entry_name) {
            if base == name && entry.file_type()?.is_file() {
                found.push((seq, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_names_round_trip_and_sort_like_seqs() {
        let active = Path::new("audit/ecl_audit_123.log");
        let rolled = rolled_path(active, 4200);
        assert_eq!(
            rolled,
            Path::new("audit/ecl_audit_123.log.00000000000000004200")
        );
        let name = rolled.file_name().unwrap().to_str().unwrap();
        assert_eq!(split_rolled(name), Some(("ecl_audit_123.log", 4200)));
        assert!(rolled_path(active, 999) < rolled_path(active, 1000));
        assert_eq!(
            split_rolled(&format!("a.{}", u64::MAX)),
            Some(("a", u64::MAX))
        );
    }

    // A configured name that ends in digits (a pid) must not read as a rolled segment.
    #[test]
    fn names_that_are_not_rolled_segments() {
        for name in [
            "ecl_audit.12345",
            "ecl.log",
            ".00000000000000000001",
            "a.0000000000000000000x",
            "a.99999999999999999999",
            "a.000000000000000000001",
        ] {
            assert_eq!(split_rolled(name), None, "{name}");
        }
    }

    #[test]
    fn side_files_sit_beside_the_active_file() {
        assert_eq!(next_path(Path::new("x/a.log")), Path::new("x/.a.log.next"));
        assert_eq!(dir_of(Path::new("a.log")), Path::new("."));
        let dir = tempfile::tempdir().unwrap();
        let active = dir.path().join("a.log");
        let first = set_aside_path(&active, 7);
        assert_eq!(first, dir.path().join("a.log.tampered-7"));
        std::fs::write(&first, "x").unwrap();
        assert_eq!(
            set_aside_path(&active, 7),
            dir.path().join("a.log.tampered-7-1")
        );
        assert!(is_set_aside("a.log.tampered-7-1"));
    }

    #[test]
    fn rolled_segments_lists_only_this_chain_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let active = dir.path().join("a.log");
        for name in [
            "a.log.00000000000000000300",
            "a.log.00000000000000000000",
            "a.log.00000000000000000100",
            "b.log.00000000000000000200",
            "a.log.tampered-5",
            "a.log",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let seqs: Vec<u64> = rolled_segments(&active)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [0, 100, 300]);
    }
}
