//! The Merkle-tree side of `ecl-gate audit`: checking a log against signed checkpoints, and
//! making and checking inclusion and consistency proofs (issue 9).
//!
//! Every command first verifies the hash chain (so an edited or moved record is named by file,
//! line and seq), then reads the chain's leaves once more, keeping only what it needs: the
//! tree's roots at the checkpoints' sizes and the roots of a proof's subtrees, O(log n) hashes
//! however long the log. Each returns the text to print, or an error naming what failed and
//! where.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::audit::tree::{checkpoints_path, for_each_leaf};
use crate::audit::verify_paths;
use crate::checkpoint::{parse_note, parse_verifier, split_notes, verify_checkpoint, Checkpoint};
use crate::merkle::{
    consistency_ranges, empty_root, hash_from_base64, inclusion_ranges, leaf_hash, to_base64,
    verify_consistency, verify_inclusion, CompactRange, Hash, LeafRange, SubtreeRoots,
};

/// First line of an inclusion proof.
const PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// The one chain among `paths`, verified: its active file's name and its files, oldest first.
fn verified_chain(paths: &[PathBuf]) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let verification = verify_paths(paths).map_err(|f| f.to_string())?;
    let [chain] = verification.chains.as_slice() else {
        return Err(format!(
            "expected the files of one chain, found {} chains: give one log's files or directory",
            verification.chains.len()
        ));
    };
    chain
        .result
        .as_ref()
        .map_err(|f| format!("the hash chain is broken at {f}"))?;
    Ok((chain.name.clone(), chain.files.clone()))
}

/// What one pass over a chain's leaves found.
struct Scan {
    /// Records in the chain.
    size: u64,
    /// The tree's root at each asked-for size the chain reaches.
    roots: BTreeMap<u64, Hash>,
    /// The roots of the asked-for subtrees; `None` when the chain ends inside one.
    subtrees: Option<Vec<Hash>>,
}

fn scan(files: &[PathBuf], sizes: &[u64], subtrees: Vec<LeafRange>) -> Result<Scan, String> {
    let wanted: BTreeSet<u64> = sizes.iter().copied().collect();
    let mut roots = BTreeMap::new();
    if wanted.contains(&0) {
        roots.insert(0, empty_root());
    }
    let mut tree = CompactRange::new();
    let mut subtrees = SubtreeRoots::new(subtrees);
    for_each_leaf(files, |leaf| {
        tree.append(leaf);
        subtrees.push(leaf);
        if wanted.contains(&tree.size()) {
            roots.insert(tree.size(), tree.root());
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(Scan {
        size: tree.size(),
        roots,
        subtrees: subtrees.finish(),
    })
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} `{}`: {e}", path.display()))
}

/// A key file, or a verifier key given inline.
pub fn load_key(arg: &str) -> Result<VerifyingKey, String> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        read(path, "public key")?
    } else {
        arg.to_owned()
    };
    parse_verifier(&text).map_err(|e| format!("`{arg}` is not a public key: {e}"))
}

/// The notes of a checkpoint file (one note, or a `.checkpoints` file of many).
fn notes(path: &Path) -> Result<Vec<String>, String> {
    let text = read(path, "checkpoint")?;
    let (notes, torn) = split_notes(&text);
    if torn {
        return Err(format!(
            "`{}` ends with an incomplete checkpoint",
            path.display()
        ));
    }
    if notes.is_empty() {
        return Err(format!("`{}` holds no checkpoint", path.display()));
    }
    Ok(notes.into_iter().map(str::to_owned).collect())
}

/// Checks the log's tree at `cp.size` against `cp.root`; `matched` is the largest size an
/// earlier checkpoint matched at, to say where a rewrite happened.
fn check_tree(scan: &Scan, cp: &Checkpoint, matched: Option<u64>) -> Result<(), String> {
    let n = scan.size;
    if n < cp.size {
        return Err(format!(
            "log holds {n} records, checkpoint covers {}: truncated (seq {n}..={} missing)",
            cp.size,
            cp.size - 1
        ));
    }
    if scan.roots.get(&cp.size) != Some(&cp.root) {
        let from = matched.map_or(0, |m| m);
        return Err(format!(
            "the log's first {} records do not have the checkpoint's root: records were rewritten or reordered in seq {from}..={}",
            cp.size,
            cp.size.saturating_sub(1)
        ));
    }
    Ok(())
}

pub fn verify_against(paths: &[PathBuf], cp_path: &Path, key: &str) -> Result<String, String> {
    let key = load_key(key)?;
    let notes = notes(cp_path)?;
    let (name, files) = verified_chain(paths)?;
    let checkpoints = notes
        .iter()
        .enumerate()
        .map(|(i, note)| {
            verify_checkpoint(note, &key)
                .map_err(|e| format!("checkpoint {} of `{}`: {e}", i + 1, cp_path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<u64> = checkpoints.iter().map(|cp| cp.size).collect();
    let scan = scan(&files, &sizes, Vec::new())?;
    let mut matched: Option<u64> = None;
    let mut newest = None;
    for (i, cp) in checkpoints.into_iter().enumerate() {
        check_tree(&scan, &cp, matched).map_err(|e| {
            format!(
                "`{}` against checkpoint {} of `{}` (size {}): {e}",
                name.display(),
                i + 1,
                cp_path.display(),
                cp.size
            )
        })?;
        matched = Some(matched.map_or(cp.size, |m| m.max(cp.size)));
        newest = Some(cp);
    }
    let cp = newest.ok_or("no checkpoint")?;
    Ok(format!(
        "ok: `{}`: {} records; the tree at size {} has the root of checkpoint `{}` ({} checkpoint(s) checked, signatures valid); {} record(s) after it are not covered yet\n",
        name.display(),
        scan.size,
        cp.size,
        cp.origin,
        notes.len(),
        scan.size - cp.size
    ))
}

pub fn prove(paths: &[PathBuf], seq: u64, cp_path: Option<&Path>) -> Result<String, String> {
    let (name, files) = verified_chain(paths)?;
    let cp_path = cp_path.map_or_else(|| checkpoints_path(&name), Path::to_path_buf);
    let note = notes(&cp_path)?.pop().ok_or("no checkpoint")?;
    let cp = Checkpoint::parse_body(parse_note(&note)?.body)
        .map_err(|e| format!("`{}`: {e}", cp_path.display()))?;
    let subtrees = inclusion_ranges(seq, cp.size).unwrap_or_default();
    let scan = scan(&files, &[cp.size], subtrees)?;
    check_tree(&scan, &cp, None)?;
    if seq >= cp.size {
        return Err(format!(
            "seq {seq} is not covered by the checkpoint (size {}): wait for the next one",
            cp.size
        ));
    }
    let path = scan.subtrees.ok_or("seq outside the tree")?;
    let mut out = format!("{PROOF_HEADER}\nindex {seq}\n");
    for hash in path {
        out.push_str(&to_base64(&hash));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&note);
    Ok(out)
}

/// Parses `c2sp.org/tlog-proof@v1`: header, `index N`, audit path, blank line, checkpoint.
fn parse_proof(text: &str) -> Result<(u64, Vec<Hash>, &str), String> {
    let (head, note) = text
        .split_once("\n\n")
        .ok_or("the proof has no blank line before its checkpoint")?;
    let mut lines = head.split('\n');
    if lines.next() != Some(PROOF_HEADER) {
        return Err(format!("the proof does not start with `{PROOF_HEADER}`"));
    }
    let index = lines
        .next()
        .and_then(|l| l.strip_prefix("index "))
        .and_then(|n| n.parse().ok())
        .ok_or("the proof's second line is not `index <decimal>`")?;
    let path = lines
        .map(|l| hash_from_base64(l).map_err(|e| format!("the proof's audit path: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((index, path, note))
}

pub fn check_proof(proof: &Path, key: &str, record: &Path) -> Result<String, String> {
    let key = load_key(key)?;
    let text = read(proof, "proof")?;
    let (index, path, note) = parse_proof(&text)?;
    let cp = verify_checkpoint(note, &key).map_err(|e| format!("the proof's checkpoint: {e}"))?;
    let line = read(record, "record")?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    if line.contains('\n') {
        return Err(format!(
            "`{}` holds more than one line: give the one record",
            record.display()
        ));
    }
    // The seq is the leaf index; say so plainly when the wrong record was handed in.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(seq) = value.get("seq").and_then(serde_json::Value::as_u64) {
            if seq != index {
                return Err(format!(
                    "the record is seq {seq}, the proof is for index {index}"
                ));
            }
        }
    }
    verify_inclusion(index, cp.size, &leaf_hash(line.as_bytes()), &path, &cp.root).map_err(
        |e| format!("the record is not leaf {index} of the tree the checkpoint signs: {e}"),
    )?;
    Ok(format!(
        "ok: the record is leaf {index} of `{}` at size {}, in a checkpoint signed by the given key\n",
        cp.origin, cp.size
    ))
}

fn checkpoint_of(path: &Path, key: Option<&VerifyingKey>) -> Result<Checkpoint, String> {
    let note = notes(path)?.pop().ok_or("no checkpoint")?;
    let cp = match key {
        Some(key) => verify_checkpoint(&note, key),
        None => parse_note(&note).and_then(|n| Checkpoint::parse_body(n.body)),
    };
    cp.map_err(|e| format!("`{}`: {e}", path.display()))
}

pub fn consistency(
    old: &Path,
    new: &Path,
    paths: &[PathBuf],
    key: Option<&str>,
) -> Result<String, String> {
    let key = key.map(load_key).transpose()?;
    let old_cp = checkpoint_of(old, key.as_ref())?;
    let new_cp = checkpoint_of(new, key.as_ref())?;
    if old_cp.origin != new_cp.origin {
        return Err(format!(
            "the checkpoints are of different logs: `{}` and `{}`",
            old_cp.origin, new_cp.origin
        ));
    }
    if old_cp.size > new_cp.size {
        return Err(format!(
            "the old checkpoint (size {}) is larger than the new one (size {}): give them oldest first",
            old_cp.size, new_cp.size
        ));
    }
    let (_, files) = verified_chain(paths)?;
    let subtrees = consistency_ranges(old_cp.size, new_cp.size).ok_or("sizes outside the tree")?;
    let scan = scan(&files, &[new_cp.size], subtrees)?;
    check_tree(&scan, &new_cp, None).map_err(|e| format!("against the new checkpoint: {e}"))?;
    let proof = scan.subtrees.ok_or("sizes outside the tree")?;
    let mut out = format!(
        "consistency proof from size {} to size {}:\n",
        old_cp.size, new_cp.size
    );
    for hash in &proof {
        out.push_str(&to_base64(hash));
        out.push('\n');
    }
    if old_cp.size > 0 {
        verify_consistency(old_cp.size, new_cp.size, &old_cp.root, &new_cp.root, &proof)
            .map_err(|e| {
                format!(
                    "the new checkpoint does not extend the old one: the log was rewritten within seq 0..={}: {e}",
                    old_cp.size - 1
                )
            })?;
    }
    let signed = if key.is_some() {
        "both signed by the given key"
    } else {
        "signatures NOT checked (no --pubkey)"
    };
    out.push_str(&format!(
        "ok: the checkpoint at size {} extends the one at size {} ({signed})\n",
        new_cp.size, old_cp.size
    ));
    Ok(out)
}
