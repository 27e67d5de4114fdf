//! The crash test of `examples/crashtest.rs`, short: three rounds of kill -9 under load against
//! the debug binary. The full run is `cargo run --release --example crashtest -- --rounds 20`.

use std::path::PathBuf;
use std::time::Duration;

#[path = "../../examples/crashtest.rs"]
#[allow(dead_code)]
mod driver;

fn options(rounds: u32, seed: u64) -> driver::Options {
    driver::Options {
        rounds,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ecl-gate")),
        workers: 16,
        min_kill: Duration::from_millis(30),
        max_kill: Duration::from_millis(250),
        // Small segments, so kills land in rotations too.
        rotate_bytes: 16 * 1024,
        seed,
        verbose: false,
        phantom_acks: 0,
    }
}

#[test]
fn a_few_kill_9_rounds_lose_nothing() {
    let seed = 0x5eed_cafe;
    let summary = driver::run(&options(3, seed)).unwrap();
    println!("{}", summary.line(seed));
    assert!(summary.lost_nothing(), "{}", summary.line(seed));
    assert_eq!(summary.rounds, 3);
    assert!(summary.acknowledged > 0, "{}", summary.line(seed));
    assert_eq!(summary.refused, 0);
    assert!(summary.records >= summary.acknowledged);
}

// Guards the guard: a check that never finds anything missing would pass a gate that loses
// decisions. Acknowledgments the gate never gave must all be reported.
#[test]
fn the_crash_test_reports_acknowledged_decisions_missing_from_the_log() {
    let seed = 7;
    let summary = driver::run(&driver::Options {
        phantom_acks: 3,
        ..options(1, seed)
    })
    .unwrap();
    assert_eq!(summary.missing, 3, "{}", summary.line(seed));
    assert!(!summary.lost_nothing());
}
