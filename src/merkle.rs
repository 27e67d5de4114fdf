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
//! - [`inclusion_ranges`], [`consistency_ranges`]: which subtrees' roots make up a proof;
//!   [`SubtreeRoots`] computes them in one pass over a log's leaves, in O(log n) memory, so the
//!   CLI proves a record of a log of any length without holding its leaves.
//! - [`root`], [`inclusion_proof`], [`consistency_proof`]: the same from a slice of leaf hashes
//!   (tests and vectors).
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
/// hash is malformed, not merely wrong), and so is surrounding white space: a checkpoint is
/// signed byte for byte, so each of its lines has exactly one spelling.
pub fn hash_from_base64(text: &str) -> Result<Hash, String> {
    let bytes = STANDARD
        .decode(text)
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
fn split(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut range = CompactRange::new();
    for leaf in leaves {
        range.append(*leaf);
    }
    range.root()
}

/// Leaves `[start, end)`: a subtree whose root is one hash of a proof.
pub type LeafRange = std::ops::Range<u64>;

/// The subtrees whose roots are PATH(index, D[size]), in proof order; `None` when `index` is
/// not in the tree.
pub fn inclusion_ranges(index: u64, size: u64) -> Option<Vec<LeafRange>> {
    if index >= size {
        return None;
    }
    let mut ranges = Vec::new();
    path(index, 0..size, &mut ranges);
    Some(ranges)
}

fn path(m: u64, tree: LeafRange, ranges: &mut Vec<LeafRange>) {
    let n = tree.end - tree.start;
    if n <= 1 {
        return;
    }
    let mid = tree.start + split(n);
    if tree.start + m < mid {
        path(m, tree.start..mid, ranges);
        ranges.push(mid..tree.end);
    } else {
        path(tree.start + m - mid, mid..tree.end, ranges);
        ranges.push(tree.start..mid);
    }
}

/// The subtrees whose roots are PROOF(old_size, D[size]), in proof order; `None` when
/// `old_size` exceeds `size`. Empty for `old_size` 0 or `size`.
pub fn consistency_ranges(old_size: u64, size: u64) -> Option<Vec<LeafRange>> {
    if old_size > size {
        return None;
    }
    let mut ranges = Vec::new();
    if old_size > 0 && old_size < size {
        subproof(old_size, 0..size, true, &mut ranges);
    }
    Some(ranges)
}

fn subproof(m: u64, tree: LeafRange, complete: bool, ranges: &mut Vec<LeafRange>) {
    let n = tree.end - tree.start;
    if m == n {
        if !complete {
            ranges.push(tree);
        }
        return;
    }
    let mid = tree.start + split(n);
    if tree.start + m <= mid {
        subproof(m, tree.start..mid, complete, ranges);
        ranges.push(mid..tree.end);
    } else {
        subproof(tree.start + m - mid, mid..tree.end, false, ranges);
        ranges.push(tree.start..mid);
    }
}

/// The roots of given disjoint subtrees, from one pass over the leaves in order: O(log n)
/// hashes per subtree, whatever the tree's size.
#[derive(Debug)]
pub struct SubtreeRoots {
    subtrees: Vec<(LeafRange, CompactRange)>,
    next: u64,
}

impl SubtreeRoots {
    pub fn new(ranges: Vec<LeafRange>) -> Self {
        SubtreeRoots {
            subtrees: ranges
                .into_iter()
                .map(|r| (r, CompactRange::new()))
                .collect(),
            next: 0,
        }
    }

    /// Takes the next leaf (the first call is leaf 0).
    pub fn push(&mut self, leaf: Hash) {
        let index = self.next;
        self.next += 1;
        if let Some((_, range)) = self.subtrees.iter_mut().find(|(r, _)| r.contains(&index)) {
            range.append(leaf);
        }
    }

    /// The roots in the order the ranges were given; `None` when a range was not fed whole
    /// (the leaves ran out).
    pub fn finish(self) -> Option<Vec<Hash>> {
        self.subtrees
            .into_iter()
            .map(|(r, range)| (range.size() == r.end - r.start).then(|| range.root()))
            .collect()
    }
}

fn roots_of(ranges: Vec<LeafRange>, leaves: &[Hash]) -> Option<Vec<Hash>> {
    let mut roots = SubtreeRoots::new(ranges);
    for leaf in leaves {
        roots.push(*leaf);
    }
    roots.finish()
}

/// PATH(m, D[n]): the audit path of leaf `index`, or `None` when it is not in the tree.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Option<Vec<Hash>> {
    roots_of(inclusion_ranges(index, leaves.len() as u64)?, leaves)
}

/// PROOF(m, D[n]): that the tree of the first `old_size` leaves is a prefix of the tree of all
/// `leaves`; `None` when `old_size` exceeds the tree. Empty for `old_size` 0 or `n`.
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Option<Vec<Hash>> {
    roots_of(consistency_ranges(old_size, leaves.len() as u64)?, leaves)
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
