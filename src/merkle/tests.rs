//! The tree against every case of the shared RFC 6962 vectors (transparency-dev/merkle
//! testdata), and the generators against the verifiers.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/rfc6962");

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(json_files(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A hash field; `Err` for one that is not 32 bytes of base64 (a malformed case).
fn hash(v: &Value) -> Result<Hash, String> {
    hash_from_base64(v.as_str().unwrap_or_default())
}

fn proof(v: &Value) -> Result<Vec<Hash>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(hash).collect(),
        other => panic!("proof is {other}"),
    }
}

fn tree_roots() -> (Vec<Hash>, Vec<(u64, Hash)>) {
    let v = read(&Path::new(VECTORS).join("tree-roots.json"));
    let leaves: Vec<Hash> = v["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| leaf_hash(&hex::decode(h.as_str().unwrap()).unwrap()))
        .collect();
    let expected: Vec<Hash> = v["leaf_hashes_base64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hash(h).unwrap())
        .collect();
    assert_eq!(leaves, expected, "leaf hashes");
    let mut roots: Vec<(u64, Hash)> = v["roots_base64"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(size, root)| (size.parse().unwrap(), hash(root).unwrap()))
        .collect();
    roots.sort();
    (leaves, roots)
}

#[test]
fn roots_of_the_standard_leaves_match_at_every_size() {
    let (leaves, roots) = tree_roots();
    assert_eq!(roots.len(), 9);
    let mut range = CompactRange::new();
    for (size, want) in &roots {
        let size = *size as usize;
        while range.size() < size as u64 {
            range.append(leaves[range.size() as usize]);
        }
        assert_eq!(&range.root(), want, "compact range root at size {size}");
        assert_eq!(&root(&leaves[..size]), want, "root at size {size}");
    }
}

#[test]
fn every_inclusion_vector_verifies_or_is_rejected_as_it_should() {
    let files = json_files(&Path::new(VECTORS).join("inclusion"));
    let (mut accepted, mut rejected) = (0, 0);
    for file in &files {
        let case = read(file);
        let want_err = case["wantErr"].as_bool().unwrap();
        let result = (|| -> Result<(), String> {
            let index = case["leafIdx"].as_u64().ok_or("leafIdx")?;
            let size = case["treeSize"].as_u64().ok_or("treeSize")?;
            verify_inclusion(
                index,
                size,
                &hash(&case["leafHash"])?,
                &proof(&case["proof"])?,
                &hash(&case["root"])?,
            )
            .map_err(|e| e.to_string())
        })();
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {} ({result:?})",
            file.display(),
            case["desc"]
        );
        if want_err {
            rejected += 1;
        } else {
            accepted += 1;
        }
    }
    assert_eq!(files.len(), accepted + rejected);
    assert_eq!((accepted, rejected), (6, 92), "inclusion case counts");
}

#[test]
fn every_consistency_vector_verifies_or_is_rejected_as_it_should() {
    let files = json_files(&Path::new(VECTORS).join("consistency"));
    let (mut accepted, mut rejected) = (0, 0);
    for file in &files {
        let case = read(file);
        let want_err = case["wantErr"].as_bool().unwrap();
        let result = (|| -> Result<(), String> {
            verify_consistency(
                case["size1"].as_u64().ok_or("size1")?,
                case["size2"].as_u64().ok_or("size2")?,
                &STANDARD
                    .decode(case["root1"].as_str().unwrap_or_default())
                    .map_err(|e| e.to_string())?,
                &STANDARD
                    .decode(case["root2"].as_str().unwrap_or_default())
                    .map_err(|e| e.to_string())?,
                &proof(&case["proof"])?,
            )
            .map_err(|e| e.to_string())
        })();
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {} ({result:?})",
            file.display(),
            case["desc"]
        );
        if want_err {
            rejected += 1;
        } else {
            accepted += 1;
        }
    }
    assert_eq!(files.len(), accepted + rejected);
    assert_eq!((accepted, rejected), (6, 92), "consistency case counts");
}

/// MTH(D[n]) exactly as RFC 6962 §2.1 writes it, to hold the incremental code against.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

#[test]
fn generated_proofs_verify_for_every_size_up_to_40() {
    let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    for n in 0..=leaves.len() {
        let tree = &leaves[..n];
        let r = mth(tree);
        assert_eq!(root(tree), r, "size {n}");
        for (i, leaf) in tree.iter().enumerate() {
            let p = inclusion_proof(i as u64, tree).unwrap();
            verify_inclusion(i as u64, n as u64, leaf, &p, &r).unwrap();
            // Another leaf at that index does not verify.
            assert!(verify_inclusion(i as u64, n as u64, &leaf_hash(b"x"), &p, &r).is_err());
        }
        assert!(inclusion_proof(n as u64, tree).is_none());
        for m in 0..=n {
            let p = consistency_proof(m as u64, tree).unwrap();
            let old = root(&leaves[..m]);
            if m == 0 {
                assert!(verify_consistency(0, n as u64, &old, &r, &p).is_err());
                continue;
            }
            verify_consistency(m as u64, n as u64, &old, &r, &p).unwrap();
            if m < n {
                let other = leaf_hash(b"rewritten");
                assert!(verify_consistency(m as u64, n as u64, &other, &r, &p).is_err());
            }
        }
    }
}

#[test]
fn subtree_roots_are_none_when_the_leaves_run_out() {
    let leaves: Vec<Hash> = (0u32..7).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let mut roots = SubtreeRoots::new(inclusion_ranges(2, 8).unwrap());
    leaves.iter().for_each(|l| roots.push(*l));
    assert_eq!(
        roots.finish(),
        None,
        "leaf 7 is missing from the subtree 4..8"
    );

    let mut roots = SubtreeRoots::new(inclusion_ranges(2, 7).unwrap());
    leaves.iter().for_each(|l| roots.push(*l));
    assert_eq!(roots.finish(), inclusion_proof(2, &leaves));
}
