//! `ecl-gate audit verify --db`: checks the fleet's trail as stored in PostgreSQL.
//!
//! For every stream (or one): each row's line verifies by itself and agrees with its columns,
//! seqs are contiguous from 0, each `prev_hash` links to the row before, and the Merkle tree
//! over the lines has the root of every stored checkpoint at its size (signatures checked
//! with the keys given). Rows are read in keyset-paged chunks: memory stays bounded however
//! long a stream is. It only reads; it must never change a row.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use tokio_postgres::Client;

use crate::audit::{check_record_line, GENESIS};
use crate::checkpoint::{verify_checkpoint, Checkpoint};
use crate::merkle::{empty_root, leaf_hash, CompactRange, Hash};
use crate::postgres;

const PAGE: i64 = 5000;

/// One stream's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamVerdict {
    pub stream: String,
    pub records: u64,
    pub checkpoints: usize,
    /// The first problem found, naming seq and what is wrong.
    pub problem: Option<String>,
}

/// Verifies `stream`, or every stream in the database. `keys`: checkpoint signers; empty
/// means the checkpoints' roots are checked but not their signatures.
pub async fn verify(
    client: &Client,
    stream: Option<&str>,
    keys: &[VerifyingKey],
) -> Result<Vec<StreamVerdict>, String> {
    let db = |e: tokio_postgres::Error| postgres::describe(&e);
    let streams: Vec<String> = match stream {
        Some(s) => vec![s.to_owned()],
        None => client
            .query(
                "SELECT stream FROM ecl_audit_records GROUP BY stream
                 UNION SELECT stream FROM ecl_audit_checkpoints
                 UNION SELECT stream FROM ecl_audit_streams ORDER BY 1",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    let mut verdicts = Vec::new();
    for stream in streams {
        verdicts.push(verify_stream(client, &stream, keys).await?);
    }
    Ok(verdicts)
}

async fn verify_stream(
    client: &Client,
    stream: &str,
    keys: &[VerifyingKey],
) -> Result<StreamVerdict, String> {
    let db = |e: tokio_postgres::Error| postgres::describe(&e);
    let mut checkpoints: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    let mut verdict = StreamVerdict {
        stream: stream.to_owned(),
        records: 0,
        checkpoints: 0,
        problem: None,
    };
    for row in client
        .query(
            "SELECT size, note FROM ecl_audit_checkpoints WHERE stream = $1 ORDER BY size",
            &[&stream],
        )
        .await
        .map_err(db)?
    {
        let size: i64 = row.get(0);
        let note: String = row.get(1);
        let checked = if keys.is_empty() {
            let body = note.split("\n\n").next().unwrap_or_default();
            Checkpoint::parse_body(&format!("{body}\n"))
        } else {
            keys.iter()
                .map(|key| verify_checkpoint(&note, key))
                .find(Result::is_ok)
                .unwrap_or_else(|| Err("no given key verifies its signature".into()))
        };
        match checked {
            Ok(cp) if i64::try_from(cp.size).ok() == Some(size) => {
                checkpoints.insert(cp.size, cp);
            }
            Ok(cp) => {
                verdict.problem = Some(format!(
                    "the checkpoint stored at size {size} says size {}",
                    cp.size
                ));
                return Ok(verdict);
            }
            Err(err) => {
                verdict.problem = Some(format!("the checkpoint at size {size}: {err}"));
                return Ok(verdict);
            }
        }
    }
    verdict.checkpoints = checkpoints.len();

    let mut tree = CompactRange::new();
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    if checkpoints.contains_key(&0) {
        roots.insert(0, empty_root());
    }
    let mut expected_seq: i64 = 0;
    let mut last_hash = GENESIS.to_owned();
    loop {
        let rows = client
            .query(
                "SELECT seq, record_hash, prev_hash, line FROM ecl_audit_records
                  WHERE stream = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&stream, &expected_seq, &PAGE],
            )
            .await
            .map_err(db)?;
        let count = rows.len();
        for row in rows {
            let seq: i64 = row.get(0);
            let record_hash: String = row.get(1);
            let prev_hash: String = row.get(2);
            let line: String = row.get(3);
            if seq != expected_seq {
                verdict.problem = Some(if expected_seq == 0 {
                    format!(
                        "the stream does not start at seq 0: seq 0..={} missing",
                        seq - 1
                    )
                } else {
                    format!(
                        "seq {expected_seq}..={} missing: row(s) deleted, or never shipped",
                        seq - 1
                    )
                });
                return Ok(verdict);
            }
            let fields = match check_record_line(line.as_bytes()) {
                Ok(fields) => fields,
                Err((_, reason)) => {
                    verdict.problem = Some(format!(
                        "seq {seq}: the stored line does not verify ({reason}): the row was edited"
                    ));
                    return Ok(verdict);
                }
            };
            if i64::try_from(fields.seq).ok() != Some(seq)
                || fields.record_hash != record_hash
                || fields.prev_hash != prev_hash
            {
                verdict.problem = Some(format!(
                    "seq {seq}: the row's columns disagree with its line (line seq {}, record_hash {}): the row was edited or rows were reordered",
                    fields.seq, fields.record_hash
                ));
                return Ok(verdict);
            }
            if prev_hash != last_hash {
                verdict.problem = Some(format!(
                    "seq {seq}: prev_hash {prev_hash} does not link to seq {}'s record_hash {last_hash}",
                    seq - 1
                ));
                return Ok(verdict);
            }
            tree.append(leaf_hash(line.as_bytes()));
            if checkpoints.contains_key(&tree.size()) {
                roots.insert(tree.size(), tree.root());
            }
            last_hash = record_hash;
            expected_seq = seq + 1;
        }
        if count < PAGE as usize {
            break;
        }
    }
    verdict.records = tree.size();
    for (size, cp) in &checkpoints {
        match roots.get(size) {
            None => {
                verdict.problem = Some(format!(
                    "truncated: the checkpoint covers {size} records, the database holds {} (seq {}..={} missing)",
                    tree.size(),
                    tree.size(),
                    size - 1
                ));
                return Ok(verdict);
            }
            Some(root) if *root != cp.root => {
                verdict.problem = Some(format!(
                    "the first {size} records do not have the checkpoint's root: records were rewritten or reordered"
                ));
                return Ok(verdict);
            }
            Some(_) => {}
        }
    }
    Ok(verdict)
}
