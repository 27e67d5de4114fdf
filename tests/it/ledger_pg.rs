//! The single-use ledger in PostgreSQL, with real gate processes and a real server: a token is
//! honoured once across a fleet; a ledger that does not answer denies, and the gate recovers
//! by itself; a start against a database it cannot use is refused, naming why.

use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ecl_gate::canonical::{self, Value};

use crate::approvals::{approve, deploy, keygen, with_token};
use crate::cli::{get, post, spawn_serve_with_admin};
use crate::common::*;
use crate::pg;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A config file for a gate with the shared ledger at `url` and the approver key in `keys`.
fn ledger_config(dir: &Path, keys: &Path, kid: &str, url: &str, extra: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("gate-{n}.toml"));
    let public = keys.join(format!("{kid}.pub"));
    std::fs::write(
        &path,
        format!(
            "[approvals]\nsingle_use = true\nledger = \"{url}\"\n{extra}\n\
             [approvals.keys.\"{kid}\"]\nfile = \"{}\"\n",
            public.display()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// `post`, with a client timeout long enough for a debug build under a burst.
fn post_patiently(addr: &str, body: &[u8]) -> Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "POST /v1/execute HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    canonical::parse(&response[split + 4..]).unwrap()
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Every record in the gates' logs under `dir/logs`.
fn all_records(dir: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            records.extend(read_records(&path));
        }
    }
    records
}

/// The approval token for `request`, from a first ESCALATE answer by the gate at `addr`.
fn token_for(addr: &str, private: &Path, request: &Value) -> String {
    let escalated = post(addr, &canonical::to_canonical(request));
    assert_eq!(
        escalated["decision_type"].str(),
        "ESCALATE",
        "{escalated:?}"
    );
    approve(
        private,
        &[
            "--intent-hash",
            escalated["escalation"]["intent_hash"].str(),
        ],
    )
}

#[test]
fn two_gates_sharing_the_postgres_ledger_honour_a_token_exactly_once() {
    let test = "two_gates_sharing_the_postgres_ledger_honour_a_token_exactly_once";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (kid, private, _) = keygen(keys.path());
    // A debug build verifying 1,000 signatures on a shared 2-core machine queues: the bound on
    // a spend is raised so that queueing is not mistaken for an unavailable ledger.
    let config = ledger_config(
        dir.path(),
        keys.path(),
        &kid,
        &db.url,
        "ledger_timeout_ms = 30000\nledger_connect_timeout_ms = 30000\nledger_pool_size = 16",
    );
    let env = [("ECL_CONFIG", config.as_str())];
    let (gate_a, addr_a, _) = spawn_serve_with_admin(dir.path(), &env);
    let (gate_b, addr_b, _) = spawn_serve_with_admin(dir.path(), &env);

    let request = deploy("deploy-fleet", "billing");
    let token = token_for(&addr_a, &private, &request);
    let body = Arc::new(canonical::to_canonical(&with_token(&request, &token)));

    // 1,000 attempts, half to each gate, all released at once.
    const THREADS: usize = 50;
    const EACH: usize = 20;
    let start = Arc::new(Barrier::new(THREADS));
    let answers: Vec<Value> = (0..THREADS)
        .map(|i| {
            let addr = if i % 2 == 0 {
                addr_a.clone()
            } else {
                addr_b.clone()
            };
            let (body, start) = (Arc::clone(&body), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (0..EACH)
                    .map(|_| post_patiently(&addr, &body))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(answers.len(), THREADS * EACH);
    let allowed = answers
        .iter()
        .filter(|a| a["decision_type"].str() == "ALLOW")
        .count();
    let ledger_errors: Vec<String> = crate::cli::drain_logs()
        .into_iter()
        .filter(|l| l.contains("denied"))
        .take(3)
        .collect();
    assert_eq!(
        allowed, 1,
        "exactly one ALLOW across both gates; {ledger_errors:?}"
    );
    for answer in answers
        .iter()
        .filter(|a| a["decision_type"].str() != "ALLOW")
    {
        assert_eq!(
            (answer["decision_type"].str(), answer["reason_code"].str()),
            ("DENY", "APPROVAL_INVALID"),
            "{answer:?} {ledger_errors:?}"
        );
        assert!(
            answer["detail"].str().contains("already used"),
            "{answer:?}"
        );
    }
    stop(gate_a);
    stop(gate_b);

    // Each attempt audited, with the ledger's answer recorded for replay.
    let records: Vec<Value> = all_records(dir.path())
        .into_iter()
        .filter(|r| r["request_id"].str() == "deploy-fleet" && r.get("approval").is_some())
        .collect();
    assert_eq!(records.len(), THREADS * EACH);
    let spent: Vec<&Value> = records
        .iter()
        .filter(|r| r["single_use"].str() == "spent")
        .collect();
    assert_eq!(spent.len(), 1);
    assert_eq!(spent[0]["decision_type"].str(), "ALLOW");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["single_use"].str() == "already_used"
                && r["reason_code"].str() == "APPROVAL_INVALID")
            .count(),
        THREADS * EACH - 1
    );
    // One row in the shared table.
    let rows = block_on(async {
        let client = pg::connect(&db.url).await.unwrap();
        client
            .query_one("SELECT count(*) FROM ecl_approvals_spent", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    });
    assert_eq!(rows, 1);
}

#[test]
fn a_stopped_ledger_denies_approved_calls_and_the_gate_recovers_by_itself() {
    let test = "a_stopped_ledger_denies_approved_calls_and_the_gate_recovers_by_itself";
    let cluster = match pg::Cluster::create() {
        Ok(cluster) => cluster,
        Err(err) => return pg::unavailable(test, &err),
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (kid, private, _) = keygen(keys.path());
    let config = ledger_config(
        dir.path(),
        keys.path(),
        &kid,
        &cluster.url(),
        "ledger_timeout_ms = 1000\nledger_connect_timeout_ms = 1000",
    );
    let (gate, addr, admin) = spawn_serve_with_admin(
        dir.path(),
        &[
            ("ECL_CONFIG", &config),
            ("ECL_AUDIT__INCLUDE_REQUEST", "true"),
        ],
    );

    let first = deploy("deploy-before", "billing");
    let token = token_for(&addr, &private, &first);
    let allowed = post(&addr, &canonical::to_canonical(&with_token(&first, &token)));
    assert_eq!(allowed["decision_type"].str(), "ALLOW", "{allowed:?}");

    cluster.stop().unwrap();
    let second = deploy("deploy-during", "billing");
    let second_token = token_for(&addr, &private, &second);
    let second_body = canonical::to_canonical(&with_token(&second, &second_token));
    let denied = post(&addr, &second_body);
    assert_eq!(
        (denied["decision_type"].str(), denied["reason_code"].str()),
        ("DENY", "INTERNAL_ERROR"),
        "{denied:?}"
    );
    assert!(denied["approved_call"].is_null());
    assert!(
        denied["detail"].str().contains("ledger unavailable"),
        "{denied:?}"
    );
    let record = all_records(dir.path())
        .into_iter()
        .find(|r| {
            r["provenance_id"] == denied["provenance_id"] && r["seq"] == denied["audit"]["seq"]
        })
        .unwrap();
    assert_eq!(record["reason_code"].str(), "INTERNAL_ERROR");
    assert_eq!(record["single_use"].str(), "ledger_unavailable");
    assert!(record["approved_call"].is_null());
    // Degraded, named, and the metric says so.
    let (status, ready) = get(&admin, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("degraded") && ready.contains("single-use ledger"),
        "{ready}"
    );
    let (_, metrics) = get(&admin, "/metrics");
    assert!(metrics.contains("ecl_approval_ledger_up 0"), "{metrics}");

    // Back: the same, never spent approval now works, without restarting the gate.
    cluster.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        let answer = post(&addr, &second_body);
        if answer["decision_type"].str() == "ALLOW" || Instant::now() > deadline {
            break answer;
        }
        assert_eq!(answer["reason_code"].str(), "INTERNAL_ERROR", "{answer:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(recovered["decision_type"].str(), "ALLOW", "{recovered:?}");
    let again = post(&addr, &canonical::to_canonical(&with_token(&first, &token)));
    assert_eq!(again["reason_code"].str(), "APPROVAL_INVALID", "{again:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, ready) = get(&admin, "/readyz");
        if ready.contains("\"ready\"") {
            assert_eq!(status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never recovered: {ready}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = get(&admin, "/metrics");
    assert!(metrics.contains("ecl_approval_ledger_up 1"), "{metrics}");
    stop(gate);

    // Replay is exact: the ledger's answers (spent, unavailable, already used) are inputs,
    // recorded and applied, not re-asked of a ledger that has moved on.
    let log = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let outcomes: Vec<String> = read_records(&log)
        .iter()
        .filter_map(|r| r.get("single_use").map(|o| o.str().to_owned()))
        .collect();
    assert!(
        outcomes.contains(&"ledger_unavailable".to_owned()),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&"already_used".to_owned()),
        "{outcomes:?}"
    );
    let out = gate_command()
        .arg("--config")
        .arg(&config)
        .arg("replay")
        .arg(&log)
        .arg("--profiles")
        .arg(shipped_profiles())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("differing 0"), "{said}");
}

/// Runs `serve` expecting a refused start; returns its stderr.
fn refused_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = gate_command()
        .arg("serve")
        .current_dir(dir.path())
        .env("ECL_CONFIG", config)
        .env("ECL_LISTEN", "127.0.0.1:0")
        .env("ECL_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PROFILES_ROOT", shipped_profiles())
        .env("ECL_AUDIT__PATH", dir.path().join("audit.log"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the gate started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_start_against_a_ledger_it_cannot_use_is_refused_and_named() {
    let test = "a_start_against_a_ledger_it_cannot_use_is_refused_and_named";
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (kid, _, _) = keygen(keys.path());

    // Nobody listens: refused, URL named, password never shown.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://gate:hunter2@127.0.0.1:{port}/ecl?sslmode=disable");
    let config = ledger_config(
        dir.path(),
        keys.path(),
        &kid,
        &url,
        "ledger_connect_timeout_ms = 500",
    );
    let err = refused_start(&config);
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(err.contains(&format!("gate:***@127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // A table of that name the gate did not create: refused, naming it.
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    block_on(async {
        let client = pg::connect(&db.url).await.unwrap();
        client
            .batch_execute("CREATE TABLE ecl_approvals_spent (token text)")
            .await
            .unwrap();
    });
    let config = ledger_config(dir.path(), keys.path(), &kid, &db.url, "");
    let err = refused_start(&config);
    assert!(
        err.contains("cannot create the `approvals` tables"),
        "{err}"
    );
    assert!(err.contains("already exists"), "{err}");

    // A newer schema than this gate knows: refused, saying to upgrade.
    block_on(async {
        let client = pg::connect(&db.url).await.unwrap();
        client
            .batch_execute(
                "DROP TABLE ecl_approvals_spent;
                 CREATE TABLE ecl_gate_schema (component text PRIMARY KEY, version integer NOT NULL, installed_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO ecl_gate_schema VALUES ('approvals', 7);",
            )
            .await
            .unwrap();
    });
    let err = refused_start(&config);
    assert!(err.contains("schema version 7"), "{err}");
    assert!(err.contains("upgrade this ecl-gate"), "{err}");
}

#[test]
fn the_ledger_speaks_tls_to_postgres_trusting_the_configured_ca_only() {
    let test = "the_ledger_speaks_tls_to_postgres_trusting_the_configured_ca_only";
    let cluster = match pg::Cluster::create() {
        Ok(cluster) => cluster,
        Err(err) => return pg::unavailable(test, &err),
    };
    // The server refuses connections without TLS from here on.
    let ca = cluster.require_tls().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (kid, private, _) = keygen(keys.path());
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        cluster.port
    );

    // Trusting the server's CA: a real handshake, then the ledger works.
    let trusted = format!("ledger_ca_file = \"{}\"", ca.display());
    let config = ledger_config(dir.path(), keys.path(), &kid, &url, &trusted);
    let (gate, addr, _) = spawn_serve_with_admin(dir.path(), &[("ECL_CONFIG", &config)]);
    let request = deploy("deploy-tls", "billing");
    let token = token_for(&addr, &private, &request);
    let body = canonical::to_canonical(&with_token(&request, &token));
    assert_eq!(post(&addr, &body)["decision_type"].str(), "ALLOW");
    assert_eq!(post(&addr, &body)["reason_code"].str(), "APPROVAL_INVALID");
    stop(gate);

    // Another CA: the certificate does not verify, and the start is refused (never downgraded).
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, pg::throwaway_ca_and_leaf().0).unwrap();
    let untrusted = format!(
        "ledger_ca_file = \"{}\"\nledger_connect_timeout_ms = 2000",
        other.display()
    );
    let config = ledger_config(dir.path(), keys.path(), &kid, &url, &untrusted);
    let err = refused_start(&config);
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Without TLS the server turns the gate away, and the start is refused naming why.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let config = ledger_config(dir.path(), keys.path(), &kid, &plain, "");
    let err = refused_start(&config);
    assert!(
        err.contains("no encryption") || err.contains("pg_hba.conf"),
        "{err}"
    );
}
