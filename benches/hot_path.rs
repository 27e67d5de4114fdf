//! Criterion benchmarks of the per-request hot path (issue 6):
//!
//! - `canonical/*`: parse + canonical hash of a typical request, and the whole of steps 2–4
//!   (`request::decode`: parse, schema, snapshot hash, request hash);
//! - `decide/*`: the pure `decide()` for the shipped example profile and for a generated
//!   1,000-tool profile (a called tool with 2 rules, and one with 20 rules);
//! - `audit/*`: building a decision's audit record and hashing it for the chain, preparing it
//!   as the gate does, and the real writer thread end to end (`AuditLog::append` and
//!   `append_prepared` to /dev/null);
//! - `render/*` and `pipeline/*`: the response body, and all CPU work of one request outside
//!   hyper and the writer thread.
//!
//! - `approval/*`: verifying an Ed25519 approval token (SPEC §7a).
//!
//! `cargo bench --bench hot_path` measures; `cargo test --benches` (CI) runs each once.

// A benchmark's set-up failing is a bug in the benchmark: stopping loudly is right.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// The gate binary's allocator, so allocation costs are the ones the gate pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ecl_gate::approval::{self, Approvals, Grant};
use ecl_gate::audit::{AuditLog, AuditSettings, SyncMode};
use ecl_gate::canonical::{self, Value};
use ecl_gate::decision::{
    decide, Attempt, AuditBlock, Context, Decision, ProfileLookup, Timestamps,
};
use ecl_gate::load::{Scenario, Template};
use ecl_gate::profile::parse_profile;
use ecl_gate::request::{self, ExecRequest};

/// The load generator's allow request (about 600 bytes): a typical agent call.
fn typical_body() -> Vec<u8> {
    let template: Template = Scenario::Allow.templates().unwrap().remove(0);
    template.body(b"bench-request-1").to_vec()
}

fn example_profile() -> ProfileLookup {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/example/1.0.0.json");
    let bytes = std::fs::read(path).unwrap();
    Ok(Arc::new(parse_profile("example", "1.0.0", &bytes).unwrap()))
}

/// 1,000 tools `tool.0000`…`tool.0999` with two rules each, except `tool.0500` with 20.
fn big_profile() -> ProfileLookup {
    let two_rules = r#"[{"path":"$.to","type":"string","pattern":"^[^@]+@example\\.com$"},{"path":"$.subject","type":"string","max_len":120}]"#;
    let mut twenty = Vec::new();
    for i in 0..8 {
        twenty.push(format!(
            r#"{{"path":"$.s{i}","type":"string","max_len":200,"pattern":"^[A-Za-z0-9 .,@_-]*$"}}"#
        ));
    }
    for i in 0..4 {
        twenty.push(format!(
            r#"{{"path":"$.e{i}","type":"string","enum":["low","medium","high","critical"]}}"#
        ));
    }
    for i in 0..4 {
        twenty.push(format!(r#"{{"path":"$.n{i}","type":"number"}}"#));
    }
    for i in 0..2 {
        twenty.push(format!(r#"{{"path":"$.b{i}","type":"bool"}}"#));
    }
    twenty.push(r#"{"path":"$.to","type":"string","pattern":"^[^@]+@example\\.com$"}"#.into());
    twenty.push(r#"{"path":"$.meta.owner","type":"string","max_len":64}"#.into());
    let twenty = format!("[{}]", twenty.join(","));
    let tools: Vec<String> = (0..1000)
        .map(|i| {
            let rules = if i == 500 { &twenty } else { two_rules };
            format!(
                r#"{{"name":"tool.{i:04}","required_controls":{{"approval_token":false}},"constraints":{{"arg_rules":{rules}}}}}"#
            )
        })
        .collect();
    let text = format!(
        r#"{{"profile_id":"big","profile_version":"1.0.0","default":"DENY","allowed_tools":[{}]}}"#,
        tools.join(",")
    );
    Ok(Arc::new(
        parse_profile("big", "1.0.0", text.as_bytes()).unwrap(),
    ))
}

/// A request for `profile`/`tool` with `args`, decoded as the gate would.
fn decoded(profile: &str, tool: &str, args: Value) -> ExecRequest {
    let snapshot = Value::object([("session", "s-1".into()), ("turn", 3i64.into())]);
    let body = Value::object([
        ("request_id", "bench-1".into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:7".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([("name", tool.into()), ("args", args)]),
        ),
        (
            "profile",
            Value::object([("id", profile.into()), ("version", "1.0.0".into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
    ]);
    request::decode(&canonical::to_canonical(&body)).unwrap()
}

fn email_args() -> Value {
    Value::object([
        ("to", "bob@example.com".into()),
        ("subject", "Quarterly figures".into()),
    ])
}

fn twenty_rule_args() -> Value {
    let mut args = canonical::Map::new();
    for i in 0..8 {
        args.insert(format!("s{i}"), "Some text, 42 words at most.".into());
    }
    for i in 0..4 {
        args.insert(format!("e{i}"), "medium".into());
    }
    for i in 0..4 {
        args.insert(format!("n{i}"), Value::from(i64::from(i) * 1000));
    }
    for i in 0..2 {
        args.insert(format!("b{i}"), true.into());
    }
    args.insert("to".into(), "bob@example.com".into());
    args.insert(
        "meta".into(),
        Value::object([("owner", "team-finance".into())]),
    );
    Value::Object(args)
}

fn allowed(request: &ExecRequest, profile: &ProfileLookup) -> Decision {
    decide(
        Attempt::Request { request, profile },
        &Context::new(Approvals::default()),
        &ecl_gate::caller::Caller::anonymous(),
        SystemTime::UNIX_EPOCH,
    )
}

fn timestamps() -> Timestamps {
    Timestamps {
        received_at: "2026-01-01T00:00:00.000000Z".into(),
        decided_at: "2026-01-01T00:00:00.000010Z".into(),
    }
}

fn audit_block() -> AuditBlock {
    AuditBlock {
        stream: "ecl-audit.log".into(),
        seq: 123_456,
        prev_hash: canonical::sha256_prefixed(b"prev"),
        record_hash: canonical::sha256_prefixed(b"this"),
    }
}

fn canonical_benches(c: &mut Criterion) {
    let body = typical_body();
    let mut group = c.benchmark_group("canonical");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse+hash typical request", |b| {
        b.iter(|| canonical::hash(&canonical::parse(black_box(&body)).unwrap()))
    });
    group.bench_function("request::decode typical request", |b| {
        b.iter(|| request::decode(black_box(&body)).unwrap())
    });
    group.finish();
}

fn decide_benches(c: &mut Criterion) {
    let example = example_profile();
    let big = big_profile();
    let example_request = decoded("example", "email.send", email_args());
    let big_two = decoded("big", "tool.0999", email_args());
    let big_twenty = decoded("big", "tool.0500", twenty_rule_args());
    // Each must be a real ALLOW: every rule evaluated.
    for (request, profile) in [
        (&example_request, &example),
        (&big_two, &big),
        (&big_twenty, &big),
    ] {
        let decision = allowed(request, profile);
        assert_eq!(decision.reason.as_str(), "OK", "{:?}", decision.detail);
    }
    let mut group = c.benchmark_group("decide");
    group.bench_function("example profile (2 rules)", |b| {
        b.iter(|| allowed(black_box(&example_request), &example))
    });
    group.bench_function("1000-tool profile, tool with 2 rules", |b| {
        b.iter(|| allowed(black_box(&big_two), &big))
    });
    group.bench_function("1000-tool profile, tool with 20 rules", |b| {
        b.iter(|| allowed(black_box(&big_twenty), &big))
    });
    group.finish();
}

fn audit_benches(c: &mut Criterion) {
    let example = example_profile();
    let decision = allowed(&request::decode(&typical_body()).unwrap(), &example);
    let ts = timestamps();
    let mut group = c.benchmark_group("audit");
    // The writer's own encoder is private to src/audit; this is the same work: build the
    // record, serialize it canonically once, SHA-256 it for the chain.
    group.bench_function("record build + canonical + chain hash", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let record = decision.audit_record(black_box(&ts), false);
            out.clear();
            canonical::write_canonical(&Value::Object(record), &mut out);
            canonical::sha256_prefixed(&out)
        })
    });
    // What the gate does now on the request thread: the record's bytes, no map.
    group.bench_function("prepared_record (the gate's)", |b| {
        b.iter(|| black_box(&decision).prepared_record(black_box(&ts), false))
    });

    // The real writer thread: 64 appends in flight, as under load, into /dev/null.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = AuditLog::open(AuditSettings {
        path: "/dev/null".into(),
        sync: SyncMode::Never,
        sync_interval: Duration::from_millis(100),
        queue_capacity: 8192,
        observer: None,
        checkpoints: None,
    })
    .unwrap();
    const IN_FLIGHT: usize = 64;
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("AuditLog::append to /dev/null, 64 in flight", |b| {
        b.iter_batched(
            || {
                (0..IN_FLIGHT)
                    .map(|_| decision.audit_record(&ts, false))
                    .collect::<Vec<_>>()
            },
            |records| {
                runtime.block_on(async {
                    let appends = records.into_iter().map(|r| log.append(r));
                    for receipt in futures_util::future::join_all(appends).await {
                        receipt.unwrap();
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    // The gate's path: records prepared beforehand, the writer only copies and chains them.
    group.bench_function(
        "AuditLog::append_prepared to /dev/null, 64 in flight",
        |b| {
            b.iter_batched(
                || {
                    (0..IN_FLIGHT)
                        .map(|_| decision.prepared_record(&ts, false))
                        .collect::<Vec<_>>()
                },
                |records| {
                    runtime.block_on(async {
                        let appends = records.into_iter().map(|r| log.append_prepared(r));
                        for receipt in futures_util::future::join_all(appends).await {
                            receipt.unwrap();
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

fn render_benches(c: &mut Criterion) {
    let example = example_profile();
    let body = typical_body();
    let decision = allowed(&request::decode(&body).unwrap(), &example);
    let block = audit_block();
    let ts = timestamps();
    let mut group = c.benchmark_group("render");
    group.bench_function("response body via Value + to_canonical", |b| {
        b.iter(|| canonical::to_canonical(&black_box(&decision).body(Some(&block))))
    });
    group.bench_function("response body via write_body (the gate's)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1024);
            black_box(&decision).write_body(Some(&block), &mut out);
            out
        })
    });
    group.finish();

    // Everything a request costs outside hyper, the tokio hand-offs and the writer thread.
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode + decide + record + body (example, ALLOW)", |b| {
        b.iter(|| {
            let request = request::decode(black_box(&body)).unwrap();
            let decision = allowed(&request, &example);
            let record = decision.prepared_record(&ts, false);
            let mut response = Vec::with_capacity(1024);
            decision.write_body(Some(&block), &mut response);
            (record, response)
        })
    });
    group.finish();
}

fn approval_benches(c: &mut Criterion) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let kid = approval::key_id(&key.verifying_key());
    let mut approvals = Approvals::default();
    approvals.keys.insert(kid.clone(), key.verifying_key());
    let intent_hash = request::decode(&typical_body()).unwrap().intent_hash;
    let token = approval::sign(
        &key,
        &kid,
        &Grant {
            issuer: "alice@example.com",
            intent_hash: &intent_hash,
            issued_at: 1_767_225_600,
            expires_at: 1_767_225_600 + 600,
            jti: "01JBENCH0000000000000000",
        },
    );
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 60);
    approvals.verify(&token, &intent_hash, now).unwrap();
    let mut group = c.benchmark_group("approval");
    group.bench_function("verify Ed25519 token", |b| {
        b.iter(|| {
            approvals
                .verify(black_box(&token), &intent_hash, now)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    approval_benches,
    canonical_benches,
    decide_benches,
    audit_benches,
    render_benches
);
criterion_main!(benches);
