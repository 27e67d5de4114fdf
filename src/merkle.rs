//! The RFC 6962 / RFC 9162 Merkle tree over an audit stream's records.
//!
//! The hash chain (SPEC §8) proves that no record was edited, but a chain cut short still
//! verifies, and proving one record means handing over every record before it. The tree fixes
//! both: a signed root at a size pins every record up to it (truncation and rewrite show), and a
//! record's inclusion, or one root's consistency with a later one, takes O(log n) hashes.
//!
//! Leaf data is the record's canonical JSON line without its `\n`; leaf hash
//! `SHA-256(0x00 ‖ leaf)`, node hash `SHA-256(0x01 ‖ left ‖ right)`, empty tree `SHA-256("")`.
//!
//! - [`CompactRange`]: the writer's incremental state, O(log n) hashes.
//! - [`root`], [`inclusion_proof`], [`consistency_proof`]: computed from a slice of leaf hashes
//!   (the CLI streams a log's leaf hashes into memory: 32 bytes per record).
//! - [`verify_inclusion`], [`verify_consistency`]: the RFC 9162 §2.1.3.2 and §2.1.4.2
//!   algorithms, which must reject every malformed proof (the transparency-dev vectors).
//!
//! This module is pure: no I/O, no clock.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// Standard base64, as checkpoints and proofs print hashes.
pub fn to_base64(hash: &Hash) -> String {
    STANDARD.encode(hash)
}

/// Reads a base64 hash; anything but exactly 32 bytes is refused (a proof with a short or long
/// hash is malformed, not merely wrong).
pub fn hash_from_base64(text: &str) -> Result<Hash, String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| format!("`{text}` is not base64"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("a hash is 32 bytes, `{text}` holds {}", b.len()))
}

/// The roots of the perfect subtrees covering leaves `[0, size)`, largest first: one per set
/// bit of `size`. Appending merges the equal-sized subtrees at the right edge, so the state
/// stays at most 64 hashes and an append costs O(log n) hashes amortized O(1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    hashes: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn append(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing 1 bit of the old size is a subtree as large as the one being built.
        while size & 1 == 1 {
            if let Some(left) = self.hashes.pop() {
                hash = node_hash(&left, &hash);
            }
            size >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The tree head at the current size.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the audit path of leaf `index`, or `None` when it is not in the tree.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Option<Vec<Hash>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], proof);
        proof.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], proof);
        proof.push(root(&leaves[..k]));
    }
}

/// PROOF(m, D[n]): that the tree of the first `old_size` leaves is a prefix of the tree of all
/// `leaves`; `None` when `old_size` exceeds the tree. Empty for `old_size` 0 or `n`.
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Option<Vec<Hash>> {
    let m = usize::try_from(old_size).ok()?;
    if m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut proof);
    }
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has {got} hashes, a proof for these sizes has {want}")]
    WrongLength { got: usize, want: usize },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyTree,
    #[error("the proof is empty, but different sizes need one")]
    EmptyProof,
    #[error("size {old} is larger than size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("the roots of equal sizes differ")]
    RootsDiffer,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
    #[error("the proof does not lead to the older root")]
    OldRootMismatch,
}

/// Length of the inclusion proof of `index` in a tree of `size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    inner + border
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` under `root` of a tree of `size`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `old_size` (root `old_root`) is a prefix of
/// the tree of `new_size` (root `new_root`)?
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        // Every tree extends the empty one: such a "proof" proves nothing, and a caller asking
        // for one has the sizes wrong (RFC 9162 defines none).
        return Err(ProofError::EmptyTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootsDiffer)
        };
    }
    let power_of_two = old_size.is_power_of_two();
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if power_of_two {
        // The old tree is one complete subtree: its root starts the path.
        let old: Hash = old_root
            .try_into()
            .map_err(|_| ProofError::OldRootMismatch)?;
        path.push(old);
    }
    path.extend_from_slice(proof);
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::EmptyProof);
    };
    let mut f_r = *first;
    let mut s_r = *first;
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if f_r[..] != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_r[..] != *new_root || s_n != 0 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
