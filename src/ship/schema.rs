//! The fleet's audit trail in PostgreSQL: tables, and the columns taken from each record.
//!
//! One row per record, keyed by `(stream, seq)`, holding the exact line (the evidence) and the
//! columns an auditor filters on, copied out of it. Pure mapping: no I/O here.

use crate::canonical::{self, Value};
use crate::postgres::Schema;

pub const SCHEMA: Schema<'static> = Schema {
    component: "audit",
    version: 1,
    create: "CREATE TABLE ecl_audit_records (
                 stream text NOT NULL,
                 seq bigint NOT NULL,
                 record_hash text NOT NULL,
                 prev_hash text NOT NULL,
                 record_type text NOT NULL,
                 decision_type text,
                 reason_code text,
                 request_id text,
                 principal_id text,
                 caller text,
                 tool_name text,
                 profile_id text,
                 profile_version text,
                 received_at timestamptz,
                 decided_at timestamptz,
                 logged_at timestamptz,
                 line text NOT NULL,
                 shipped_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (stream, seq));
             CREATE INDEX ecl_audit_records_principal ON ecl_audit_records (principal_id, decided_at);
             CREATE INDEX ecl_audit_records_decided ON ecl_audit_records (decided_at);
             CREATE TABLE ecl_audit_checkpoints (
                 stream text NOT NULL,
                 size bigint NOT NULL,
                 note text NOT NULL,
                 shipped_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (stream, size));
             CREATE TABLE ecl_audit_streams (
                 stream text PRIMARY KEY,
                 shipped_seq bigint,
                 last_logged_at timestamptz,
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 stopped_reason text);",
    probe: "SELECT stream, seq, record_hash, prev_hash, record_type, decision_type, reason_code,
                   request_id, principal_id, caller, tool_name, profile_id, profile_version,
                   received_at, decided_at, logged_at, line, shipped_at
              FROM ecl_audit_records LIMIT 0;
            SELECT stream, size, note, shipped_at FROM ecl_audit_checkpoints LIMIT 0;
            SELECT stream, shipped_seq, last_logged_at, updated_at, stopped_reason
              FROM ecl_audit_streams LIMIT 0;",
};

/// Inserts a batch given as one array per column; returns the seqs actually inserted (a seq
/// already stored is left alone, and its hash compared by the caller).
pub const INSERT_BATCH: &str = "INSERT INTO ecl_audit_records
        (stream, seq, record_hash, prev_hash, record_type, decision_type, reason_code,
         request_id, principal_id, caller, tool_name, profile_id, profile_version,
         received_at, decided_at, logged_at, line)
    SELECT $1, u.seq, u.record_hash, u.prev_hash, u.record_type, u.decision_type,
           u.reason_code, u.request_id, u.principal_id, u.caller, u.tool_name, u.profile_id,
           u.profile_version, u.received_at::timestamptz, u.decided_at::timestamptz,
           u.logged_at::timestamptz, u.line
      FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                  $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                  $14::text[], $15::text[], $16::text[], $17::text[])
        AS u(seq, record_hash, prev_hash, record_type, decision_type, reason_code, request_id,
             principal_id, caller, tool_name, profile_id, profile_version, received_at,
             decided_at, logged_at, line)
    ON CONFLICT (stream, seq) DO NOTHING
    RETURNING seq";

/// One record's row, columns in [`INSERT_BATCH`]'s order after `stream`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: i64,
    pub record_hash: String,
    pub prev_hash: String,
    pub record_type: String,
    pub decision_type: Option<String>,
    pub reason_code: Option<String>,
    pub request_id: Option<String>,
    pub principal_id: Option<String>,
    pub caller: Option<String>,
    pub tool_name: Option<String>,
    pub profile_id: Option<String>,
    pub profile_version: Option<String>,
    pub received_at: Option<String>,
    pub decided_at: Option<String>,
    pub logged_at: Option<String>,
    pub line: String,
}

impl Row {
    /// The row of a line whose chain fields were checked already.
    pub fn from_line(line: &str, seq: u64, prev_hash: &str, record_hash: &str) -> Row {
        let record = canonical::parse(line.as_bytes()).unwrap_or(Value::Null);
        let text = |value: &Value| value.as_str().map(str::to_owned);
        let request = &record["request"];
        // The principal and the tool come from the record's own request (with
        // `audit.include_request`), else the tool from the approved call.
        let tool_name =
            text(&request["tool"]["name"]).or_else(|| text(&record["approved_call"]["tool_name"]));
        // `caller` (issue 14) is kept as written: a string as is, anything else canonical.
        let caller = match record.get("caller") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                Some(String::from_utf8_lossy(&canonical::to_canonical(other)).into_owned())
            }
        };
        Row {
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            record_hash: record_hash.to_owned(),
            prev_hash: prev_hash.to_owned(),
            record_type: text(&record["record_type"]).unwrap_or_else(|| "decision".into()),
            decision_type: text(&record["decision_type"]),
            reason_code: text(&record["reason_code"]),
            request_id: text(&record["request_id"]),
            principal_id: text(&request["actor"]["principal_id"]),
            caller,
            tool_name,
            profile_id: text(&record["profile_id"]),
            profile_version: text(&record["profile_version"]),
            received_at: text(&record["timestamps"]["received_at"]),
            decided_at: text(&record["timestamps"]["decided_at"]),
            logged_at: text(&record["timestamps"]["logged_at"]),
            line: line.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_come_from_the_record_and_its_request() {
        let line = r#"{"approved_call":{"tool_args":{},"tool_name":"email.send"},"caller":{"spiffe":"x"},"decision_type":"ALLOW","integrity":{"prev_hash":"p","record_hash":"h"},"profile_id":"example","profile_version":"1.0.0","reason_code":"OK","record_type":"decision","request":{"actor":{"principal_id":"agent:7"},"tool":{"name":"email.send"}},"request_id":"r-1","seq":4,"timestamps":{"decided_at":"2026-11-29T00:00:00.000001Z","logged_at":"2026-11-29T00:00:00.000002Z","received_at":"2026-11-29T00:00:00Z"}}"#;
        let row = Row::from_line(line, 4, "p", "h");
        assert_eq!(row.seq, 4);
        assert_eq!(row.principal_id.as_deref(), Some("agent:7"));
        assert_eq!(row.tool_name.as_deref(), Some("email.send"));
        assert_eq!(row.caller.as_deref(), Some(r#"{"spiffe":"x"}"#));
        assert_eq!(row.decision_type.as_deref(), Some("ALLOW"));
        assert_eq!(
            row.logged_at.as_deref(),
            Some("2026-11-29T00:00:00.000002Z")
        );
        assert_eq!(row.line, line);
    }
}
