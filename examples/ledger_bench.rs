//! Spend latency and throughput of the single-use ledgers, PostgreSQL vs file, in one run.
//!
//! ```sh
//! cargo run --release --example ledger_bench -- postgres://user:pw@127.0.0.1:5432/db?sslmode=disable [SPENDS] [CONCURRENCY]
//! ```
//!
//! Spends SPENDS (default 20000) fresh tokens with CONCURRENCY (default 32) spends in flight,
//! first into the PostgreSQL ledger (its own table in that database, created if missing),
//! then into a file ledger in a temporary directory, and prints p50/p90/p99/max and spends
//! per second for each. Every spend must come back "fresh"; anything else is counted and
//! printed. Loopback only by intent: point it at a local server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecl_gate::approval::{Approval, Spend, UsedTokens};
use ecl_gate::ledger::{Ledger, PgLedger};
use ecl_gate::postgres::PgSettings;
use hdrhistogram::Histogram;

fn approval(run: u64, i: u64) -> Approval {
    Approval {
        kid: "bench".into(),
        issuer: "bench".into(),
        jti: format!("{run}-{i}"),
        issued_at: 0,
        // Far in the future: nothing is purged during the run.
        expires_at: 4_000_000_000,
    }
}

async fn measure(ledger: Ledger, spends: u64, concurrency: u64) -> (Histogram<u64>, Duration, u64) {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ledger, next) = (ledger.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap_or_else(|_| std::process::exit(2));
            let mut bad = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= spends {
                    return (histogram, bad);
                }
                let at = Instant::now();
                let outcome = ledger.spend(&approval(run, i), 1).await;
                let _ = histogram.record(at.elapsed().as_micros() as u64);
                if outcome != Ok(Spend::Fresh) {
                    bad += 1;
                }
            }
        }));
    }
    let mut total = Histogram::<u64>::new(3).unwrap_or_else(|_| std::process::exit(2));
    let mut bad = 0;
    for task in tasks {
        if let Ok((histogram, task_bad)) = task.await {
            let _ = total.add(histogram);
            bad += task_bad;
        }
    }
    (total, started.elapsed(), bad)
}

fn report(name: &str, (histogram, took, bad): &(Histogram<u64>, Duration, u64)) {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<10} {:>7} spends in {:>6.2} s = {:>7.0}/s   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms   not fresh: {bad}",
        histogram.len(),
        took.as_secs_f64(),
        histogram.len() as f64 / took.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        histogram.max() as f64 / 1000.0,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(url) = args.get(1) else {
        eprintln!("usage: ledger_bench POSTGRES_URL [SPENDS] [CONCURRENCY]");
        std::process::exit(2);
    };
    let spends = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let concurrency = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|_| std::process::exit(2));
    runtime.block_on(async {
        let mut settings = PgSettings::new(url.as_str());
        settings.pool_size = 16;
        let pg = match PgLedger::connect(&settings, "ledger_bench").await {
            Ok(pg) => pg,
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        };
        let dir = tempfile_dir();
        let file = UsedTokens::open(&dir.join("used.jsonl")).unwrap_or_else(|err| {
            eprintln!("error: {err}");
            std::process::exit(1)
        });
        println!("{spends} fresh tokens each, {concurrency} spends in flight");
        let pg = measure(Ledger::Postgres(Arc::new(pg)), spends, concurrency).await;
        report("postgres", &pg);
        let file = measure(Ledger::File(Arc::new(file)), spends, concurrency).await;
        report("file", &file);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ledger_bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
