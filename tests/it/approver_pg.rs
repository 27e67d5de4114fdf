//! The approver's escalations in PostgreSQL (`approver serve --db`), with real approver
//! processes, a real gate and a real server: a notification stored by one replica is shown
//! and decided by another; an approval on one is served by the other; two approvers racing
//! on two replicas get one token between them; an escalation expires for every replica; and
//! the inbox pages beyond its newest rows the same way as with the file store.

use std::path::Path;
use std::time::Duration;

use ecl_gate::canonical::Value;
use ed25519_dalek::pkcs8::DecodePrivateKey;

use crate::approver::*;
use crate::common::*;
use crate::pg;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// An approver replica on the shared database, with its own audit log in `name`.
fn replica(world: &World, db: &str, name: &str) -> ApproverProcess {
    world.approver_with(
        "127.0.0.1:0",
        &world.dir.path().join(name),
        &["--db", db],
        &[],
    )
}

fn gate_key(world: &World) -> ed25519_dalek::SigningKey {
    let pem = std::fs::read_to_string(world.keys.join("gate1.key")).unwrap();
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A notification the gate could have sent, for intent number `n`, asked at `asked_at` and
/// expiring `ttl` seconds after that.
pub fn notification(n: u32, asked_at: u64, ttl: u64) -> ecl_gate::notify::Notification {
    let mut out = sample_notification();
    out.intent_hash = format!("sha256:{}", format!("{n:08x}").repeat(8));
    out.request_id = format!("r-{n}");
    out.decided_at = asked_at;
    out.expires_at = asked_at + ttl;
    out
}

pub fn post_notification(
    agent: &str,
    key: &ed25519_dalek::SigningKey,
    n: &ecl_gate::notify::Notification,
) -> Answer {
    let jws = ecl_gate::notify::wire::sign(key, "gate1", n);
    http(
        agent,
        "POST",
        "/v1/notifications",
        &[("Content-Type", "application/jose")],
        jws.as_bytes(),
    )
}

fn approval_records(dir: &Path) -> Vec<Value> {
    read_records(&dir.join("approver-audit.log"))
        .into_iter()
        .filter(|r| r["record_type"].str() != "escalation_received")
        .collect()
}

fn page_of(inbox: &str, session: &str, intent: &str) -> Answer {
    http(
        inbox,
        "GET",
        &format!("/escalations/{intent}"),
        &[("Cookie", session)],
        b"",
    )
}

#[test]
fn approver_replicas_sharing_postgres_show_decide_and_serve_one_decision() {
    let test = "approver_replicas_sharing_postgres_show_decide_and_serve_one_decision";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let world = World::new();
    let a = replica(&world, &db.url, "replica-a");
    let b = replica(&world, &db.url, "replica-b");

    // The gate notifies replica A; replica B shows it at once: one shared store.
    let (_gate, gate) = world.gate(&a.agent, "1h", "");
    let request = deploy("deploy-pg", "billing");
    let escalated = execute(&gate, &request);
    assert_eq!(escalated["decision_type"].str(), "ESCALATE");
    let intent = escalated["escalation"]["intent_hash"].str().to_owned();
    assert_eq!(wait_known(&a.agent, &intent).status, 202);
    assert_eq!(wait_known(&b.agent, &intent).status, 202);
    let row = block_on(async {
        let client = pg::connect(&db.url).await.unwrap();
        client
            .query_one(
                "SELECT state, jws, decided_by FROM ecl_approver_escalations WHERE intent_hash = $1",
                &[&intent],
            )
            .await
            .unwrap()
    });
    assert_eq!(row.get::<_, String>(0), "pending");
    let stored = ecl_gate::notify::wire::verify(
        &row.get::<_, String>(1),
        &std::collections::BTreeMap::from([("gate1".to_owned(), gate_key(&world).verifying_key())]),
    )
    .unwrap();
    assert_eq!(
        stored.intent_hash, intent,
        "the gate's signed notification is kept"
    );
    assert_eq!(row.get::<_, Option<String>>(2), None);

    // The gate's retry reaching the other replica is a duplicate there too.
    let again = post_notification(&b.agent, &gate_key(&world), &stored);
    assert_eq!(
        (again.status, again.json()["status"].str()),
        (200, "duplicate"),
        "{}",
        again.body
    );

    // The agent waits on B while alice approves on A: B serves A's token.
    let waiting = {
        let (agent, intent) = (b.agent.clone(), intent.clone());
        std::thread::spawn(move || wait_approval(&agent, &intent, "60s"))
    };
    let alice = sign_in(&a.inbox, "alice", PASSWORD).unwrap();
    let detail = page_of(&a.inbox, &alice, &intent);
    assert!(detail.body.contains("billing"), "{}", detail.body);
    let approved = post_form(
        &a.inbox,
        &format!("/escalations/{intent}/approve"),
        &alice,
        &[("csrf", &csrf_of(&detail.body)), ("ttl", "900")],
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let (code, token, stderr) = waiting.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    let on_b = http(
        &b.agent,
        "GET",
        &format!("/v1/approvals/{intent}"),
        &[],
        b"",
    )
    .json();
    assert_eq!(on_b["approval_token"].str(), token);
    assert_eq!(on_b["approver"].str(), "alice");
    let allowed = execute(&gate, &with_token(&request, &token));
    assert_eq!(allowed["decision_type"].str(), "ALLOW", "{allowed:?}");

    // B's inbox says who approved; approving there again is refused, no second token.
    let bob = sign_in(&b.inbox, "bob", PASSWORD).unwrap();
    let on_b_page = page_of(&b.inbox, &bob, &intent);
    assert!(
        on_b_page
            .body
            .contains("Approved by <strong>alice</strong>"),
        "{}",
        on_b_page.body
    );
    let inbox = http(&b.inbox, "GET", "/", &[], b"");
    assert_eq!(inbox.status, 303, "not signed in on B: sent to sign in");
    let twice = post_form(
        &b.inbox,
        &format!("/escalations/{intent}/approve"),
        &bob,
        &[("csrf", &csrf_of(&on_b_page.body)), ("ttl", "900")],
    );
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(
        twice.body.contains("was already approved by `alice`"),
        "{}",
        twice.body
    );

    // A rejection on B is what an agent waiting on A is told.
    let key = gate_key(&world);
    let second = notification(2, now(), 3600);
    assert_eq!(post_notification(&a.agent, &key, &second).status, 201);
    let page = page_of(&b.inbox, &bob, &second.intent_hash);
    let rejected = post_form(
        &b.inbox,
        &format!("/escalations/{}/reject", second.intent_hash),
        &bob,
        &[("csrf", &csrf_of(&page.body)), ("reason", "not today")],
    );
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    let told = http(
        &a.agent,
        "GET",
        &format!("/v1/approvals/{}", second.intent_hash),
        &[],
        b"",
    );
    assert_eq!(told.status, 403);
    assert_eq!(told.json()["reason"].str(), "not today");

    // Each replica's audit log holds what it did, and verifies.
    assert_eq!(
        approval_records(&world.dir.path().join("replica-a")).len(),
        1
    );
    let on_b_records = approval_records(&world.dir.path().join("replica-b"));
    assert_eq!(on_b_records.len(), 1);
    assert_eq!(on_b_records[0]["record_type"].str(), "rejection");
    for name in ["replica-a", "replica-b"] {
        let out = gate_command()
            .args(["audit", "verify"])
            .arg(world.dir.path().join(name).join("approver-audit.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn two_approvers_racing_on_two_replicas_get_exactly_one_token() {
    let test = "two_approvers_racing_on_two_replicas_get_exactly_one_token";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let world = World::new();
    let a = replica(&world, &db.url, "replica-a");
    let b = replica(&world, &db.url, "replica-b");
    let key = gate_key(&world);
    let alice = sign_in(&a.inbox, "alice", PASSWORD).unwrap();
    let bob = sign_in(&b.inbox, "bob", PASSWORD).unwrap();

    // Ten escalations; for each, alice (on A) and bob (on B) click Approve at the same time.
    let rounds = 10;
    for n in 0..rounds {
        let asked = notification(100 + n, now(), 3600);
        assert_eq!(post_notification(&a.agent, &key, &asked).status, 201);
        let intent = asked.intent_hash.clone();
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [
            (a.inbox.clone(), alice.clone()),
            (b.inbox.clone(), bob.clone()),
        ]
        .into_iter()
        .map(|(inbox, session)| {
            let csrf = csrf_of(&page_of(&inbox, &session, &intent).body);
            let path = format!("/escalations/{intent}/approve");
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                post_form(&inbox, &path, &session, &[("csrf", &csrf), ("ttl", "900")])
            })
        })
        .collect();
        let mut answers: Vec<Answer> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        answers.sort_by_key(|a| a.status);
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        assert_eq!(answers[1].status, 409, "{}", answers[1].body);
        assert!(
            answers[1].body.contains("no second decision is recorded"),
            "{}",
            answers[1].body
        );
    }

    // One approval record per escalation across both replicas' audit logs, and each row holds
    // the token of the approver its record names.
    let mut records = approval_records(&world.dir.path().join("replica-a"));
    records.extend(approval_records(&world.dir.path().join("replica-b")));
    assert_eq!(records.len(), rounds as usize, "{records:?}");
    let rows = block_on(async {
        let client = pg::connect(&db.url).await.unwrap();
        client
            .query(
                "SELECT intent_hash, decided_by, jti FROM ecl_approver_escalations WHERE state = 'approved'",
                &[],
            )
            .await
            .unwrap()
    });
    assert_eq!(rows.len(), rounds as usize);
    for row in rows {
        let (intent, by, jti): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let record = records
            .iter()
            .find(|r| r["intent_hash"].str() == intent)
            .unwrap();
        assert_eq!(
            (record["approver"].str(), record["jti"].str()),
            (by.as_str(), jti.as_str())
        );
    }
}

#[test]
fn an_escalation_in_postgres_expires_for_every_replica() {
    let test = "an_escalation_in_postgres_expires_for_every_replica";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let world = World::new();
    let a = replica(&world, &db.url, "replica-a");
    let b = replica(&world, &db.url, "replica-b");
    let key = gate_key(&world);
    // Asked now, approvable for two seconds.
    let short = notification(7, now(), 2);
    assert_eq!(post_notification(&a.agent, &key, &short).status, 201);
    assert_eq!(wait_known(&b.agent, &short.intent_hash).status, 202);
    let bob = sign_in(&b.inbox, "bob", PASSWORD).unwrap();
    let csrf = csrf_of(&page_of(&b.inbox, &bob, &short.intent_hash).body);
    std::thread::sleep(Duration::from_millis(3100));
    let late = post_form(
        &b.inbox,
        &format!("/escalations/{}/approve", short.intent_hash),
        &bob,
        &[("csrf", &csrf), ("ttl", "60")],
    );
    assert_eq!(late.status, 410, "{}", late.body);
    assert!(late.body.contains("has expired; the agent must ask again"));
    for agent in [&a.agent, &b.agent] {
        let gone = http(
            agent,
            "GET",
            &format!("/v1/approvals/{}", short.intent_hash),
            &[],
            b"",
        );
        assert_eq!(gone.status, 404, "{}", gone.body);
    }
    // A notification that arrives already expired is refused, not stored.
    let stale = notification(8, now() - 100, 50);
    assert_eq!(post_notification(&a.agent, &key, &stale).status, 410);
    assert!(approval_records(&world.dir.path().join("replica-b")).is_empty());
    // The same call asked again after expiry is a new escalation, pending again.
    let mut again = short.clone();
    again.decided_at += 3;
    again.expires_at = again.decided_at + 3600;
    assert_eq!(post_notification(&b.agent, &key, &again).status, 201);
    assert_eq!(wait_known(&a.agent, &again.intent_hash).status, 202);
}

/// Signs in and reads every inbox page by following its "Older" links; returns each page's
/// intent hashes in order.
fn walk_inbox(inbox: &str, session: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut path = "/".to_owned();
    loop {
        let page = http(inbox, "GET", &path, &[("Cookie", session)], b"");
        assert_eq!(page.status, 200, "{}", page.body);
        let pending = page.body.split("<h2>Decided</h2>").next().unwrap();
        let intents: Vec<String> = pending
            .split("<tr class=\"escalation\"><td><a href=\"/escalations/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().to_owned())
            .collect();
        pages.push(intents);
        // `<a href="/?before=…" id="older" …>Older</a>`, when there is an older page.
        let Some(at) = page.body.find("\" id=\"older\"") else {
            return pages;
        };
        let (_, href) = page.body[..at].rsplit_once("<a href=\"").unwrap();
        assert!(href.starts_with("/?before="), "{href}");
        path = href.to_owned();
    }
}

/// 450 pending escalations: the inbox shows 200 a page, newest first, and its Older links
/// reach every one exactly once; a forged cursor is refused.
pub fn inbox_pages_reach_every_pending_escalation(approver: &ApproverProcess, world: &World) {
    let key = gate_key(world);
    let count = 450u32;
    let base = now();
    // Several asked in the same second: the intent hash breaks the tie.
    let asked_at = |n: u32| base - u64::from(count - n) / 4;
    for n in 0..count {
        let asked = notification(10_000 + n, asked_at(n), 7200);
        let answer = post_notification(&approver.agent, &key, &asked);
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let session = sign_in(&approver.inbox, "alice", PASSWORD).unwrap();
    let pages = walk_inbox(&approver.inbox, &session);
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [200, 200, 50]);
    let seen: Vec<String> = pages.concat();
    let mut expected: Vec<(u64, String)> = (0..count)
        .map(|n| {
            let asked = notification(10_000 + n, asked_at(n), 7200);
            (asked.decided_at, asked.intent_hash)
        })
        .collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, intent)| intent).collect();
    assert_eq!(seen, expected, "newest first, every one exactly once");
    let first = http(&approver.inbox, "GET", "/", &[("Cookie", &session)], b"");
    assert!(
        first.body.contains("Pending escalations (450)"),
        "the heading counts all pages"
    );
    for forged in [
        "/?before=x",
        "/?before=1.sha256:..%2F..%2Fetc",
        "/?before=1.sha256:00",
    ] {
        let refused = http(&approver.inbox, "GET", forged, &[("Cookie", &session)], b"");
        assert_eq!(refused.status, 400, "{forged}: {}", refused.body);
        assert!(
            refused.body.contains("follow its Older link"),
            "{}",
            refused.body
        );
    }
}

#[test]
fn the_inbox_pages_beyond_200_pending_in_postgres() {
    let test = "the_inbox_pages_beyond_200_pending_in_postgres";
    let Some(db) = block_on(pg::database(test)) else {
        return;
    };
    let world = World::new();
    let approver = replica(&world, &db.url, "replica-a");
    inbox_pages_reach_every_pending_escalation(&approver, &world);
}

#[test]
fn the_inbox_pages_beyond_200_pending_in_the_state_file() {
    let world = World::new();
    let approver = world.approver();
    inbox_pages_reach_every_pending_escalation(&approver, &world);
}

// The database password never reaches the approver's output, even when the start fails.
#[test]
fn a_database_the_approver_cannot_reach_is_named_without_its_password() {
    let world = World::new();
    let out = world
        .approver_command("127.0.0.1:0", &world.state)
        .env(
            "ECL_APPROVER_DB",
            "postgres://approver:s3cret-pw@127.0.0.1:1/ecl?sslmode=disable&connect_timeout=2",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach PostgreSQL at `postgres://approver:***@127.0.0.1:1/ecl"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    // A password file that cannot be read stops the start too, named.
    let out = gate_command()
        .args(["approver", "serve", "--gate-key"])
        .arg(world.keys.join("gate1.pub"))
        .arg("--key")
        .arg(world.keys.join("approver1.key"))
        .arg("--passwords")
        .arg(world.dir.path().join("passwords"))
        .args([
            "--db",
            "postgres://approver@127.0.0.1:1/ecl",
            "--db-password-file",
        ])
        .arg(world.dir.path().join("no-such-file"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the PostgreSQL password file"),
        "{stderr}"
    );
}

// Fail closed: while PostgreSQL is down nothing is stored, decided or handed out (503, and
// no audit record of a decision), and the approver carries on by itself once it is back.
#[test]
fn while_the_database_is_down_nothing_is_decided_and_the_approver_recovers() {
    let test = "while_the_database_is_down_nothing_is_decided_and_the_approver_recovers";
    let cluster = match pg::Cluster::create() {
        Ok(cluster) => cluster,
        Err(err) => {
            pg::unavailable(test, &err);
            return;
        }
    };
    let world = World::new();
    let a = replica(&world, &cluster.url(), "replica-a");
    let key = gate_key(&world);
    let first = notification(1, now(), 3600);
    assert_eq!(post_notification(&a.agent, &key, &first).status, 201);
    let alice = sign_in(&a.inbox, "alice", PASSWORD).unwrap();
    let csrf = csrf_of(&page_of(&a.inbox, &alice, &first.intent_hash).body);
    let approve_path = format!("/escalations/{}/approve", first.intent_hash);

    cluster.stop().unwrap();
    let second = notification(2, now(), 3600);
    let refused = post_notification(&a.agent, &key, &second);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.json()["error"].str(),
        "the approver's state cannot be written; retry later"
    );
    let inbox = http(&a.inbox, "GET", "/", &[("Cookie", &alice)], b"");
    assert_eq!(inbox.status, 503, "{}", inbox.body);
    assert!(
        inbox.body.contains("cannot be read right now"),
        "{}",
        inbox.body
    );
    let approve = post_form(
        &a.inbox,
        &approve_path,
        &alice,
        &[("csrf", &csrf), ("ttl", "900")],
    );
    assert_eq!(approve.status, 503, "{}", approve.body);
    assert!(
        approve
            .body
            .contains("could not be written; nothing was decided"),
        "{}",
        approve.body
    );
    let wait = http(
        &a.agent,
        "GET",
        &format!("/v1/approvals/{}", first.intent_hash),
        &[],
        b"",
    );
    assert_eq!(wait.status, 503, "{}", wait.body);
    assert!(approval_records(&world.dir.path().join("replica-a")).is_empty());

    // Back: the same click decides, once; the refused notification is accepted when resent.
    cluster.start().unwrap();
    let approve = post_form(
        &a.inbox,
        &approve_path,
        &alice,
        &[("csrf", &csrf), ("ttl", "900")],
    );
    assert_eq!(approve.status, 200, "{}", approve.body);
    assert_eq!(post_notification(&a.agent, &key, &second).status, 201);
    let served = http(
        &a.agent,
        "GET",
        &format!("/v1/approvals/{}", first.intent_hash),
        &[],
        b"",
    );
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(
        approval_records(&world.dir.path().join("replica-a")).len(),
        1
    );
}
