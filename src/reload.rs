//! Periodic reload checks for files operators rotate in place (certificates, JWKS, keys).
//!
//! Owns only the timing: each check runs on the blocking pool, one at a time, and a slow
//! check delays the next instead of piling up. What a check reads and how it fails is the
//! caller's.

use std::sync::Arc;
use std::time::Duration;

/// Runs `check` every `interval` on the blocking pool, for the life of the runtime.
pub(crate) fn spawn_every<T: Send + Sync + 'static>(
    interval: Duration,
    target: Arc<T>,
    check: fn(&T),
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let target = Arc::clone(&target);
            let _ = tokio::task::spawn_blocking(move || check(&target)).await;
        }
    });
}
